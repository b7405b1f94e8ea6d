//! The loop object's Rust base: `LoopCore`. It owns the ready queue, the timer heap,
//! the poller and the fd watches, and runs asyncio's `_run_once` step: compute the
//! poll timeout, release the GIL only around a blocking poll, move due timers to the
//! ready queue, then run exactly the handles that were ready when the step began.
//!
//! The Python class `ferroloop.Loop` subclasses this and `asyncio.AbstractEventLoop`;
//! the coroutine-shaped cold paths (shutdown_asyncgens, shutdown_default_executor)
//! live there.
//!
//! This file holds the loop's state, its checks, and the Python methods (most of them
//! thin); the concerns live beside it: `run_step.rs` (the step and the ready queue),
//! `fd_watches.rs` (readers, writers and transport-owned fds), `scheduling.rs`
//! (handles, timers, `call_soon`) and `exceptions.rs` (the exception handlers).

mod exceptions;
mod fd_watches;
mod run_step;
mod scheduling;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::AtomicBool;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit, PyTypeError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyTuple, PyWeakrefReference};

use crate::gil::{py_attr, GilCell};
use crate::handles::{Handle, TimerHandle};
use crate::reactor::clock;
use crate::reactor::fd_map::FdMap;
use crate::reactor::poller::{Events, Interest, Poller};
use crate::reactor::read_buf::ReadBuffer;
use crate::reactor::timers::TimerHeap;
use crate::reactor::waker::Waker;
use fd_watches::FdWatch;
use run_step::{release_all, Ready};

/// asyncio's `constants.DEBUG_STACK_DEPTH`.
const DEBUG_STACK_DEPTH: i32 = 10;
/// The poller token of the waker; fds use their own number as token.
const WAKER_TOKEN: u64 = u64::MAX;

/// The poller and the waker; `None` once the loop is closed.
struct Io {
    poller: Poller,
    waker: Waker,
}

impl LoopState {
    pub(crate) fn closed_flag(&self) -> bool {
        self.closed
    }
}

pub(crate) struct LoopState {
    /// Handles to run in the next step, in call order.
    ready: VecDeque<Ready>,
    /// Timers (TimerHandle, held as their Handle base) waiting for their deadline.
    timers: TimerHeap<Py<Handle>>,
    /// How many timers in `timers` are cancelled but not yet removed.
    timer_cancelled: usize,
    /// fd -> its reader and writer; every key is registered with the poller.
    fds: FdMap<FdWatch>,
    /// fd -> a weak reference to the transport that owns it, until its connection is
    /// lost; `add_reader` and friends refuse these fds, as asyncio does. Weak, as
    /// asyncio's: an unreferenced transport that is not reading must be collectable.
    transports: FdMap<Py<PyWeakrefReference>>,
    stopping: bool,
    closed: bool,
    /// The thread running the loop (pthread_self, as `threading.get_ident()`).
    thread_id: Option<u64>,
    debug: bool,
    slow_callback_duration: f64,
    exception_handler: Option<Py<PyAny>>,
    task_factory: Option<Py<PyAny>>,
    /// The handle being run, in debug mode only.
    current_handle: Option<Py<Handle>>,
    /// The handle scheduled last, still tracked by the collector: it was just returned
    /// to its caller, who may keep it. It is settled ([`LoopCore::settle`]) when the next
    /// one is scheduled or the next step starts: hidden from the collector if only the
    /// loop holds it by then, left tracked otherwise.
    last_scheduled: Option<Py<Handle>>,
    default_executor: Option<Py<PyAny>>,
    executor_shutdown_called: bool,
    asyncgens_shutdown_called: bool,
    /// The coroutine origin tracking depth to restore, while debug tracking is on.
    saved_tracking_depth: Option<i32>,
}

#[pyclass(module = "ferroloop._core", subclass, frozen)]
pub struct LoopCore {
    pub(crate) state: GilCell<LoopState>,
    io: GilCell<Option<Io>>,
    /// Reused across polls; touched only by the loop thread.
    events: GilCell<Events>,
    /// Transports receive into this buffer, shared by all of them, then copy out
    /// exactly what arrived.
    pub(crate) read_buf: GilCell<ReadBuffer>,
    /// True while the loop thread may be blocked in poll with the GIL released:
    /// `call_soon_threadsafe` must then wake it.
    polling: AtomicBool,
}

/// The `asyncio.events` module. Its running-loop functions are looked up on every
/// run, not cached, so that code which swaps them (as CPython's tests do) is obeyed.
fn asyncio_events(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    py.import(intern!(py, "asyncio.events"))
}

/// Whether `create_task` passes its keyword arguments through to the task factory
/// and `asyncio.Task` (asyncio 3.13.3 and later) rather than taking only `name` and
/// `context`.
fn task_kwargs_pass_through(py: Python<'_>) -> bool {
    crate::pyversion::at_least(py, (3, 13, 3))
}

fn thread_ident() -> u64 {
    // SAFETY: pthread_self(3) always succeeds.
    unsafe { libc::pthread_self() as u64 }
}

fn os_error(err: std::io::Error) -> PyErr {
    if crate::reactor::fork::is_inherited(&err) {
        return PyRuntimeError::new_err(err.to_string());
    }
    PyOSError::new_err((err.raw_os_error().unwrap_or(0), err.to_string()))
}

/// asyncio's debug mode switch: `-X dev`, or PYTHONASYNCIODEBUG unless `-E`.
fn debug_mode_from_environment(py: Python<'_>) -> PyResult<bool> {
    let flags = py.import("sys")?.getattr("flags")?;
    if flags.getattr("dev_mode")?.is_truthy()? {
        return Ok(true);
    }
    if flags.getattr("ignore_environment")?.is_truthy()? {
        return Ok(false);
    }
    Ok(std::env::var_os("PYTHONASYNCIODEBUG").is_some_and(|v| !v.is_empty()))
}

impl LoopCore {
    pub(crate) fn closed(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closed
    }

    #[inline]
    pub(crate) fn debug(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).debug
    }

    /// A timer that is in the heap was cancelled.
    pub(crate) fn timer_cancelled(&self, py: Python<'_>) {
        self.state.borrow_mut(py).timer_cancelled += 1;
    }

    fn check_closed(&self, py: Python<'_>) -> PyResult<()> {
        if self.state.borrow(py).closed {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        Ok(())
    }

    /// A loop inherited across fork() cannot run in the child: its poller and waker are
    /// the parent's (`reactor::fork`).
    fn check_inherited(&self, py: Python<'_>) -> PyResult<()> {
        match self.io.borrow(py).as_ref() {
            Some(io) if io.poller.inherited() => Err(os_error(crate::reactor::fork::inherited_error())),
            _ => Ok(()),
        }
    }

    fn check_running(&self, py: Python<'_>) -> PyResult<()> {
        if self.state.borrow(py).thread_id.is_some() {
            return Err(PyRuntimeError::new_err("This event loop is already running"));
        }
        if !asyncio_events(py)?
            .getattr(intern!(py, "_get_running_loop"))?
            .call0()?
            .is_none()
        {
            return Err(PyRuntimeError::new_err(
                "Cannot run the event loop while another loop is running",
            ));
        }
        Ok(())
    }

    /// Debug mode: only the loop's own thread may call non-thread-safe methods.
    fn check_thread(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(tid) = self.state.borrow(py).thread_id {
            if tid != thread_ident() {
                return Err(PyRuntimeError::new_err(
                    "Non-thread-safe operation invoked on an event loop other than the current one",
                ));
            }
        }
        Ok(())
    }

    fn set_coroutine_origin_tracking(&self, py: Python<'_>, enabled: bool) -> PyResult<()> {
        let saved = self.state.borrow(py).saved_tracking_depth;
        if enabled == saved.is_some() {
            return Ok(());
        }
        let sys = py.import("sys")?;
        if enabled {
            let depth: i32 = sys.call_method0("get_coroutine_origin_tracking_depth")?.extract()?;
            sys.call_method1("set_coroutine_origin_tracking_depth", (DEBUG_STACK_DEPTH,))?;
            self.state.borrow_mut(py).saved_tracking_depth = Some(depth);
        } else {
            sys.call_method1("set_coroutine_origin_tracking_depth", (saved.unwrap_or(0),))?;
            self.state.borrow_mut(py).saved_tracking_depth = None;
        }
        Ok(())
    }
}

#[pyfunction]
fn _run_until_complete_cb(fut: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = fut.py();
    if !fut.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
        let exc = fut.call_method0(intern!(py, "exception"))?;
        if exc.is_instance_of::<PySystemExit>() || exc.is_instance_of::<PyKeyboardInterrupt>() {
            // run_forever() is already unwinding; no need to stop it.
            return Ok(());
        }
    }
    fut.call_method0(intern!(py, "get_loop"))?
        .call_method0(intern!(py, "stop"))?;
    Ok(())
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(py: Python<'_>, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let poller = Poller::new().map_err(os_error)?;
        let waker = Waker::new().map_err(os_error)?;
        poller
            .register(waker.as_raw_fd(), Interest::READ, WAKER_TOKEN)
            .map_err(os_error)?;
        Ok(LoopCore {
            state: GilCell::new(LoopState {
                ready: VecDeque::new(),
                timers: TimerHeap::default(),
                timer_cancelled: 0,
                fds: FdMap::default(),
                transports: FdMap::default(),
                stopping: false,
                closed: false,
                thread_id: None,
                debug: debug_mode_from_environment(py)?,
                slow_callback_duration: 0.1,
                exception_handler: None,
                task_factory: None,
                current_handle: None,
                last_scheduled: None,
                default_executor: None,
                executor_shutdown_called: false,
                asyncgens_shutdown_called: false,
                saved_tracking_depth: None,
            }),
            io: GilCell::new(Some(Io { poller, waker })),
            events: GilCell::new(Events::with_capacity(256)),
            read_buf: GilCell::new(ReadBuffer::new(crate::transports::stream::MAX_READ)),
            polling: AtomicBool::new(false),
        })
    }

    // ---- running ----

    fn run_forever(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed(py)?;
        this.check_inherited(py)?;
        this.check_running(py)?;
        let debug = this.debug(py);
        this.set_coroutine_origin_tracking(py, debug)?;
        let sys = py.import("sys")?;
        let old_hooks = sys.call_method0(intern!(py, "get_asyncgen_hooks"))?;
        let set_running = asyncio_events(py)?.getattr(intern!(py, "_set_running_loop"))?;
        this.state.borrow_mut(py).thread_id = Some(thread_ident());
        let result = (|| {
            let kwargs = PyDict::new(py);
            kwargs.set_item("firstiter", slf.getattr(intern!(py, "_asyncgen_firstiter_hook"))?)?;
            kwargs.set_item("finalizer", slf.getattr(intern!(py, "_asyncgen_finalizer_hook"))?)?;
            sys.call_method(intern!(py, "set_asyncgen_hooks"), (), Some(&kwargs))?;
            set_running.call1((slf,))?;
            Self::run_forever_inner(slf)
        })();
        {
            let mut st = this.state.borrow_mut(py);
            st.stopping = false;
            st.thread_id = None;
        }
        let cleanup = (|| {
            set_running.call1((py.None(),))?;
            this.set_coroutine_origin_tracking(py, false)?;
            sys.call_method1(intern!(py, "set_asyncgen_hooks"), old_hooks.cast::<PyTuple>()?)?;
            Ok::<(), PyErr>(())
        })();
        result.and(cleanup)
    }

    fn run_until_complete(slf: &Bound<'_, Self>, future: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed(py)?;
        this.check_inherited(py)?;
        this.check_running(py)?;
        let new_task = !py_attr!(py, "asyncio", "isfuture")?.call1((future,))?.is_truthy()?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("loop", slf)?;
        let future = py_attr!(py, "asyncio", "ensure_future")?.call((future,), Some(&kwargs))?;
        if new_task {
            // An exception is raised if it does not complete: no "destroyed pending" log.
            future.setattr(intern!(py, "_log_destroy_pending"), false)?;
        }
        let done_cb = wrap_pyfunction!(_run_until_complete_cb, py)?;
        future.call_method1(intern!(py, "add_done_callback"), (&done_cb,))?;
        let result = Self::run_forever(slf);
        if result.is_err()
            && new_task
            && future.call_method0(intern!(py, "done"))?.is_truthy()?
            && !future.call_method0(intern!(py, "cancelled"))?.is_truthy()?
        {
            // Consume the exception so it is not logged: the caller gets it raised.
            let _ = future.call_method0(intern!(py, "exception"));
        }
        future.call_method1(intern!(py, "remove_done_callback"), (&done_cb,))?;
        result?;
        if !future.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Err(PyRuntimeError::new_err("Event loop stopped before Future completed."));
        }
        Ok(future.call_method0(intern!(py, "result"))?.unbind())
    }

    fn stop(&self, py: Python<'_>) {
        self.state.borrow_mut(py).stopping = true;
    }

    fn is_running(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).thread_id.is_some()
    }

    fn is_closed(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closed
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.is_running(py) {
            return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
        }
        let (debug, closed) = {
            let st = this.state.borrow(py);
            (st.debug, st.closed)
        };
        if closed {
            return Ok(());
        }
        if debug {
            py_attr!(py, "asyncio.log", "logger")?.call_method1(intern!(py, "debug"), ("Close %r", slf))?;
        }
        let (last, ready, timers, fds, transports, executor) = {
            let mut st = this.state.borrow_mut(py);
            st.closed = true;
            st.executor_shutdown_called = true;
            (
                st.last_scheduled.take(),
                std::mem::take(&mut st.ready),
                st.timers.drain(),
                std::mem::take(&mut st.fds),
                std::mem::take(&mut st.transports),
                st.default_executor.take(),
            )
        };
        release_all(&ready, &timers);
        let io = this.io.borrow_mut(py).take();
        // Dropping closes the epoll fd and the eventfd.
        drop(io);
        drop((last, ready, timers, fds, transports));
        if let Some(executor) = executor {
            let kwargs = PyDict::new(py);
            kwargs.set_item("wait", false)?;
            executor.bind(py).call_method("shutdown", (), Some(&kwargs))?;
        }
        Ok(())
    }

    // ---- scheduling ----

    fn time(&self) -> f64 {
        clock::monotonic()
    }

    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed(py)?;
        let debug = this.debug(py);
        if debug {
            Self::check_callback(callback, "call_soon_threadsafe")?;
        }
        let handle = Self::new_handle(slf, callback, args, context, debug)?;
        this.push_ready(py, handle.clone_ref(py), true);
        Ok(handle)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let when = clock::monotonic() + delay.extract::<f64>()?;
        // A NaN deadline is kept as one float object (see `HandleState::when_given`).
        let given = when.is_nan().then(|| PyFloat::new(slf.py(), when).into_any().unbind());
        Self::schedule_timer(slf, when, given, callback, args, context, "call_at")
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let when_obj = when;
        let when: f64 = when.extract()?;
        // A NaN float is kept too (see `HandleState::when_given`).
        let given = (!when_obj.is_exact_instance_of::<PyFloat>() || when.is_nan()).then(|| when_obj.clone().unbind());
        Self::schedule_timer(slf, when, given, callback, args, context, "call_at")
    }

    // ---- futures and tasks ----

    fn create_future(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "loop"), slf)?;
        Ok(py_attr!(py, "asyncio", "Future")?.call((), Some(&kwargs))?.unbind())
    }

    /// `create_task(coro, *, name=None, context=None)`, and from Python 3.13.3 on
    /// `create_task(coro, **kwargs)`: the keyword arguments go to the task factory, or
    /// to `asyncio.Task` (`eager_start` among them), as that version's asyncio passes
    /// them.
    #[pyo3(signature = (coro, **kwargs))]
    fn create_task(
        slf: &Bound<'_, Self>,
        coro: &Bound<'_, PyAny>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed(py)?;
        let factory = this.state.borrow(py).task_factory.as_ref().map(|f| f.clone_ref(py));
        if task_kwargs_pass_through(py) {
            return match factory {
                Some(factory) => Ok(factory.bind(py).call((slf, coro), kwargs)?.unbind()),
                None => {
                    let all = match kwargs {
                        Some(k) => {
                            if k.contains(intern!(py, "loop"))? {
                                return Err(PyTypeError::new_err(
                                    "create_task() got multiple values for keyword argument 'loop'",
                                ));
                            }
                            k.copy()?
                        }
                        None => PyDict::new(py),
                    };
                    all.set_item(intern!(py, "loop"), slf)?;
                    Ok(py_attr!(py, "asyncio", "Task")?.call((coro,), Some(&all))?.unbind())
                }
            };
        }
        let (mut name, mut context) = (None, None);
        if let Some(k) = kwargs {
            for (key, value) in k.iter() {
                match key.extract::<&str>()? {
                    "name" => name = Some(value),
                    "context" => context = Some(value),
                    other => {
                        return Err(PyTypeError::new_err(format!(
                            "create_task() got an unexpected keyword argument '{other}'"
                        )))
                    }
                }
            }
        }
        let name = name.filter(|n| !n.is_none());
        let context = context.filter(|c| !c.is_none());
        match factory {
            None => {
                let kwargs = PyDict::new(py);
                kwargs.set_item(intern!(py, "loop"), slf)?;
                if let Some(n) = &name {
                    kwargs.set_item(intern!(py, "name"), n)?;
                }
                if let Some(c) = &context {
                    kwargs.set_item(intern!(py, "context"), c)?;
                }
                let task = py_attr!(py, "asyncio", "Task")?.call((coro,), Some(&kwargs))?;
                Ok(task.unbind())
            }
            Some(factory) => {
                let task = match &context {
                    None => factory.bind(py).call1((slf, coro))?,
                    Some(c) => {
                        let kwargs = PyDict::new(py);
                        kwargs.set_item(intern!(py, "context"), c)?;
                        factory.bind(py).call((slf, coro), Some(&kwargs))?
                    }
                };
                if let Some(n) = &name {
                    if let Ok(set_name) = task.getattr(intern!(py, "set_name")) {
                        set_name.call1((n,))?;
                    }
                }
                Ok(task.unbind())
            }
        }
    }

    fn set_task_factory(&self, py: Python<'_>, factory: &Bound<'_, PyAny>) -> PyResult<()> {
        if !factory.is_none() && !factory.is_callable() {
            return Err(PyTypeError::new_err("task factory must be a callable or None"));
        }
        let new = if factory.is_none() {
            None
        } else {
            Some(factory.clone().unbind())
        };
        let old = std::mem::replace(&mut self.state.borrow_mut(py).task_factory, new);
        drop(old);
        Ok(())
    }

    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.borrow(py).task_factory.as_ref().map(|f| f.clone_ref(py))
    }

    // ---- file descriptors ----

    #[pyo3(signature = (fd, callback, *args))]
    fn add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::watch(slf, fd, callback, args, true).map(drop)
    }

    /// `add_reader` that returns the Handle: cancelled when another reader replaces it.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::watch(slf, fd, callback, args, true)
    }

    /// `add_writer` that returns the Handle: cancelled when another writer replaces it.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::watch(slf, fd, callback, args, false)
    }

    fn remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::unwatch_py(slf, fd, true)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::watch(slf, fd, callback, args, false).map(drop)
    }

    fn remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::unwatch_py(slf, fd, false)
    }

    /// For `loop.sendfile()`, which watches a transport's socket itself while it sends
    /// (asyncio's `del loop._transports[fd]`): `fd` is no longer recorded as owned by
    /// `transport`, so that the watch functions take it.
    fn _release_transport_fd(&self, py: Python<'_>, fd: RawFd, transport: &Bound<'_, PyAny>) {
        self.unregister_transport(py, fd, transport);
    }

    /// Records `transport` as the owner of `fd` again (asyncio's `loop._transports[fd] = t`).
    fn _claim_transport_fd(&self, py: Python<'_>, fd: RawFd, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        self.register_transport(py, fd, transport)
    }

    // ---- executors ----

    #[pyo3(signature = (executor, func, *args))]
    fn run_in_executor(
        slf: &Bound<'_, Self>,
        executor: &Bound<'_, PyAny>,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed(py)?;
        if this.debug(py) {
            Self::check_callback(func, "run_in_executor")?;
        }
        let executor = if executor.is_none() {
            let (current, shut) = {
                let st = this.state.borrow(py);
                (
                    st.default_executor.as_ref().map(|e| e.clone_ref(py)),
                    st.executor_shutdown_called,
                )
            };
            if shut {
                return Err(PyRuntimeError::new_err("Executor shutdown has been called"));
            }
            match current {
                Some(e) => e.into_bound(py),
                None => {
                    let kwargs = PyDict::new(py);
                    kwargs.set_item("thread_name_prefix", "asyncio")?;
                    let e = py_attr!(py, "concurrent.futures", "ThreadPoolExecutor")?.call((), Some(&kwargs))?;
                    this.state.borrow_mut(py).default_executor = Some(e.clone().unbind());
                    e
                }
            }
        } else {
            executor.clone()
        };
        let mut submit_args = vec![func.clone()];
        submit_args.extend(args.iter());
        let cfut = executor.call_method1(intern!(py, "submit"), PyTuple::new(py, submit_args)?)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("loop", slf)?;
        Ok(py_attr!(py, "asyncio", "wrap_future")?
            .call((cfut,), Some(&kwargs))?
            .unbind())
    }

    fn set_default_executor(&self, py: Python<'_>, executor: &Bound<'_, PyAny>) -> PyResult<()> {
        if !executor.is_instance(py_attr!(py, "concurrent.futures", "ThreadPoolExecutor")?)? {
            return Err(PyTypeError::new_err("executor must be ThreadPoolExecutor instance"));
        }
        let old = self
            .state
            .borrow_mut(py)
            .default_executor
            .replace(executor.clone().unbind());
        drop(old);
        Ok(())
    }

    #[getter]
    fn _default_executor(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.borrow(py).default_executor.as_ref().map(|e| e.clone_ref(py))
    }

    #[getter]
    fn _executor_shutdown_called(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).executor_shutdown_called
    }

    #[setter(_executor_shutdown_called)]
    fn set_executor_shutdown_called(&self, py: Python<'_>, value: bool) {
        self.state.borrow_mut(py).executor_shutdown_called = value;
    }

    #[getter]
    fn _asyncgens_shutdown_called(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).asyncgens_shutdown_called
    }

    #[setter(_asyncgens_shutdown_called)]
    fn set_asyncgens_shutdown_called(&self, py: Python<'_>, value: bool) {
        self.state.borrow_mut(py).asyncgens_shutdown_called = value;
    }

    // ---- exceptions ----

    fn get_exception_handler(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .exception_handler
            .as_ref()
            .map(|h| h.clone_ref(py))
    }

    fn set_exception_handler(&self, py: Python<'_>, handler: &Bound<'_, PyAny>) -> PyResult<()> {
        if !handler.is_none() && !handler.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "A callable object or None is expected, got {}",
                handler.repr()?
            )));
        }
        let new = if handler.is_none() {
            None
        } else {
            Some(handler.clone().unbind())
        };
        let old = std::mem::replace(&mut self.state.borrow_mut(py).exception_handler, new);
        drop(old);
        Ok(())
    }

    fn default_exception_handler(&self, context: &Bound<'_, PyDict>) -> PyResult<()> {
        self.default_exception_handler_impl(context)
    }

    fn call_exception_handler(slf: &Bound<'_, Self>, context: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::call_exception_handler_impl(slf, context)
    }

    // ---- debug ----

    fn get_debug(&self, py: Python<'_>) -> bool {
        self.debug(py)
    }

    fn set_debug(slf: &Bound<'_, Self>, enabled: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let enabled = enabled.is_truthy()?;
        slf.get().state.borrow_mut(py).debug = enabled;
        if slf.get().is_running(py) {
            let cb = slf.getattr(intern!(py, "_set_coroutine_origin_tracking"))?;
            slf.call_method1(intern!(py, "call_soon_threadsafe"), (cb, enabled))?;
        }
        Ok(())
    }

    fn _set_coroutine_origin_tracking(&self, py: Python<'_>, enabled: bool) -> PyResult<()> {
        self.set_coroutine_origin_tracking(py, enabled)
    }

    #[getter]
    fn get_slow_callback_duration(&self, py: Python<'_>) -> f64 {
        self.state.borrow(py).slow_callback_duration
    }

    #[setter]
    fn set_slow_callback_duration(&self, py: Python<'_>, value: f64) {
        self.state.borrow_mut(py).slow_callback_duration = value;
    }

    #[getter]
    fn _thread_id(&self, py: Python<'_>) -> Option<u64> {
        self.state.borrow(py).thread_id
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(st) = self.state.try_borrow() {
            for r in &st.ready {
                r.visit(&visit)?;
            }
            for h in st.timers.iter() {
                Handle::visit_owned(h, &visit)?;
            }
            for w in st.fds.values() {
                for watcher in [&w.reader, &w.writer].into_iter().flatten() {
                    watcher.visit(&visit)?;
                }
                visit.call(&w.fileobj)?;
            }
            for t in st.transports.values() {
                visit.call(t)?;
            }
            visit.call(&st.exception_handler)?;
            visit.call(&st.task_factory)?;
            visit.call(&st.current_handle)?;
            visit.call(&st.last_scheduled)?;
            visit.call(&st.default_executor)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.state.try_borrow_mut().map(|mut st| {
            (
                std::mem::take(&mut st.ready),
                st.timers.drain(),
                std::mem::take(&mut st.fds),
                std::mem::take(&mut st.transports),
                st.exception_handler.take(),
                st.task_factory.take(),
                st.current_handle.take(),
                st.default_executor.take(),
                st.last_scheduled.take(),
            )
        });
        if let Some(t) = &taken {
            release_all(&t.0, &t.1);
        }
        drop(taken);
    }
}

pub(crate) fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LoopCore>()?;
    crate::fastcall::install(&m.py().get_type::<LoopCore>())?;
    Ok(())
}
