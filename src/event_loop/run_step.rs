//! The run step, asyncio's `_run_once`: compute the poll timeout from the ready queue
//! and the earliest timer, poll with the GIL released, turn ready fds into ready-queue
//! entries (a handle, or a native transport's read or write path, `Ready`), move due
//! timers to the ready queue, then run exactly the entries that were ready when the step
//! began. Also `run_forever`'s loop around it and the debug-mode run of one handle.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;

use super::exceptions::format_handle;
use super::fd_watches::{FdWatch, Watcher};
use super::{os_error, LoopCore, WAKER_TOKEN};
use crate::gil::py_attr;
use crate::handles::Handle;
use crate::reactor::clock;
use crate::transports::native::NativeReady;

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: one day.
const MAX_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;

/// Compact the timer heap when it holds more than this many timers...
const MIN_SCHEDULED_TIMER_HANDLES: usize = 100;

/// ...and more than this fraction of them are cancelled.
const MIN_CANCELLED_TIMER_HANDLES_FRACTION: f64 = 0.5;

/// `time.get_clock_info('monotonic').resolution` on Linux.
const CLOCK_RESOLUTION: f64 = 1e-9;

/// An entry of the ready queue.
pub(crate) enum Ready {
    Handle(Py<Handle>),
    /// A native transport's fd is readable or writable.
    Native(NativeReady),
}

impl Ready {
    pub(super) fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Ready::Handle(h) => Handle::visit_owned(h, visit),
            Ready::Native(r) => r.visit(visit),
        }
    }
}

/// Gives the handles of a ready queue and timer heap being dropped back to the
/// collector (see [`Handle::untrack`]).
pub(super) fn release_all(ready: &VecDeque<Ready>, timers: &[Py<Handle>]) {
    for r in ready {
        if let Ready::Handle(h) = r {
            Handle::release(h);
        }
    }
    for h in timers {
        Handle::release(h);
    }
}

impl LoopCore {
    pub(super) fn run_forever_inner(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let py = slf.py();
        loop {
            Self::run_once(slf)?;
            if this.state.borrow(py).stopping {
                return Ok(());
            }
        }
    }

    /// One iteration of the loop: asyncio's `_run_once`.
    pub(super) fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut garbage: Vec<Py<Handle>> = Vec::new();
        let mut stale_fds: Vec<FdWatch> = Vec::new();
        // Python signal handlers of signals that came while no Python code ran (since
        // the last callback) run now, before the timeout is computed: what they schedule
        // (the Runner's Ctrl-C handler wakes the loop with call_soon_threadsafe) must not
        // wait behind a poll that blocks. asyncio's `_run_once` is Python code, which
        // checks as it goes.
        py.check_signals()?;
        this.settle_last(py);

        // Cancelled timers leave the heap first, and are dropped before the poll timeout
        // is computed: dropping one may run a finalizer, which can schedule (the timeout
        // must see it) and lets other threads run.
        {
            let mut st = this.state.borrow_mut(py);
            let st = &mut *st;
            let n = st.timers.len();
            if n > MIN_SCHEDULED_TIMER_HANDLES
                && st.timer_cancelled as f64 / n as f64 > MIN_CANCELLED_TIMER_HANDLES_FRACTION
            {
                st.timers.retain_into(|h| !h.get().is_cancelled(py), &mut garbage);
                st.timer_cancelled = 0;
            } else {
                while let Some((_, h)) = st.timers.peek() {
                    if !h.get().is_cancelled(py) {
                        break;
                    }
                    st.timer_cancelled = st.timer_cancelled.saturating_sub(1);
                    if let Some((_, h)) = st.timers.pop() {
                        garbage.push(h);
                    }
                }
            }
        }
        for h in &garbage {
            h.get().state.borrow_mut(py).scheduled = false;
            Handle::release(h);
        }
        garbage.clear();

        // From computing the timeout until `polling` is set, no Python code may run: it
        // could let another thread in, whose call_soon_threadsafe would see `polling`
        // still false and not wake a poll that then waits with a stale timeout.
        let (timeout, have_fds) = {
            let st = this.state.borrow(py);
            let timeout = if !st.ready.is_empty() || st.stopping {
                Some(Duration::ZERO)
            } else if let Some((when, _)) = st.timers.peek() {
                // asyncio's min(max(0, when - now), MAXIMUM_SELECT_TIMEOUT): a deadline of
                // -inf or NaN (then due at once) gives 0, +inf a day.
                let secs = when - clock::monotonic();
                let secs = if secs > 0.0 { secs.min(MAX_SELECT_TIMEOUT) } else { 0.0 };
                Some(Duration::from_secs_f64(secs))
            } else {
                None
            };
            (timeout, !st.fds.is_empty())
        };

        // Poll. The GIL is released only when the poll may block.
        {
            let io = this.io.borrow(py);
            let Some(io) = io.as_ref() else {
                return Err(PyRuntimeError::new_err("Event loop is closed"));
            };
            let mut events = this.events.borrow_mut(py);
            let events = &mut *events;
            if timeout == Some(Duration::ZERO) {
                if have_fds {
                    io.poller.wait(events, timeout).map_err(os_error)?;
                } else {
                    events.clear();
                }
            } else {
                this.polling.store(true, Ordering::SeqCst);
                let poller = &io.poller;
                let r = py.detach(|| poller.wait(events, timeout));
                this.polling.store(false, Ordering::SeqCst);
                if let Err(e) = r {
                    events.clear();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(os_error(e));
                    }
                }
                // Signal handlers run here (PEP 475): KeyboardInterrupt leaves the loop.
                py.check_signals()?;
            }

            let mut st = this.state.borrow_mut(py);
            let st = &mut *st;
            let mut cancelled_fds: Vec<(RawFd, bool)> = Vec::new();
            for ev in events.iter() {
                if ev.token == WAKER_TOKEN {
                    io.waker.drain();
                    continue;
                }
                let fd = ev.token as RawFd;
                let Some(w) = st.fds.get(&fd) else { continue };
                for (ready, watcher, read) in [(ev.readable, &w.reader, true), (ev.writable, &w.writer, false)] {
                    let Some(watcher) = watcher.as_ref().filter(|_| ready) else {
                        continue;
                    };
                    match watcher.to_ready(py, fd, read) {
                        Some(r) => st.ready.push_back(r),
                        None => cancelled_fds.push((fd, read)),
                    }
                }
            }
            for (fd, read) in cancelled_fds {
                let u = Self::unwatch(st, &io.poller, fd, read);
                if let Some(Watcher::Handle(h)) = u.removed {
                    garbage.push(h);
                }
                stale_fds.extend(u.failed.map(|(_, rest)| rest));
            }

            // Timers that are due.
            let end = clock::monotonic() + CLOCK_RESOLUTION;
            while let Some(h) = st.timers.pop_due(end) {
                h.get().state.borrow_mut(py).scheduled = false;
                st.ready.push_back(Ready::Handle(h));
            }
        }
        drop(garbage);
        drop(stale_fds);
        // Other threads may have scheduled while the poll let go of the GIL; what runs in
        // this step must be settled before it leaves the queue.
        this.settle_last(py);

        // Run exactly what is ready now; what these callbacks schedule waits for the next step.
        let ntodo = this.state.borrow(py).ready.len();
        for _ in 0..ntodo {
            let (entry, debug) = {
                let mut st = this.state.borrow_mut(py);
                match st.ready.pop_front() {
                    Some(r) => (r, st.debug),
                    None => break,
                }
            };
            match entry {
                Ready::Handle(handle) => {
                    Handle::release(&handle);
                    let handle = handle.into_bound(py);
                    if handle.get().is_cancelled(py) {
                        continue;
                    }
                    let ran = if debug {
                        Self::run_debug(slf, &handle)
                    } else {
                        Handle::run(&handle)
                    };
                    Handle::release_fired_timer(&handle);
                    ran?;
                }
                Ready::Native(r) => r.run(slf)?,
            }
        }
        Ok(())
    }

    /// Runs a handle in debug mode: remembers it as the current handle and warns
    /// when it takes longer than `slow_callback_duration`.
    pub(super) fn run_debug(slf: &Bound<'_, Self>, handle: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.state.borrow_mut(py).current_handle = Some(handle.clone().unbind());
        let t0 = clock::monotonic();
        let result = Handle::run(handle);
        let dt = clock::monotonic() - t0;
        let previous = this.state.borrow_mut(py).current_handle.take();
        drop(previous);
        result?;
        if dt >= this.state.borrow(py).slow_callback_duration {
            let logger = py_attr!(py, "asyncio.log", "logger")?;
            logger.call_method1(
                intern!(py, "warning"),
                ("Executing %s took %.3f seconds", format_handle(handle)?, dt),
            )?;
        }
        Ok(())
    }
}
