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
    /// For timers: the `when` given to `call_at` when it was not a float (an int, say),
    /// which `when()` returns as asyncio does; the heap orders by its float value. Also
    /// kept for a NaN deadline, so that `when()` is one object whose hash (a NaN's is
    /// its identity's) stays the handle's hash, as in asyncio.
    pub(crate) when_given: Option<Py<PyAny>>,
    /// The repr taken at cancel time in debug mode, kept for slow-callback warnings.
    pub(crate) repr: Option<Py<PyAny>>,
    pub(crate) cancelled: bool,
    /// The context is a copy made for this handle alone (no `context=` was given). Such
    /// a context is hidden from the collector while the handle is ([`Handle::untrack`]).
    pub(crate) own_context: bool,
    /// For timers: the handle is in the loop's timer heap.
    pub(crate) scheduled: bool,
    pub(crate) is_timer: bool,
}

impl HandleState {
    /// The context copied for this handle, which [`Handle::untrack`] may have hidden from
    /// the collector. (A context given with `context=` is never untracked, and need not
    /// be a Context at all.)
    fn own_context(&self) -> Option<&Py<PyAny>> {
        self.context.as_ref().filter(|_| self.own_context)
    }

    /// Tracks the handle's own context again: before it is given out or released (a
    /// context must be tracked when it is freed).
    fn track_own_context(&self) {
        if let Some(ctx) = self.own_context() {
            track(ctx.as_ptr());
        }
    }

    /// The Python objects the handle holds: what the collector visits.
    fn objects(&self) -> [Option<&Py<PyAny>>; 7] {
        [
            self.callback.as_ref(),
            self.args.as_ref().map(Py::as_any),
            self.context.as_ref(),
            self.loop_.as_ref().map(Py::as_any),
            self.source_traceback.as_ref(),
            self.repr.as_ref(),
            self.when_given.as_ref(),
        ]
    }

    fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for obj in self.objects() {
            visit.call(obj)?;
        }
        Ok(())
    }
}

impl Drop for HandleState {
    fn drop(&mut self) {
        self.track_own_context();
        // A handle's state is only dropped with the interpreter attached: in the
        // handle's tp_dealloc, or when making the handle object failed. Releasing the
        // fields as Bound skips the thread-local check that dropping a Py makes, once
        // per field of every handle.
        // SAFETY: see above; the GIL is held whenever a HandleState is dropped.
        let py = unsafe { Python::assume_attached() };
        drop((
            self.callback.take().map(|o| o.into_bound(py)),
            self.args.take().map(|o| o.into_bound(py)),
            self.context.take().map(|o| o.into_bound(py)),
            self.loop_.take().map(|o| o.into_bound(py)),
            self.source_traceback.take().map(|o| o.into_bound(py)),
            self.repr.take().map(|o| o.into_bound(py)),
            self.when_given.take().map(|o| o.into_bound(py)),
        ));
    }
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
        (context, own_context): (Py<PyAny>, bool),
        loop_: Py<LoopCore>,
        source_traceback: Option<Py<PyAny>>,
        is_timer: bool,
    ) -> HandleState {
        HandleState {
            callback: Some(callback),
            args: Some(args),
            context: Some(context),
            loop_: Some(loop_),
            source_traceback,
            repr: None,
            when_given: None,
            cancelled: false,
            own_context,
            scheduled: false,
            is_timer,
        }
    }

    /// Hides a handle from the cyclic collector while the loop owns it in its ready
    /// queue or timer heap; the loop's own traverse visits the handle's contents
    /// instead ([`Handle::visit_owned`]).
    ///
    /// A busy loop holds thousands of handles at a time, and the collector would walk
    /// every young one on each generation-0 collection: with `call_soon` in a loop that
    /// was over a third of the run time. A handle that waits in the loop, held by the
    /// loop alone, is reachable only from the loop, so it needs no traversal of its own.
    /// (The loop decides that once the caller has had its chance to keep the handle:
    /// `LoopCore::settle`.)
    ///
    /// The same holds for the copy of the current context that `call_soon` makes for
    /// each callback: only the handle holds it, so it is hidden too (the loop's traverse
    /// visits its contents), and tracked again when the handle is, when `get_context()`
    /// gives it out, and before it is freed (`HandleState::drop`).
    #[inline]
    pub(crate) fn untrack(h: &Py<Handle>) {
        // SAFETY: `h` is a live instance of a GC type and the GIL is held (we hold a
        // `Py`, only touched with the GIL). Untracking an untracked object is a no-op.
        unsafe { ffi::PyObject_GC_UnTrack(h.as_ptr().cast()) }
        if let Some(st) = h.get().state.try_borrow() {
            if let Some(ctx) = st.own_context() {
                // SAFETY: as above; the context is a live Context only this handle holds.
                unsafe { ffi::PyObject_GC_UnTrack(ctx.as_ptr().cast()) }
            }
        }
    }

    /// Gives a handle back to the collector when it leaves the loop's queue or heap and
    /// someone else still holds it. One that only the loop held is about to be freed.
    #[inline]
    pub(crate) fn release(h: &Py<Handle>) {
        // SAFETY: `h` is live (we hold a reference) and the GIL is held.
        if unsafe { ffi::Py_REFCNT(h.as_ptr()) } > 1 {
            Self::track(h.as_ptr());
        }
    }

    /// Tracks a handle that is about to be given to code that may keep it.
    #[inline]
    pub(crate) fn ensure_tracked(h: &Bound<'_, Handle>) {
        Self::track(h.as_ptr());
    }

    /// Tracks a handle and its context.
    #[inline]
    fn track(p: *mut ffi::PyObject) {
        track(p);
        // SAFETY: callers pass a live handle and hold the GIL.
        let h = unsafe { pyo3::Borrowed::from_ptr(Python::assume_attached(), p).cast_unchecked::<Handle>() };
        if let Some(st) = h.get().state.try_borrow() {
            st.track_own_context();
        }
    }

    /// The loop's visit of a handle it holds: the handle itself when the collector
    /// tracks it, else (while it waits untracked in the queue or heap, held by the loop
    /// alone) its contents, which only the loop can reach.
    pub(crate) fn visit_owned(h: &Py<Handle>, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: `h` is live (the loop holds it); traverse runs with the GIL held.
        if unsafe { ffi::PyObject_GC_IsTracked(h.as_ptr()) } != 0 {
            return visit.call(h);
        }
        // SAFETY: `h` is live and the GIL is held.
        if unsafe { ffi::Py_REFCNT(h.as_ptr()) } != 1 {
            // Only a handle the loop alone holds is untracked (`LoopCore::settle`); should
            // another holder exist, what the handle holds is reachable through a
            // reference the collector cannot see, and must count as held from outside.
            return Ok(());
        }
        match h.get().state.try_borrow() {
            Some(st) => {
                st.visit(visit)?;
                let Some(ctx) = st.own_context() else { return Ok(()) };
                let mut fwd = Forward { visit, err: None };
                // SAFETY: the context is live (the handle holds it), `fwd` outlives the
                // call and the GIL is held (traverse runs with it).
                let _ = unsafe {
                    traverse_untracked(ctx.as_ptr(), forward_visit, (&mut fwd as *mut Forward<'_, '_>).cast())
                };
                fwd.err.map_or(Ok(()), Err)
            }
            None => Ok(()),
        }
    }

    #[inline]
    pub(crate) fn is_cancelled(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).cancelled
    }

    /// After the loop has run a timer: the callback and its arguments are released, as
    /// a cancelled timer's are, since a fired timer never runs again (uvloop's timers do
    /// the same; asyncio's keep them). Kept, they would stay reachable from the handle
    /// for as long as anyone holds it: an object that keeps its own timer, whose
    /// callback is one of its methods (uvicorn's keep-alive timer, stored on the
    /// connection's protocol), would be left by every such timer in a reference cycle
    /// with everything it holds, for the collector, whose full collections come rarely.
    /// A timer held by the loop alone is freed right after, with all it holds.
    pub(crate) fn release_fired_timer(slf: &Bound<'_, Handle>) {
        // SAFETY: `slf` is live (borrowed from a reference we hold) and the GIL is held.
        if unsafe { ffi::Py_REFCNT(slf.as_ptr()) } <= 1 {
            return;
        }
        let taken = {
            let mut st = slf.get().state.borrow_mut(slf.py());
            if !st.is_timer {
                return;
            }
            (st.callback.take(), st.args.take())
        };
        // Dropped here, after the borrow ends: a finaliser may re-enter the loop.
        drop(taken);
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
                // Bound clones: the callback may cancel its own handle, which drops
                // these fields, and a Bound is released without PyO3's thread-local
                // check that dropping a Py makes.
                (Some(c), Some(a), Some(x)) => (c.bind(py).clone(), a.bind(py).clone(), x.bind(py).clone()),
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
                // The handler may keep the context, and the handle in it.
                Handle::ensure_tracked(slf);
                let source = format_callback_source(py, &callback, args.as_any())?;
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
        let (cancelled, cb, args, tb, when_given) = {
            let st = slf.get().state.borrow(py);
            (
                st.cancelled,
                st.callback.as_ref().map(|c| c.clone_ref(py)),
                st.args.as_ref().map(|a| a.clone_ref(py)),
                st.source_traceback.as_ref().map(|t| t.clone_ref(py)),
                st.when_given.as_ref().map(|w| w.clone_ref(py)),
            )
        };
        if cancelled {
            info.push("cancelled".into());
        }
        if let Ok(timer) = slf.cast::<TimerHandle>() {
            // asyncio formats `when` with str(), as given.
            let when = match when_given {
                Some(w) => w.bind(py).str()?,
                None => pyo3::types::PyFloat::new(py, timer.get().when).str()?,
            };
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
fn call_in_context(
    py: Python<'_>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    context: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: `context` is alive (we hold a reference) and the GIL is held.
    if unsafe { ffi::PyContext_CheckExact(context.as_ptr()) } == 0 {
        // Anything else given as context= is used as asyncio uses it: its run() method
        // is called (an object without one fails with asyncio's AttributeError).
        let mut call_args = Vec::with_capacity(args.len() + 1);
        call_args.push(callback.clone());
        call_args.extend(args.iter());
        context.call_method1(pyo3::intern!(py, "run"), PyTuple::new(py, call_args)?)?;
        return Ok(());
    }
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
        let cb = callback.as_ptr();
        let tp = ffi::Py_TYPE(cb);
        let res = match (*tp).tp_call {
            // A callable without vectorcall, called with no arguments (the C Task's
            // step and wakeup wrappers, once per step): its tp_call takes the argument
            // tuple as it is, which PyObject_Vectorcall would first rebuild. A result
            // with an exception set means a broken callable (PyObject_Vectorcall would
            // make that a SystemError); the exception set is what is reported.
            Some(call) if nargs == 0 && ffi::PyType_HasFeature(tp, ffi::Py_TPFLAGS_HAVE_VECTORCALL) == 0 => {
                let res = call(cb, args.as_ptr(), ptr::null_mut());
                if !res.is_null() && !ffi::PyErr_Occurred().is_null() {
                    ffi::Py_DECREF(res);
                    ptr::null_mut()
                } else {
                    res
                }
            }
            _ => ffi::PyObject_Vectorcall(cb, argv, nargs as usize, ptr::null_mut()),
        };
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
        let st = self.state.borrow(py);
        // Whoever asks may keep it: the collector must see it again.
        st.track_own_context();
        st.context.as_ref().map(|c| c.clone_ref(py))
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
        match self.state.try_borrow() {
            Some(st) => st.visit(&visit),
            None => Ok(()),
        }
    }

    fn __clear__(&self) {
        let taken = self.state.try_borrow_mut().map(|mut st| {
            st.track_own_context();
            (
                st.callback.take(),
                st.args.take(),
                st.context.take(),
                st.loop_.take(),
                st.source_traceback.take(),
                st.repr.take(),
                st.when_given.take(),
            )
        });
        drop(taken);
    }
}

impl TimerHandle {
    /// The deadline as `call_at` was given it (asyncio keeps what it was given).
    fn when_as_given(slf: &Bound<'_, Self>) -> Py<PyAny> {
        let py = slf.py();
        let given = slf
            .as_super()
            .get()
            .state
            .borrow(py)
            .when_given
            .as_ref()
            .map(|w| w.clone_ref(py));
        given.unwrap_or_else(|| pyo3::types::PyFloat::new(py, slf.get().when).into_any().unbind())
    }
}

#[pymethods]
impl TimerHandle {
    fn when(slf: &Bound<'_, Self>) -> Py<PyAny> {
        Self::when_as_given(slf)
    }

    #[getter]
    fn _when(slf: &Bound<'_, Self>) -> Py<PyAny> {
        Self::when_as_given(slf)
    }

    #[getter]
    fn _scheduled(slf: &Bound<'_, Self>) -> bool {
        slf.as_super().get().state.borrow(slf.py()).scheduled
    }

    fn __hash__(slf: &Bound<'_, Self>) -> PyResult<isize> {
        // asyncio's: hash(self._when).
        Self::when_as_given(slf).bind(slf.py()).hash()
    }

    /// asyncio's comparisons: `<` and `>` by deadline; `==` when the deadline, callback,
    /// arguments and cancelled state are all equal (so a handle with a NaN deadline is
    /// not equal to itself); `<=` and `>=` as `<` or `==`, `>` or `==`.
    fn __richcmp__(slf: &Bound<'_, Self>, other: &Bound<'_, PyAny>, op: pyo3::basic::CompareOp) -> PyResult<Py<PyAny>> {
        use pyo3::basic::CompareOp;
        let py = other.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let eq = || -> PyResult<bool> {
            if a != b {
                return Ok(false);
            }
            let parts = |h: &Bound<'_, TimerHandle>| {
                let st = h.as_super().get().state.borrow(py);
                let cb = st.callback.as_ref().map(|c| c.clone_ref(py).into_any());
                let args = st.args.as_ref().map(|a| a.clone_ref(py).into_any());
                (cb, args, st.cancelled)
            };
            let (cb_a, args_a, cancelled_a) = parts(slf);
            let (cb_b, args_b, cancelled_b) = parts(other);
            let same = |x: Option<Py<PyAny>>, y: Option<Py<PyAny>>| -> PyResult<bool> {
                x.into_pyobject(py)?.eq(y.into_pyobject(py)?)
            };
            Ok(same(cb_a, cb_b)? && same(args_a, args_b)? && cancelled_a == cancelled_b)
        };
        let r = match op {
            CompareOp::Lt => a < b,
            CompareOp::Gt => a > b,
            CompareOp::Le => a < b || eq()?,
            CompareOp::Ge => a > b || eq()?,
            CompareOp::Eq => eq()?,
            CompareOp::Ne => !eq()?,
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
            for field in st.objects().into_iter().flatten() {
                let r = visit(field.as_ptr(), arg);
                if r != 0 {
                    return r;
                }
            }
            if let Some(ctx) = st.own_context() {
                if let Err(r) = traverse_untracked(ctx.as_ptr(), visit, arg) {
                    return r;
                }
            }
        }
        // Instances of heap types keep their type alive, and must say so.
        visit(ffi::Py_TYPE(slf) as *mut ffi::PyObject, arg)
    }
}

/// Tracks a live GC object if it is not tracked, as `PyObject_GC_Track` requires.
#[inline]
fn track(p: *mut ffi::PyObject) {
    // SAFETY: callers pass a live object of a GC type and hold the GIL.
    unsafe {
        if ffi::PyObject_GC_IsTracked(p) == 0 {
            ffi::PyObject_GC_Track(p.cast());
        }
    }
}

/// Visits what an untracked context holds, since the collector cannot see it through
/// the context itself; a tracked one is visited as any other field is.
///
/// Only a context that its handle alone holds is seen through: its contents are then
/// exactly as reachable as the handle. One with another holder (which the collector
/// could not see) is left alone, so its contents count as referenced from outside: kept
/// alive, never cleared while something can still reach them.
///
/// # Safety
/// `ctx` is a live object, `visit` and `arg` a pair the collector (or
/// [`forward_visit`]) accepts, and the GIL is held.
unsafe fn traverse_untracked(
    ctx: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut std::os::raw::c_void,
) -> Result<(), std::os::raw::c_int> {
    // SAFETY: per the contract; tp_traverse only calls `visit` on the object's fields.
    unsafe {
        if ffi::PyObject_GC_IsTracked(ctx) != 0 || ffi::Py_REFCNT(ctx) != 1 {
            return Ok(());
        }
        match (*ffi::Py_TYPE(ctx)).tp_traverse {
            Some(traverse) => match traverse(ctx, visit, arg) {
                0 => Ok(()),
                r => Err(r),
            },
            None => Ok(()),
        }
    }
}

/// A `PyVisit` seen through a C `visitproc` ([`forward_visit`]), and the first error.
struct Forward<'a, 'b> {
    visit: &'a PyVisit<'b>,
    err: Option<PyTraverseError>,
}

/// A `visitproc` that hands each object to the `PyVisit` of the `Forward` that `arg`
/// points to, and stops at the first error.
unsafe extern "C" fn forward_visit(obj: *mut ffi::PyObject, arg: *mut std::os::raw::c_void) -> std::os::raw::c_int {
    // SAFETY: `arg` is the `Forward` made by `Handle::visit_owned`, alive and not
    // otherwise borrowed for this traverse; `obj` is a live object the context holds; the
    // GIL is held. The object is borrowed for the call, so no reference count changes.
    unsafe {
        let fwd = &mut *arg.cast::<Forward<'_, '_>>();
        let obj = pyo3::Borrowed::from_ptr(Python::assume_attached(), obj);
        match fwd.visit.call(obj.as_unbound()) {
            Ok(()) => 0,
            Err(e) => {
                fwd.err = Some(e);
                1
            }
        }
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
    crate::handle_mem::install(py)?;
    // Whether handles are made in place (true on the interpreters that path was
    // checked for), for tests and for anyone asking why one interpreter is slower.
    m.add("_handles_in_place", crate::handle_mem::in_place(py))
}
