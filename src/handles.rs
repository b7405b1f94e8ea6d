//! `Handle` and `TimerHandle`: a scheduled callback, its arguments and its context,
//! as returned by `call_soon`, `call_later` and `call_at`, with asyncio's methods and
//! reprs. Running a handle enters its context and calls the callback with vectorcall
//! straight from the argument tuple; an exception goes to the loop's exception handler.

use std::ptr;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyTypeMethods};

use crate::event_loop::LoopCore;
use crate::gil::{py_attr, GilCell};

pub(crate) struct HandleState {
    /// `None` once cancelled (or cleared by the GC).
    pub(crate) callback: Option<Py<PyAny>>,
    pub(crate) args: Option<Py<PyTuple>>,
    /// The `contextvars.Context` the callback runs in.
    pub(crate) context: Option<Py<PyAny>>,
    pub(crate) loop_: Option<Py<LoopCore>>,
    /// Where the handle was made, in debug mode (a list of FrameSummary).
    pub(crate) source_traceback: Option<Py<PyAny>>,
    /// The repr taken at cancel time in debug mode, kept for slow-callback warnings.
    pub(crate) repr: Option<Py<PyAny>>,
    pub(crate) cancelled: bool,
    /// For timers: the handle is in the loop's timer heap.
    pub(crate) scheduled: bool,
    pub(crate) is_timer: bool,
}

#[pyclass(module = "ferroloop._core", subclass, frozen, weakref)]
pub struct Handle {
    pub(crate) state: GilCell<HandleState>,
}

#[pyclass(module = "ferroloop._core", extends = Handle, frozen)]
pub struct TimerHandle {
    pub(crate) when: f64,
}

impl Handle {
    pub(crate) fn new_state(
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Py<PyAny>,
        loop_: Py<LoopCore>,
        source_traceback: Option<Py<PyAny>>,
        is_timer: bool,
    ) -> Handle {
        Handle {
            state: GilCell::new(HandleState {
                callback: Some(callback),
                args: Some(args),
                context: Some(context),
                loop_: Some(loop_),
                source_traceback,
                repr: None,
                cancelled: false,
                scheduled: false,
                is_timer,
            }),
        }
    }

    #[inline]
    pub(crate) fn is_cancelled(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).cancelled
    }

    /// Runs the callback in its context. Returns `Err` only for SystemExit and
    /// KeyboardInterrupt (which stop the loop); anything else goes to the loop's
    /// exception handler.
    pub(crate) fn run(slf: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let (callback, args, context) = {
            let st = slf.get().state.borrow(py);
            if st.cancelled {
                return Ok(());
            }
            match (&st.callback, &st.args, &st.context) {
                (Some(c), Some(a), Some(x)) => (c.clone_ref(py), a.clone_ref(py), x.clone_ref(py)),
                _ => return Ok(()),
            }
        };
        let result = call_in_context(py, &callback, &args, &context);
        match result {
            Ok(()) => Ok(()),
            Err(err) => {
                if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) {
                    return Err(err);
                }
                let source = format_callback_source(py, callback.bind(py), args.bind(py).as_any())?;
                let ctx = PyDict::new(py);
                ctx.set_item("message", format!("Exception in callback {source}"))?;
                ctx.set_item("exception", err.into_value(py))?;
                ctx.set_item("handle", slf)?;
                let (loop_, tb) = {
                    let st = slf.get().state.borrow(py);
                    (
                        st.loop_.as_ref().map(|l| l.clone_ref(py)),
                        st.source_traceback.as_ref().map(|t| t.clone_ref(py)),
                    )
                };
                if let Some(tb) = tb {
                    ctx.set_item("source_traceback", tb)?;
                }
                if let Some(l) = loop_ {
                    l.bind(py)
                        .call_method1(pyo3::intern!(py, "call_exception_handler"), (ctx,))?;
                }
                Ok(())
            }
        }
    }

    pub(crate) fn do_cancel(slf: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let (loop_, is_timer, scheduled) = {
            let st = slf.get().state.borrow(py);
            if st.cancelled {
                return Ok(());
            }
            (st.loop_.as_ref().map(|l| l.clone_ref(py)), st.is_timer, st.scheduled)
        };
        if let Some(l) = &loop_ {
            if is_timer && scheduled {
                l.get().timer_cancelled(py);
            }
        }
        slf.get().state.borrow_mut(py).cancelled = true;
        if loop_.as_ref().is_some_and(|l| l.get().debug(py)) {
            // Keep the description (now saying "cancelled") for the slow-callback warning.
            let repr = slf.repr()?.into_any().unbind();
            slf.get().state.borrow_mut(py).repr = Some(repr);
        }
        let (cb, args) = {
            let mut st = slf.get().state.borrow_mut(py);
            (st.callback.take(), st.args.take())
        };
        // Dropped here, after the borrow ends: a finaliser may re-enter the loop.
        drop((cb, args));
        Ok(())
    }

    fn repr_info(slf: &Bound<'_, Handle>) -> PyResult<Vec<String>> {
        let py = slf.py();
        let mut info = vec![slf.get_type().name()?.to_string()];
        let (cancelled, cb, args, tb) = {
            let st = slf.get().state.borrow(py);
            (
                st.cancelled,
                st.callback.as_ref().map(|c| c.clone_ref(py)),
                st.args.as_ref().map(|a| a.clone_ref(py)),
                st.source_traceback.as_ref().map(|t| t.clone_ref(py)),
            )
        };
        if cancelled {
            info.push("cancelled".into());
        }
        if let Ok(timer) = slf.cast::<TimerHandle>() {
            let when = pyo3::types::PyFloat::new(py, timer.get().when).repr()?;
            info.insert(if cancelled { 2 } else { 1 }, format!("when={when}"));
        }
        if let Some(cb) = cb {
            let args = match args {
                Some(a) => a.into_any(),
                None => py.None(),
            };
            info.push(format_callback_source(py, cb.bind(py), args.bind(py))?);
        }
        if let Some(tb) = tb {
            let tb = tb.bind(py);
            if tb.len()? > 0 {
                let frame = tb.get_item(-1)?;
                info.push(format!(
                    "created at {}:{}",
                    frame.get_item(0)?.str()?,
                    frame.get_item(1)?.str()?
                ));
            }
        }
        Ok(info)
    }
}

/// `context.run(callback, *args)` without building a new tuple.
#[inline]
fn call_in_context(py: Python<'_>, callback: &Py<PyAny>, args: &Py<PyTuple>, context: &Py<PyAny>) -> PyResult<()> {
    // SAFETY: all three objects are alive (we hold references) and the GIL is held.
    // The argument pointer addresses the tuple's own item array, which is immutable
    // and outlives the call; PyContext_Enter/Exit are paired on every path.
    unsafe {
        if ffi::PyContext_Enter(context.as_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
        let tuple = args.as_ptr() as *mut ffi::PyTupleObject;
        let nargs = ffi::PyTuple_GET_SIZE(args.as_ptr());
        let argv = (*tuple).ob_item.as_ptr();
        let res = ffi::PyObject_Vectorcall(callback.as_ptr(), argv, nargs as usize, ptr::null_mut());
        let result = if res.is_null() {
            Err(PyErr::fetch(py))
        } else {
            ffi::Py_DECREF(res);
            Ok(())
        };
        if ffi::PyContext_Exit(context.as_ptr()) < 0 {
            // Exiting a context we entered cannot fail unless the interpreter is broken.
            return Err(PyErr::fetch(py));
        }
        result
    }
}

/// asyncio's own description of a callback: `func(args) at file:line`.
pub(crate) fn format_callback_source(
    py: Python<'_>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyAny>,
) -> PyResult<String> {
    let f = py_attr!(py, "asyncio.format_helpers", "_format_callback_source")?;
    f.call1((callback, args))?.extract()
}

#[pymethods]
impl Handle {
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::do_cancel(slf)
    }

    fn cancelled(&self, py: Python<'_>) -> bool {
        self.is_cancelled(py)
    }

    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.borrow(py).context.as_ref().map(|c| c.clone_ref(py))
    }

    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::run(slf)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.borrow(py).callback.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.state.borrow(py).args.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _cancelled(&self, py: Python<'_>) -> bool {
        self.is_cancelled(py)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.state.borrow(py).loop_.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.borrow(py).source_traceback.as_ref().map(|c| c.clone_ref(py))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if let Some(r) = slf.get().state.borrow(py).repr.as_ref() {
            return Ok(r.clone_ref(py));
        }
        let info = Handle::repr_info(slf)?;
        Ok(PyString::new(py, &format!("<{}>", info.join(" "))).into_any().unbind())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(st) = self.state.try_borrow() {
            visit.call(&st.callback)?;
            visit.call(&st.args)?;
            visit.call(&st.context)?;
            visit.call(&st.loop_)?;
            visit.call(&st.source_traceback)?;
            visit.call(&st.repr)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.state.try_borrow_mut().map(|mut st| {
            (
                st.callback.take(),
                st.args.take(),
                st.context.take(),
                st.loop_.take(),
                st.source_traceback.take(),
                st.repr.take(),
            )
        });
        drop(taken);
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(slf: &Bound<'_, Self>) -> bool {
        slf.as_super().get().state.borrow(slf.py()).scheduled
    }

    fn __hash__(&self) -> u64 {
        self.when.to_bits()
    }

    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: pyo3::basic::CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (self.when, other.get().when);
        let r = match op {
            pyo3::basic::CompareOp::Lt => a < b,
            pyo3::basic::CompareOp::Le => a <= b,
            pyo3::basic::CompareOp::Gt => a > b,
            pyo3::basic::CompareOp::Ge => a >= b,
            pyo3::basic::CompareOp::Eq => std::ptr::eq(self, other.get()) || a == b,
            pyo3::basic::CompareOp::Ne => !(std::ptr::eq(self, other.get()) || a == b),
        };
        Ok(pyo3::types::PyBool::new(py, r).to_owned().into_any().unbind())
    }
}

/// The collector's visit of a handle, installed as `tp_traverse` of `Handle` and
/// `TimerHandle` in place of PyO3's generic one.
///
/// Handles are the objects a busy loop makes most of, and the cyclic collector visits
/// each young one several times; the generic visit walks the base types and guards
/// against re-entering the interpreter through a thread-local on every call, which
/// made it a tenth of the run time of the call_later benchmark. A handle's own fields
/// are all there is to visit here.
unsafe extern "C" fn handle_traverse(
    slf: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut std::os::raw::c_void,
) -> std::os::raw::c_int {
    // SAFETY: the collector calls tp_traverse with the GIL held and a live instance of
    // Handle or of its subclass TimerHandle (the only types this is installed on), so
    // assuming the interpreter is attached, viewing the pointer as a borrowed Handle and
    // reading its frozen contents are sound. Only `visit` is called: no Python code runs,
    // nothing is allocated and no reference count changes.
    unsafe {
        let py = Python::assume_attached();
        let obj = pyo3::Borrowed::from_ptr(py, slf);
        let handle: &Handle = obj.cast_unchecked::<Handle>().get();
        if let Some(st) = handle.state.try_borrow() {
            let fields = [
                st.callback.as_ref().map(|o| o.as_ptr()),
                st.args.as_ref().map(|o| o.as_ptr()),
                st.context.as_ref().map(|o| o.as_ptr()),
                st.loop_.as_ref().map(|o| o.as_ptr()),
                st.source_traceback.as_ref().map(|o| o.as_ptr()),
                st.repr.as_ref().map(|o| o.as_ptr()),
            ];
            for field in fields.into_iter().flatten() {
                let r = visit(field, arg);
                if r != 0 {
                    return r;
                }
            }
        }
        // Instances of heap types keep their type alive, and must say so.
        visit(ffi::Py_TYPE(slf) as *mut ffi::PyObject, arg)
    }
}

pub(crate) fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Handle>()?;
    m.add_class::<TimerHandle>()?;
    let py = m.py();
    for ty in [py.get_type::<Handle>(), py.get_type::<TimerHandle>()] {
        // SAFETY: the type objects are alive (we hold them) and have no instances yet;
        // tp_traverse is only read by the collector, which cannot run concurrently with
        // this write since we hold the GIL. The new function visits a superset of
        // what PyO3's did (the same fields, plus the type).
        unsafe { (*ty.as_type_ptr()).tp_traverse = Some(handle_traverse) };
    }
    Ok(())
}
