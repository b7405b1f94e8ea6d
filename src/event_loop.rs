//! The loop object's Rust base: `LoopCore`. It owns the ready queue, the timer heap,
//! the poller and the fd watches, and runs asyncio's `_run_once` step: compute the
//! poll timeout, release the GIL only around a blocking poll, move due timers to the
//! ready queue, then run exactly the handles that were ready when the step began.
//!
//! The Python class `ferroloop.Loop` subclasses this and `asyncio.AbstractEventLoop`;
//! the coroutine-shaped cold paths (shutdown_asyncgens, shutdown_default_executor)
//! live there.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit, PyTypeError, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyString, PyTuple, PyWeakrefReference};

use crate::gil::{py_attr, GilCell};
use crate::handle_mem;
use crate::handles::{Handle, TimerHandle};
use crate::reactor::clock;
use crate::reactor::fd_map::FdMap;
use crate::reactor::poller::{Events, Interest, Poller};
use crate::reactor::read_buf::ReadBuffer;
use crate::reactor::timers::TimerHeap;
use crate::reactor::waker::Waker;
use crate::transports::native::{NativeReady, NativeTransport, NativeWatch};
use crate::transports::stream::io_to_pyerr;

/// asyncio's `MAXIMUM_SELECT_TIMEOUT`: one day.
const MAX_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;
/// Compact the timer heap when it holds more than this many timers...
const MIN_SCHEDULED_TIMER_HANDLES: usize = 100;
/// ...and more than this fraction of them are cancelled.
const MIN_CANCELLED_TIMER_HANDLES_FRACTION: f64 = 0.5;
/// `time.get_clock_info('monotonic').resolution` on Linux.
const CLOCK_RESOLUTION: f64 = 1e-9;
/// asyncio's `constants.DEBUG_STACK_DEPTH`.
const DEBUG_STACK_DEPTH: i32 = 10;
/// The poller token of the waker; fds use their own number as token.
const WAKER_TOKEN: u64 = u64::MAX;

/// What is called when an fd is ready: a user's callback (`add_reader`), or a native
/// transport's own read or write path (`transports::native`).
pub(crate) enum Watcher {
    Handle(Py<Handle>),
    Native(NativeWatch),
}

impl Watcher {
    #[inline]
    fn to_ready(&self, py: Python<'_>, fd: RawFd, read: bool) -> Option<Ready> {
        match self {
            Watcher::Handle(h) if h.get().is_cancelled(py) => None,
            Watcher::Handle(h) => Some(Ready::Handle(h.clone_ref(py))),
            Watcher::Native(w) => Some(Ready::Native(w.ready(py, fd, read))),
        }
    }

    fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Watcher::Handle(h) => visit.call(h),
            Watcher::Native(w) => w.visit(visit),
        }
    }
}

/// An entry of the ready queue.
pub(crate) enum Ready {
    Handle(Py<Handle>),
    /// A native transport's fd is readable or writable.
    Native(NativeReady),
}

impl Ready {
    fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Ready::Handle(h) => Handle::visit_owned(h, visit),
            Ready::Native(r) => r.visit(visit),
        }
    }
}

/// The reader and writer watching one fd.
struct FdWatch {
    reader: Option<Watcher>,
    writer: Option<Watcher>,
    /// The object (other than an int) that the watch function which began this
    /// registration was given, as selectors keeps it in the key: once closed, a socket
    /// says -1 for its fd, and the watch functions then find the registration by it.
    fileobj: Option<Py<PyAny>>,
}

impl FdWatch {
    fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some(),
            writable: self.writer.is_some(),
        }
    }

    fn slot(&mut self, read: bool) -> &mut Option<Watcher> {
        if read {
            &mut self.reader
        } else {
            &mut self.writer
        }
    }
}

/// What [`LoopCore::unwatch`] took out of the fd watches, to be dropped by the caller
/// outside the borrow of the loop's state.
struct Unwatched {
    /// The reader or writer removed.
    removed: Option<Watcher>,
    /// When the poller refused the narrowed interest (the fd was closed meanwhile): its
    /// error, and the rest of the fd's registration, dropped with it as selectors drops it.
    failed: Option<(std::io::Error, FdWatch)>,
}

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

/// The number a watch function is given: an int as it is, else `int(obj.fileno())`
/// (ValueError "Invalid file object" when that fails as `selectors._fileobj_to_fd` and
/// asyncio's `_ensure_fd_no_transport` refuse it). Not checked for being a valid fd.
fn fileobj_number(obj: &Bound<'_, PyAny>) -> PyResult<i64> {
    let fd: i64 = if obj.is_instance_of::<PyInt>() {
        obj.extract()?
    } else {
        let py = obj.py();
        let got = obj
            .call_method0(intern!(py, "fileno"))
            .and_then(|f| py.get_type::<PyInt>().call1((f,)))
            .and_then(|i| i.extract::<i64>());
        match got {
            Ok(fd) => fd,
            Err(e)
                if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py)
                    || e.is_instance_of::<PyTypeError>(py)
                    || e.is_instance_of::<PyValueError>(py) =>
            {
                return Err(PyValueError::new_err(format!("Invalid file object: {}", obj.repr()?)));
            }
            Err(e) => return Err(e),
        }
    };
    Ok(fd)
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

    /// The checks before scheduling on the loop's thread: the loop is open and, in debug
    /// mode, the caller is the loop's thread and the callback a plain callable.
    /// Returns whether debug mode is on.
    fn check_schedule(&self, py: Python<'_>, callback: &Bound<'_, PyAny>, method: &str) -> PyResult<bool> {
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
    fn check_callback(callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
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

    fn source_traceback(py: Python<'_>, debug: bool) -> PyResult<Option<Py<PyAny>>> {
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
    fn current_context(py: Python<'_>, context: Option<Bound<'_, PyAny>>) -> PyResult<(Py<PyAny>, bool)> {
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
    fn enqueue(&self, py: Python<'_>, handle: Py<Handle>, push: impl FnOnce(&mut LoopState, Py<Handle>)) {
        let previous = {
            let mut st = self.state.borrow_mut(py);
            push(&mut st, handle.clone_ref(py));
            st.last_scheduled.replace(handle)
        };
        Self::settle(py, previous);
    }

    /// Settles the last handle scheduled: before a step looks at the queue and heap.
    fn settle_last(&self, py: Python<'_>) {
        let last = self.state.borrow_mut(py).last_scheduled.take();
        Self::settle(py, last);
    }

    /// Decides about a handle scheduled earlier and still waiting in the ready queue or
    /// timer heap: if the loop is all that holds it (its creator dropped the handle
    /// `call_soon` or `call_later` returned), it is hidden from the collector
    /// ([`Handle::untrack`]); one the program keeps stays tracked, so that the collector
    /// sees that reference and never takes what the handle holds for garbage.
    /// Called with no borrow of the loop's state held.
    fn settle(py: Python<'_>, previous: Option<Py<Handle>>) {
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

    fn run_forever_inner(slf: &Bound<'_, Self>) -> PyResult<()> {
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
    fn run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
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
                    if debug {
                        Self::run_debug(slf, &handle)?;
                    } else {
                        Handle::run(&handle)?;
                    }
                }
                Ready::Native(r) => r.run(slf)?,
            }
        }
        Ok(())
    }

    /// Runs a handle in debug mode: remembers it as the current handle and warns
    /// when it takes longer than `slow_callback_duration`.
    fn run_debug(slf: &Bound<'_, Self>, handle: &Bound<'_, Handle>) -> PyResult<()> {
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

    /// Removes the reader (`read`) or writer of `fd`, updating the poller as selectors
    /// does: no system call when the interest stays the same, and the whole registration
    /// dropped when the poller refuses to narrow it. What comes out is to be cancelled
    /// and dropped by the caller outside the borrow.
    fn unwatch(st: &mut LoopState, poller: &Poller, fd: RawFd, read: bool) -> Unwatched {
        let Some(w) = st.fds.get_mut(&fd) else {
            return Unwatched {
                removed: None,
                failed: None,
            };
        };
        let before = w.interest();
        let removed = w.slot(read).take();
        let interest = w.interest();
        let mut failed = None;
        if interest.is_empty() {
            st.fds.remove(&fd);
            // The fd may be closed already, and the kernel then forgot it (EBADF), or its
            // number may name another file now (ENOENT): as selectors, that is fine.
            let _ = poller.deregister(fd);
        } else if interest != before {
            if let Err(e) = poller.modify(fd, interest, fd as u64) {
                let rest = st.fds.remove(&fd).expect("the entry is there");
                let _ = poller.deregister(fd);
                failed = Some((e, rest));
            }
        }
        Unwatched { removed, failed }
    }

    fn watch(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        read: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        let fd_obj = fd;
        let number = fileobj_number(fd_obj)?;
        this.ensure_fd_no_transport(py, fd_obj, number)?;
        this.check_closed(py)?;
        let handle = Self::new_handle(slf, callback, args, None, false)?;
        let fd = this.lookup_fd(py, fd_obj, number)?;
        let fileobj = (!fd_obj.is_instance_of::<PyInt>()).then(|| fd_obj.clone().unbind());
        let old = this.watch_fd(py, fd, Watcher::Handle(handle.clone_ref(py)), read, fileobj)?;
        if let Some(Watcher::Handle(old)) = old {
            Handle::do_cancel(old.bind(py))?;
        }
        Ok(handle)
    }

    /// Makes `transport`'s read (`read`) or write path the reader or writer of `fd`,
    /// to run in a copy of the current context (and, in debug mode, with the traceback
    /// of this call kept for reports); returns what it replaces.
    pub(crate) fn watch_native(
        &self,
        py: Python<'_>,
        fd: RawFd,
        transport: NativeTransport,
        read: bool,
    ) -> PyResult<Option<Watcher>> {
        let watch = NativeWatch::new(py, transport, Self::source_traceback(py, self.debug(py))?)?;
        self.watch_fd(py, fd, Watcher::Native(watch), read, None)
    }

    /// Makes `watcher` the reader (`read`) or writer of `fd`, recording `fileobj` when
    /// this begins the fd's registration; returns the one it replaces. The poller
    /// is told as selectors tells it: nothing when the interest stays the same; and when
    /// it refuses a new interest, the whole registration is dropped (what watched the fd
    /// is not cancelled) and its error raised.
    fn watch_fd(
        &self,
        py: Python<'_>,
        fd: RawFd,
        watcher: Watcher,
        read: bool,
        fileobj: Option<Py<PyAny>>,
    ) -> PyResult<Option<Watcher>> {
        let (result, dropped) = {
            let io = self.io.borrow(py);
            let Some(io) = io.as_ref() else {
                return Err(PyRuntimeError::new_err("Event loop is closed"));
            };
            let mut st = self.state.borrow_mut(py);
            match st.fds.entry(fd) {
                std::collections::hash_map::Entry::Occupied(mut entry) => {
                    let w = entry.get_mut();
                    let before = w.interest();
                    let old = w.slot(read).replace(watcher);
                    let interest = w.interest();
                    match (interest != before).then(|| io.poller.modify(fd, interest, fd as u64)) {
                        Some(Err(e)) => {
                            let all = entry.remove();
                            let _ = io.poller.deregister(fd);
                            (Err(e), Some((all, old)))
                        }
                        _ => (Ok(old), None),
                    }
                }
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let mut w = FdWatch {
                        reader: None,
                        writer: None,
                        fileobj,
                    };
                    *w.slot(read) = Some(watcher);
                    match io.poller.register(fd, w.interest(), fd as u64) {
                        Ok(()) => {
                            entry.insert(w);
                            (Ok(None), None)
                        }
                        Err(e) => (Err(e), Some((w, None))),
                    }
                }
            }
        };
        drop(dropped);
        result.map_err(io_to_pyerr)
    }

    /// Stops watching `fd` for reading (`read`) or writing; returns what watched it, and
    /// the poller's error when it refused to narrow the interest (the registration is
    /// then dropped whole).
    fn unwatch_fd(&self, py: Python<'_>, fd: RawFd, read: bool) -> (Option<Watcher>, Option<std::io::Error>) {
        let u = {
            let io = self.io.borrow(py);
            let Some(io) = io.as_ref() else {
                return (None, None);
            };
            let mut st = self.state.borrow_mut(py);
            if st.closed {
                return (None, None);
            }
            Self::unwatch(&mut st, &io.poller, fd, read)
        };
        let error = u.failed.map(|(e, rest)| {
            drop(rest);
            e
        });
        (u.removed, error)
    }

    /// Whether a transport's watch of `fd` for reading (`read`) or writing that runs in
    /// `context` is still registered (neither removed nor replaced).
    pub(crate) fn watches(&self, py: Python<'_>, fd: RawFd, read: bool, context: &Bound<'_, PyAny>) -> bool {
        let st = self.state.borrow(py);
        let Some(w) = st.fds.get(&fd) else { return false };
        let watcher = if read { &w.reader } else { &w.writer };
        match watcher {
            Some(Watcher::Native(w)) => w.runs_in(context),
            _ => false,
        }
    }

    /// Stops watching `fd` for reading (`read`) or writing; returns what watched it.
    pub(crate) fn unwatch_raw(&self, py: Python<'_>, fd: RawFd, read: bool) -> Option<Watcher> {
        self.unwatch_fd(py, fd, read).0
    }

    /// selectors' `_fileobj_lookup`: the fd that `number` (from [`fileobj_number`]) is,
    /// or, when it is not a valid fd (a closed socket's -1), the fd `obj` was registered
    /// with, if it was.
    fn lookup_fd(&self, py: Python<'_>, obj: &Bound<'_, PyAny>, number: i64) -> PyResult<RawFd> {
        if number >= 0 {
            if let Ok(fd) = RawFd::try_from(number) {
                return Ok(fd);
            }
        } else if !obj.is_instance_of::<PyInt>() {
            let st = self.state.borrow(py);
            let found = st
                .fds
                .iter()
                .find(|(_, w)| w.fileobj.as_ref().is_some_and(|o| o.is(obj)));
            if let Some((&fd, _)) = found {
                return Ok(fd);
            }
        }
        Err(PyValueError::new_err(format!("Invalid file descriptor: {number}")))
    }

    /// asyncio's `_ensure_fd_no_transport`: an fd owned by an open transport is not
    /// for `add_reader` and friends. `number` comes from [`fileobj_number`].
    fn ensure_fd_no_transport(&self, py: Python<'_>, fd_obj: &Bound<'_, PyAny>, number: i64) -> PyResult<()> {
        let Ok(fd) = RawFd::try_from(number) else {
            return Ok(());
        };
        let t = self.state.borrow(py).transports.get(&fd).map(|t| t.clone_ref(py));
        let Some(t) = t.and_then(|w| w.bind(py).upgrade()) else {
            return Ok(());
        };
        let open = NativeTransport::from_object(&t).and_then(|t| t.open_facade(py));
        if let Some(facade) = open {
            return Err(PyRuntimeError::new_err(format!(
                "File descriptor {} is used by transport {}",
                fd_obj.repr()?,
                facade.repr()?
            )));
        }
        Ok(())
    }

    /// Records `t` (a native transport) as the owner of `fd`.
    pub(crate) fn register_transport(&self, py: Python<'_>, fd: RawFd, t: &Bound<'_, PyAny>) -> PyResult<()> {
        let weak = PyWeakrefReference::new(t)?.unbind();
        let old = self.state.borrow_mut(py).transports.insert(fd, weak);
        drop(old);
        Ok(())
    }

    pub(crate) fn unregister_transport(&self, py: Python<'_>, fd: RawFd, t: &Bound<'_, PyAny>) {
        let old = {
            let mut st = self.state.borrow_mut(py);
            let current = st.transports.get(&fd).and_then(|w| w.bind(py).upgrade());
            match current {
                Some(cur) if cur.is(t) => st.transports.remove(&fd),
                None => st.transports.remove(&fd),
                _ => None,
            }
        };
        drop(old);
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

    /// `remove_reader` (`read`) and `remove_writer`, as asyncio's: the object is checked
    /// for a transport first, then a closed loop has nothing to remove, then the fd is
    /// looked up (by the object itself if it has no valid fd any more).
    fn unwatch_py(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, read: bool) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        let fd_obj = fd;
        let number = fileobj_number(fd_obj)?;
        this.ensure_fd_no_transport(py, fd_obj, number)?;
        if this.closed(py) {
            return Ok(false);
        }
        let fd = this.lookup_fd(py, fd_obj, number)?;
        match this.unwatch_fd(py, fd, read) {
            // As selectors, which raises before it cancels anything.
            (removed, Some(e)) => {
                drop(removed);
                Err(io_to_pyerr(e))
            }
            (Some(Watcher::Handle(h)), None) => {
                Handle::do_cancel(h.bind(py))?;
                Ok(true)
            }
            // A native transport's watch of an fd it does not own (a pipe transport's) or
            // no longer guards (a closing transport's): removed, as asyncio's
            // remove_reader removes the transport's handle.
            (Some(Watcher::Native(_)), None) => Ok(true),
            _ => Ok(false),
        }
    }
}

/// asyncio's `_format_handle`: a task's repr for a task step, else the handle's.
fn format_handle(handle: &Bound<'_, Handle>) -> PyResult<String> {
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

    fn call_exception_handler(slf: &Bound<'_, Self>, context: &Bound<'_, PyAny>) -> PyResult<()> {
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

impl LoopCore {
    /// Calls a custom exception handler; from Python 3.12 on, as asyncio does, inside
    /// the `contextvars` context of the task, future or handle the error is about
    /// (the first of those keys that has one), so the handler sees what it saw.
    fn run_custom_handler(
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

    fn schedule_timer(
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

/// Gives the handles of a ready queue and timer heap being dropped back to the
/// collector (see [`Handle::untrack`]).
fn release_all(ready: &VecDeque<Ready>, timers: &[Py<Handle>]) {
    for r in ready {
        if let Ready::Handle(h) = r {
            Handle::release(h);
        }
    }
    for h in timers {
        Handle::release(h);
    }
}

pub(crate) fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LoopCore>()?;
    crate::fastcall::install(&m.py().get_type::<LoopCore>())?;
    Ok(())
}
