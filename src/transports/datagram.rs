//! The datagram transport (UDP and Unix datagram sockets), with the semantics of
//! asyncio's `_SelectorDatagramTransport` and the data path in Rust.
//!
//! Receiving: when the socket is readable, up to `MAX_DATAGRAMS_PER_EVENT` datagrams
//! are taken, one `recvfrom` each into the loop's shared buffer (asyncio takes one per
//! event; libuv takes up to 32), and each is handed to the protocol's cached
//! `datagram_received` with its sender's address in the socket module's form. The batch
//! ends early when the socket has nothing more, or the protocol pauses reading or closes
//! the transport. (`recvmmsg` would save system calls, but would take datagrams the
//! protocol may no longer want once it pauses or closes mid-batch, and would need slots
//! of asyncio's 256 KiB each for a Unix socket's large datagrams; the reply a datagram
//! usually gets costs a system call anyway.)
//!
//! Sending: `sendto()` sends at once when nothing is queued, with the address converted
//! in Rust when the socket module would convert it without a name lookup; otherwise
//! through the socket object, which resolves or raises as it does for asyncio. What
//! cannot go out now is queued (asyncio's flow control, with the running Python's
//! accounting) and sent when the socket is writable.
//!
//! The protocol's callbacks from the read and write paths run in the context of the
//! loop's watch (see `context.rs`): the reader's is a copy of the context current when
//! reading started or resumed, the writer's of the one current when a `sendto()` began
//! the queue. Exceptions they raise go to the loop's exception handler, as asyncio's
//! handle of `_read_ready` reports them.
//!
//! A socket that is not a plain `socket.socket` of one of these families goes through
//! its own `recvfrom`, `send` and `sendto` methods.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError, PyTypeError, PyValueError};
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::event_loop::LoopCore;
use crate::gil::{py_attr, GilCell};
use crate::transports::accept::{alloc_instance, transport_socket};
use crate::transports::fatal;
use crate::transports::flow::{self, FlowControl, FlowControlled};
use crate::transports::native::{self, Native, Watched};
use crate::transports::sockaddr::{py_to_sockaddr, sockaddr_to_py, socket_name, SockAddr};
use crate::transports::stream::{
    close_socket, io_to_pyerr, is_bytes_like, is_fatal, would_block, BufferView, MAX_READ,
};
use crate::transports::write_queue::Chunk;

/// Datagrams taken per readiness event at most, so that a busy socket does not starve
/// the loop's other callbacks.
const MAX_DATAGRAMS_PER_EVENT: usize = 32;
/// What asyncio from 3.13 counts per queued datagram besides its data (gh-113812).
const HEADER_SIZE: usize = 8;

/// Where a datagram goes.
enum Target {
    /// The socket is connected: `send()`.
    Peer,
    /// `sendto()` with an address converted here.
    Addr(SockAddr),
    /// `sendto()` through the socket object, with the address as given (which it may
    /// resolve, or refuse).
    Py(Py<PyAny>),
}

/// A queued datagram.
struct Queued {
    data: Chunk,
    target: Target,
}

/// Why a send did not happen.
enum SendError {
    /// The socket's buffer is full (or a signal interrupted the call): try again later.
    WouldBlock,
    Failed(PyErr),
}

impl From<std::io::Error> for SendError {
    fn from(e: std::io::Error) -> SendError {
        if would_block(&e) {
            SendError::WouldBlock
        } else {
            SendError::Failed(io_to_pyerr(e))
        }
    }
}

/// A Python exception from the socket object: `BlockingIOError` and `InterruptedError`
/// mean "later", as for asyncio.
fn classify(py: Python<'_>, e: PyErr) -> SendError {
    if e.is_instance_of::<PyBlockingIOError>(py) || e.is_instance_of::<PyInterruptedError>(py) {
        SendError::WouldBlock
    } else {
        SendError::Failed(e)
    }
}

struct DatagramState {
    loop_: Option<Py<LoopCore>>,
    /// The Python socket object; closed once the connection is lost.
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// The protocol's bound `datagram_received`, looked up once per protocol.
    datagram_received: Option<Py<PyAny>>,
    /// The `asyncio.DatagramTransport` facade that protocols see.
    facade: Option<Py<PyAny>>,
    /// The remote address the endpoint was made with (asyncio's `_address`): the
    /// default destination, and the only one `sendto()` accepts.
    address: Option<Py<PyAny>>,
    queue: VecDeque<Queued>,
    /// What `get_write_buffer_size()` says: the queued bytes, plus `header` per
    /// datagram from Python 3.13.
    buffer_size: usize,
    flow: FlowControl,
    closing: bool,
    /// pause_reading() was called.
    paused: bool,
    /// Sends attempted after the connection was lost, plus one once it is.
    conn_lost: u32,
    protocol_connected: bool,
    /// Registered with the loop for reading / writing.
    reading: bool,
    writing: bool,
}

#[pyclass(module = "ferroloop._core", frozen, weakref)]
pub struct DatagramTransport {
    fd: RawFd,
    family: libc::c_int,
    /// The socket is a plain `socket.socket` of a family whose addresses are converted
    /// here: the data path makes its own system calls. Otherwise it calls the socket
    /// object's methods.
    native: bool,
    /// The socket had a peer when the transport was made (asyncio's
    /// `extra['peername']` is true): datagrams go out with `send()`.
    connected: bool,
    /// Bytes counted per queued datagram besides its data (8 from Python 3.13, else 0).
    header: usize,
    /// Empty datagrams are sent (Python 3.13 on); before, `sendto(b'')` does nothing.
    send_empty: bool,
    state: GilCell<DatagramState>,
}

fn sendto_raw(fd: RawFd, data: &[u8], addr: &SockAddr) -> std::io::Result<usize> {
    raw_syscall!(
        libc::SYS_sendto,
        fd,
        data.as_ptr(),
        data.len(),
        libc::MSG_NOSIGNAL,
        addr.as_ptr(),
        addr.len()
    )
}

/// Receives one datagram into `buf`: its length, and the sender's address as the
/// kernel gave it.
fn recvfrom_raw(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let n = raw_syscall!(
        libc::SYS_recvfrom,
        fd,
        buf.as_mut_ptr(),
        buf.len(),
        0,
        &mut ss as *mut libc::sockaddr_storage,
        &mut len as *mut libc::socklen_t
    )?;
    Ok((n, ss, len))
}

/// What one receive gave.
enum Received<'py> {
    Datagram(Bound<'py, PyAny>, Bound<'py, PyAny>),
    /// Nothing is waiting.
    Empty,
    Failed(PyErr),
}

impl DatagramTransport {
    /// The object protocols see: the facade, or this object if it has none.
    pub(crate) fn facade<'py>(slf: &Bound<'py, DatagramTransport>) -> Bound<'py, PyAny> {
        let py = slf.py();
        match slf.get().state.borrow(py).facade.as_ref() {
            Some(f) => f.bind(py).clone(),
            None => slf.clone().into_any(),
        }
    }

    pub(crate) fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closing
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
        let value = fatal::report(loop_.as_ref(), &Self::facade(slf), this.protocol(py), exc, message)?;
        Self::force_close(slf, value)
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (dropped, had_queue, was_closing) = {
            let mut st = this.state.borrow_mut(py);
            if st.conn_lost > 0 {
                return Ok(());
            }
            let had = !st.queue.is_empty();
            let dropped = std::mem::take(&mut st.queue);
            st.buffer_size = 0;
            let was = st.closing;
            st.closing = true;
            st.conn_lost += 1;
            (dropped, had, was)
        };
        drop(dropped);
        if had_queue {
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

    /// The protocol's `error_received(exc)`.
    fn error_received(slf: &Bound<'_, Self>, exc: PyErr) -> PyResult<()> {
        let py = slf.py();
        let protocol = slf.get().protocol(py);
        match protocol {
            Some(p) => p
                .bind(py)
                .call_method1(intern!(py, "error_received"), (exc.into_value(py),))
                .map(drop),
            None => Ok(()),
        }
    }

    /// A send failed for good: an OSError goes to the protocol's `error_received`, as
    /// asyncio's; anything else is fatal to the transport.
    fn send_failed(slf: &Bound<'_, Self>, e: PyErr) -> PyResult<()> {
        let py = slf.py();
        if is_fatal(py, &e) {
            Err(e)
        } else if e.is_instance_of::<PyOSError>(py) {
            Self::error_received(slf, e)
        } else {
            Self::fatal_error(slf, e, "Fatal write error on datagram transport")
        }
    }

    /// Receives one datagram: through the loop's shared buffer, or the socket object's
    /// `recvfrom` for a socket whose addresses are not converted here.
    fn receive<'py>(&self, py: Python<'py>, loop_: &Bound<'py, LoopCore>, sock: &Bound<'py, PyAny>) -> Received<'py> {
        if !self.native {
            return match sock.call_method1(intern!(py, "recvfrom"), (MAX_READ,)) {
                Ok(pair) => match pair.extract::<(Bound<'py, PyAny>, Bound<'py, PyAny>)>() {
                    Ok((data, addr)) => Received::Datagram(data, addr),
                    Err(e) => Received::Failed(e),
                },
                Err(e) if e.is_instance_of::<PyBlockingIOError>(py) || e.is_instance_of::<PyInterruptedError>(py) => {
                    Received::Empty
                }
                Err(e) => Received::Failed(e),
            };
        }
        let got = {
            let mut buf = loop_.get().read_buf.borrow_mut(py);
            let len = buf.len();
            // SAFETY: the shared buffer is `len` initialised bytes that nothing else
            // uses while this borrow lasts.
            let slice = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr(), len) };
            recvfrom_raw(self.fd, slice).map(|(n, ss, alen)| (PyBytes::new(py, &slice[..n]), ss, alen))
        };
        match got {
            Ok((data, ss, alen)) => match sockaddr_to_py(py, &ss, alen) {
                Ok(Some(addr)) => Received::Datagram(data.into_any(), addr),
                // A family this socket cannot have: the socket module would say the same.
                Ok(None) => Received::Datagram(data.into_any(), py.None().into_bound(py)),
                Err(e) => Received::Failed(e),
            },
            Err(e) if would_block(&e) => Received::Empty,
            Err(e) => Received::Failed(io_to_pyerr(e)),
        }
    }

    /// Sends one datagram now. `obj` is the Python object `data` is the buffer of, for
    /// the socket object's methods.
    fn send_now(
        &self,
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
        data: &[u8],
        obj: Option<&Bound<'_, PyAny>>,
        target: &Target,
    ) -> Result<(), SendError> {
        let bytes_obj = || -> Bound<'_, PyAny> {
            match obj {
                Some(o) => o.clone(),
                None => PyBytes::new(py, data).into_any(),
            }
        };
        match target {
            Target::Peer if self.native => crate::transports::stream::send(self.fd, data).map(drop)?,
            Target::Peer => {
                sock.call_method1(intern!(py, "send"), (bytes_obj(),))
                    .map_err(|e| classify(py, e))?;
            }
            Target::Addr(sa) => sendto_raw(self.fd, data, sa).map(drop)?,
            Target::Py(addr) => {
                sock.call_method1(intern!(py, "sendto"), (bytes_obj(), addr.bind(py)))
                    .map_err(|e| classify(py, e))?;
            }
        }
        Ok(())
    }

    /// Where a datagram for `addr` goes (`addr` already defaulted to the endpoint's
    /// remote address).
    fn target(&self, addr: &Bound<'_, PyAny>) -> Target {
        if self.connected {
            return Target::Peer;
        }
        if self.native {
            if let Some(sa) = py_to_sockaddr(self.family, addr) {
                return Target::Addr(sa);
            }
        }
        Target::Py(addr.clone().unbind())
    }

    /// The socket is readable: deliver what is waiting, up to the batch limit.
    pub(crate) fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (loop_, sock) = {
            let st = slf.get().state.borrow(py);
            if st.conn_lost > 0 || !st.reading {
                return Ok(());
            }
            match (&st.loop_, &st.sock) {
                (Some(l), Some(s)) => (l.bind(py).clone(), s.bind(py).clone()),
                _ => return Ok(()),
            }
        };
        Self::read_batch(slf, &loop_, &sock)
    }

    fn read_batch(slf: &Bound<'_, Self>, loop_: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        for _ in 0..MAX_DATAGRAMS_PER_EVENT {
            let callback = {
                let st = this.state.borrow(py);
                // The protocol may have paused reading or closed the transport.
                if st.conn_lost > 0 || !st.reading {
                    return Ok(());
                }
                st.datagram_received.as_ref().map(|c| c.clone_ref(py))
            };
            let (data, addr) = match this.receive(py, loop_, sock) {
                Received::Datagram(data, addr) => (data, addr),
                Received::Empty => return Ok(()),
                Received::Failed(e) if is_fatal(py, &e) => return Err(e),
                Received::Failed(e) if e.is_instance_of::<PyOSError>(py) => {
                    // An ICMP error for an earlier send (ECONNREFUSED...): told, and the
                    // transport goes on.
                    return Self::error_received(slf, e);
                }
                Received::Failed(e) => return Self::fatal_error(slf, e, "Fatal read error on datagram transport"),
            };
            let result = match callback {
                Some(cb) => cb.bind(py).call1((data, addr)).map(drop),
                None => match this.protocol(py) {
                    Some(p) => p
                        .bind(py)
                        .call_method1(intern!(py, "datagram_received"), (data, addr))
                        .map(drop),
                    None => Ok(()),
                },
            };
            // What the protocol raised ends the batch, as asyncio's one datagram per
            // event ends: the loop reports it, and the rest waits for the next step.
            result?;
        }
        Ok(())
    }

    /// The socket is writable and datagrams are queued: send them, in order.
    pub(crate) fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let st = slf.get().state.borrow(py);
            if !st.writing || st.loop_.is_none() {
                return Ok(());
            }
        }
        Self::flush(slf)
    }

    /// asyncio's `_sendto_ready`. An error is what a protocol callback raised.
    fn flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        loop {
            let (item, sock) = {
                let mut st = this.state.borrow_mut(py);
                let Some(sock) = st.sock.as_ref().map(|s| s.clone_ref(py)) else {
                    return Ok(());
                };
                let Some(item) = st.queue.pop_front() else { break };
                st.buffer_size -= item.data.as_slice().len() + this.header;
                (item, sock)
            };
            match this.send_now(py, sock.bind(py), item.data.as_slice(), None, &item.target) {
                Ok(()) => {}
                Err(SendError::WouldBlock) => {
                    let mut st = this.state.borrow_mut(py);
                    st.buffer_size += item.data.as_slice().len() + this.header;
                    st.queue.push_front(item);
                    break;
                }
                // The datagram is dropped. After an OSError the writer stays, and the next
                // writable event goes on with the queue (or finds it empty and stops), as
                // in asyncio.
                Err(SendError::Failed(e)) => return Self::send_failed(slf, e),
            }
        }
        Self::maybe_resume_protocol(slf)?; // may queue more
        let (empty, closing) = {
            let st = this.state.borrow(py);
            (st.queue.is_empty(), st.closing)
        };
        if empty {
            Self::set_watch(slf, false, false)?;
            if closing {
                Self::call_connection_lost(slf, py.None().into_bound(py))?;
            }
        }
        Ok(())
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
        // Whatever connection_lost did, the socket is closed and the references dropped
        // (the facade too: it holds this object, a cycle per endpoint otherwise).
        Self::set_watch(slf, true, false)?;
        Self::set_watch(slf, false, false)?;
        let taken = {
            let mut st = this.state.borrow_mut(py);
            // From here on the fd is closed (its number may be reused): a send only counts.
            st.conn_lost = st.conn_lost.max(1);
            st.buffer_size = 0;
            (
                st.loop_.take(),
                st.sock.take(),
                st.protocol.take(),
                st.datagram_received.take(),
                st.facade.take(),
                std::mem::take(&mut st.queue),
            )
        };
        if let Some(l) = &taken.0 {
            l.get().unregister_transport(py, this.fd, slf.as_any());
        }
        let closed = match &taken.1 {
            Some(s) => close_socket(s.bind(py)),
            None => Ok(()),
        };
        drop(taken);
        result.and(closed)
    }

    /// Sets the protocol and caches the method the read path calls.
    fn install_protocol(&self, protocol: &Bound<'_, PyAny>) {
        let py = protocol.py();
        let received = protocol
            .getattr(intern!(py, "datagram_received"))
            .ok()
            .map(Bound::unbind);
        let old = {
            let mut st = self.state.borrow_mut(py);
            st.protocol_connected = true;
            (
                st.protocol.replace(protocol.clone().unbind()),
                std::mem::replace(&mut st.datagram_received, received),
            )
        };
        drop(old);
    }
}

impl Native for DatagramTransport {
    fn on_readable(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::read_ready(slf)
    }

    fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_ready(slf)
    }

    fn callback_name(_py: Python<'_>, readable: bool) -> &'static str {
        if readable {
            "_read_ready"
        } else {
            "_sendto_ready"
        }
    }

    fn open_facade<'py>(slf: &Bound<'py, Self>) -> Option<Bound<'py, PyAny>> {
        (!slf.get().is_closing(slf.py())).then(|| Self::facade(slf))
    }
}

impl Watched for DatagramTransport {
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

impl FlowControlled for DatagramTransport {
    fn flow_change(&self, py: Python<'_>, pause: bool) -> Option<Py<PyAny>> {
        let mut st = self.state.borrow_mut(py);
        let size = st.buffer_size;
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
impl DatagramTransport {
    /// Starts reading; scheduled right after `connection_made`.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        if !slf.get().is_reading(slf.py()) {
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

    /// The write path, as the loop runs it when the socket is writable (asyncio's writer
    /// callback).
    fn _sendto_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::write_ready(slf)
    }

    #[pyo3(signature = (data, addr=None))]
    fn sendto(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>, addr: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !is_bytes_like(data) {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        let view = BufferView::get(data, false)?;
        let payload = view.as_slice();
        if payload.is_empty() && !this.send_empty {
            return Ok(());
        }
        let none = py.None().into_bound(py);
        let mut addr = addr.cloned().unwrap_or_else(|| none.clone());
        let address = this.state.borrow(py).address.as_ref().map(|a| a.bind(py).clone());
        let address = match address {
            Some(a) if a.is_truthy()? => Some(a),
            _ => None,
        };
        if let Some(a) = &address {
            if !addr.is_none() && !addr.is(a) && !addr.eq(a)? {
                return Err(PyValueError::new_err(format!(
                    "Invalid address: must be None or {}",
                    a.str()?
                )));
            }
            addr = a.clone();
        }
        let sock = {
            let mut st = this.state.borrow_mut(py);
            let sock = st.sock.as_ref().map(|s| s.clone_ref(py));
            // asyncio counts sends after the loss of a connected endpoint; one whose
            // socket is already closed counts the same here (asyncio's would raise
            // AttributeError on its None socket).
            if st.conn_lost > 0 && (address.is_some() || sock.is_none()) {
                let warn = fatal::count_lost_write(&mut st.conn_lost);
                drop(st);
                if warn {
                    fatal::warn_lost_write(py, fatal::LOST_SEND_WARNING)?;
                }
                return Ok(());
            }
            match sock {
                Some(s) => s,
                None => return Ok(()),
            }
        };
        let target = this.target(&addr);
        let queue_empty = this.state.borrow(py).queue.is_empty();
        if queue_empty {
            match this.send_now(py, sock.bind(py), payload, Some(data), &target) {
                Ok(()) => return Ok(()),
                Err(SendError::WouldBlock) => {}
                Err(SendError::Failed(e)) => {
                    // The protocol's callbacks may touch the data (a bytearray): let it go.
                    drop(view);
                    return Self::send_failed(slf, e);
                }
            }
        }
        // Queued as an immutable copy, as asyncio's bytes(data); a bytes object is
        // immutable already and is kept as it is.
        let chunk = match data.cast_exact::<PyBytes>() {
            Ok(b) => Chunk::Shared(b.clone().unbind()),
            Err(_) => Chunk::Owned(payload.to_vec()),
        };
        let len = payload.len();
        drop(view);
        if queue_empty {
            Self::set_watch(slf, false, true)?;
        }
        {
            let mut st = this.state.borrow_mut(py);
            st.buffer_size += len + this.header;
            st.queue.push_back(Queued { data: chunk, target });
        }
        Self::maybe_pause_protocol(slf)
    }

    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let empty = {
            let mut st = slf.get().state.borrow_mut(py);
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            let empty = st.queue.is_empty();
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
        self.state.borrow(py).buffer_size
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

    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) {
        self.install_protocol(protocol)
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
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
                st.buffer_size
            ));
        }
        info
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(st) = self.state.try_borrow() {
            visit.call(&st.loop_)?;
            visit.call(&st.sock)?;
            visit.call(&st.protocol)?;
            visit.call(&st.datagram_received)?;
            visit.call(&st.facade)?;
            visit.call(&st.address)?;
            for q in &st.queue {
                if let Target::Py(a) = &q.target {
                    visit.call(a)?;
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.state.try_borrow_mut().map(|mut st| {
            (
                st.loop_.take(),
                st.protocol.take(),
                st.datagram_received.take(),
                st.facade.take(),
                st.address.take(),
                std::mem::take(&mut st.queue),
            )
        });
        drop(taken);
    }
}

/// The datagram transport protocols see (`ferroloop._transports.DatagramSocketTransport`)
/// over a non-blocking datagram socket: asyncio's `_SelectorDatagramTransport.__init__`.
/// `connection_made()`, then reading, then the waiter are scheduled, in that order.
/// Python calls it as `make_datagram_transport(loop, sock, protocol, address=None,
/// waiter=None, extra=None)` (the loop's `_make_datagram_transport`).
#[pyfunction]
#[pyo3(signature = (loop_, sock, protocol, address=None, waiter=None, extra=None))]
pub(crate) fn make_datagram_transport<'py>(
    loop_: &Bound<'py, LoopCore>,
    sock: &Bound<'py, PyAny>,
    protocol: &Bound<'py, PyAny>,
    address: Option<&Bound<'py, PyAny>>,
    waiter: Option<&Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    let extra = match extra {
        Some(d) => d, // as asyncio, a dict passed in is filled in place
        None => PyDict::new(py),
    };
    let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
    if fd < 0 {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
    }
    extra.set_item(intern!(py, "socket"), transport_socket(sock)?)?;
    extra.set_item(intern!(py, "sockname"), socket_name(sock, fd, false)?)?;
    if !extra.contains(intern!(py, "peername"))? {
        extra.set_item(intern!(py, "peername"), socket_name(sock, fd, true)?)?;
    }
    let connected = match extra.get_item(intern!(py, "peername"))? {
        Some(p) => p.is_truthy()?,
        None => false,
    };
    if loop_.get().closed(py) {
        return Err(pyo3::exceptions::PyRuntimeError::new_err("Event loop is closed"));
    }
    let family: libc::c_int = sock.getattr(intern!(py, "family"))?.extract()?;
    let native = sock.get_type().is(py_attr!(py, "socket", "socket")?)
        && matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX);
    let connection_made = protocol.getattr(intern!(py, "connection_made"))?;
    let since_313 = py.version_info() >= (3, 13);
    let facade = alloc_instance(py_attr!(py, "ferroloop._transports", "DatagramSocketTransport")?)?;
    facade.setattr(intern!(py, "_extra"), &extra)?;
    let t = DatagramTransport {
        fd,
        family,
        native,
        connected,
        header: if since_313 { HEADER_SIZE } else { 0 },
        send_empty: since_313,
        state: GilCell::new(DatagramState {
            loop_: Some(loop_.clone().unbind()),
            sock: Some(sock.clone().unbind()),
            protocol: None,
            datagram_received: None,
            facade: Some(facade.clone().unbind()),
            address: address.filter(|a| !a.is_none()).map(|a| a.clone().unbind()),
            queue: VecDeque::new(),
            buffer_size: 0,
            flow: FlowControl::default(),
            closing: false,
            paused: false,
            conn_lost: 0,
            protocol_connected: false,
            reading: false,
            writing: false,
        }),
    };
    t.install_protocol(protocol);
    let core = Bound::new(py, t)?;
    facade.setattr(intern!(py, "_core"), &core)?;
    // The method every protocol calls: filled now rather than on first use.
    facade.setattr(intern!(py, "sendto"), core.getattr(intern!(py, "sendto"))?)?;
    loop_.get().register_transport(py, fd, core.as_any())?;
    let none = PyTuple::empty(py);
    LoopCore::call_soon(loop_, &connection_made, &PyTuple::new(py, [&facade])?, None)?;
    LoopCore::call_soon(loop_, &core.getattr(intern!(py, "_start_reading"))?, &none, None)?;
    if let Some(w) = waiter.filter(|w| !w.is_none()) {
        LoopCore::call_soon(
            loop_,
            py_attr!(py, "ferroloop._transports", "_set_result_unless_cancelled")?,
            &PyTuple::new(py, [w.clone(), py.None().into_bound(py)])?,
            None,
        )?;
    }
    Ok(facade)
}

pub(crate) fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DatagramTransport>()?;
    m.add_function(wrap_pyfunction!(make_datagram_transport, m)?)?;
    Ok(())
}
