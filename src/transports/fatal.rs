//! What the transports share when a connection fails or is gone: asyncio's
//! `_fatal_error` report, and the count of writes made after the connection was lost
//! (with asyncio's warning once there are many).

use pyo3::exceptions::PyOSError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::event_loop::LoopCore;
use crate::gil::py_attr;

/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// The socket transports' warning about writes after the connection was lost.
pub(crate) const LOST_SEND_WARNING: &str = "socket.send() raised exception.";

/// The report half of asyncio's `_fatal_error(exc, message)`: an OSError is logged, in
/// debug mode only; anything else goes to the loop's exception handler with the
/// transport (`facade`) and `protocol`. Returns the exception, for the transport's
/// `_force_close`, which follows.
pub(crate) fn report<'py>(
    loop_: Option<&Bound<'py, LoopCore>>,
    facade: &Bound<'py, PyAny>,
    protocol: Option<Py<PyAny>>,
    exc: PyErr,
    message: &str,
) -> PyResult<Bound<'py, PyAny>> {
    report_unless(loop_, facade, protocol, exc, message, |v| {
        v.is_instance_of::<PyOSError>()
    })
}

/// [`report`], with what is only logged in debug mode chosen by `quiet` (asyncio's
/// read pipe transport logs only EIO so).
pub(crate) fn report_unless<'py>(
    loop_: Option<&Bound<'py, LoopCore>>,
    facade: &Bound<'py, PyAny>,
    protocol: Option<Py<PyAny>>,
    exc: PyErr,
    message: &str,
    quiet: impl FnOnce(&Bound<'py, PyAny>) -> bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = facade.py();
    let value = exc.into_value(py).into_bound(py).into_any();
    if quiet(&value) {
        if loop_.is_some_and(|l| l.get().debug(py)) {
            let kwargs = PyDict::new(py);
            let info = PyTuple::new(
                py,
                [
                    value.get_type().into_any(),
                    value.clone(),
                    value.getattr("__traceback__")?,
                ],
            )?;
            kwargs.set_item("exc_info", info)?;
            py_attr!(py, "asyncio.log", "logger")?.call_method(
                intern!(py, "debug"),
                ("%r: %s", facade, message),
                Some(&kwargs),
            )?;
        }
    } else if let Some(loop_) = loop_ {
        let ctx = PyDict::new(py);
        ctx.set_item("message", message)?;
        ctx.set_item("exception", &value)?;
        ctx.set_item("transport", facade)?;
        ctx.set_item("protocol", protocol)?;
        loop_.call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
    }
    Ok(value)
}

/// A write (or send) after the connection was lost, which asyncio counts in
/// `_conn_lost`: counts it, and says whether to warn ([`warn_lost_write`], once the
/// transport's state is no longer borrowed), as asyncio does from the fifth on.
pub(crate) fn count_lost_write(conn_lost: &mut u32) -> bool {
    let warn = *conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
    *conn_lost += 1;
    warn
}

/// asyncio's warning about writes after the connection was lost: `message` is the
/// socket transports' [`LOST_SEND_WARNING`] or the pipe transports' own.
pub(crate) fn warn_lost_write(py: Python<'_>, message: &str) -> PyResult<()> {
    py_attr!(py, "asyncio.log", "logger")?.call_method1(intern!(py, "warning"), (message,))?;
    Ok(())
}
