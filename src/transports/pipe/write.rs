//! The write pipe transport, with the semantics of asyncio's `_UnixWritePipeTransport`
//! (see the parent module for what both pipe transports share).
//!
//! Writing: `write()` writes at once when nothing is queued and queues only the rest,
//! flushed with `writev(2)` when the fd is writable; asyncio's flow control, except
//! that, as asyncio's pipe transport does, `resume_writing()` comes only once the queue
//! is empty. A pipe or socket written to is also watched for reading, as asyncio
//! does: it becomes readable (an error, or end of file) once its reader is gone, and
//! the transport is then closed: `connection_lost(None)`, or `BrokenPipeError()` when
//! data was still queued. A write that fails (EPIPE on a character device, EIO on a
//! pty whose master is closed) ends the transport with `connection_lost(exc)`.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyAssertionError, PyBrokenPipeError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::event_loop::LoopCore;
use crate::gil::{py_attr, GilCell};
use crate::transports::accept::alloc_instance;
use crate::transports::fatal;
use crate::transports::flow::{self, FlowControl, FlowControlled};
use crate::transports::native::{self, Native, Watched};
use crate::transports::stream::{io_to_pyerr, is_bytes_like, would_block, BufferView};
use crate::transports::write_queue::WriteBuffer;

use super::{call_soon, log, pipe_getter, prepare, schedule_start, PipeFile};

/// asyncio's warning about writes after a pipe transport's connection was lost.
const LOST_WRITE_WARNING: &str = "pipe closed by peer or os.write(pipe, data) raised exception.";

fn write_raw(fd: RawFd, data: &[u8]) -> std::io::Result<usize> {
    raw_syscall!(libc::SYS_write, fd, data.as_ptr(), data.len())
}

fn writev_raw(fd: RawFd, iov: &[libc::iovec]) -> std::io::Result<usize> {
    raw_syscall!(libc::SYS_writev, fd, iov.as_ptr(), iov.len())
}

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
        let mut file = self.state.borrow_mut(py).file.take(py);
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

/// A write pipe transport over `fd` (asyncio's `_UnixWritePipeTransport.__init__`): the
/// facade protocols see. `pipe` as for [`super::read_pipe_transport`].
/// `connection_made()`, then (for a pipe, FIFO or socket) the watch for the reader's
/// going, then the waiter are scheduled.
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
            file: PipeFile::opened(pipe),
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
