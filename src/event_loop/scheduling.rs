//! Scheduling: the checks before a callback is scheduled, the handles `call_soon` and
//! the timers make (with their context and, in debug mode, their traceback), and how
//! they enter the ready queue or the timer heap.

use std::sync::atomic::Ordering;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::run_step::Ready;
use super::{LoopCore, LoopState};
use crate::gil::py_attr;
use crate::handle_mem;
use crate::handles::{Handle, TimerHandle};

impl LoopCore {
    /// The checks before scheduling on the loop's thread: the loop is open and, in debug
    /// mode, the caller is the loop's thread and the callback a plain callable.
    /// Returns whether debug mode is on.
    pub(super) fn check_schedule(&self, py: Python<'_>, callback: &Bound<'_, PyAny>, method: &str) -> PyResult<bool> {
        let debug = {
            let st = self.state.borrow(py);
            if st.closed {
                return Err(PyRuntimeError::new_err("Event loop is closed"));
            }
            st.debug
        };
        if debug {
            self.check_thread(py)?;
            Self::check_callback(callback, method)?;
        }
        Ok(debug)
    }

    /// Debug mode: coroutines and non-callables are refused.
    pub(super) fn check_callback(callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
        let py = callback.py();
        if py_attr!(py, "asyncio", "iscoroutine")?
            .call1((callback,))?
            .is_truthy()?
            || py_attr!(py, "asyncio", "iscoroutinefunction")?
                .call1((callback,))?
                .is_truthy()?
        {
            return Err(PyTypeError::new_err(format!(
                "coroutines cannot be used with {method}()"
            )));
        }
        if !callback.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "a callable object was expected by {method}(), got {}",
                callback.repr()?
            )));
        }
        Ok(())
    }

    pub(super) fn source_traceback(py: Python<'_>, debug: bool) -> PyResult<Option<Py<PyAny>>> {
        if !debug {
            return Ok(None);
        }
        // Rust frames are invisible to Python: frame 0 is the caller of call_soon.
        let frame = py.import("sys")?.call_method1("_getframe", (0,))?;
        let tb = py_attr!(py, "asyncio.format_helpers", "extract_stack")?.call1((frame,))?;
        Ok(Some(tb.unbind()))
    }

    /// The context a new handle runs in: the one given, or a copy of the current one.
    /// The flag says whether the context is a copy made for the handle alone.
    pub(super) fn current_context(py: Python<'_>, context: Option<Bound<'_, PyAny>>) -> PyResult<(Py<PyAny>, bool)> {
        match context {
            Some(c) if !c.is_none() => Ok((c.unbind(), false)),
            _ => {
                // SAFETY: the GIL is held; PyContext_CopyCurrent returns a new reference or NULL.
                let ctx = unsafe { pyo3::ffi::PyContext_CopyCurrent() };
                // SAFETY: `ctx` is a new reference (or NULL with an exception set).
                unsafe { Bound::from_owned_ptr_or_err(py, ctx) }.map(|c| (c.unbind(), true))
            }
        }
    }

    pub(crate) fn new_handle(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        debug: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let state = Handle::new_state(
            callback.clone().unbind(),
            args.clone().unbind(),
            Self::current_context(py, context)?,
            slf.clone().unbind(),
            Self::source_traceback(py, debug)?,
            false,
        );
        Ok(handle_mem::new_handle(py, state, None)?.unbind())
    }

    /// Appends to the ready queue; with `wake`, wakes a loop blocked in poll.
    pub(crate) fn push_ready(&self, py: Python<'_>, handle: Py<Handle>, wake: bool) {
        self.enqueue(py, handle, |st, h| st.ready.push_back(Ready::Handle(h)));
        if wake && self.polling.load(Ordering::SeqCst) {
            if let Some(io) = self.io.borrow(py).as_ref() {
                io.waker.wake();
            }
        }
    }

    /// Puts a new handle in the ready queue or timer heap (`push`), and keeps it as the
    /// last one scheduled, settling the one before it.
    pub(super) fn enqueue(&self, py: Python<'_>, handle: Py<Handle>, push: impl FnOnce(&mut LoopState, Py<Handle>)) {
        let previous = {
            let mut st = self.state.borrow_mut(py);
            push(&mut st, handle.clone_ref(py));
            st.last_scheduled.replace(handle)
        };
        Self::settle(py, previous);
    }

    /// Settles the last handle scheduled: before a step looks at the queue and heap.
    pub(super) fn settle_last(&self, py: Python<'_>) {
        let last = self.state.borrow_mut(py).last_scheduled.take();
        Self::settle(py, last);
    }

    /// Decides about a handle scheduled earlier and still waiting in the ready queue or
    /// timer heap: if the loop is all that holds it (its creator dropped the handle
    /// `call_soon` or `call_later` returned), it is hidden from the collector
    /// ([`Handle::untrack`]); one the program keeps stays tracked, so that the collector
    /// sees that reference and never takes what the handle holds for garbage.
    /// Called with no borrow of the loop's state held.
    pub(super) fn settle(py: Python<'_>, previous: Option<Py<Handle>>) {
        let Some(h) = previous else { return };
        // SAFETY: `h` is live (we hold it) and the GIL is held.
        // Two references: the queue's or heap's, and ours.
        if unsafe { pyo3::ffi::Py_REFCNT(h.as_ptr()) } == 2 {
            Handle::untrack(&h);
        }
        // Released as a Bound: dropping a Py checks a thread-local first, and this runs
        // once per callback.
        drop(h.into_bound(py));
    }

    /// `call_soon(callback, *args, context=None)`, called from the C entry point in
    /// `fastcall.rs` with the arguments already unpacked.
    pub(crate) fn call_soon(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        let debug = this.check_schedule(py, callback, "call_soon")?;
        let handle = Self::new_handle(slf, callback, args, context, debug)?;
        this.push_ready(py, handle.clone_ref(py), false);
        Ok(handle)
    }

    /// `call_soon` for the loop's own callbacks: no checks, no debug traceback.
    pub(crate) fn call_soon_internal(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let py = slf.py();
        let handle = Self::new_handle(slf, callback, args, None, false)?;
        slf.get().push_ready(py, handle, false);
        Ok(())
    }

    pub(super) fn schedule_timer(
        slf: &Bound<'_, Self>,
        when: f64,
        when_given: Option<Py<PyAny>>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        method: &str,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        let debug = this.check_schedule(py, callback, method)?;
        let mut state = Handle::new_state(
            callback.clone().unbind(),
            args.clone().unbind(),
            Self::current_context(py, context)?,
            slf.clone().unbind(),
            Self::source_traceback(py, debug)?,
            true,
        );
        state.scheduled = true;
        state.when_given = when_given;
        let handle = handle_mem::new_handle(py, state, Some(when))?;
        this.enqueue(py, handle.clone().unbind(), |st, h| st.timers.push(when, h));
        // SAFETY: `new_handle` made a TimerHandle, as `when` was given.
        Ok(unsafe { handle.cast_into_unchecked::<TimerHandle>() }.unbind())
    }
}
