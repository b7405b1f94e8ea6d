//! Accepting connections on a listening socket, and wrapping a connected socket in a
//! transport. Of the loop's own Python, only the server's connection count
//! (`Server._attach`) runs here.
//!
//! `Acceptor` is the reader callback of a serving socket: asyncio's
//! `_accept_connection` and `_accept_connection2` for plain (non-TLS) servers. An
//! accepted connection gets its protocol and transport in the same callback, as with
//! uvloop, and `connection_made()` runs in the next iteration (asyncio sets each
//! connection up in a task of its own, which takes one iteration more).
//!
//! For a socket of exactly `socket.socket` and of a family whose addresses are
//! converted here (IPv4, IPv6, Unix), connections are taken with `accept4()`, already
//! non-blocking and close-on-exec; any other socket goes through its own `accept()`.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyBlockingIOError, PyConnectionAbortedError, PyInterruptedError, PyOSError, PyRuntimeError};
use pyo3::ffi;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::event_loop::LoopCore;
use crate::gil::{py_attr, GilCell};
use crate::transports::context::{copy_current, Entered};
use crate::transports::sockaddr::{sockaddr_to_py, socket_name};
use crate::transports::stream::{io_to_pyerr, is_fatal, StreamTransport};

/// `socket.socket(family, kind, proto, fileno=fd)` without its Python `__init__` frame:
/// the C socket type's `__new__` and `__init__`, then the two slots that
/// `socket.socket.__init__` sets. If this fails, the fd was not taken.
fn new_plain_socket(
    py: Python<'_>,
    family: libc::c_int,
    kind: libc::c_int,
    proto: libc::c_int,
    fd: RawFd,
) -> PyResult<Bound<'_, PyAny>> {
    let cls = py_attr!(py, "socket", "socket")?;
    let base = py_attr!(py, "_socket", "socket")?;
    let args = (family, kind, proto, fd).into_pyobject(py)?;
    let empty = PyTuple::empty(py);
    let tp = cls.as_ptr() as *mut ffi::PyTypeObject;
    let base_tp = base.as_ptr() as *mut ffi::PyTypeObject;
    // SAFETY: both are type objects (socket.socket derives from _socket.socket); tp_new
    // returns a new reference or NULL with an exception set; tp_init returns < 0 with an
    // exception set. The GIL is held.
    let obj = unsafe {
        let (Some(new), Some(init)) = ((*tp).tp_new, (*base_tp).tp_init) else {
            return Err(PyRuntimeError::new_err("socket.socket cannot be made"));
        };
        let obj = Bound::from_owned_ptr_or_err(py, new(tp, empty.as_ptr(), std::ptr::null_mut()))?;
        if init(obj.as_ptr(), args.as_ptr(), std::ptr::null_mut()) < 0 {
            return Err(PyErr::fetch(py));
        }
        obj
    };
    obj.setattr(intern!(py, "_io_refs"), 0)?;
    obj.setattr(intern!(py, "_closed"), false)?;
    Ok(obj)
}

/// `asyncio.trsock.TransportSocket(sock)`, whose `__init__` only stores the socket in
/// its one slot, without the frame.
pub(crate) fn transport_socket<'py>(sock: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = sock.py();
    let ts = alloc_instance(py_attr!(py, "asyncio.trsock", "TransportSocket")?)?;
    ts.setattr(intern!(py, "_sock"), sock)?;
    Ok(ts)
}

/// A new instance of `cls`, a Python class with slots, without running `__init__`.
pub(crate) fn alloc_instance<'py>(cls: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let tp = cls.as_ptr() as *mut ffi::PyTypeObject;
    // SAFETY: cls is a type object (checked by the caller's import of a class), and
    // tp_alloc(tp, 0) returns a new zero-filled instance or NULL with an exception set.
    unsafe {
        let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        Bound::from_owned_ptr_or_err(py, alloc(tp, 0))
    }
}

/// The stream transport protocols see (`ferroloop._transports.SocketTransport`) over a
/// connected non-blocking stream socket: asyncio's `_SelectorSocketTransport.__init__`.
/// `connection_made()`, then reading, then the waiter are scheduled, in that order.
/// Python calls it as `make_socket_transport(loop, sock, protocol, waiter=None,
/// extra=None, server=None)` (the loop's `_make_stream_transport`).
#[pyfunction]
#[pyo3(signature = (loop_, sock, protocol, waiter=None, extra=None, server=None))]
pub(crate) fn make_socket_transport<'py>(
    loop_: &Bound<'py, LoopCore>,
    sock: &Bound<'py, PyAny>,
    protocol: &Bound<'py, PyAny>,
    waiter: Option<&Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
    server: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = loop_.py();
    let server = server.filter(|s| !s.is_none());
    let extra = match extra {
        Some(d) => d, // as asyncio, a dict passed in is filled in place
        None => PyDict::new(py),
    };
    let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
    extra.set_item(intern!(py, "socket"), transport_socket(sock)?)?;
    extra.set_item(intern!(py, "sockname"), socket_name(sock, fd, false)?)?;
    if !extra.contains(intern!(py, "peername"))? {
        extra.set_item(intern!(py, "peername"), socket_name(sock, fd, true)?)?;
    }
    // What can fail is done before the transport exists: once it does, it owns the fd
    // in the loop's table and is attached to the server.
    if loop_.get().closed(py) {
        return Err(PyRuntimeError::new_err("Event loop is closed"));
    }
    let connection_made = protocol.getattr(intern!(py, "connection_made"))?;
    let facade = alloc_instance(py_attr!(py, "ferroloop._transports", "SocketTransport")?)?;
    facade.setattr(intern!(py, "_extra"), &extra)?;
    let core = Bound::new(py, StreamTransport::new(loop_, sock, protocol, Some(&facade), server)?)?;
    facade.setattr(intern!(py, "_core"), &core)?;
    if let Some(s) = server {
        // asyncio 3.13's Server keeps its clients (close_clients/abort_clients).
        if crate::pyversion::at_least(py, (3, 13, 0)) {
            s.call_method1(intern!(py, "_attach"), (&facade,))?;
        } else {
            s.call_method0(intern!(py, "_attach"))?;
        }
    }
    // Nearly every protocol writes: fill that slot now rather than on first use.
    facade.setattr(intern!(py, "write"), core.getattr(intern!(py, "write"))?)?;
    StreamTransport::register(&core)?;
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

/// What an acceptor holds: the loop holds the acceptor too (as its reader callback),
/// so these are visited and cleared for the cyclic garbage collector.
struct AcceptorRefs {
    loop_: Py<LoopCore>,
    sock: Py<PyAny>,
    protocol_factory: Py<PyAny>,
    server: Option<Py<PyAny>>,
}

impl AcceptorRefs {
    fn clone_ref(&self, py: Python<'_>) -> AcceptorRefs {
        AcceptorRefs {
            loop_: self.loop_.clone_ref(py),
            sock: self.sock.clone_ref(py),
            protocol_factory: self.protocol_factory.clone_ref(py),
            server: self.server.as_ref().map(|s| s.clone_ref(py)),
        }
    }
}

/// Whether accept() failed for want of a resource (asyncio's list: EMFILE, ENFILE,
/// ENOBUFS, ENOMEM), which pauses accepting for a while.
fn is_out_of_resources(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PyOSError>(py)
        && e.value(py)
            .getattr(intern!(py, "errno"))
            .and_then(|n| n.extract::<libc::c_int>())
            .is_ok_and(|n| matches!(n, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// The reader callback of a listening socket.
#[pyclass(module = "ferroloop._core", frozen)]
pub struct Acceptor {
    /// `None` once the garbage collector cleared it.
    refs: GilCell<Option<AcceptorRefs>>,
    backlog: usize,
    /// The listening socket's family, type (with SOCK_NONBLOCK) and proto, when
    /// connections are taken with accept4().
    direct: Option<(libc::c_int, libc::c_int, libc::c_int)>,
}

enum Accepted<'py> {
    Conn(Bound<'py, PyAny>, Bound<'py, PyAny>),
    /// The accept queue is empty.
    Empty,
}

impl Acceptor {
    fn accept_direct<'py>(
        sock: &Bound<'py, PyAny>,
        (family, kind, proto): (libc::c_int, libc::c_int, libc::c_int),
    ) -> PyResult<Accepted<'py>> {
        let py = sock.py();
        // The socket may have been closed, and its number reused, since the last
        // connection: a protocol factory can close the server (and then the batch ends).
        let lfd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        if lfd < 0 {
            return Ok(Accepted::Empty);
        }
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let fd = match syscall!(accept4(
            lfd,
            &mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr,
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        )) {
            Ok(fd) => fd,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ECONNABORTED) => Ok(Accepted::Empty),
                    _ => Err(io_to_pyerr(e)),
                }
            }
        };
        let conn = new_plain_socket(py, family, kind, proto, fd);
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                // Only an interrupt (a signal handler's exception) can come once the socket
                // object has taken the fd; then the fd is the object's to close.
                if !is_fatal(py, &e) {
                    // SAFETY: fd is ours: no socket object took it.
                    unsafe { libc::close(fd) };
                }
                return Err(e);
            }
        };
        match sockaddr_to_py(py, &ss, len) {
            Ok(Some(addr)) => Ok(Accepted::Conn(conn, addr)),
            Ok(None) => unreachable!("the family was checked when the acceptor was made"),
            Err(e) => {
                let _ = conn.call_method0(intern!(py, "close"));
                Err(e)
            }
        }
    }

    fn accept_generic<'py>(sock: &Bound<'py, PyAny>) -> PyResult<Accepted<'py>> {
        let py = sock.py();
        let lfd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        if lfd < 0 {
            return Ok(Accepted::Empty);
        }
        let pair = match sock.call_method0(intern!(py, "accept")) {
            Ok(p) => p,
            Err(e)
                if e.is_instance_of::<PyBlockingIOError>(py)
                    || e.is_instance_of::<PyInterruptedError>(py)
                    || e.is_instance_of::<PyConnectionAbortedError>(py) =>
            {
                return Ok(Accepted::Empty)
            }
            Err(e) => return Err(e),
        };
        let (conn, addr): (Bound<'py, PyAny>, Bound<'py, PyAny>) = pair.extract()?;
        conn.call_method1(intern!(py, "setblocking"), (false,))?;
        Ok(Accepted::Conn(conn, addr))
    }

    /// asyncio's per-connection setup: the protocol from the factory, then the
    /// transport. A failure closes the connection, and is reported in debug mode only.
    fn serve(
        refs: &AcceptorRefs,
        loop_: &Bound<'_, LoopCore>,
        conn: Bound<'_, PyAny>,
        addr: Bound<'_, PyAny>,
        debug: bool,
    ) -> PyResult<()> {
        let py = loop_.py();
        let server = refs.server.as_ref().map(|s| s.bind(py));
        if debug {
            py_attr!(py, "asyncio.log", "logger")?.call_method1(
                intern!(py, "debug"),
                ("%r got a new connection from %r: %r", server, &addr, &conn),
            )?;
        }
        let extra = PyDict::new(py);
        extra.set_item(intern!(py, "peername"), addr)?;
        let mut protocol = None;
        // asyncio sets each connection up in a task of its own, so in a copy of the
        // serving context: what the protocol factory sets there is this connection's
        // alone, and its transport's callbacks start from it.
        let made = copy_current(py).and_then(|context| {
            let _in = Entered::enter(&context)?;
            refs.protocol_factory.bind(py).call0().and_then(|p| {
                let t = make_socket_transport(loop_, &conn, &p, None, Some(extra), server);
                protocol = Some(p);
                t
            })
        });
        let Err(exc) = made else { return Ok(()) };
        let closed = conn.call_method0(intern!(py, "close"));
        if is_fatal(py, &exc) {
            return Err(exc);
        }
        closed?;
        if debug {
            let context = PyDict::new(py);
            context.set_item("message", "Error on transport creation for incoming connection")?;
            context.set_item("exception", exc.into_value(py))?;
            if let Some(p) = protocol {
                context.set_item("protocol", p)?;
            }
            loop_.call_method1(intern!(py, "call_exception_handler"), (context,))?;
        }
        Ok(())
    }
}

#[pymethods]
impl Acceptor {
    #[new]
    #[pyo3(signature = (loop_, sock, protocol_factory, server, backlog))]
    fn new(
        loop_: &Bound<'_, LoopCore>,
        sock: &Bound<'_, PyAny>,
        protocol_factory: &Bound<'_, PyAny>,
        server: &Bound<'_, PyAny>,
        backlog: usize,
    ) -> PyResult<Self> {
        let py = sock.py();
        let direct = if sock.get_type().is(py_attr!(py, "socket", "socket")?) {
            let family: libc::c_int = sock.getattr(intern!(py, "family"))?.extract()?;
            let kind: libc::c_int = sock.getattr(intern!(py, "type"))?.extract()?;
            let proto: libc::c_int = sock.getattr(intern!(py, "proto"))?.extract()?;
            matches!(family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX).then_some((
                family,
                kind | libc::SOCK_NONBLOCK,
                proto,
            ))
        } else {
            None
        };
        Ok(Acceptor {
            refs: GilCell::new(Some(AcceptorRefs {
                loop_: loop_.clone().unbind(),
                sock: sock.clone().unbind(),
                protocol_factory: protocol_factory.clone().unbind(),
                server: (!server.is_none()).then(|| server.clone().unbind()),
            })),
            backlog,
            direct,
        })
    }

    /// Accepts up to `backlog` waiting connections (bpo-27906). When accept() fails
    /// for want of resources, the loop's `_accept_failed` stops serving for a while.
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some(refs) = self.refs.borrow(py).as_ref().map(|r| r.clone_ref(py)) else {
            return Ok(());
        };
        let loop_ = refs.loop_.bind(py);
        let sock = refs.sock.bind(py);
        // First the whole batch is taken, then each connection set up, as asyncio
        // accepts a batch before any of its connections' tasks runs: a protocol factory
        // that closes the server still gets the connections already accepted.
        let mut batch = Vec::new();
        let mut failure = None;
        // An accept() that fails for want of resources does not end the batch: as
        // asyncio's, each attempt of the batch is made, and each failure reported.
        let mut out_of_resources = Vec::new();
        for _ in 0..self.backlog {
            let accepted = match self.direct {
                Some(params) => Self::accept_direct(sock, params),
                None => Self::accept_generic(sock),
            };
            match accepted {
                Ok(Accepted::Conn(conn, addr)) => batch.push((conn, addr)),
                Ok(Accepted::Empty) => break,
                Err(e) if is_out_of_resources(py, &e) => out_of_resources.push(e),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let debug = loop_.get().debug(py);
        let mut batch = batch.into_iter();
        // asyncio reports these from its accept loop, before any connection of the
        // batch reaches its protocol factory (which its tasks call later).
        for e in out_of_resources {
            let reported = loop_.call_method1(
                intern!(py, "_accept_failed"),
                (
                    e.into_value(py),
                    &refs.protocol_factory,
                    sock,
                    &refs.server,
                    self.backlog,
                ),
            );
            if let Err(e) = reported {
                for (conn, _) in batch {
                    let _ = conn.call_method0(intern!(py, "close"));
                }
                return Err(e);
            }
        }
        for (conn, addr) in batch.by_ref() {
            if let Err(e) = Self::serve(&refs, loop_, conn, addr, debug) {
                // An interrupt, or a connection that could not be closed: the rest of
                // the batch is closed, not left to the garbage collector.
                for (conn, _) in batch {
                    let _ = conn.call_method0(intern!(py, "close"));
                }
                return Err(e);
            }
        }
        match failure {
            None => Ok(()),
            Some(e) if e.is_instance_of::<PyOSError>(py) => {
                loop_.call_method1(
                    intern!(py, "_accept_failed"),
                    (
                        e.into_value(py),
                        &refs.protocol_factory,
                        sock,
                        &refs.server,
                        self.backlog,
                    ),
                )?;
                Ok(())
            }
            Some(e) => Err(e),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let sock = self.refs.borrow(py).as_ref().map(|r| r.sock.clone_ref(py));
        match sock {
            Some(s) => Ok(format!("<Acceptor {}>", s.bind(py).repr()?)),
            None => Ok("<Acceptor>".to_string()),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(refs) = self.refs.try_borrow() {
            if let Some(r) = refs.as_ref() {
                visit.call(&r.loop_)?;
                visit.call(&r.sock)?;
                visit.call(&r.protocol_factory)?;
                visit.call(&r.server)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.refs.try_borrow_mut().and_then(|mut r| r.take());
        drop(taken);
    }
}

pub(crate) fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Acceptor>()?;
    m.add_function(wrap_pyfunction!(make_socket_transport, m)?)?;
    Ok(())
}
