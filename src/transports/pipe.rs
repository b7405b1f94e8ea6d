//! The pipe transports, with the semantics of asyncio's `_UnixReadPipeTransport` and
//! `_UnixWritePipeTransport` and the data path in Rust: `connect_read_pipe` and
//! `connect_write_pipe` over pipes, FIFOs, sockets and character devices (ttys and ptys
//! among them), and, later, a subprocess's stdio.
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
//!
//! Writing: `write()` writes at once when nothing is queued and queues only the rest,
//! flushed with `writev(2)` when the fd is writable; asyncio's flow control, except
//! that, as asyncio's pipe transport does, `resume_writing()` comes only once the queue
//! is empty. A pipe or socket written to is also watched for reading, as asyncio
//! does: it becomes readable (an error, or end of file) once its reader is gone, and
//! the transport is then closed: `connection_lost(None)`, or `BrokenPipeError()` when
//! data was still queued. A write that fails (EPIPE on a character device, EIO on a
//! pty whose master is closed) ends the transport with `connection_lost(exc)`.
//!
//! Both are native transports (`native.rs`): the loop runs their read and write paths
//! as asyncio runs the reader and writer handles of its pipe transports, each in a copy
//! of the context current when the watch was added (reading starts in a callback
//! scheduled when the transport is made, so in a copy of that context; a write that
//! queues starts the writer), and what escapes a path goes to the exception handler as
//! asyncio's handle of `_read_ready` or `_write_ready` reports it. The write queue, flow
//! control and fatal-error report are the transport core's (`write_queue.rs`, `flow.rs`,
//! `fatal.rs`), with the pipe transports' own messages. Neither transport is recorded as
//! the owner of its fd (asyncio's pipe transports are not in `loop._transports`).
//!
//! Protocols see thin Python facades (`ferroloop._transports.ReadPipeTransport` and
//! `WritePipeTransport`); [`read_pipe_transport`] and [`write_pipe_transport`] make them
//! from Rust, over a pipe object or over a bare fd the transport then owns.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyAssertionError, PyBrokenPipeError, PyOSError, PyValueError};
use pyo3::ffi;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::event_loop::LoopCore;
use crate::gil::{py_attr, GilCell};
use crate::transports::accept::alloc_instance;
use crate::transports::fatal;
use crate::transports::flow::{self, FlowControl, FlowControlled};
use crate::transports::native::{self, Native, Watched};
use crate::transports::stream::{io_to_pyerr, is_bytes_like, would_block, BufferView, MAX_READ};
use crate::transports::write_queue::WriteBuffer;

/// asyncio's warning about writes after a pipe transport's connection was lost.
const LOST_WRITE_WARNING: &str = "pipe closed by peer or os.write(pipe, data) raised exception.";

fn read_raw(fd: RawFd, buf: *mut u8, len: usize) -> std::io::Result<usize> {
    raw_syscall!(libc::SYS_read, fd, buf, len)
}

fn write_raw(fd: RawFd, data: &[u8]) -> std::io::Result<usize> {
    raw_syscall!(libc::SYS_write, fd, data.as_ptr(), data.len())
}

fn writev_raw(fd: RawFd, iov: &[libc::iovec]) -> std::io::Result<usize> {
    raw_syscall!(libc::SYS_writev, fd, iov.as_ptr(), iov.len())
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

/// The kinds of file asyncio's pipe transports take, from `fstat`: `(is_fifo,
/// is_socket, is_char)`. An fstat error is raised as `os.fstat` raises it.
fn file_kind(fd: RawFd) -> PyResult<(bool, bool, bool)> {
    // SAFETY: all-zero is a valid `stat`, which fstat fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    syscall!(fstat(fd, &mut st)).map_err(io_to_pyerr)?;
    let fmt = st.st_mode & libc::S_IFMT;
    Ok((fmt == libc::S_IFIFO, fmt == libc::S_IFSOCK, fmt == libc::S_IFCHR))
}

/// `os.set_blocking(fd, False)`.
fn set_nonblocking(fd: RawFd) -> PyResult<()> {
    let flags = syscall!(fcntl(fd, libc::F_GETFL)).map_err(io_to_pyerr)?;
    if flags & libc::O_NONBLOCK == 0 {
        syscall!(fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)).map_err(io_to_pyerr)?;
    }
    Ok(())
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

/// The file a pipe transport reads or writes: the Python object it was given, whose
/// `close()` closes it, or a bare fd that the transport owns.
struct PipeFile {
    /// The pipe object (`get_extra_info('pipe')`); `None` for a bare fd.
    obj: Option<Py<PyAny>>,
    /// Neither closed by the transport nor let go of (asyncio's `_pipe is not None`).
    open: bool,
}

impl PipeFile {
    /// Closes the file if the transport still has it; the object is kept (for
    /// `get_extra_info('pipe')` it is in the extra dict anyway).
    fn close(&mut self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        if !std::mem::replace(&mut self.open, false) {
            return Ok(());
        }
        match &self.obj {
            Some(obj) => obj.bind(py).call_method0(intern!(py, "close")).map(drop),
            None => {
                // SAFETY: the transport owns this bare fd and closes it once (`open`).
                unsafe { libc::close(fd) };
                Ok(())
            }
        }
    }
}

/// What both pipe transports' Python side looks at.
fn pipe_getter(py: Python<'_>, file: &PipeFile) -> Option<Py<PyAny>> {
    file.open.then(|| file.obj.as_ref().map(|o| o.clone_ref(py))).flatten()
}

fn log(py: Python<'_>, level: &Bound<'_, pyo3::types::PyString>, msg: &str, facade: &Bound<'_, PyAny>) -> PyResult<()> {
    py_attr!(py, "asyncio.log", "logger")?.call_method1(level, (msg, facade))?;
    Ok(())
}

/// `loop.call_soon(callback, arg)` for the transport's own callbacks, in a copy of the
/// context current now (inside the read or write path, the transport's).
fn call_soon(loop_: &Bound<'_, LoopCore>, callback: &Bound<'_, PyAny>, args: &[Bound<'_, PyAny>]) -> PyResult<()> {
    LoopCore::call_soon_internal(loop_, callback, &PyTuple::new(loop_.py(), args)?)
}

// ---------------------------------------------------------------------------------------
// Reading.

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
        let mut file = {
            let mut st = self.state.borrow_mut(py);
            PipeFile {
                obj: st.file.obj.as_ref().map(|o| o.clone_ref(py)),
                open: std::mem::replace(&mut st.file.open, false),
            }
        };
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

// ---------------------------------------------------------------------------------------
// Writing.

struct WriteState {
    /// `None` once the connection is lost.
    loop_: Option<Py<LoopCore>>,
    file: PipeFile,
    protocol: Option<Py<PyAny>>,
    /// The `asyncio.WriteTransport` facade that protocols see; dropped once the
    /// connection is lost.
    facade: Option<Py<PyAny>>,
    buffer: WriteBuffer,
    flow: FlowControl,
    /// close(), write_eof(), abort() or an error: nothing more is written.
    closing: bool,
    /// Writes attempted after the transport failed or closed, plus one per failure.
    conn_lost: u32,
    /// Registered with the loop for reading (the reader-gone watch) / writing.
    reading: bool,
    writing: bool,
    /// `connection_lost` is scheduled or done.
    lost_scheduled: bool,
    lost: bool,
}

/// asyncio's `_UnixWritePipeTransport`.
#[pyclass(module = "ferroloop._core", frozen, weakref)]
pub struct WritePipeTransport {
    fd: RawFd,
    /// A pipe, FIFO or socket: watched for reading, to learn that its reader is gone.
    watch_reader: bool,
    state: GilCell<WriteState>,
}

impl WritePipeTransport {
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

    /// Starts (`on`) or stops watching the fd for reading (`read`) or writing.
    fn set_watch(slf: &Bound<'_, Self>, read: bool, on: bool) -> PyResult<()> {
        native::set_watch(slf, read, on)
    }

    /// asyncio's `_close(exc)`: closing, the queue dropped, no more watching,
    /// `connection_lost(exc)` soon (once, however often this is called).
    fn close_with(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (dropped, schedule) = {
            let mut st = this.state.borrow_mut(py);
            st.closing = true;
            let dropped = std::mem::take(&mut st.buffer);
            (dropped, !std::mem::replace(&mut st.lost_scheduled, true))
        };
        drop(dropped);
        Self::set_watch(slf, false, false)?;
        Self::set_watch(slf, true, false)?;
        if !schedule {
            return Ok(());
        }
        let Some(loop_) = this.loop_of(py) else { return Ok(()) };
        call_soon(
            loop_.bind(py),
            &slf.getattr(intern!(py, "_call_connection_lost"))?,
            &[exc],
        )
    }

    /// asyncio's `_fatal_error`: OSErrors are logged in debug mode only; anything else
    /// goes to the exception handler. Then the transport closes, with
    /// `connection_lost(exc)`.
    fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let loop_ = this.loop_of(py).map(|l| l.into_bound(py));
        let value = fatal::report(loop_.as_ref(), &Self::facade(slf), this.protocol(py), exc, message)?;
        Self::close_with(slf, value)
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        flow::maybe_pause(slf)
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        flow::maybe_resume(slf)
    }

    /// The fd is readable: its reader is gone (asyncio's `_read_ready`).
    fn reader_gone(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let st = slf.get().state.borrow(py);
            if !st.reading || st.loop_.is_none() {
                return Ok(());
            }
        }
        if slf.get().debug(py) {
            log(py, intern!(py, "info"), "%r was closed by peer", &Self::facade(slf))?;
        }
        let queued = !slf.get().state.borrow(py).buffer.is_empty();
        let exc = if queued {
            PyBrokenPipeError::new_err(()).into_value(py).into_bound(py).into_any()
        } else {
            py.None().into_bound(py)
        };
        Self::close_with(slf, exc)
    }

    /// The fd is writable and data is queued (asyncio's `_write_ready`). What the
    /// protocol's callbacks raise is returned, for the loop's report.
    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        {
            let st = slf.get().state.borrow(slf.py());
            if !st.writing || st.buffer.is_empty() || st.loop_.is_none() {
                return Ok(());
            }
        }
        Self::flush(slf)
    }

    /// asyncio's `_write_ready`. An error is what a protocol callback raised.
    fn flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let written = {
            let st = this.state.borrow(py);
            let iov = st.buffer.iovecs();
            writev_raw(this.fd, &iov)
        };
        match written {
            Err(e) if would_block(&e) => Ok(()),
            Err(e) => {
                {
                    let mut st = this.state.borrow_mut(py);
                    st.buffer.clear();
                    st.conn_lost += 1;
                }
                Self::set_watch(slf, false, false)?;
                Self::fatal_error(slf, io_to_pyerr(e), "Fatal write error on pipe transport")
            }
            Ok(n) => {
                let empty = {
                    let mut st = this.state.borrow_mut(py);
                    st.buffer.consume(n);
                    st.buffer.is_empty()
                };
                if !empty {
                    return Ok(());
                }
                Self::set_watch(slf, false, false)?;
                Self::maybe_resume_protocol(slf)?; // may write more
                if this.state.borrow(py).closing {
                    Self::set_watch(slf, true, false)?;
                    this.state.borrow_mut(py).lost_scheduled = true;
                    Self::call_connection_lost(slf, py.None().into_bound(py))?;
                }
                Ok(())
            }
        }
    }

    fn call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
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
        Self::set_watch(slf, true, false)?;
        Self::set_watch(slf, false, false)?;
        let (closed, taken) = {
            let mut st = this.state.borrow_mut(py);
            st.closing = true;
            let closed = st.file.close(py, this.fd);
            (
                closed,
                (
                    st.loop_.take(),
                    st.protocol.take(),
                    st.facade.take(),
                    std::mem::take(&mut st.buffer),
                ),
            )
        };
        drop(taken);
        result.and(closed)
    }
}

impl Native for WritePipeTransport {
    /// Readable: the reader is gone.
    fn on_readable(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::reader_gone(slf)
    }

    fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_ready(slf)
    }

    fn callback_name(_py: Python<'_>, readable: bool) -> &'static str {
        if readable {
            "_read_ready"
        } else {
            "_write_ready"
        }
    }
}

impl Watched for WritePipeTransport {
    fn watched_fd(&self) -> RawFd {
        self.fd
    }

    fn watch_loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.loop_of(py)
    }

    fn record_watch(&self, py: Python<'_>, read: bool, on: bool) -> bool {
        let mut st = self.state.borrow_mut(py);
        std::mem::replace(if read { &mut st.reading } else { &mut st.writing }, on)
    }
}

impl FlowControlled for WritePipeTransport {
    fn flow_change(&self, py: Python<'_>, pause: bool) -> Option<Py<PyAny>> {
        let mut st = self.state.borrow_mut(py);
        let size = st.buffer.size();
        let changed = if pause {
            st.flow.pause(size)
        } else {
            st.flow.resume(size)
        };
        changed.then(|| st.protocol.as_ref().map(|p| p.clone_ref(py))).flatten()
    }

    fn flow_loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.loop_of(py)
    }

    fn flow_facade<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyAny> {
        Self::facade(slf)
    }
}

#[pymethods]
impl WritePipeTransport {
    /// Starts watching for the reader to go; scheduled right after `connection_made`.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().watch_reader || slf.get().state.borrow(py).lost_scheduled {
            return Ok(());
        }
        Self::set_watch(slf, true, true)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::call_connection_lost(slf, exc.clone())
    }

    /// The reader-gone path, as asyncio's reader handle calls it.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::reader_gone(slf)
    }

    /// The write path, as asyncio's writer handle calls it.
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_ready(slf)
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !is_bytes_like(data) {
            // asyncio asserts the type.
            return Err(PyAssertionError::new_err(data.repr()?.unbind()));
        }
        let view = BufferView::get(data, false)?;
        let bytes = view.as_slice();
        if bytes.is_empty() {
            return Ok(());
        }
        let queued_before = {
            let mut st = this.state.borrow_mut(py);
            if st.conn_lost > 0 || st.closing {
                let warn = fatal::count_lost_write(&mut st.conn_lost);
                drop(st);
                if warn {
                    fatal::warn_lost_write(py, LOST_WRITE_WARNING)?;
                }
                return Ok(());
            }
            !st.buffer.is_empty()
        };
        let mut sent = 0;
        if !queued_before {
            match write_raw(this.fd, bytes) {
                Ok(n) => sent = n,
                Err(e) if would_block(&e) => {}
                Err(e) => {
                    drop(view);
                    this.state.borrow_mut(py).conn_lost += 1;
                    return Self::fatal_error(slf, io_to_pyerr(e), "Fatal write error on pipe transport");
                }
            }
            if sent == bytes.len() {
                return Ok(());
            }
            Self::set_watch(slf, false, true)?;
        }
        this.state.borrow_mut(py).buffer.push(
            bytes,
            sent,
            data.cast::<PyBytes>()
                .ok()
                .filter(|b| b.is_exact_instance_of::<PyBytes>()),
        );
        drop(view);
        Self::maybe_pause_protocol(slf)
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let empty = {
            let mut st = this.state.borrow_mut(py);
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            let empty = st.buffer.is_empty();
            if empty {
                st.lost_scheduled = true;
            }
            empty
        };
        if empty {
            Self::set_watch(slf, true, false)?;
            if let Some(loop_) = this.loop_of(py) {
                call_soon(
                    loop_.bind(py),
                    &slf.getattr(intern!(py, "_call_connection_lost"))?,
                    &[py.None().into_bound(py)],
                )?;
            }
        }
        Ok(())
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let open = {
            let st = slf.get().state.borrow(slf.py());
            st.file.open && !st.closing
        };
        if open {
            Self::write_eof(slf)?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_with(slf, slf.py().None().into_bound(slf.py()))
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closing
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state.borrow(py).buffer.size()
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        self.state.borrow(py).flow.limits()
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let limits = flow::parse_limits(high, low)?;
        slf.get().state.borrow_mut(slf.py()).flow.set_limits(limits);
        Self::maybe_pause_protocol(slf)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) {
        let old = self.state.borrow_mut(py).protocol.replace(protocol.clone().unbind());
        drop(old);
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
        let mut file = {
            let mut st = self.state.borrow_mut(py);
            PipeFile {
                obj: st.file.obj.as_ref().map(|o| o.clone_ref(py)),
                open: std::mem::replace(&mut st.file.open, false),
            }
        };
        file.close(py, self.fd)
    }

    #[getter]
    fn _fileno(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).flow.paused()
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
            info.push(if st.writing { "polling" } else { "idle" }.to_string());
            info.push(format!("bufsize={}", st.buffer.size()));
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
            visit.call(&st.facade)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self
            .state
            .try_borrow_mut()
            .map(|mut st| (st.loop_.take(), st.protocol.take(), st.facade.take()));
        drop(taken);
    }
}

// ---------------------------------------------------------------------------------------
// Construction.

/// What both constructors do first, as asyncio's `__init__`: `extra['pipe']`, the file
/// kind check, non-blocking mode. Returns the extra dict and the file kind.
fn prepare<'py>(
    py: Python<'py>,
    fd: RawFd,
    pipe: Option<&Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
    write: bool,
) -> PyResult<(Bound<'py, PyDict>, (bool, bool, bool))> {
    let extra = match extra {
        Some(d) => d, // as asyncio, a dict passed in is filled in place
        None => PyDict::new(py),
    };
    extra.set_item(intern!(py, "pipe"), pipe)?;
    if fd < 0 {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
    }
    let kind = file_kind(fd)?;
    let (fifo, socket, chr) = kind;
    if !(fifo || socket || chr) {
        return Err(PyValueError::new_err(if write {
            "Pipe transport is only for pipes, sockets and character devices"
        } else {
            "Pipe transport is for pipes/sockets only."
        }));
    }
    set_nonblocking(fd)?;
    Ok((extra, kind))
}

/// Schedules what follows the transport's making, as asyncio does: `connection_made`,
/// then the start of reading (`start`), then the waiter.
fn schedule_start<'py>(
    loop_: &Bound<'py, LoopCore>,
    protocol: &Bound<'py, PyAny>,
    facade: &Bound<'py, PyAny>,
    start: Option<Bound<'py, PyAny>>,
    waiter: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    let py = loop_.py();
    let connection_made = protocol.getattr(intern!(py, "connection_made"))?;
    LoopCore::call_soon(loop_, &connection_made, &PyTuple::new(py, [facade])?, None)?;
    if let Some(start) = start {
        LoopCore::call_soon(loop_, &start, &PyTuple::empty(py), None)?;
    }
    if let Some(w) = waiter.filter(|w| !w.is_none()) {
        LoopCore::call_soon(
            loop_,
            py_attr!(py, "ferroloop._transports", "_set_result_unless_cancelled")?,
            &PyTuple::new(py, [w.clone(), py.None().into_bound(py)])?,
            None,
        )?;
    }
    Ok(())
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
            file: PipeFile {
                obj: pipe.map(|p| p.clone().unbind()),
                open: true,
            },
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

/// A write pipe transport over `fd` (asyncio's `_UnixWritePipeTransport.__init__`): the
/// facade protocols see. `pipe` as for [`read_pipe_transport`]. `connection_made()`, then
/// (for a pipe, FIFO or socket) the watch for the reader's going, then the waiter are
/// scheduled.
pub(crate) fn write_pipe_transport<'py>(
    loop_: &Bound<'py, LoopCore>,
    fd: RawFd,
    pipe: Option<&Bound<'py, PyAny>>,
    protocol: &Bound<'py, PyAny>,
    waiter: Option<&Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    let (extra, (fifo, socket, _)) = prepare(py, fd, pipe, extra, true)?;
    let facade = alloc_instance(py_attr!(py, "ferroloop._transports", "WritePipeTransport")?)?;
    facade.setattr(intern!(py, "_extra"), &extra)?;
    let t = WritePipeTransport {
        fd,
        watch_reader: fifo || socket,
        state: GilCell::new(WriteState {
            loop_: Some(loop_.clone().unbind()),
            file: PipeFile {
                obj: pipe.map(|p| p.clone().unbind()),
                open: true,
            },
            protocol: Some(protocol.clone().unbind()),
            facade: Some(facade.clone().unbind()),
            buffer: WriteBuffer::default(),
            flow: FlowControl::default(),
            closing: false,
            conn_lost: 0,
            reading: false,
            writing: false,
            lost_scheduled: false,
            lost: false,
        }),
    };
    let core = Bound::new(py, t)?;
    facade.setattr(intern!(py, "_core"), &core)?;
    // The method every protocol calls: filled now rather than on first use.
    facade.setattr(intern!(py, "write"), core.getattr(intern!(py, "write"))?)?;
    let start = (fifo || socket)
        .then(|| core.getattr(intern!(py, "_start_reading")))
        .transpose()?;
    schedule_start(loop_, protocol, &facade, start, waiter)?;
    Ok(facade)
}

/// The file number of a pipe object, as asyncio takes it (`pipe.fileno()`).
fn pipe_fileno(pipe: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd: i64 = pipe.call_method0(intern!(pipe.py(), "fileno"))?.extract()?;
    RawFd::try_from(fd).map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}

/// `make_read_pipe_transport(loop, pipe, protocol, waiter=None, extra=None)`: the
/// loop's `_make_read_pipe_transport`, over a pipe object (anything with `fileno()`).
#[pyfunction]
#[pyo3(signature = (loop_, pipe, protocol, waiter=None, extra=None))]
pub(crate) fn make_read_pipe_transport<'py>(
    loop_: &Bound<'py, LoopCore>,
    pipe: &Bound<'py, PyAny>,
    protocol: &Bound<'py, PyAny>,
    waiter: Option<&Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    read_pipe_transport(loop_, pipe_fileno(pipe)?, Some(pipe), protocol, waiter, extra)
}

/// `make_write_pipe_transport(loop, pipe, protocol, waiter=None, extra=None)`: the
/// loop's `_make_write_pipe_transport` (see [`make_read_pipe_transport`]).
#[pyfunction]
#[pyo3(signature = (loop_, pipe, protocol, waiter=None, extra=None))]
pub(crate) fn make_write_pipe_transport<'py>(
    loop_: &Bound<'py, LoopCore>,
    pipe: &Bound<'py, PyAny>,
    protocol: &Bound<'py, PyAny>,
    waiter: Option<&Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    write_pipe_transport(loop_, pipe_fileno(pipe)?, Some(pipe), protocol, waiter, extra)
}

pub(crate) fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReadPipeTransport>()?;
    m.add_class::<WritePipeTransport>()?;
    m.add_function(wrap_pyfunction!(make_read_pipe_transport, m)?)?;
    m.add_function(wrap_pyfunction!(make_write_pipe_transport, m)?)?;
    Ok(())
}
