//! asyncio's write flow control (`transports._FlowControlMixin`), for the transports that
//! queue what they cannot send at once: the high- and low-water marks, whether the
//! protocol was told to pause, and the calls of its `pause_writing`/`resume_writing`.

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::types::PyDict;
use pyo3::PyClass;

use crate::event_loop::LoopCore;
use crate::transports::stream::is_fatal;

/// asyncio's default high-water mark; the low one is a quarter of it.
pub(crate) const DEFAULT_HIGH: usize = 64 * 1024;

/// The limits of a transport's write queue, and whether its protocol is paused.
pub(crate) struct FlowControl {
    high: usize,
    low: usize,
    /// `pause_writing()` was called, and `resume_writing()` not since.
    paused: bool,
}

impl Default for FlowControl {
    fn default() -> FlowControl {
        FlowControl {
            high: DEFAULT_HIGH,
            low: DEFAULT_HIGH / 4,
            paused: false,
        }
    }
}

impl FlowControl {
    /// `(low, high)`, as `get_write_buffer_limits()` gives them.
    pub(crate) fn limits(&self) -> (usize, usize) {
        (self.low, self.high)
    }

    /// Whether the protocol was told to pause writing and not to resume since.
    pub(crate) fn paused(&self) -> bool {
        self.paused
    }

    /// Sets the limits [`parse_limits`] gave.
    pub(crate) fn set_limits(&mut self, (high, low): (usize, usize)) {
        self.high = high;
        self.low = low;
    }

    /// With `size` bytes queued: whether to pause the protocol now (above the high-water
    /// mark and not paused yet), noting that it is.
    pub(crate) fn pause(&mut self, size: usize) -> bool {
        if size <= self.high || self.paused {
            return false;
        }
        self.paused = true;
        true
    }

    /// With `size` bytes queued: whether to resume the protocol now (paused, and down to
    /// the low-water mark), noting that it is.
    pub(crate) fn resume(&mut self, size: usize) -> bool {
        if !self.paused || size > self.low {
            return false;
        }
        self.paused = false;
        true
    }
}

/// `set_write_buffer_limits(high, low)`'s arguments as asyncio's
/// `_set_write_buffer_limits` takes them: `(high, low)`, with its defaults and checks.
/// Done before the transport's state is borrowed: taking an int may run Python code.
pub(crate) fn parse_limits(
    high: Option<&Bound<'_, PyAny>>,
    low: Option<&Bound<'_, PyAny>>,
) -> PyResult<(usize, usize)> {
    let high = high.filter(|h| !h.is_none());
    let low = low.filter(|l| !l.is_none());
    let (high_v, low_v): (i64, i64) = match (high, low) {
        (None, None) => (DEFAULT_HIGH as i64, DEFAULT_HIGH as i64 / 4),
        (None, Some(l)) => {
            let l: i64 = l.extract()?;
            (4 * l, l)
        }
        (Some(h), None) => {
            let h: i64 = h.extract()?;
            (h, h.div_euclid(4))
        }
        (Some(h), Some(l)) => (h.extract()?, l.extract()?),
    };
    if !(high_v >= low_v && low_v >= 0) {
        return Err(PyValueError::new_err(format!(
            "high ({high_v}) must be >= low ({low_v}) must be >= 0"
        )));
    }
    Ok((high_v as usize, low_v as usize))
}

/// What [`maybe_pause`] and [`maybe_resume`] need of a transport that queues writes.
pub(crate) trait FlowControlled: PyClass<Frozen = True> + Sync {
    /// Tests the queue's size against the water marks for pausing (`pause`) or for
    /// resuming the protocol, and records the change; the protocol to tell, when the
    /// state changed and the transport still has one.
    fn flow_change(&self, py: Python<'_>, pause: bool) -> Option<Py<PyAny>>;

    fn flow_loop(&self, py: Python<'_>) -> Option<Py<LoopCore>>;

    /// The transport object the protocol sees (for the error report's `transport` key).
    fn flow_facade<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyAny>;
}

/// asyncio's `_maybe_pause_protocol`: `pause_writing()` once the queue is above the
/// high-water mark.
pub(crate) fn maybe_pause<T: FlowControlled>(slf: &Bound<'_, T>) -> PyResult<()> {
    flow_step(slf, true)
}

/// asyncio's `_maybe_resume_protocol`: `resume_writing()` once a paused protocol's queue
/// is down to the low-water mark.
pub(crate) fn maybe_resume<T: FlowControlled>(slf: &Bound<'_, T>) -> PyResult<()> {
    flow_step(slf, false)
}

fn flow_step<T: FlowControlled>(slf: &Bound<'_, T>, pause: bool) -> PyResult<()> {
    let py = slf.py();
    let Some(protocol) = slf.get().flow_change(py, pause) else {
        return Ok(());
    };
    let loop_ = slf.get().flow_loop(py).map(|l| l.into_bound(py));
    let method = if pause { "pause_writing" } else { "resume_writing" };
    call_protocol(loop_.as_ref(), &T::flow_facade(slf), protocol.bind(py), method)
}

/// Calls the protocol's `pause_writing` or `resume_writing` (`method`). What it raises
/// goes to the loop's exception handler, as asyncio's `_maybe_pause_protocol` reports it
/// (with the transport `facade` and the protocol); SystemExit and KeyboardInterrupt are
/// returned.
pub(crate) fn call_protocol(
    loop_: Option<&Bound<'_, LoopCore>>,
    facade: &Bound<'_, PyAny>,
    protocol: &Bound<'_, PyAny>,
    method: &str,
) -> PyResult<()> {
    let py = protocol.py();
    let Err(e) = protocol.call_method0(method) else {
        return Ok(());
    };
    if is_fatal(py, &e) {
        return Err(e);
    }
    if let Some(loop_) = loop_ {
        let ctx = PyDict::new(py);
        ctx.set_item("message", format!("protocol.{method}() failed"))?;
        ctx.set_item("exception", e.into_value(py))?;
        ctx.set_item("transport", facade)?;
        ctx.set_item("protocol", protocol)?;
        loop_.call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
    }
    Ok(())
}
