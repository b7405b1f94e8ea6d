//! Unix signal handlers: the loop's end of `signal.set_wakeup_fd`.
//!
//! `add_signal_handler` (python/ferroloop/_signals.py) points CPython's wakeup fd at the
//! write end of a socket pair that a `SignalWakeup` owns, and installs
//! [`_sighandler_noop`] as the Python-level handler, as asyncio does: CPython's C signal
//! handler then writes each signal's number, one byte, to the wakeup fd. The read end is
//! watched by the loop like any reader, with the `SignalWakeup` itself as the callback:
//! it drains the socket and puts each signal's `Handle` in the ready queue, so a user's
//! handler runs as a loop callback in the next step, never inside the C signal handler,
//! and no Python code of ours runs per signal.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::event_loop::LoopCore;
use crate::gil::GilCell;
use crate::handles::Handle;

/// The two ends of the socket pair.
struct Pipe {
    /// Watched by the loop; drained by `__call__`.
    read: OwnedFd,
    /// Given to `signal.set_wakeup_fd`: CPython writes signal numbers here.
    write: OwnedFd,
}

/// A loop's signal handlers and the socket pair their signals arrive through.
#[pyclass(module = "ferroloop._core", frozen)]
pub struct SignalWakeup {
    /// `None` once closed.
    pipe: GilCell<Option<Pipe>>,
    /// Signal number -> the handle run when it arrives, in the order they were added
    /// (asyncio's dict order: a replaced handler keeps its place).
    handlers: GilCell<Vec<(i32, Py<Handle>)>>,
    /// The wakeup fd that was in place before this one was set, and whether it
    /// belonged to a ferroloop loop: restored when the last handler goes.
    previous: GilCell<(i32, bool)>,
}

impl SignalWakeup {
    fn handle_of(&self, py: Python<'_>, sig: i32) -> Option<Py<Handle>> {
        self.handlers
            .borrow(py)
            .iter()
            .find(|(s, _)| *s == sig)
            .map(|(_, h)| h.clone_ref(py))
    }

    fn read_fd_raw(&self, py: Python<'_>) -> Option<RawFd> {
        self.pipe.borrow(py).as_ref().map(|p| p.read.as_raw_fd())
    }

    /// asyncio's `_handle_signal`: the signal's handle goes to the ready queue; a
    /// cancelled one removes its handler instead.
    fn deliver(&self, loop_: &Bound<'_, LoopCore>, sig: i32) -> PyResult<()> {
        let py = loop_.py();
        // Signals nobody handles here (SIGINT for the default handler, say) also write
        // their number: skipped, as asyncio does.
        let Some(handle) = self.handle_of(py, sig) else {
            return Ok(());
        };
        if handle.get().is_cancelled(py) {
            loop_.call_method1(intern!(py, "remove_signal_handler"), (sig,))?;
        } else {
            loop_.get().push_ready(py, handle, false);
        }
        Ok(())
    }
}

#[pymethods]
impl SignalWakeup {
    #[new]
    fn new() -> PyResult<Self> {
        let mut fds = [0 as RawFd; 2];
        syscall!(socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr()
        ))
        .map_err(PyErr::from)?;
        // SAFETY: socketpair(2) returned two new descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(SignalWakeup {
            pipe: GilCell::new(Some(Pipe { read, write })),
            handlers: GilCell::new(Vec::new()),
            previous: GilCell::new((-1, false)),
        })
    }

    /// The end the loop watches; -1 once closed.
    #[getter]
    fn read_fd(&self, py: Python<'_>) -> RawFd {
        self.read_fd_raw(py).unwrap_or(-1)
    }

    /// The end given to `signal.set_wakeup_fd`; -1 once closed.
    #[getter]
    fn write_fd(&self, py: Python<'_>) -> RawFd {
        self.pipe.borrow(py).as_ref().map_or(-1, |p| p.write.as_raw_fd())
    }

    #[getter]
    fn previous(&self, py: Python<'_>) -> (i32, bool) {
        *self.previous.borrow(py)
    }

    #[setter]
    fn set_previous(&self, py: Python<'_>, value: (i32, bool)) {
        *self.previous.borrow_mut(py) = value;
    }

    /// Makes the handle for `sig`, as asyncio's `events.Handle(callback, args, loop,
    /// None)`: the current context is copied now, and every delivery runs in that one
    /// copy. Replaces the signal's handle, if it had one.
    fn set(
        &self,
        loop_: &Bound<'_, LoopCore>,
        sig: i32,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let py = loop_.py();
        let debug = loop_.get().debug(py);
        let handle = LoopCore::new_handle(loop_, callback, args, None, debug)?;
        let old = {
            let mut handlers = self.handlers.borrow_mut(py);
            match handlers.iter_mut().find(|(s, _)| *s == sig) {
                Some((_, h)) => Some(std::mem::replace(h, handle)),
                None => {
                    handlers.push((sig, handle));
                    None
                }
            }
        };
        // Dropped after the borrow: a finaliser may come back here.
        drop(old);
        Ok(())
    }

    /// Forgets the handler of `sig`; whether there was one. A delivery already in the
    /// ready queue still runs, as in asyncio.
    fn remove(&self, py: Python<'_>, sig: i32) -> bool {
        let old = {
            let mut handlers = self.handlers.borrow_mut(py);
            handlers.iter().position(|(s, _)| *s == sig).map(|i| handlers.remove(i))
        };
        old.is_some()
    }

    /// The signals handled, in the order their handlers were added.
    fn signals<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let sigs: Vec<i32> = self.handlers.borrow(py).iter().map(|(s, _)| *s).collect();
        PyList::new(py, sigs)
    }

    /// The handle of `sig`, or None.
    fn handle(&self, py: Python<'_>, sig: i32) -> Option<Py<Handle>> {
        self.handle_of(py, sig)
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.handlers.borrow(py).len()
    }

    /// Forgets every handler without touching the signals' dispositions.
    fn clear(&self, py: Python<'_>) {
        let old = std::mem::take(&mut *self.handlers.borrow_mut(py));
        drop(old);
    }

    /// Closes the socket pair and forgets the handlers.
    fn close(&self, py: Python<'_>) {
        let pipe = self.pipe.borrow_mut(py).take();
        drop(pipe);
        self.clear(py);
    }

    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.pipe.borrow(py).is_none()
    }

    /// The reader callback of the read end: asyncio's `_read_from_self` and
    /// `_process_self_data`. Drains the socket and delivers each signal number read, in
    /// order; a signal that arrived twice runs its handler twice.
    fn __call__(&self, loop_: &Bound<'_, LoopCore>) -> PyResult<()> {
        let py = loop_.py();
        let mut buf = [0u8; 4096];
        loop {
            let Some(fd) = self.read_fd_raw(py) else {
                return Ok(());
            };
            let n = match syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len())) {
                Ok(0) => return Ok(()),
                Ok(n) => n as usize,
                Err(e) => {
                    return match e.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        Some(libc::EAGAIN) => Ok(()),
                        _ => Err(PyErr::from(e)),
                    };
                }
            };
            for &sig in &buf[..n] {
                // Null bytes are not signals (asyncio's self-pipe writes them).
                if sig != 0 {
                    self.deliver(loop_, i32::from(sig))?;
                }
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(handlers) = self.handlers.try_borrow() {
            for (_, h) in handlers.iter() {
                visit.call(h)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let old = self.handlers.try_borrow_mut().map(|mut h| std::mem::take(&mut *h));
        drop(old);
    }
}

/// The Python-level handler of a signal that has a loop handler: it does nothing, as
/// asyncio's `_sighandler_noop`. Having a Python handler is what makes CPython's C
/// handler write the signal's number to the wakeup fd; a builtin, so that running it
/// makes no Python frame.
#[pyfunction]
#[pyo3(signature = (_signum, _frame))]
fn _sighandler_noop(_signum: &Bound<'_, PyAny>, _frame: &Bound<'_, PyAny>) {}

pub(crate) fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SignalWakeup>()?;
    m.add_function(wrap_pyfunction!(_sighandler_noop, m)?)?;
    Ok(())
}
