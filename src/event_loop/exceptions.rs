//! Exception handling: `default_exception_handler` (asyncio's log message for a
//! context dict), `call_exception_handler` (the custom handler, run from 3.12 on in the
//! context of the task, future or handle the error is about, and what happens when it
//! raises), and the repr of a handle in those reports.

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use super::LoopCore;
use crate::gil::py_attr;
use crate::handles::Handle;

/// asyncio's `_format_handle`: a task's repr for a task step, else the handle's.
pub(super) fn format_handle(handle: &Bound<'_, Handle>) -> PyResult<String> {
    let py = handle.py();
    let cb = handle.get().state.borrow(py).callback.as_ref().map(|c| c.clone_ref(py));
    if let Some(cb) = cb {
        if let Ok(owner) = cb.bind(py).getattr(intern!(py, "__self__")) {
            if owner.is_instance(py_attr!(py, "asyncio", "Task")?)? {
                return Ok(owner.repr()?.to_string());
            }
        }
    }
    Ok(handle.str()?.to_string())
}

impl LoopCore {
    pub(super) fn default_exception_handler_impl(&self, context: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = context.py();
        let message = context.get_item("message")?.filter(|m| m.is_truthy().unwrap_or(false));
        let message = match message {
            Some(m) => m.str()?.to_string(),
            None => "Unhandled exception in event loop".to_string(),
        };
        let exc_info: Bound<'_, PyAny> = match context.get_item("exception")? {
            Some(e) if !e.is_none() => {
                PyTuple::new(py, [e.get_type().into_any(), e.clone(), e.getattr("__traceback__")?])?.into_any()
            }
            _ => pyo3::types::PyBool::new(py, false).to_owned().into_any(),
        };
        if !context.contains("source_traceback")? {
            let current = self.state.borrow(py).current_handle.as_ref().map(|h| h.clone_ref(py));
            if let Some(h) = current {
                let tb = h
                    .get()
                    .state
                    .borrow(py)
                    .source_traceback
                    .as_ref()
                    .map(|t| t.clone_ref(py));
                if let Some(tb) = tb {
                    context.set_item("handle_traceback", tb)?;
                }
            }
        }
        let format_list = py_attr!(py, "traceback", "format_list")?;
        let mut lines = vec![message];
        let keys = context.keys();
        keys.sort()?;
        for key in keys.iter() {
            let k: String = key.str()?.to_string();
            if k == "message" || k == "exception" {
                continue;
            }
            let value = context.get_item(&key)?.unwrap_or_else(|| py.None().into_bound(py));
            let text = if k == "source_traceback" || k == "handle_traceback" {
                let tb: String = PyString::new(py, "")
                    .call_method1("join", (format_list.call1((&value,))?,))?
                    .extract()?;
                let what = if k == "source_traceback" { "Object" } else { "Handle" };
                format!("{what} created at (most recent call last):\n{}", tb.trim_end())
            } else {
                value.repr()?.to_string()
            };
            lines.push(format!("{k}: {text}"));
        }
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", exc_info)?;
        py_attr!(py, "asyncio.log", "logger")?.call_method("error", (lines.join("\n"),), Some(&kwargs))?;
        Ok(())
    }

    pub(super) fn call_exception_handler_impl(slf: &Bound<'_, Self>, context: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let handler = slf
            .get()
            .state
            .borrow(py)
            .exception_handler
            .as_ref()
            .map(|h| h.clone_ref(py));
        let logger = py_attr!(py, "asyncio.log", "logger")?;
        let fatal = |e: &PyErr| e.is_instance_of::<PySystemExit>(py) || e.is_instance_of::<PyKeyboardInterrupt>(py);
        let log_error = |msg: &str| -> PyResult<()> {
            let kwargs = PyDict::new(py);
            kwargs.set_item("exc_info", true)?;
            logger.call_method("error", (msg,), Some(&kwargs))?;
            Ok(())
        };
        match handler {
            None => {
                if let Err(e) = slf.call_method1(intern!(py, "default_exception_handler"), (context,)) {
                    if fatal(&e) {
                        return Err(e);
                    }
                    e.restore(py);
                    // Logged with the exception being handled, as in asyncio.
                    let r = log_error("Exception in default exception handler");
                    PyErr::take(py);
                    r?;
                }
            }
            Some(handler) => {
                if let Err(exc) = Self::run_custom_handler(slf, handler.bind(py), context) {
                    if fatal(&exc) {
                        return Err(exc);
                    }
                    let ctx = PyDict::new(py);
                    ctx.set_item("message", "Unhandled error in exception handler")?;
                    ctx.set_item("exception", exc.into_value(py))?;
                    ctx.set_item("context", context)?;
                    if let Err(e) = slf.call_method1(intern!(py, "default_exception_handler"), (ctx,)) {
                        if fatal(&e) {
                            return Err(e);
                        }
                        e.restore(py);
                        let r = log_error(
                            "Exception in default exception handler while handling an unexpected error in custom exception handler",
                        );
                        PyErr::take(py);
                        r?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Calls a custom exception handler; from Python 3.12 on, as asyncio does, inside
    /// the `contextvars` context of the task, future or handle the error is about
    /// (the first of those keys that has one), so the handler sees what it saw.
    pub(super) fn run_custom_handler(
        slf: &Bound<'_, Self>,
        handler: &Bound<'_, PyAny>,
        context: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        if crate::pyversion::at_least(py, (3, 12, 0)) {
            let mut thing = py.None().into_bound(py);
            for key in [intern!(py, "task"), intern!(py, "future"), intern!(py, "handle")] {
                thing = context.call_method1(intern!(py, "get"), (key,))?;
                if !thing.is_none() {
                    break;
                }
            }
            if !thing.is_none() && thing.hasattr(intern!(py, "get_context"))? {
                let ctx = thing.call_method0(intern!(py, "get_context"))?;
                if !ctx.is_none() && ctx.hasattr(intern!(py, "run"))? {
                    ctx.call_method1(intern!(py, "run"), (handler, slf, context))?;
                    return Ok(());
                }
            }
        }
        handler.call1((slf, context)).map(drop)
    }
}
