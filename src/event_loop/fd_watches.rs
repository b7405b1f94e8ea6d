//! The fd watches: which reader and writer watch each fd (a user's `add_reader` handle
//! or a native transport's watch), how they are added and removed with the poller told
//! as selectors tells it, the fds owned by transports (refused to `add_reader` and
//! friends), and `remove_reader`/`remove_writer`.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple, PyWeakrefReference};

use super::run_step::Ready;
use super::{LoopCore, LoopState};
use crate::handles::Handle;
use crate::reactor::poller::{Interest, Poller};
use crate::transports::native::{NativeTransport, NativeWatch};
use crate::transports::stream::io_to_pyerr;

/// What is called when an fd is ready: a user's callback (`add_reader`), or a native
/// transport's own read or write path (`transports::native`).
pub(crate) enum Watcher {
    Handle(Py<Handle>),
    Native(NativeWatch),
}

impl Watcher {
    #[inline]
    pub(super) fn to_ready(&self, py: Python<'_>, fd: RawFd, read: bool) -> Option<Ready> {
        match self {
            Watcher::Handle(h) if h.get().is_cancelled(py) => None,
            Watcher::Handle(h) => Some(Ready::Handle(h.clone_ref(py))),
            Watcher::Native(w) => Some(Ready::Native(w.ready(py, fd, read))),
        }
    }

    pub(super) fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Watcher::Handle(h) => visit.call(h),
            Watcher::Native(w) => w.visit(visit),
        }
    }
}

/// The reader and writer watching one fd.
pub(super) struct FdWatch {
    pub(super) reader: Option<Watcher>,
    pub(super) writer: Option<Watcher>,
    /// The object (other than an int) that the watch function which began this
    /// registration was given, as selectors keeps it in the key: once closed, a socket
    /// says -1 for its fd, and the watch functions then find the registration by it.
    pub(super) fileobj: Option<Py<PyAny>>,
}

impl FdWatch {
    pub(super) fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some(),
            writable: self.writer.is_some(),
        }
    }

    pub(super) fn slot(&mut self, read: bool) -> &mut Option<Watcher> {
        if read {
            &mut self.reader
        } else {
            &mut self.writer
        }
    }
}

/// What [`LoopCore::unwatch`] took out of the fd watches, to be dropped by the caller
/// outside the borrow of the loop's state.
pub(super) struct Unwatched {
    /// The reader or writer removed.
    pub(super) removed: Option<Watcher>,
    /// When the poller refused the narrowed interest (the fd was closed meanwhile): its
    /// error, and the rest of the fd's registration, dropped with it as selectors drops it.
    pub(super) failed: Option<(std::io::Error, FdWatch)>,
}

/// The number a watch function is given: an int as it is, else `int(obj.fileno())`
/// (ValueError "Invalid file object" when that fails as `selectors._fileobj_to_fd` and
/// asyncio's `_ensure_fd_no_transport` refuse it). Not checked for being a valid fd.
pub(super) fn fileobj_number(obj: &Bound<'_, PyAny>) -> PyResult<i64> {
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
    /// Removes the reader (`read`) or writer of `fd`, updating the poller as selectors
    /// does: no system call when the interest stays the same, and the whole registration
    /// dropped when the poller refuses to narrow it. What comes out is to be cancelled
    /// and dropped by the caller outside the borrow.
    pub(super) fn unwatch(st: &mut LoopState, poller: &Poller, fd: RawFd, read: bool) -> Unwatched {
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

    pub(super) fn watch(
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
    pub(super) fn watch_fd(
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
    pub(super) fn unwatch_fd(
        &self,
        py: Python<'_>,
        fd: RawFd,
        read: bool,
    ) -> (Option<Watcher>, Option<std::io::Error>) {
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
    pub(super) fn lookup_fd(&self, py: Python<'_>, obj: &Bound<'_, PyAny>, number: i64) -> PyResult<RawFd> {
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
    pub(super) fn ensure_fd_no_transport(
        &self,
        py: Python<'_>,
        fd_obj: &Bound<'_, PyAny>,
        number: i64,
    ) -> PyResult<()> {
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

    /// `remove_reader` (`read`) and `remove_writer`, as asyncio's: the object is checked
    /// for a transport first, then a closed loop has nothing to remove, then the fd is
    /// looked up (by the object itself if it has no valid fd any more).
    pub(super) fn unwatch_py(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>, read: bool) -> PyResult<bool> {
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
