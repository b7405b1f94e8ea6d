//! The `contextvars` context a native transport's protocol callbacks run in.
//!
//! asyncio registers a transport's reader and writer as handles (`_add_reader`,
//! `_add_writer`), each with a copy of the context current when it was added, and runs
//! every callback made from them in that copy: `data_received`, `eof_received`,
//! `get_buffer`/`buffer_updated` and `datagram_received` in the reader's, `resume_writing`
//! and a `connection_lost` after a flush in the writer's. The loop does the same for the
//! transports it dispatches in Rust: a watch keeps the copy taken when it was added
//! ([`copy_current`]), and the dispatch enters it around the transport's read or write
//! path ([`Entered`]).

use pyo3::ffi;
use pyo3::prelude::*;

/// A copy of the current context, as a handle made now would take
/// (`contextvars.copy_context()`).
pub(crate) fn copy_current(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: the GIL is held; PyContext_CopyCurrent returns a new reference, or NULL
    // with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }
}

/// `context` entered for the life of the guard.
pub(crate) struct Entered<'a, 'py>(&'a Bound<'py, PyAny>);

impl<'a, 'py> Entered<'a, 'py> {
    /// Enters `context`, a `contextvars.Context`; fails (RuntimeError) when it is entered
    /// already, as `Context.run` does.
    #[inline]
    pub(crate) fn enter(context: &'a Bound<'py, PyAny>) -> PyResult<Entered<'a, 'py>> {
        // SAFETY: `context` is a live object and the GIL is held; PyContext_Enter checks
        // that it is a Context and returns -1 with an exception set otherwise.
        if unsafe { ffi::PyContext_Enter(context.as_ptr()) } < 0 {
            return Err(PyErr::fetch(context.py()));
        }
        Ok(Entered(context))
    }
}

impl Drop for Entered<'_, '_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: entered in `enter` on this thread and not exited since (the guard is not
        // Send and lives inside the GIL scope of `'py`). Exiting a context entered this
        // way cannot fail unless the interpreter is broken, and there is no one to tell.
        if unsafe { ffi::PyContext_Exit(self.0.as_ptr()) } < 0 {
            PyErr::take(self.0.py());
        }
    }
}
