//! How the loop runs a native transport's read or write path when its socket is ready:
//! as asyncio runs the reader and writer handles of its transports. The path runs in the
//! watch's context (`context.rs`), and is an exception boundary: whatever it raises goes
//! to the loop's exception handler with the keys asyncio's `Handle._run` gives it
//! (`message`, `exception`, `handle`), and the loop goes on. Only SystemExit and
//! KeyboardInterrupt leave the run step, as they leave asyncio's.

use std::os::fd::RawFd;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::PyClass;

use crate::event_loop::LoopCore;
use crate::handles::{format_callback_source, Handle};
use crate::transports::context::Entered;
use crate::transports::stream::is_fatal;

/// What a transport implements for the loop to call its read and write paths directly.
pub(crate) trait Native: PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync {
    /// The socket is readable and the transport watches it for reading. Watches are
    /// level-triggered: this is called again on the next step while data is waiting.
    /// What a protocol callback raises and the transport handles as asyncio's does
    /// (a fatal error, a failed flow-control call) stays inside; anything returned goes to
    /// the exception handler.
    fn on_readable(slf: &Bound<'_, Self>) -> PyResult<()>;

    /// The socket is writable and the transport watches it for writing.
    fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()>;

    /// The name of the transport's method that asyncio's reader (`readable`) or writer
    /// handle would call (`_read_ready`, `_write_ready`...): the method of that name,
    /// which runs the same path, is the callback of the handle an error report holds.
    fn callback_name(py: Python<'_>, readable: bool) -> &'static str;

    /// The fd the transport watches.
    fn fd(&self) -> RawFd;
}

/// Runs the read (`readable`) or write path of `transport` in `context`, reporting what
/// it raises as asyncio's handle would. `Err` only for SystemExit and KeyboardInterrupt.
pub(crate) fn dispatch<T: Native>(
    loop_: &Bound<'_, LoopCore>,
    transport: &Bound<'_, T>,
    context: Bound<'_, PyAny>,
    readable: bool,
) -> PyResult<()> {
    let result = match Entered::enter(&context) {
        Ok(_in) if readable => T::on_readable(transport),
        Ok(_in) => T::on_writable(transport),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if is_fatal(loop_.py(), &e) => Err(e),
        // Reported outside the context: from Python 3.12 the exception handler runs in
        // the context of the handle it is given, which it enters.
        Err(e) => {
            let callback = transport.as_any().getattr(T::callback_name(loop_.py(), readable))?;
            let watching = loop_
                .get()
                .watches(loop_.py(), transport.get().fd(), readable, &context);
            report(loop_, &callback, context, !watching, e)
        }
    }
}

/// `Handle._run`'s report of an exception from `callback`, with a handle of that
/// callback in `context` (made only now: the loop keeps no handle per watch). When the
/// path removed its own watch before it failed (`cancelled`), asyncio's handle was
/// cancelled by then, and the report shows it so: `Exception in callback None()`.
fn report(
    loop_: &Bound<'_, LoopCore>,
    callback: &Bound<'_, PyAny>,
    context: Bound<'_, PyAny>,
    cancelled: bool,
    err: PyErr,
) -> PyResult<()> {
    let py = loop_.py();
    let args = PyTuple::empty(py);
    let handle = LoopCore::new_handle(loop_, callback, &args, Some(context), false)?.into_bound(py);
    let source = if cancelled {
        Handle::do_cancel(&handle)?;
        format_callback_source(py, &py.None().into_bound(py), &py.None().into_bound(py))?
    } else {
        format_callback_source(py, callback, args.as_any())?
    };
    let ctx = PyDict::new(py);
    ctx.set_item(intern!(py, "message"), format!("Exception in callback {source}"))?;
    ctx.set_item(intern!(py, "exception"), err.into_value(py))?;
    ctx.set_item(intern!(py, "handle"), handle)?;
    loop_.call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
    Ok(())
}
