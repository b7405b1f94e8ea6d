//! The read pipe transport, with the semantics of asyncio's `_UnixReadPipeTransport`
//! (see the parent module for what both pipe transports share).
//!
//! Reading: one read system call per readiness event, of up to asyncio's `max_size`
//! (256 KiB), handed as one `bytes` to the protocol's cached `data_received`. Small reads
//! go into the loop's shared buffer and are copied out. Once a read has brought at least
//! `DIRECT_READ` bytes, the next one is a `readv(2)` whose first part is a new `bytes`
//! object as large as that last read (rounded up to a page) and whose second part is the
//! shared buffer, up to 256 KiB in all: the usual bulk read (a pipe holds 64 KiB) lands
//! in its `bytes` with no copy and no extra system call (no `FIONREAD`), and is shrunk
//! in place to what arrived; only a read larger than the last spills into the shared
//! buffer and is copied. End of file schedules `eof_received`, then
//! `connection_lost(None)`. A read error ends the transport with `connection_lost(exc)`;
//! EIO, what a pty master reads once its slave side is closed, is not reported to the
//! exception handler (asyncio's `_fatal_error` logs it in debug mode only).

use std::os::fd::RawFd;

use pyo3::exceptions::PyOSError;
use pyo3::ffi;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::event_loop::LoopCore;
use crate::gil::{py_attr, GilCell};
use crate::transports::accept::alloc_instance;
use crate::transports::fatal;
use crate::transports::native::{self, Native, Watched};
use crate::transports::stream::{io_to_pyerr, would_block, MAX_READ};

use super::{call_soon, log, pipe_getter, prepare, schedule_start, PipeFile};

fn read_raw(fd: RawFd, buf: *mut u8, len: usize) -> std::io::Result<usize> {
    raw_syscall!(libc::SYS_read, fd, buf, len)
}

fn readv_raw(fd: RawFd, iov: &[libc::iovec]) -> std::io::Result<usize> {
    raw_syscall!(libc::SYS_readv, fd, iov.as_ptr(), iov.len())
}

/// After a read of at least this many bytes, the next one goes straight into a new
/// `bytes` object (see the module's documentation).
const DIRECT_READ: usize = 16 * 1024;
const PAGE: usize = 4096;
/// The kernel's copy to user memory is much slower into a destination that is not
/// cache-line aligned (see `reactor::read_buf`): the bytes up to the first boundary of
/// this many bytes are read in an iovec of their own.
const LINE: usize = 64;

extern "C" {
    /// CPython's in-place resize of a fresh bytes object (not exported by pyo3-ffi).
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> libc::c_int;
}

fn out_of_memory(py: Python<'_>) -> std::io::Error {
    PyErr::take(py);
    std::io::Error::from(std::io::ErrorKind::OutOfMemory)
}

/// One `readv` of up to `MAX_READ` bytes: into a new bytes object of about `expect` bytes
/// first, then into the loop's shared buffer. Returns what arrived as one bytes object,
/// `None` at end of file.
fn read_direct<'py>(
    py: Python<'py>,
    fd: RawFd,
    loop_: &Py<LoopCore>,
    expect: usize,
) -> std::io::Result<Option<Bound<'py, PyBytes>>> {
    let mut shared = loop_.get().read_buf.borrow_mut(py);
    let size = expect.next_multiple_of(PAGE).min(MAX_READ);
    let spill = shared.len().min(MAX_READ - size);
    // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new, uninitialised bytes
    // object of n bytes (or NULL on memory error) that nothing else has seen yet, so
    // writing into it and resizing it in place are allowed. The iovecs cover that
    // object's `size` bytes and the first `spill` bytes of the shared buffer, which we
    // borrow exclusively; the kernel writes at most their total. Every path releases or
    // hands over the reference exactly once. The GIL is held.
    unsafe {
        let mut obj = ffi::PyBytes_FromStringAndSize(std::ptr::null(), size as ffi::Py_ssize_t);
        if obj.is_null() {
            return Err(out_of_memory(py));
        }
        let start = ffi::PyBytes_AsString(obj) as *mut u8;
        let head = start.align_offset(LINE).min(size);
        let iov = [
            libc::iovec {
                iov_base: start.cast(),
                iov_len: head,
            },
            libc::iovec {
                iov_base: start.add(head).cast(),
                iov_len: size - head,
            },
            libc::iovec {
                iov_base: shared.as_mut_ptr().cast(),
                iov_len: spill,
            },
        ];
        let first = if head == 0 { 1 } else { 0 };
        let n = match readv_raw(fd, &iov[first..]) {
            Ok(n) => n,
            Err(e) => {
                ffi::Py_DECREF(obj);
                return Err(e);
            }
        };
        if n == 0 {
            ffi::Py_DECREF(obj);
            return Ok(None);
        }
        if n != size {
            // Shrinks in place; grows (rarely: more arrived than last time) by moving.
            if _PyBytes_Resize(&mut obj, n as ffi::Py_ssize_t) < 0 {
                // The failed resize already released the object.
                return Err(out_of_memory(py));
            }
            if n > size {
                let dst = (ffi::PyBytes_AsString(obj) as *mut u8).add(size);
                std::ptr::copy_nonoverlapping(shared.as_slice().as_ptr(), dst, n - size);
            }
        }
        Ok(Some(Bound::from_owned_ptr(py, obj).cast_into_unchecked()))
    }
}

/// Reads into the loop's shared buffer and copies out what arrived. `None` at end of file.
fn read_shared<'py>(py: Python<'py>, fd: RawFd, loop_: &Py<LoopCore>) -> std::io::Result<Option<Bound<'py, PyBytes>>> {
    let mut buf = loop_.get().read_buf.borrow_mut(py);
    let len = buf.len().min(MAX_READ);
    let n = read_raw(fd, buf.as_mut_ptr(), len)?;
    Ok((n > 0).then(|| PyBytes::new(py, &buf.as_slice()[..n])))
}

/// What asyncio's read pipe transport does not report as a fatal error but in debug
/// mode: EIO, what a pty master reads once its slave side is closed.
fn is_eio(value: &Bound<'_, PyAny>) -> bool {
    value.is_instance_of::<PyOSError>()
        && value
            .getattr(intern!(value.py(), "errno"))
            .and_then(|e| e.extract::<Option<i32>>())
            .ok()
            .flatten()
            == Some(libc::EIO)
}

struct ReadState {
    /// `None` once the connection is lost.
    loop_: Option<Py<LoopCore>>,
    file: PipeFile,
    protocol: Option<Py<PyAny>>,
    /// The protocol's bound `data_received`, looked up once per protocol.
    data_received: Option<Py<PyAny>>,
    /// The `asyncio.ReadTransport` facade that protocols see; dropped once the connection
    /// is lost (it holds this object: a cycle otherwise).
    facade: Option<Py<PyAny>>,
    closing: bool,
    /// pause_reading() was called.
    paused: bool,
    /// Registered with the loop for reading.
    reading: bool,
    /// `connection_lost` has been called (or its call is under way).
    lost: bool,
    /// Size of the last read, to pick the read strategy.
    last_read: usize,
}

/// asyncio's `_UnixReadPipeTransport`.
#[pyclass(module = "ferroloop._core", frozen, weakref)]
pub struct ReadPipeTransport {
    fd: RawFd,
    state: GilCell<ReadState>,
}

impl ReadPipeTransport {
    fn facade<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyAny> {
        let py = slf.py();
        match slf.get().state.borrow(py).facade.as_ref() {
            Some(f) => f.bind(py).clone(),
            None => slf.clone().into_any(),
        }
    }

    fn loop_of(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.state.borrow(py).loop_.as_ref().map(|l| l.clone_ref(py))
    }

    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.borrow(py).protocol.as_ref().map(|p| p.clone_ref(py))
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.loop_of(py).is_some_and(|l| l.get().debug(py))
    }

    fn reading_now(&self, py: Python<'_>) -> bool {
        let st = self.state.borrow(py);
        !st.paused && !st.closing
    }

    /// Starts (`on`) or stops watching the fd for reading.
    fn set_watch(slf: &Bound<'_, Self>, on: bool) -> PyResult<()> {
        native::set_watch(slf, true, on)
    }

    /// asyncio's `_close(exc)`: closing, no more reading, `connection_lost(exc)` soon.
    fn close_with(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        slf.get().state.borrow_mut(py).closing = true;
        Self::set_watch(slf, false)?;
        let Some(loop_) = slf.get().loop_of(py) else {
            return Ok(());
        };
        call_soon(
            loop_.bind(py),
            &slf.getattr(intern!(py, "_call_connection_lost"))?,
            &[exc],
        )
    }

    /// asyncio's `_fatal_error`: EIO (a pty whose other side is closed) is logged in
    /// debug mode only; anything else goes to the exception handler. Then the
    /// transport closes, with `connection_lost(exc)`.
    fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let loop_ = this.loop_of(py).map(|l| l.into_bound(py));
        let value = fatal::report_unless(
            loop_.as_ref(),
            &Self::facade(slf),
            this.protocol(py),
            exc,
            message,
            is_eio,
        )?;
        Self::close_with(slf, value)
    }

    /// The fd is readable (asyncio's `_read_ready`). What the protocol's callbacks raise
    /// is returned, for the loop's report.
    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let loop_ = {
            let st = slf.get().state.borrow(py);
            if !st.reading || st.closing {
                return Ok(());
            }
            match &st.loop_ {
                Some(l) => l.clone_ref(py),
                None => return Ok(()),
            }
        };
        Self::read_once(slf, &loop_)
    }

    fn read_once(slf: &Bound<'_, Self>, loop_: &Py<LoopCore>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let last = this.state.borrow(py).last_read;
        let got = if last >= DIRECT_READ {
            read_direct(py, this.fd, loop_, last)
        } else {
            read_shared(py, this.fd, loop_)
        };
        let data = match got {
            Ok(d) => d,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return Self::fatal_error(slf, io_to_pyerr(e), "Fatal read error on pipe transport"),
        };
        this.state.borrow_mut(py).last_read = data.as_ref().map_or(0, |d| d.as_bytes().len());
        let Some(data) = data else {
            return Self::on_eof(slf, loop_.bind(py));
        };
        let callback = this.state.borrow(py).data_received.as_ref().map(|c| c.clone_ref(py));
        match callback {
            Some(cb) => cb.bind(py).call1((data,)).map(drop),
            None => match this.protocol(py) {
                Some(p) => p.bind(py).call_method1(intern!(py, "data_received"), (data,)).map(drop),
                None => Ok(()),
            },
        }
    }

    /// End of file: `eof_received()`, then `connection_lost(None)`, each in a callback
    /// of its own, as asyncio schedules them.
    fn on_eof(slf: &Bound<'_, Self>, loop_: &Bound<'_, LoopCore>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.debug(py) {
            log(py, intern!(py, "info"), "%r was closed by peer", &Self::facade(slf))?;
        }
        this.state.borrow_mut(py).closing = true;
        Self::set_watch(slf, false)?;
        if let Some(p) = this.protocol(py) {
            call_soon(loop_, &p.bind(py).getattr(intern!(py, "eof_received"))?, &[])?;
        }
        call_soon(
            loop_,
            &slf.getattr(intern!(py, "_call_connection_lost"))?,
            &[py.None().into_bound(py)],
        )
    }

    /// Sets the protocol and caches the method the read path calls.
    fn install_protocol(&self, protocol: &Bound<'_, PyAny>) {
        let py = protocol.py();
        let received = protocol.getattr(intern!(py, "data_received")).ok().map(Bound::unbind);
        let old = {
            let mut st = self.state.borrow_mut(py);
            (
                st.protocol.replace(protocol.clone().unbind()),
                std::mem::replace(&mut st.data_received, received),
            )
        };
        drop(old);
    }
}

impl Native for ReadPipeTransport {
    fn on_readable(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::read_ready(slf)
    }

    /// Never watched for writing.
    fn on_writable(_slf: &Bound<'_, Self>) -> PyResult<()> {
        Ok(())
    }

    fn callback_name(_py: Python<'_>, _readable: bool) -> &'static str {
        "_read_ready"
    }
}

impl Watched for ReadPipeTransport {
    fn watched_fd(&self) -> RawFd {
        self.fd
    }

    fn watch_loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.loop_of(py)
    }

    /// A read pipe is only ever watched for reading.
    fn record_watch(&self, py: Python<'_>, read: bool, on: bool) -> bool {
        debug_assert!(read, "a read pipe watched for writing");
        std::mem::replace(&mut self.state.borrow_mut(py).reading, on)
    }
}

#[pymethods]
impl ReadPipeTransport {
    /// Starts reading; scheduled right after `connection_made` (asyncio's `_add_reader`).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        if !slf.get().reading_now(slf.py()) {
            return Ok(());
        }
        Self::set_watch(slf, true)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let protocol = {
            let mut st = this.state.borrow_mut(py);
            if std::mem::replace(&mut st.lost, true) {
                return Ok(());
            }
            st.protocol.as_ref().map(|p| p.clone_ref(py))
        };
        let result = match protocol {
            Some(p) => p
                .bind(py)
                .call_method1(intern!(py, "connection_lost"), (exc,))
                .map(drop),
            None => Ok(()),
        };
        // Whatever connection_lost did, the pipe is closed and the references dropped.
        Self::set_watch(slf, false)?;
        let (closed, taken) = {
            let mut st = this.state.borrow_mut(py);
            let closed = st.file.close(py, this.fd);
            (
                closed,
                (
                    st.loop_.take(),
                    st.protocol.take(),
                    st.data_received.take(),
                    st.facade.take(),
                ),
            )
        };
        drop(taken);
        result.and(closed)
    }

    /// The read path, as asyncio's reader handle calls it.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::read_ready(slf)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().state.borrow(slf.py()).closing {
            return Ok(());
        }
        Self::close_with(slf, slf.py().None().into_bound(slf.py()))
    }

    /// Not in asyncio's read pipe transport (which has no `abort()`): the same as `close()`,
    /// as there is nothing queued to drop.
    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close(slf)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closing
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.reading_now(py)
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().reading_now(py) {
            return Ok(());
        }
        slf.get().state.borrow_mut(py).paused = true;
        Self::set_watch(slf, false)?;
        if slf.get().debug(py) {
            log(py, intern!(py, "debug"), "%r pauses reading", &Self::facade(slf))?;
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().state.borrow_mut(py);
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
        }
        Self::set_watch(slf, true)?;
        if slf.get().debug(py) {
            log(py, intern!(py, "debug"), "%r resumes reading", &Self::facade(slf))?;
        }
        Ok(())
    }

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        self.install_protocol(protocol)
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
    }

    /// The pipe object while the transport has it open (asyncio's `_pipe`).
    #[getter]
    fn _pipe(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        pipe_getter(py, &self.state.borrow(py).file)
    }

    /// Whether the transport still has its pipe (or bare fd) open.
    #[getter]
    fn _open(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).file.open
    }

    /// Lets go of the pipe without closing it (asyncio's `transport._pipe = None`).
    fn _forget_pipe(&self, py: Python<'_>) {
        self.state.borrow_mut(py).file.open = false;
    }

    /// Closes the pipe if the transport still has it (the facade's `__del__`).
    fn _close_pipe(&self, py: Python<'_>) -> PyResult<()> {
        let mut file = self.state.borrow_mut(py).file.take(py);
        file.close(py, self.fd)
    }

    #[getter]
    fn _fileno(&self) -> RawFd {
        self.fd
    }

    /// The words of the transport's repr after its class name, as asyncio's.
    fn _repr_info(&self, py: Python<'_>) -> Vec<String> {
        let st = self.state.borrow(py);
        let mut info = Vec::new();
        if !st.file.open {
            info.push("closed".to_string());
        } else if st.closing {
            info.push("closing".to_string());
        }
        info.push(format!("fd={}", self.fd));
        let loop_open = st
            .loop_
            .as_ref()
            .is_some_and(|l| !l.get().state.borrow(py).closed_flag());
        if st.file.open && loop_open {
            info.push(if st.reading { "polling" } else { "idle" }.to_string());
        } else if st.file.open {
            info.push("open".to_string());
        } else {
            info.push("closed".to_string());
        }
        info
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(st) = self.state.try_borrow() {
            visit.call(&st.loop_)?;
            visit.call(&st.file.obj)?;
            visit.call(&st.protocol)?;
            visit.call(&st.data_received)?;
            visit.call(&st.facade)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.state.try_borrow_mut().map(|mut st| {
            (
                st.loop_.take(),
                st.protocol.take(),
                st.data_received.take(),
                st.facade.take(),
            )
        });
        drop(taken);
    }
}

/// A read pipe transport over `fd` (asyncio's `_UnixReadPipeTransport.__init__`): the
/// facade protocols see. `pipe` is the object `fd` belongs to, closed with the transport
/// and given as `get_extra_info('pipe')`; without one, the transport owns `fd` and
/// closes it. `connection_made()`, then reading, then the waiter are scheduled.
pub(crate) fn read_pipe_transport<'py>(
    loop_: &Bound<'py, LoopCore>,
    fd: RawFd,
    pipe: Option<&Bound<'py, PyAny>>,
    protocol: &Bound<'py, PyAny>,
    waiter: Option<&Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    let (extra, _) = prepare(py, fd, pipe, extra, false)?;
    let facade = alloc_instance(py_attr!(py, "ferroloop._transports", "ReadPipeTransport")?)?;
    facade.setattr(intern!(py, "_extra"), &extra)?;
    let t = ReadPipeTransport {
        fd,
        state: GilCell::new(ReadState {
            loop_: Some(loop_.clone().unbind()),
            file: PipeFile::opened(pipe),
            protocol: None,
            data_received: None,
            facade: Some(facade.clone().unbind()),
            closing: false,
            paused: false,
            reading: false,
            lost: false,
            last_read: 0,
        }),
    };
    t.install_protocol(protocol);
    let core = Bound::new(py, t)?;
    facade.setattr(intern!(py, "_core"), &core)?;
    schedule_start(
        loop_,
        protocol,
        &facade,
        Some(core.getattr(intern!(py, "_start_reading"))?),
        waiter,
    )?;
    Ok(facade)
}
