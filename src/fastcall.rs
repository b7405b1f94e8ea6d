//! `LoopCore.call_soon` as a plain `METH_FASTCALL | METH_KEYWORDS` C function.
//!
//! asyncio's Task calls `loop.call_soon(step, context=ctx)` once per step, so this is
//! the loop's most called method. PyO3's generated wrapper costs a thread-local
//! update on entry and exit and matches keyword names by their UTF-8 text; here
//! `context` is matched by identity with the interned name first, and the
//! interpreter's own attachment is assumed, as it is for any C method. The argument
//! rules and messages are those of asyncio's `call_soon(callback, *args,
//! context=None)`.

use std::ffi::CStr;
use std::os::raw::c_int;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering as AtomicOrdering};

use pyo3::exceptions::{PySystemError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyTuple, PyType};

use crate::event_loop::LoopCore;

const CALL_SOON_DOC: &CStr = c"call_soon($self, callback, *args, context=None)
--

Arrange for a callback to be called as soon as possible.

Callbacks are called in the order in which they are registered; each is called
exactly once. Positional arguments after the callback are passed to it. Returns a
Handle, which can cancel the callback.";

/// The `context` keyword name that asyncio's C Task passes on every step: a str of its
/// own, not the interned one, so identity with `intern!` misses it. The first such
/// name seen is kept (with a reference, so that its address stays its own) and then
/// recognised by identity.
static SEEN_CONTEXT_NAME: AtomicPtr<ffi::PyObject> = AtomicPtr::new(ptr::null_mut());

/// Whether keyword name `name` is "context"; remembers the first non-interned one.
///
/// # Safety
/// `name` is a live str and the GIL is held.
#[inline]
unsafe fn is_seen_context_name(name: *mut ffi::PyObject) -> bool {
    if name == SEEN_CONTEXT_NAME.load(AtomicOrdering::Relaxed) {
        return true;
    }
    // SAFETY: per the contract.
    unsafe {
        if ffi::PyUnicode_CompareWithASCIIString(name, c"context".as_ptr()) != 0 {
            return false;
        }
        // Only an exact str is kept: a subclass instance would keep its class alive.
        if SEEN_CONTEXT_NAME.load(AtomicOrdering::Relaxed).is_null() && ffi::PyUnicode_CheckExact(name) != 0 {
            // Kept for the life of the process: one small str.
            ffi::Py_INCREF(name);
            SEEN_CONTEXT_NAME.store(name, AtomicOrdering::Relaxed);
        }
    }
    true
}

/// Unpacks the fastcall arguments and schedules the callback.
///
/// # Safety
/// `slf` is an instance of `LoopCore` (the method descriptor checks it), `args` holds
/// `nargs` positional arguments followed by one value per name in `kwnames` (a tuple
/// of str, or NULL), all borrowed for the duration of the call; the GIL is held.
unsafe fn call_soon_impl(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: usize,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: per this function's contract.
    unsafe {
        let mut callback: Option<Bound<'_, PyAny>> = (nargs > 0).then(|| Bound::from_borrowed_ptr(py, *args));
        let mut context: Option<Bound<'_, PyAny>> = None;
        if !kwnames.is_null() {
            let context_name = intern!(py, "context").as_ptr();
            for i in 0..ffi::PyTuple_GET_SIZE(kwnames) {
                let name = ffi::PyTuple_GET_ITEM(kwnames, i);
                let value = Bound::from_borrowed_ptr(py, *args.add(nargs + i as usize));
                if name == context_name || is_seen_context_name(name) {
                    context = Some(value);
                } else if ffi::PyUnicode_CompareWithASCIIString(name, c"callback".as_ptr()) == 0 {
                    if callback.is_some() {
                        return Err(PyTypeError::new_err(
                            "call_soon() got multiple values for argument 'callback'",
                        ));
                    }
                    callback = Some(value);
                } else {
                    let name = Bound::from_borrowed_ptr(py, name);
                    return Err(PyTypeError::new_err(format!(
                        "call_soon() got an unexpected keyword argument '{name}'"
                    )));
                }
            }
        }
        let Some(callback) = callback else {
            return Err(PyTypeError::new_err(
                "call_soon() missing 1 required positional argument: 'callback'",
            ));
        };
        let slf = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>();
        let rest = std::slice::from_raw_parts(args.add(1), nargs.saturating_sub(1));
        let cb_args = if rest.is_empty() {
            PyTuple::empty(py)
        } else {
            PyTuple::new(py, rest.iter().map(|&a| Bound::from_borrowed_ptr(py, a)))?
        };
        let handle = LoopCore::call_soon(&slf, &callback, &cb_args, context)?;
        Ok(handle.into_ptr())
    }
}

unsafe extern "C" fn call_soon_fastcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the interpreter calls a C method with the GIL held, `slf` checked by the
    // method descriptor to be a LoopCore, and the arguments as call_soon_impl expects.
    let py = unsafe { Python::assume_attached() };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: as above; the arguments are passed through unchanged.
        unsafe { call_soon_impl(py, slf, args, nargs as usize, kwnames) }
    }));
    let err = match result {
        Ok(Ok(obj)) => return obj,
        Ok(Err(err)) => err,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            PySystemError::new_err(format!("ferroloop panicked in call_soon: {msg}"))
        }
    };
    err.restore(py);
    ptr::null_mut()
}

/// Puts `call_soon` on the `LoopCore` type.
pub(crate) fn install(ty: &Bound<'_, PyType>) -> PyResult<()> {
    let py = ty.py();
    // The method table entry must outlive the type; it is made once per process.
    let def: &'static mut ffi::PyMethodDef = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: c"call_soon".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: call_soon_fastcall,
        },
        ml_flags: (ffi::METH_FASTCALL | ffi::METH_KEYWORDS) as c_int,
        ml_doc: CALL_SOON_DOC.as_ptr(),
    }));
    // SAFETY: the GIL is held, `ty` is a live type object and `def` lives forever.
    let descr = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))? };
    ty.setattr(intern!(py, "call_soon"), descr)
}
