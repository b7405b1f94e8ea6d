//! The stream transport (TCP and Unix sockets), with asyncio's selector transport
//! semantics and the data path in Rust.
//!
//! Reading: one `recv` per readiness event into the loop's shared buffer, one `bytes`
//! built from what arrived, and the protocol's cached `data_received` called with it
//! (or `get_buffer`/`buffer_updated` for a BufferedProtocol, receiving straight into
//! the protocol's buffer). Writing: `write()` sends at once when nothing is queued and
//! queues only the rest; the queue is flushed with vectored writes when the socket is
//! writable. Flow control follows asyncio (high 64 KiB, low 16 KiB by default).
//!
//! `loop.sendfile()` (`python/ferroloop/_sendfile.py`) sends with `os.sendfile()` on the
//! transport's socket. Its one hook here is asyncio's empty waiter: `_make_empty_waiter()`
//! gives a future done once the write queue is empty (failed by a write error or a lost
//! connection), and until `_reset_empty_waiter()` writes are refused. The write queue
//! (`write_queue.rs`) is shared with the write pipe transport.
//!
//! The object handed to protocols is a thin Python facade (`ferroloop._transports`),
//! a subclass of `asyncio.Transport` whose hot methods are slots holding this
//! object's bound methods.
//!
//! The write queue is `write_queue.rs`; flow control (`flow.rs`), asyncio's fatal-error
//! report and the count of writes after the connection was lost (`fatal.rs`) are shared
//! with the datagram transport.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PySystemExit, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyTuple};

use crate::event_loop::LoopCore;
use crate::gil::{py_attr, GilCell};
use crate::transports::fatal;
use crate::transports::flow::{self, FlowControl, FlowControlled};
use crate::transports::native::{self, Native, Watched};
use crate::transports::write_queue::{WriteBuffer, IOV_BATCH};

/// Bytes read per readiness event at most (asyncio's `max_size`).
pub(crate) const MAX_READ: usize = 256 * 1024;
/// After a read of at least this size, the next read goes straight into a new bytes
/// object instead of through the shared buffer.
const BULK_READ: usize = 64 * 1024;
/// A connection whose last read reached this many bytes reads into a protocol's buffer
/// with the bulk of the copy cache-line aligned (see `recv_cache_aligned`).
const ALIGNED_READ: usize = 4 * 1024;
struct TransportState {
    loop_: Option<Py<LoopCore>>,
    /// The Python socket object; closed once the connection is lost.
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// The protocol's bound methods, looked up once per protocol.
    data_received: Option<Py<PyAny>>,
    get_buffer: Option<Py<PyAny>>,
    buffer_updated: Option<Py<PyAny>>,
    buffered: bool,
    /// The `asyncio.Transport` facade that protocols see.
    facade: Option<Py<PyAny>>,
    server: Option<Py<PyAny>>,
    buffer: WriteBuffer,
    flow: FlowControl,
    closing: bool,
    /// write_eof() was called.
    eof: bool,
    /// pause_reading() was called.
    paused: bool,
    /// Writes attempted after the connection was lost, plus one once it is.
    conn_lost: u32,
    protocol_connected: bool,
    /// Size of the last read, to pick the read strategy.
    last_read: usize,
    /// Registered with the loop for reading / writing.
    reading: bool,
    writing: bool,
    /// While `loop.sendfile()` sends with `os.sendfile()` (asyncio's `_empty_waiter`): a
    /// future done once the write queue is empty; writes are refused meanwhile.
    empty_waiter: Option<Py<PyAny>>,
}

#[pyclass(module = "ferroloop._core", frozen, weakref)]
pub struct StreamTransport {
    fd: RawFd,
    state: GilCell<TransportState>,
}

pub(crate) fn is_fatal(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PySystemExit>(py) || e.is_instance_of::<PyKeyboardInterrupt>(py)
}

pub(crate) fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// An `OSError` (of the subclass its errno maps to) with the C library's message, as
/// the socket module raises it.
pub(crate) fn io_to_pyerr(e: std::io::Error) -> PyErr {
    let Some(code) = e.raw_os_error() else {
        if crate::reactor::fork::is_inherited(&e) {
            return PyRuntimeError::new_err(e.to_string());
        }
        return PyOSError::new_err(e.to_string());
    };
    // As the socket module raises its errors: OSError(errno, strerror(errno)), which
    // CPython turns into the errno's subclass (ConnectionResetError, ...). Made by
    // CPython directly, with no formatting on our side: a peer's reset of a short
    // connection comes through here once per connection.
    Python::attach(|py| {
        // SAFETY: errno is this thread's; PyErr_SetFromErrno reads it, sets the error
        // indicator (GIL held inside `attach`) and returns NULL, and fetch takes it.
        unsafe {
            *libc::__errno_location() = code;
            ffi::PyErr_SetFromErrno(ffi::PyExc_OSError);
        }
        PyErr::fetch(py)
    })
}

/// A borrowed contiguous buffer of a bytes-like object.
pub(crate) struct BufferView(ffi::Py_buffer);

impl BufferView {
    pub(crate) fn get(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<BufferView> {
        // SAFETY: an all-zero Py_buffer is a valid "empty" value that PyObject_GetBuffer fills.
        let mut view: ffi::Py_buffer = unsafe { std::mem::zeroed() };
        let flags = if writable {
            ffi::PyBUF_WRITABLE
        } else {
            ffi::PyBUF_SIMPLE
        };
        // SAFETY: obj is a live object, view is writable memory for one Py_buffer, GIL held.
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut view, flags) } < 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(BufferView(view))
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: a successful PyObject_GetBuffer(PyBUF_SIMPLE) gives `len` contiguous bytes at `buf`,
        // valid until PyBuffer_Release.
        unsafe { std::slice::from_raw_parts(self.0.buf as *const u8, self.0.len as usize) }
    }

    fn ptr_mut(&mut self) -> *mut u8 {
        self.0.buf as *mut u8
    }

    fn len(&self) -> usize {
        self.0.len as usize
    }
}

impl Drop for BufferView {
    fn drop(&mut self) {
        // SAFETY: the view was filled by PyObject_GetBuffer and is released exactly once.
        // Dropping happens with the GIL held (BufferView never leaves a GIL scope).
        unsafe { ffi::PyBuffer_Release(&mut self.0) };
    }
}

pub(crate) fn send(fd: RawFd, data: &[u8]) -> std::io::Result<usize> {
    raw_syscall!(
        libc::SYS_sendto,
        fd,
        data.as_ptr(),
        data.len(),
        libc::MSG_NOSIGNAL,
        0,
        0
    )
}

/// A message header with no address or control data, over `iov` (which must outlive
/// its use).
fn msghdr_over(iov: &[libc::iovec]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid; we then point it at `iov`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    msg
}

fn sendv(fd: RawFd, iov: &[libc::iovec]) -> std::io::Result<usize> {
    let msg = msghdr_over(iov);
    raw_syscall!(libc::SYS_sendmsg, fd, &msg as *const libc::msghdr, libc::MSG_NOSIGNAL)
}

fn recv(fd: RawFd, buf: *mut u8, len: usize) -> std::io::Result<usize> {
    raw_syscall!(libc::SYS_recvfrom, fd, buf, len, 0, 0, 0)
}

/// `recv` into memory that need not be aligned, with the bulk of the copy landing
/// cache-line aligned: the bytes up to the first 64-byte boundary go in a first iovec,
/// the rest in a second (the kernel's copy to user memory is much slower into an
/// unaligned destination; see `reactor::read_buf`).
pub(crate) fn recv_cache_aligned(fd: RawFd, buf: *mut u8, len: usize) -> std::io::Result<usize> {
    const LINE: usize = 64;
    let head = buf.align_offset(LINE);
    if head == 0 || head >= len {
        return recv(fd, buf, len);
    }
    let iov = [
        libc::iovec {
            iov_base: buf.cast(),
            iov_len: head,
        },
        // `head < len`: the second piece starts inside the caller's buffer.
        libc::iovec {
            iov_base: buf.wrapping_add(head).cast(),
            iov_len: len - head,
        },
    ];
    let mut msg = msghdr_over(&iov);
    raw_syscall!(libc::SYS_recvmsg, fd, &mut msg as *mut libc::msghdr, 0)
}

extern "C" {
    /// CPython's in-place resize of a fresh bytes object (not exported by pyo3-ffi).
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, newsize: ffi::Py_ssize_t) -> libc::c_int;
}

/// Receives into the loop's shared buffer and copies out what arrived: cheapest for
/// small reads. `None` at end of file.
fn recv_shared<'py>(py: Python<'py>, fd: RawFd, loop_: &Py<LoopCore>) -> std::io::Result<Option<Bound<'py, PyBytes>>> {
    let mut buf = loop_.get().read_buf.borrow_mut(py);
    let n = recv(fd, buf.as_mut_ptr(), buf.len())?;
    Ok((n > 0).then(|| PyBytes::new(py, &buf.as_slice()[..n])))
}

/// Receives straight into a new bytes object sized by FIONREAD: no copy, for a
/// connection whose reads are large. (A bytes object of the full 256 KiB, shrunk after
/// the read, would come from mmap on every read.)
fn recv_bytes<'py>(py: Python<'py>, fd: RawFd, loop_: &Py<LoopCore>) -> std::io::Result<Option<Bound<'py, PyBytes>>> {
    let mut avail: libc::c_int = 0;
    syscall!(ioctl(fd, libc::FIONREAD, &mut avail))?;
    if avail <= 0 {
        // Nothing queued (end of file, or an error to report): the plain path says which.
        return recv_shared(py, fd, loop_);
    }
    let size = (avail as usize).min(MAX_READ);
    // SAFETY: PyBytes_FromStringAndSize(NULL, n) returns a new, uninitialised bytes
    // object of n bytes (or NULL on memory error), which nothing else has seen yet, so
    // writing into it and resizing it in place are allowed. Every path releases or
    // hands over the reference exactly once. The GIL is held.
    unsafe {
        let mut obj = ffi::PyBytes_FromStringAndSize(std::ptr::null(), size as ffi::Py_ssize_t);
        if obj.is_null() {
            PyErr::take(py);
            return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        }
        let n = match recv_cache_aligned(fd, ffi::PyBytes_AsString(obj) as *mut u8, size) {
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
        if n < size && _PyBytes_Resize(&mut obj, n as ffi::Py_ssize_t) < 0 {
            // The failed resize already released the object.
            PyErr::take(py);
            return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        }
        Ok(Some(Bound::from_owned_ptr(py, obj).cast_into_unchecked()))
    }
}

/// `sock.close()`. For a plain `socket.socket`, what its Python `close()` and
/// `_real_close()` do, without their two frames.
pub(crate) fn close_socket(sock: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = sock.py();
    if !sock.get_type().is(py_attr!(py, "socket", "socket")?) {
        return sock.call_method0(intern!(py, "close")).map(drop);
    }
    sock.setattr(intern!(py, "_closed"), true)?;
    let io_refs: isize = sock.getattr(intern!(py, "_io_refs"))?.extract()?;
    if io_refs <= 0 {
        static CLOSE: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
        let close = CLOSE.get_or_try_init(py, || {
            py_attr!(py, "_socket", "socket")?.getattr("close").map(Bound::unbind)
        })?;
        close.bind(py).call1((sock,))?;
    }
    Ok(())
}

/// Is `obj` bytes, bytearray or memoryview, the types asyncio's write() accepts?
pub(crate) fn is_bytes_like(obj: &Bound<'_, PyAny>) -> bool {
    obj.is_instance_of::<PyBytes>() || obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>()
}

impl StreamTransport {
    /// Completes the pending `_make_empty_waiter()` future, if any and not done: the
    /// write queue is empty (`Ok`), or writing failed or the connection was lost.
    fn settle_empty_waiter(slf: &Bound<'_, Self>, outcome: Result<(), Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let waiter = slf
            .get()
            .state
            .borrow(py)
            .empty_waiter
            .as_ref()
            .map(|w| w.clone_ref(py));
        let Some(waiter) = waiter.map(|w| w.into_bound(py)) else {
            return Ok(());
        };
        if waiter.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        match outcome {
            Ok(()) => waiter.call_method1(intern!(py, "set_result"), (py.None(),))?,
            Err(exc) => waiter.call_method1(intern!(py, "set_exception"), (exc,))?,
        };
        Ok(())
    }

    /// The object protocols see: the facade, or this object if it has none.
    pub(crate) fn facade<'py>(slf: &Bound<'py, StreamTransport>) -> Bound<'py, PyAny> {
        let py = slf.py();
        match slf.get().state.borrow(py).facade.as_ref() {
            Some(f) => f.bind(py).clone(),
            None => slf.clone().into_any(),
        }
    }

    /// Registers the transport with its loop as the owner of its fd. Called once,
    /// after construction.
    pub(crate) fn register(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        match slf.get().loop_of(py) {
            Some(l) => l.get().register_transport(py, slf.get().fd, slf.as_any()),
            None => Ok(()),
        }
    }

    pub(crate) fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closing
    }

    fn loop_of(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.state.borrow(py).loop_.as_ref().map(|l| l.clone_ref(py))
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.loop_of(py).is_some_and(|l| l.get().debug(py))
    }

    fn log_debug(slf: &Bound<'_, Self>, msg: &str) -> PyResult<()> {
        let py = slf.py();
        py_attr!(py, "asyncio.log", "logger")?.call_method1(intern!(py, "debug"), (msg, Self::facade(slf)))?;
        Ok(())
    }

    /// Starts (`on`) or stops watching the socket for reading or writing.
    fn set_watch(slf: &Bound<'_, Self>, read: bool, on: bool) -> PyResult<()> {
        native::set_watch(slf, read, on)
    }

    fn call_soon(slf: &Bound<'_, Self>, callback: Bound<'_, PyAny>, arg: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if let Some(loop_) = slf.get().loop_of(py) {
            LoopCore::call_soon_internal(loop_.bind(py), &callback, &PyTuple::new(py, [arg])?)?;
        }
        Ok(())
    }

    /// asyncio's `_fatal_error`: OSErrors are logged in debug mode only; anything else
    /// goes to the exception handler. Then the transport is closed at once.
    fn fatal_error(slf: &Bound<'_, Self>, exc: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let loop_ = this.loop_of(py).map(|l| l.into_bound(py));
        let protocol = this.state.borrow(py).protocol.as_ref().map(|p| p.clone_ref(py));
        let value = fatal::report(loop_.as_ref(), &Self::facade(slf), protocol, exc, message)?;
        Self::force_close(slf, value)
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (had_buffer, was_closing) = {
            let mut st = this.state.borrow_mut(py);
            if st.conn_lost > 0 {
                return Ok(());
            }
            let had = !st.buffer.is_empty();
            st.buffer.clear();
            let was = st.closing;
            st.closing = true;
            st.conn_lost += 1;
            (had, was)
        };
        if had_buffer {
            Self::set_watch(slf, false, false)?;
        }
        if !was_closing {
            Self::set_watch(slf, true, false)?;
        }
        Self::call_soon(slf, slf.getattr(intern!(py, "_call_connection_lost"))?, exc)
    }

    fn maybe_pause_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        flow::maybe_pause(slf)
    }

    fn maybe_resume_protocol(slf: &Bound<'_, Self>) -> PyResult<()> {
        flow::maybe_resume(slf)
    }

    /// The socket is readable.
    pub(crate) fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (buffered, callback, loop_) = {
            let st = this.state.borrow(py);
            if st.conn_lost > 0 || !st.reading {
                return Ok(());
            }
            let cb = if st.buffered { &st.get_buffer } else { &st.data_received };
            (
                st.buffered,
                cb.as_ref().map(|c| c.clone_ref(py)),
                st.loop_.as_ref().map(|l| l.clone_ref(py)),
            )
        };
        let Some(loop_) = loop_ else { return Ok(()) };
        if buffered {
            return Self::read_ready_buffered(slf, callback);
        }
        let bulk = this.state.borrow(py).last_read >= BULK_READ;
        let received = if bulk {
            recv_bytes(py, this.fd, &loop_)
        } else {
            recv_shared(py, this.fd, &loop_)
        };
        let data = match received {
            Ok(d) => d,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return Self::fatal_error(slf, io_to_pyerr(e), "Fatal read error on socket transport"),
        };
        this.state.borrow_mut(py).last_read = data.as_ref().map_or(0, |d| d.as_bytes().len());
        let Some(data) = data else { return Self::on_eof(slf) };
        let result = match callback {
            Some(cb) => cb.bind(py).call1((data,)),
            None => Self::protocol_call(slf, "data_received", (data,)),
        };
        if let Err(e) = result {
            if is_fatal(py, &e) {
                return Err(e);
            }
            return Self::fatal_error(slf, e, "Fatal error: protocol.data_received() call failed.");
        }
        Ok(())
    }

    fn protocol_call<'py>(
        slf: &Bound<'py, Self>,
        name: &str,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let protocol = slf.get().state.borrow(py).protocol.as_ref().map(|p| p.clone_ref(py));
        match protocol {
            Some(p) => p.into_bound(py).call_method1(name, args),
            None => Ok(py.None().into_bound(py)),
        }
    }

    fn read_ready_buffered(slf: &Bound<'_, Self>, get_buffer: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let buf = match get_buffer {
            Some(gb) => gb.bind(py).call1((-1,)),
            None => Self::protocol_call(slf, "get_buffer", (-1,)),
        };
        let buf = buf.and_then(|b| {
            if b.len()? == 0 {
                return Err(PyRuntimeError::new_err("get_buffer() returned an empty buffer"));
            }
            Ok(b)
        });
        let buf = match buf {
            Ok(b) => b,
            Err(e) if is_fatal(py, &e) => return Err(e),
            Err(e) => return Self::fatal_error(slf, e, "Fatal error: protocol.get_buffer() call failed."),
        };
        let mut view = match BufferView::get(&buf, true) {
            Ok(v) => v,
            Err(_) => {
                // What socket.recv_into() raises for a buffer it cannot write to.
                let e = PyTypeError::new_err(format!(
                    "recv_into() argument 1 must be read-write bytes-like object, not {}",
                    buf.get_type().name()?
                ));
                return Self::fatal_error(slf, e, "Fatal read error on socket transport");
            }
        };
        // Small reads skip the two-piece `recvmsg`: its setup costs more than an unaligned
        // copy of a few KiB.
        let received = if this.state.borrow(py).last_read >= ALIGNED_READ {
            recv_cache_aligned(this.fd, view.ptr_mut(), view.len())
        } else {
            recv(this.fd, view.ptr_mut(), view.len())
        };
        let n = match received {
            Ok(n) => n,
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => {
                drop(view);
                return Self::fatal_error(slf, io_to_pyerr(e), "Fatal read error on socket transport");
            }
        };
        drop(view);
        this.state.borrow_mut(py).last_read = n;
        if n == 0 {
            return Self::on_eof(slf);
        }
        let updated = this.state.borrow(py).buffer_updated.as_ref().map(|c| c.clone_ref(py));
        let result = match updated {
            Some(cb) => cb.bind(py).call1((n,)),
            None => Self::protocol_call(slf, "buffer_updated", (n,)),
        };
        if let Err(e) = result {
            if is_fatal(py, &e) {
                return Err(e);
            }
            return Self::fatal_error(slf, e, "Fatal error: protocol.buffer_updated() call failed.");
        }
        Ok(())
    }

    fn on_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if slf.get().debug(py) {
            Self::log_debug(slf, "%r received EOF")?;
        }
        let keep_open = match Self::protocol_call(slf, "eof_received", ()) {
            Ok(k) => k,
            Err(e) if is_fatal(py, &e) => return Err(e),
            Err(e) => return Self::fatal_error(slf, e, "Fatal error: protocol.eof_received() call failed."),
        };
        // As asyncio's, a result whose truth cannot be told is an error of the read path.
        if keep_open.is_truthy()? {
            // The protocol may still write, but nothing more can be read.
            Self::set_watch(slf, true, false)
        } else {
            Self::close(slf)
        }
    }

    /// The socket is writable and data is queued.
    pub(crate) fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let sent = {
            let st = this.state.borrow(py);
            if st.conn_lost > 0 || st.buffer.is_empty() {
                return Ok(());
            }
            let iov = st.buffer.iovecs();
            sendv(this.fd, &iov)
        };
        match sent {
            Err(e) if would_block(&e) => Ok(()),
            Err(e) => {
                Self::set_watch(slf, false, false)?;
                this.state.borrow_mut(py).buffer.clear();
                let err = io_to_pyerr(e);
                let value = err.value(py).clone().into_any();
                Self::fatal_error(slf, err, "Fatal write error on socket transport")?;
                Self::settle_empty_waiter(slf, Err(value))
            }
            Ok(n) => {
                this.state.borrow_mut(py).buffer.consume(n);
                Self::maybe_resume_protocol(slf)?;
                let (empty, closing, eof) = {
                    let st = this.state.borrow(py);
                    (st.buffer.is_empty(), st.closing, st.eof)
                };
                if empty {
                    Self::set_watch(slf, false, false)?;
                    Self::settle_empty_waiter(slf, Ok(()))?;
                    if closing {
                        Self::call_connection_lost(slf, py.None().into_bound(py))?;
                    } else if eof {
                        syscall!(shutdown(this.fd, libc::SHUT_WR)).map_err(io_to_pyerr)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// asyncio 3.12's writelines(): refused after write_eof(); an empty (falsy) argument
    /// does nothing; each item is taken as `memoryview(item)`, with its errors.
    fn writelines_312(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        if slf.get().state.borrow(py).eof {
            return Err(PyRuntimeError::new_err("Cannot call writelines() after write_eof()"));
        }
        if slf.get().state.borrow(py).empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("unable to writelines; sendfile is in progress"));
        }
        if !list_of_data.is_truthy()? {
            return Ok(());
        }
        let mut views = Vec::new();
        let mut objs = Vec::new();
        for item in list_of_data.try_iter()? {
            let item = item?;
            let view = BufferView::get(&item, false).map_err(|_| {
                let name = item.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                PyTypeError::new_err(format!("memoryview: a bytes-like object is required, not '{name}'"))
            })?;
            views.push(view);
            objs.push(item);
        }
        Self::write_buffers(slf, &views, &objs)
    }

    /// What write() and writelines() share once the data is known to be bytes-like:
    /// the checks, then send now or queue.
    fn write_buffers(slf: &Bound<'_, Self>, views: &[BufferView], objs: &[Bound<'_, PyAny>]) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let total: usize = views.iter().map(|v| v.len()).sum();
        {
            let mut st = this.state.borrow_mut(py);
            if st.eof {
                return Err(PyRuntimeError::new_err("Cannot call write() after write_eof()"));
            }
            if st.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err("unable to write; sendfile is in progress"));
            }
            if total == 0 {
                return Ok(());
            }
            if st.conn_lost > 0 {
                let warn = fatal::count_lost_write(&mut st.conn_lost);
                drop(st);
                if warn {
                    fatal::warn_lost_write(py, fatal::LOST_SEND_WARNING)?;
                }
                return Ok(());
            }
        }
        let queued_before = !this.state.borrow(py).buffer.is_empty();
        let mut sent = 0;
        if !queued_before {
            let r = if views.len() == 1 {
                send(this.fd, views[0].as_slice())
            } else {
                let iov: Vec<libc::iovec> = views
                    .iter()
                    .take(IOV_BATCH)
                    .map(|v| libc::iovec {
                        iov_base: v.as_slice().as_ptr() as *mut libc::c_void,
                        iov_len: v.len(),
                    })
                    .collect();
                sendv(this.fd, &iov)
            };
            match r {
                Ok(n) => sent = n,
                Err(e) if would_block(&e) => {}
                Err(e) => return Self::fatal_error(slf, io_to_pyerr(e), "Fatal write error on socket transport"),
            }
            if sent == total {
                return Ok(());
            }
        }
        {
            let mut st = this.state.borrow_mut(py);
            let mut skip = sent;
            for (v, obj) in views.iter().zip(objs) {
                let s = v.as_slice();
                if skip >= s.len() {
                    skip -= s.len();
                    continue;
                }
                st.buffer.push(
                    s,
                    skip,
                    obj.cast::<PyBytes>()
                        .ok()
                        .filter(|b| b.is_exact_instance_of::<PyBytes>()),
                );
                skip = 0;
            }
        }
        if !queued_before {
            Self::set_watch(slf, false, true)?;
        }
        Self::maybe_pause_protocol(slf)
    }

    fn call_connection_lost(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (connected, protocol) = {
            let st = this.state.borrow(py);
            (st.protocol_connected, st.protocol.as_ref().map(|p| p.clone_ref(py)))
        };
        let result = match (connected, protocol) {
            (true, Some(p)) => p
                .bind(py)
                .call_method1(intern!(py, "connection_lost"), (exc,))
                .map(drop),
            _ => Ok(()),
        };
        // Whatever connection_lost did, the socket is closed and the references dropped.
        Self::set_watch(slf, true, false)?;
        Self::set_watch(slf, false, false)?;
        // The facade goes too: it holds this object, so keeping it would leave a
        // reference cycle per connection for the garbage collector.
        let (loop_, sock, server, protocol, cbs, facade) = {
            let mut st = this.state.borrow_mut(py);
            // From here on the fd is closed (and its number may be reused): a write only
            // counts, as after close() with nothing buffered.
            st.conn_lost = st.conn_lost.max(1);
            (
                st.loop_.take(),
                st.sock.take(),
                st.server.take(),
                st.protocol.take(),
                (st.data_received.take(), st.get_buffer.take(), st.buffer_updated.take()),
                st.facade.take(),
            )
        };
        if let Some(l) = &loop_ {
            l.get().unregister_transport(py, this.fd, slf.as_any());
        }
        let closed = match &sock {
            Some(s) => close_socket(s.bind(py)),
            None => Ok(()),
        };
        // asyncio 3.13's Server keeps its clients (for close_clients/abort_clients)
        // and is told which one leaves; before 3.13 it only counts them.
        let detached = match server {
            Some(s) if crate::pyversion::at_least(py, (3, 13, 0)) => {
                let who = facade
                    .as_ref()
                    .map_or_else(|| slf.clone().into_any(), |f| f.bind(py).clone());
                s.bind(py).call_method1(intern!(py, "_detach"), (who,)).map(drop)
            }
            Some(s) => s.bind(py).call_method0(intern!(py, "_detach")).map(drop),
            None => Ok(()),
        };
        drop((loop_, sock, protocol, cbs, facade));
        let lost = pyo3::exceptions::PyConnectionError::new_err("Connection is closed by peer");
        let waiter = Self::settle_empty_waiter(slf, Err(lost.into_value(py).into_bound(py).into_any()));
        result.and(closed).and(detached).and(waiter)
    }
}

impl Native for StreamTransport {
    fn on_readable(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::read_ready(slf)
    }

    fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_ready(slf)
    }

    fn callback_name(py: Python<'_>, readable: bool) -> &'static str {
        if readable {
            "_read_ready"
        } else if crate::pyversion::at_least(py, (3, 12, 0)) {
            "_write_sendmsg"
        } else {
            "_write_ready"
        }
    }

    fn open_facade<'py>(slf: &Bound<'py, Self>) -> Option<Bound<'py, PyAny>> {
        (!slf.get().is_closing(slf.py())).then(|| Self::facade(slf))
    }
}

impl Watched for StreamTransport {
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

impl FlowControlled for StreamTransport {
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
impl StreamTransport {
    #[new]
    #[pyo3(signature = (loop_, sock, protocol, facade=None, server=None))]
    pub(crate) fn new(
        loop_: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        facade: Option<&Bound<'_, PyAny>>,
        server: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
        }
        let server = server.filter(|s| !s.is_none());
        // TCP_NODELAY on every TCP stream; a Unix socket answers EOPNOTSUPP, ignored.
        let one: libc::c_int = 1;
        let _ = syscall!(setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ));
        let t = StreamTransport {
            fd,
            state: GilCell::new(TransportState {
                loop_: Some(loop_.clone().unbind()),
                sock: Some(sock.clone().unbind()),
                protocol: None,
                data_received: None,
                get_buffer: None,
                buffer_updated: None,
                buffered: false,
                facade: facade.filter(|f| !f.is_none()).map(|f| f.clone().unbind()),
                server: server.map(|s| s.clone().unbind()),
                buffer: WriteBuffer::default(),
                flow: FlowControl::default(),
                closing: false,
                eof: false,
                paused: false,
                conn_lost: 0,
                protocol_connected: false,
                last_read: 0,
                reading: false,
                writing: false,
                empty_waiter: None,
            }),
        };
        t.install_protocol(protocol)?;
        Ok(t)
    }

    /// Starts reading; scheduled right after `connection_made`.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().is_reading(py) {
            return Ok(());
        }
        Self::set_watch(slf, true, true)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::call_connection_lost(slf, exc.clone())
    }

    /// The read path, as the loop runs it when the socket is readable (asyncio's reader
    /// callback, named in reports of what it raises).
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::read_ready(slf)
    }

    /// The write path, as the loop runs it when the socket is writable (asyncio 3.11's
    /// writer callback).
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_ready(slf)
    }

    /// The write path, under the name of asyncio's writer callback from Python 3.12.
    fn _write_sendmsg(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_ready(slf)
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if !is_bytes_like(data) {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        let view = BufferView::get(data, false)?;
        Self::write_buffers(slf, std::slice::from_ref(&view), std::slice::from_ref(data))
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        if crate::pyversion::at_least(slf.py(), (3, 12, 0)) {
            return Self::writelines_312(slf, list_of_data);
        }
        // asyncio 3.11's writelines() is write(b"".join(list_of_data)): any iterable of
        // objects with the buffer protocol, and join's errors.
        let items = list_of_data
            .try_iter()
            .map_err(|_| PyTypeError::new_err("can only join an iterable"))?;
        let mut views = Vec::new();
        let mut objs = Vec::new();
        for (i, item) in items.enumerate() {
            let item = item?;
            let view = BufferView::get(&item, false).map_err(|_| {
                let name = item.get_type().name().map(|n| n.to_string()).unwrap_or_default();
                PyTypeError::new_err(format!("sequence item {i}: expected a bytes-like object, {name} found"))
            })?;
            views.push(view);
            objs.push(item);
        }
        Self::write_buffers(slf, &views, &objs)
    }

    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let empty = {
            let mut st = this.state.borrow_mut(py);
            if st.closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            st.buffer.is_empty()
        };
        if empty {
            syscall!(shutdown(this.fd, libc::SHUT_WR)).map_err(io_to_pyerr)?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
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
                st.conn_lost += 1;
            }
            empty
        };
        Self::set_watch(slf, true, false)?;
        if empty {
            Self::set_watch(slf, false, false)?;
            Self::call_soon(
                slf,
                slf.getattr(intern!(py, "_call_connection_lost"))?,
                py.None().into_bound(py),
            )?;
        }
        Ok(())
    }

    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, slf.py().None().into_bound(slf.py()))
    }

    /// asyncio's `_SelectorTransport._force_close(exc)`: what TLS (`tls.rs`) closes the
    /// connection with, so that `connection_lost` gets the TLS layer's exception.
    fn _force_close(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::force_close(slf, exc.clone())
    }

    #[pyo3(name = "is_closing")]
    fn py_is_closing(&self, py: Python<'_>) -> bool {
        self.is_closing(py)
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        let st = self.state.borrow(py);
        !st.paused && !st.closing
    }

    fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if !slf.get().is_reading(py) {
            return Ok(());
        }
        slf.get().state.borrow_mut(py).paused = true;
        Self::set_watch(slf, true, false)?;
        if slf.get().debug(py) {
            Self::log_debug(slf, "%r pauses reading")?;
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
        Self::set_watch(slf, true, true)?;
        if slf.get().debug(py) {
            Self::log_debug(slf, "%r resumes reading")?;
        }
        Ok(())
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

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        self.install_protocol(protocol)
    }

    /// For `loop.sendfile()` (asyncio's `_make_empty_waiter`): a future done once the
    /// write queue is empty; until `_reset_empty_waiter()`, writes are refused.
    fn _make_empty_waiter(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if this.state.borrow(py).empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let Some(loop_) = this.loop_of(py) else {
            return Err(PyRuntimeError::new_err("the transport is closed"));
        };
        let waiter = loop_.bind(py).call_method0(intern!(py, "create_future"))?;
        let empty = {
            let mut st = this.state.borrow_mut(py);
            st.empty_waiter = Some(waiter.clone().unbind());
            st.buffer.is_empty()
        };
        if empty {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(waiter.unbind())
    }

    fn _reset_empty_waiter(&self, py: Python<'_>) {
        let old = self.state.borrow_mut(py).empty_waiter.take();
        drop(old);
    }

    /// Whether the protocol was told to pause writing (for `loop.sendfile()`'s fallback).
    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).flow.paused()
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.borrow(py).protocol.as_ref().map(|p| p.clone_ref(py))
    }

    #[getter]
    fn _sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.borrow(py).sock.as_ref().map(|s| s.clone_ref(py))
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    /// The words of the transport's repr after its class name.
    fn _repr_info(&self, py: Python<'_>) -> Vec<String> {
        let st = self.state.borrow(py);
        let mut info = Vec::new();
        if st.sock.is_none() {
            info.push("closed".to_string());
        } else if st.closing {
            info.push("closing".to_string());
        }
        info.push(format!("fd={}", self.fd));
        if st
            .loop_
            .as_ref()
            .is_some_and(|l| !l.get().state.borrow(py).closed_flag())
        {
            info.push(format!("read={}", if st.reading { "polling" } else { "idle" }));
            info.push(format!(
                "write=<{}, bufsize={}>",
                if st.writing { "polling" } else { "idle" },
                st.buffer.size()
            ));
        }
        info
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(st) = self.state.try_borrow() {
            visit.call(&st.loop_)?;
            visit.call(&st.sock)?;
            visit.call(&st.protocol)?;
            visit.call(&st.data_received)?;
            visit.call(&st.get_buffer)?;
            visit.call(&st.buffer_updated)?;
            visit.call(&st.facade)?;
            visit.call(&st.server)?;
            visit.call(&st.empty_waiter)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.state.try_borrow_mut().map(|mut st| {
            (
                st.loop_.take(),
                st.protocol.take(),
                st.data_received.take(),
                st.get_buffer.take(),
                st.buffer_updated.take(),
                st.facade.take(),
                st.server.take(),
                st.empty_waiter.take(),
            )
        });
        drop(taken);
    }
}

impl StreamTransport {
    /// Sets the protocol and caches the methods the read path calls.
    fn install_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let buffered = protocol.is_instance(py_attr!(py, "asyncio", "BufferedProtocol")?)?;
        let method = |name: &str| protocol.getattr(name).ok().map(Bound::unbind);
        let (dr, gb, bu) = if buffered {
            (None, method("get_buffer"), method("buffer_updated"))
        } else {
            (method("data_received"), None, None)
        };
        let old = {
            let mut st = self.state.borrow_mut(py);
            st.buffered = buffered;
            st.protocol_connected = true;
            (
                st.protocol.replace(protocol.clone().unbind()),
                std::mem::replace(&mut st.data_received, dr),
                std::mem::replace(&mut st.get_buffer, gb),
                std::mem::replace(&mut st.buffer_updated, bu),
            )
        };
        drop(old);
        Ok(())
    }
}
