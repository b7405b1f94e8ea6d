//! TLS over a stream transport: asyncio's `sslproto.SSLProtocol` (the design 3.11 took
//! from uvloop), in Rust, driving the user's own `ssl.SSLContext` through an
//! `ssl.SSLObject` and two `ssl.MemoryBIO`s.
//!
//! `SslProtocol` is the protocol of the stream transport underneath: a buffered
//! protocol whose `get_buffer`/`buffer_updated` are Rust methods, so ciphertext goes from
//! the socket into this object's buffer and on to the incoming BIO without a Python
//! frame. The records are decrypted by the SSL object's C methods (`_ssl._SSLSocket`'s
//! `read` and `write`, taken from under the `ssl.SSLObject` wrapper when the wrapper's
//! own methods are the standard ones) and handed to the user's protocol. The state
//! machine (UNWRAPPED, DO_HANDSHAKE, WRAPPED, FLUSHING, SHUTDOWN), flow control, log
//! messages and exceptions are sslproto's.
//!
//! The transport the user's protocol sees is `ferroloop._transports.SSLProtocolTransport`, a
//! Python `asyncio.Transport` whose methods call this object's `_app_*` methods; its
//! `write` slot holds the bound Rust `_app_write`. The Python class
//! `ferroloop._tls.SSLProtocol` subclasses this one and `asyncio.BufferedProtocol`, so
//! the stream transport (and `isinstance`) sees a buffered protocol.

use std::collections::VecDeque;

use pyo3::exceptions::{
    PyAssertionError, PyConnectionAbortedError, PyConnectionResetError, PyException, PyKeyboardInterrupt, PyOSError,
    PyRuntimeError, PySystemExit, PyTypeError, PyValueError,
};
use pyo3::ffi;
use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PySlice, PyTuple};

use crate::gil::{py_attr, GilCell};

/// Bytes asked of the socket, and of the SSL object, per read (sslproto's `max_size`).
const MAX_SIZE: usize = 256 * 1024;
/// asyncio's `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;
/// asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_READ` and `_WRITE`, in KiB.
const HIGH_WATER_SSL_READ_KB: i64 = 256;
const HIGH_WATER_SSL_WRITE_KB: i64 = 512;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Unwrapped,
    DoHandshake,
    Wrapped,
    Flushing,
    Shutdown,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Unwrapped => "SSLProtocolState.UNWRAPPED",
            State::DoHandshake => "SSLProtocolState.DO_HANDSHAKE",
            State::Wrapped => "SSLProtocolState.WRAPPED",
            State::Flushing => "SSLProtocolState.FLUSHING",
            State::Shutdown => "SSLProtocolState.SHUTDOWN",
        }
    }
}

/// The application protocol's life: INIT -connection_made-> CON_MADE
/// [-eof_received-> EOF] -connection_lost-> CON_LOST.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AppState {
    Init,
    ConMade,
    Eof,
    ConLost,
}

struct SslState {
    loop_: Option<Py<PyAny>>,
    app_protocol: Option<Py<PyAny>>,
    /// The application protocol's `data_received`, or its `get_buffer` and
    /// `buffer_updated` when it is a BufferedProtocol.
    app_data_received: Option<Py<PyAny>>,
    app_get_buffer: Option<Py<PyAny>>,
    app_buffer_updated: Option<Py<PyAny>>,
    app_is_buffer: bool,
    /// The `SSLProtocolTransport` the application sees; dropped when the connection is lost.
    app_transport: Option<Py<PyAny>>,
    app_transport_created: bool,
    /// The application transport's `_closed`.
    app_closed: bool,
    /// The stream transport underneath, and its bound `write`.
    transport: Option<Py<PyAny>>,
    transport_write: Option<Py<PyAny>>,
    sslcontext: Py<PyAny>,
    sslobj: Py<PyAny>,
    /// What the SSL object's methods are called on: the C object under the
    /// `ssl.SSLObject` when the wrapper's methods are the standard ones (which only
    /// forward to it), else the wrapper itself (`direct` false).
    ssl_target: Py<PyAny>,
    direct: bool,
    /// The SSL object's `read` and `write`, bound to `ssl_target`.
    ssl_read: Py<PyAny>,
    ssl_write: Py<PyAny>,
    incoming: Py<PyAny>,
    outgoing: Py<PyAny>,
    incoming_write: Py<PyAny>,
    outgoing_read: Py<PyAny>,
    extra: Py<PyDict>,
    /// Application data not yet taken by the SSL object, and its size.
    write_backlog: VecDeque<Py<PyAny>>,
    write_buffer_size: usize,
    waiter: Option<Py<PyAny>>,
    /// For a connection a TLS server accepted (`TlsServerFactory`): its application
    /// protocol and transport, until the handshake ends. A failed handshake closes the
    /// transport (and is reported in debug mode), as the task of asyncio's
    /// `_accept_connection2` does once its waiter fails.
    accepted: Option<(Py<PyAny>, Py<PyAny>)>,
    server_side: bool,
    handshake_timeout: Py<PyAny>,
    shutdown_timeout: Py<PyAny>,
    handshake_start_time: Option<f64>,
    handshake_timeout_handle: Option<Py<PyAny>>,
    shutdown_timeout_handle: Option<Py<PyAny>>,
    state: State,
    conn_lost: u32,
    app_state: AppState,
    ssl_writing_paused: bool,
    app_reading_paused: bool,
    ssl_reading_paused: bool,
    incoming_high: usize,
    incoming_low: usize,
    eof_received: bool,
    app_writing_paused: bool,
    outgoing_high: usize,
    outgoing_low: usize,
}

/// The buffer stream transports receive ciphertext into (`get_buffer`), one per thread
/// and shared by every TLS connection of that thread: `MAX_SIZE` bytes, never resized
/// (a memoryview of it is always exported), and the writable view `get_buffer` returns.
///
/// Sharing it is sound because what arrives in it is copied into the connection's
/// incoming BIO by `buffer_updated`, which the transport calls right after the read that
/// filled it, on the same thread and with no other read in between (a thread reads one
/// socket at a time). A connection used to allocate and zero its own 256 KiB.
struct SharedBuffer {
    bytes: Py<PyByteArray>,
    view: Py<PyAny>,
}

thread_local! {
    static SHARED_BUFFER: std::cell::OnceCell<SharedBuffer> = const { std::cell::OnceCell::new() };
}

/// A new `bytes` holding the first `len` bytes of this thread's shared buffer.
fn copy_shared<'py>(py: Python<'py>, buffer: &Py<PyByteArray>, len: usize) -> Bound<'py, PyBytes> {
    // SAFETY: `buffer` is the shared bytearray, `MAX_SIZE` (>= len) bytes long and never
    // resized; no Python code runs while the slice is borrowed, so nothing can write to it.
    unsafe { PyBytes::new(py, &buffer.bind(py).as_bytes()[..len]) }
}

/// A temporary memoryview of `len` bytes of this thread's shared buffer from `start`,
/// writable (`PyBUF_WRITE`) or read-only (`PyBUF_READ`). The caller releases it (its
/// `release()` method) before any other code can use those bytes.
fn shared_view<'py>(
    py: Python<'py>,
    buffer: &Py<PyByteArray>,
    start: usize,
    len: usize,
    flags: std::os::raw::c_int,
) -> PyResult<Bound<'py, PyAny>> {
    assert!(start + len <= MAX_SIZE, "a view past the end of the shared buffer");
    // SAFETY: `buffer` is the shared bytearray, `MAX_SIZE` bytes long and never resized
    // (a memoryview of it stays exported), and the caller holds a reference to it for as
    // long as the view lives; the view covers `start..start + len`, within it (asserted).
    unsafe {
        let ptr = ffi::PyByteArray_AsString(buffer.as_ptr()).add(start);
        Bound::from_owned_ptr_or_err(py, ffi::PyMemoryView_FromMemory(ptr, len as ffi::Py_ssize_t, flags))
    }
}

/// This thread's receive buffer and its view, made on first use.
fn shared_buffer(py: Python<'_>) -> PyResult<(Py<PyByteArray>, Py<PyAny>)> {
    SHARED_BUFFER.with(|cell| {
        if cell.get().is_none() {
            let bytes = PyByteArray::new_with(py, MAX_SIZE, |_| Ok(()))?;
            let view = PyMemoryView::from(bytes.as_any())?.into_any();
            // (Should a collection during the allocation have run code that made this
            // thread's buffer already, that one is kept and this one dropped.)
            let _ = cell.set(SharedBuffer {
                bytes: bytes.unbind(),
                view: view.unbind(),
            });
        }
        let b = cell.get().expect("set above");
        Ok((b.bytes.clone_ref(py), b.view.clone_ref(py)))
    })
}

#[pyclass(module = "ferroloop._core", name = "SSLProtocolCore", subclass, frozen, weakref)]
pub struct SslProtocol {
    state: GilCell<SslState>,
}

fn is_fatal(py: Python<'_>, e: &PyErr) -> bool {
    e.is_instance_of::<PySystemExit>(py) || e.is_instance_of::<PyKeyboardInterrupt>(py)
}

/// `ssl.SSLWantReadError` or `ssl.SSLSyscallError` (sslproto's `SSLAgainErrors`).
fn is_again(py: Python<'_>, e: &PyErr) -> PyResult<bool> {
    Ok(e.is_instance(py, py_attr!(py, "ssl", "SSLWantReadError")?)
        || e.is_instance(py, py_attr!(py, "ssl", "SSLSyscallError")?))
}

fn is_ssl_error(py: Python<'_>, e: &PyErr) -> PyResult<bool> {
    Ok(e.is_instance(py, py_attr!(py, "ssl", "SSLError")?))
}

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    py_attr!(py, "asyncio.log", "logger")
}

/// asyncio's `sslproto.add_flowcontrol_defaults`.
fn flowcontrol_defaults(
    high: Option<&Bound<'_, PyAny>>,
    low: Option<&Bound<'_, PyAny>>,
    kb: i64,
) -> PyResult<(usize, usize)> {
    let high: Option<i64> = high.filter(|h| !h.is_none()).map(|h| h.extract()).transpose()?;
    let low: Option<i64> = low.filter(|l| !l.is_none()).map(|l| l.extract()).transpose()?;
    let hi = match (high, low) {
        (Some(h), _) => h,
        (None, None) => kb * 1024,
        (None, Some(l)) => 4 * l,
    };
    let lo = low.unwrap_or(hi.div_euclid(4));
    if !(hi >= lo && lo >= 0) {
        return Err(PyValueError::new_err(format!(
            "high ({hi}) must be >= low ({lo}) must be >= 0"
        )));
    }
    Ok((hi as usize, lo as usize))
}

fn pending(bio: &Py<PyAny>, py: Python<'_>) -> PyResult<usize> {
    bio.bind(py).getattr(intern!(py, "pending"))?.extract()
}

/// The methods of `ssl.SSLObject` this protocol calls; each only forwards to the C object
/// in `_sslobj` (`unwrap` as its `shutdown`).
const SSLOBJECT_METHODS: [&str; 7] = [
    "read",
    "write",
    "do_handshake",
    "getpeercert",
    "cipher",
    "compression",
    "unwrap",
];

/// The C SSL object under an `ssl.SSLObject` when the wrapper's class does not override
/// any of `SSLOBJECT_METHODS` (true: call the C object directly); otherwise the wrapper.
fn ssl_target<'py>(sslobj: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyAny>, bool)> {
    let py = sslobj.py();
    let standard = py_attr!(py, "ssl", "SSLObject")?;
    let cls = sslobj.get_type();
    let mut direct = cls.is(standard);
    if !direct && cls.is_subclass(standard)? {
        direct = true;
        for name in SSLOBJECT_METHODS {
            if !cls.getattr(name)?.is(&standard.getattr(name)?) {
                direct = false;
                break;
            }
        }
    }
    if direct {
        if let Ok(inner) = sslobj.getattr(intern!(py, "_sslobj")) {
            return Ok((inner, true));
        }
    }
    Ok((sslobj.clone(), false))
}

impl SslProtocol {
    /// `sslobj.<name>()` (`direct_name` on the C object, when it is called directly).
    fn ssl_call0<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, pyo3::types::PyString>,
        direct_name: &Bound<'py, pyo3::types::PyString>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (target, direct) = {
            let st = self.st(py);
            (st.ssl_target.clone_ref(py).into_bound(py), st.direct)
        };
        target.call_method0(if direct { direct_name } else { name })
    }

    fn st(&self, py: Python<'_>) -> std::cell::Ref<'_, SslState> {
        self.state.borrow(py)
    }

    fn st_mut(&self, py: Python<'_>) -> std::cell::RefMut<'_, SslState> {
        self.state.borrow_mut(py)
    }

    fn loop_<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.st(py).loop_ {
            Some(l) => Ok(l.bind(py).clone()),
            None => Err(PyRuntimeError::new_err("SSL protocol has no loop")),
        }
    }

    fn debug(&self, py: Python<'_>) -> PyResult<bool> {
        self.loop_(py)?.call_method0(intern!(py, "get_debug"))?.is_truthy()
    }

    fn transport<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.st(py).transport.as_ref().map(|t| t.bind(py).clone())
    }

    fn app_protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.st(py).app_protocol.as_ref().map(|t| t.bind(py).clone())
    }

    fn set_state(&self, py: Python<'_>, new: State) -> PyResult<()> {
        let mut st = self.st_mut(py);
        let allowed = matches!(
            (st.state, new),
            (_, State::Unwrapped)
                | (State::Unwrapped, State::DoHandshake)
                | (State::DoHandshake, State::Wrapped)
                | (State::Wrapped, State::Flushing)
                | (State::Flushing, State::Shutdown)
        );
        if !allowed {
            return Err(PyRuntimeError::new_err(format!(
                "cannot switch state from {} to {}",
                st.state.name(),
                new.name()
            )));
        }
        st.state = new;
        Ok(())
    }

    fn state(&self, py: Python<'_>) -> State {
        self.st(py).state
    }

    fn wakeup_waiter(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (waiter, accepted) = {
            let mut st = this.st_mut(py);
            (st.waiter.take(), st.accepted.take())
        };
        if let (Some((protocol, transport)), Some(e)) = (accepted, &exc) {
            // What the waiter's done callback would do, scheduled as it would be.
            this.loop_(py)?.call_method1(
                intern!(py, "call_soon"),
                (slf.getattr(intern!(py, "_accept_failed"))?, protocol, transport, e),
            )?;
        }
        let Some(waiter) = waiter else {
            return Ok(());
        };
        let waiter = waiter.into_bound(py);
        if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            match exc {
                Some(e) => waiter.call_method1(intern!(py, "set_exception"), (e,))?,
                None => waiter.call_method1(intern!(py, "set_result"), (py.None(),))?,
            };
        }
        Ok(())
    }

    fn cancel_handle(handle: Option<Py<PyAny>>, py: Python<'_>) -> PyResult<()> {
        if let Some(h) = handle {
            h.bind(py).call_method0(intern!(py, "cancel"))?;
        }
        Ok(())
    }

    /// The stream transport's `_force_close(exc)` (`abort()` for a transport without it).
    fn force_close_transport(py: Python<'_>, transport: &Bound<'_, PyAny>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        match transport.getattr(intern!(py, "_force_close")) {
            Ok(f) => f.call1((exc,)).map(drop),
            Err(_) => transport.call_method0(intern!(py, "abort")).map(drop),
        }
    }

    /// sslproto's `_fatal_error`.
    fn fatal_error(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let transport = this.transport(py);
        if let Some(t) = &transport {
            Self::force_close_transport(py, t, exc.clone())?;
        }
        if exc.is_instance_of::<PyOSError>() {
            if this.debug(py)? {
                let kwargs = PyDict::new(py);
                kwargs.set_item("exc_info", &exc)?;
                logger(py)?.call_method(intern!(py, "debug"), ("%r: %s", slf, message), Some(&kwargs))?;
            }
        } else if !exc.is_instance(py_attr!(py, "asyncio", "CancelledError")?)? {
            let ctx = PyDict::new(py);
            ctx.set_item("message", message)?;
            ctx.set_item("exception", &exc)?;
            ctx.set_item("transport", transport)?;
            ctx.set_item("protocol", slf)?;
            this.loop_(py)?
                .call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
        }
        Ok(())
    }

    /// Runs `f`; an `Exception` it raises goes to `_fatal_error` with `message`, anything
    /// else (KeyboardInterrupt, SystemExit, CancelledError) propagates.
    fn guard(slf: &Bound<'_, Self>, message: &str, f: impl FnOnce() -> PyResult<()>) -> PyResult<()> {
        let py = slf.py();
        match f() {
            Ok(()) => Ok(()),
            Err(e) if e.is_instance_of::<PyException>(py) => {
                Self::fatal_error(slf, e.into_value(py).into_bound(py).into_any(), message)
            }
            Err(e) => Err(e),
        }
    }

    // ---- handshake ----

    fn start_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let loop_ = this.loop_(py)?;
        let start = if this.debug(py)? {
            logger(py)?.call_method1(intern!(py, "debug"), ("%r starts SSL handshake", slf))?;
            Some(loop_.call_method0(intern!(py, "time"))?.extract::<f64>()?)
        } else {
            None
        };
        this.st_mut(py).handshake_start_time = start;
        this.set_state(py, State::DoHandshake)?;
        let timeout = this.st(py).handshake_timeout.clone_ref(py);
        let handle = loop_.call_method1(
            intern!(py, "call_later"),
            (timeout, slf.getattr(intern!(py, "_check_handshake_timeout"))?),
        )?;
        let old = this.st_mut(py).handshake_timeout_handle.replace(handle.unbind());
        drop(old);
        Self::do_handshake(slf)
    }

    fn do_handshake(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let dh = intern!(py, "do_handshake");
        match slf.get().ssl_call0(py, dh, dh) {
            Ok(_) => Self::on_handshake_complete(slf, None),
            Err(e) if is_again(py, &e)? => Self::process_outgoing(slf),
            Err(e) if is_ssl_error(py, &e)? => Self::on_handshake_complete(slf, Some(e)),
            Err(e) => Err(e),
        }
    }

    fn on_handshake_complete(slf: &Bound<'_, Self>, handshake_exc: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let handle = this.st_mut(py).handshake_timeout_handle.take();
        Self::cancel_handle(handle, py)?;
        let sslobj = this.st(py).sslobj.clone_ref(py).into_bound(py);
        let peercert = match handshake_exc {
            None => this.set_state(py, State::Wrapped).and_then(|_| {
                // The wrapper's default is binary_form=False; the C method's is the same.
                let gp = intern!(py, "getpeercert");
                this.ssl_call0(py, gp, gp)
            }),
            Some(e) => Err(e),
        };
        let peercert = match peercert {
            Ok(p) => p,
            Err(e) if e.is_instance_of::<PyException>(py) => {
                this.set_state(py, State::Unwrapped)?;
                let msg = if e.is_instance(py, py_attr!(py, "ssl", "CertificateError")?) {
                    "SSL handshake failed on verifying the certificate"
                } else {
                    "SSL handshake failed"
                };
                let exc = e.into_value(py).into_bound(py).into_any();
                Self::fatal_error(slf, exc.clone(), msg)?;
                return Self::wakeup_waiter(slf, Some(exc));
            }
            Err(e) => return Err(e),
        };
        if this.debug(py)? {
            let start = this.st(py).handshake_start_time.unwrap_or(0.0);
            let now: f64 = this.loop_(py)?.call_method0(intern!(py, "time"))?.extract()?;
            logger(py)?.call_method1(
                intern!(py, "debug"),
                ("%r: SSL handshake took %.1f ms", slf, (now - start) * 1e3),
            )?;
        }
        let extra = this.st(py).extra.clone_ref(py).into_bound(py);
        extra.set_item("peercert", peercert)?;
        let (ci, co) = (intern!(py, "cipher"), intern!(py, "compression"));
        extra.set_item("cipher", this.ssl_call0(py, ci, ci)?)?;
        extra.set_item("compression", this.ssl_call0(py, co, co)?)?;
        extra.set_item("ssl_object", &sslobj)?;
        let made = {
            let mut st = this.st_mut(py);
            if st.app_state == AppState::Init {
                st.app_state = AppState::ConMade;
                true
            } else {
                false
            }
        };
        if made {
            let app_transport = Self::get_app_transport(slf)?;
            if let Some(p) = this.app_protocol(py) {
                p.call_method1(intern!(py, "connection_made"), (app_transport,))?;
            }
        }
        Self::wakeup_waiter(slf, None)?;
        Self::do_read(slf)
    }

    // ---- shutdown ----

    fn start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let state = {
            let mut st = this.st_mut(py);
            if matches!(st.state, State::Flushing | State::Shutdown | State::Unwrapped) {
                return Ok(());
            }
            if st.app_transport.is_some() {
                st.app_closed = true;
            }
            st.state
        };
        if state == State::DoHandshake {
            return Self::abort(slf, py.None().into_bound(py));
        }
        this.set_state(py, State::Flushing)?;
        let timeout = this.st(py).shutdown_timeout.clone_ref(py);
        let handle = this.loop_(py)?.call_method1(
            intern!(py, "call_later"),
            (timeout, slf.getattr(intern!(py, "_check_shutdown_timeout"))?),
        )?;
        let old = this.st_mut(py).shutdown_timeout_handle.replace(handle.unbind());
        drop(old);
        Self::do_flush(slf)
    }

    fn do_flush(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)?;
        slf.get().set_state(slf.py(), State::Shutdown)?;
        Self::do_shutdown(slf)
    }

    fn do_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let eof = this.st(py).eof_received;
        let result = if eof {
            Ok(())
        } else {
            this.ssl_call0(py, intern!(py, "unwrap"), intern!(py, "shutdown"))
                .map(drop)
        };
        match result {
            Ok(()) => {
                Self::process_outgoing(slf)?;
                Self::call_eof_received(slf)?;
                Self::on_shutdown_complete(slf, None)
            }
            Err(e) if is_again(py, &e)? => Self::process_outgoing(slf),
            Err(e) if is_ssl_error(py, &e)? => Self::on_shutdown_complete(slf, Some(e)),
            Err(e) => Err(e),
        }
    }

    fn on_shutdown_complete(slf: &Bound<'_, Self>, exc: Option<PyErr>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let handle = this.st_mut(py).shutdown_timeout_handle.take();
        Self::cancel_handle(handle, py)?;
        match exc {
            Some(e) => Self::fatal_error(
                slf,
                e.into_value(py).into_bound(py).into_any(),
                "Fatal error on transport",
            ),
            None => {
                if let Some(t) = this.transport(py) {
                    this.loop_(py)?
                        .call_method1(intern!(py, "call_soon"), (t.getattr(intern!(py, "close"))?,))?;
                }
                Ok(())
            }
        }
    }

    /// sslproto's `_abort(exc)` (3.11's passes no exception on).
    fn abort(slf: &Bound<'_, Self>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.set_state(py, State::Unwrapped)?;
        if let Some(t) = this.transport(py) {
            let exc = if crate::pyversion::at_least(py, (3, 12, 0)) {
                exc
            } else {
                py.None().into_bound(py)
            };
            Self::force_close_transport(py, &t, exc)?;
        }
        Ok(())
    }

    // ---- outgoing ----

    fn write_appdata(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut st = this.st_mut(py);
            if matches!(st.state, State::Flushing | State::Shutdown | State::Unwrapped) {
                let warn = st.conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                st.conn_lost += 1;
                drop(st);
                if warn {
                    logger(py)?.call_method1(intern!(py, "warning"), ("SSL connection is closed",))?;
                }
                return Ok(());
            }
        }
        for data in list_of_data.try_iter()? {
            let data = data?;
            let n = data.len()?;
            let mut st = this.st_mut(py);
            st.write_backlog.push_back(data.unbind());
            st.write_buffer_size += n;
        }
        Self::guard(slf, "Fatal error on SSL protocol", || {
            if this.state(py) == State::Wrapped {
                Self::do_write(slf)?;
            }
            Ok(())
        })
    }

    fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let write = this.st(py).ssl_write.clone_ref(py).into_bound(py);
        loop {
            let Some(data) = this
                .st(py)
                .write_backlog
                .front()
                .map(|d| d.clone_ref(py).into_bound(py))
            else {
                break;
            };
            let count: usize = match write.call1((&data,)) {
                Ok(c) => c.extract()?,
                Err(e) if is_again(py, &e)? => break,
                Err(e) => return Err(e),
            };
            let len = data.len()?;
            let mut st = this.st_mut(py);
            if count < len {
                let rest = data.get_item(slice_from(py, count)?)?;
                st.write_backlog[0] = rest.unbind();
                st.write_buffer_size -= count;
            } else {
                st.write_backlog.pop_front();
                st.write_buffer_size -= len;
            }
        }
        Self::process_outgoing(slf)
    }

    fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (paused, read, write) = {
            let st = this.st(py);
            (
                st.ssl_writing_paused,
                st.outgoing_read.clone_ref(py),
                st.transport_write.as_ref().map(|w| w.clone_ref(py)),
            )
        };
        if !paused {
            let data = read.bind(py).call0()?;
            if data.len()? > 0 {
                match write {
                    Some(w) => w.bind(py).call1((data,))?,
                    None => return Err(no_transport_error()),
                };
            }
        }
        Self::control_app_writing(slf)
    }

    // ---- incoming ----

    fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !matches!(this.state(py), State::Wrapped | State::Flushing) {
            return Ok(());
        }
        Self::guard(slf, "Fatal error on SSL protocol", || {
            let (paused, buffered) = {
                let st = this.st(py);
                (st.app_reading_paused, st.app_is_buffer)
            };
            if !paused {
                if buffered {
                    Self::do_read_buffered(slf)?;
                } else {
                    Self::do_read_copied(slf)?;
                }
                if this.st(py).write_backlog.is_empty() {
                    Self::process_outgoing(slf)?;
                } else {
                    Self::do_write(slf)?;
                }
            }
            Self::control_ssl_reading(slf)
        })
    }

    fn do_read_buffered(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (get_buffer, buffer_updated, read, incoming) = {
            let st = this.st(py);
            (
                st.app_get_buffer.as_ref().map(|c| c.clone_ref(py)),
                st.app_buffer_updated.as_ref().map(|c| c.clone_ref(py)),
                st.ssl_read.clone_ref(py),
                st.incoming.clone_ref(py),
            )
        };
        let (Some(get_buffer), Some(buffer_updated)) = (get_buffer, buffer_updated) else {
            return Ok(());
        };
        let read = read.bind(py);
        let buf = get_buffer.bind(py).call1((pending(&incoming, py)?,))?;
        let wants = buf.len()?;
        let mut offset = 0;
        let mut count = 1;
        let attempt = (|| -> PyResult<()> {
            count = read.call1((wants, &buf))?.extract()?;
            if count > 0 {
                offset = count;
                while offset < wants {
                    let rest = buf.get_item(slice_from(py, offset)?)?;
                    count = read.call1((wants - offset, rest))?.extract()?;
                    if count > 0 {
                        offset += count;
                    } else {
                        break;
                    }
                }
                if offset >= wants {
                    this.loop_(py)?
                        .call_method1(intern!(py, "call_soon"), (slf.getattr(intern!(py, "_do_read"))?,))?;
                }
            }
            Ok(())
        })();
        match attempt {
            Ok(()) => {}
            Err(e) if is_again(py, &e)? => {}
            Err(e) => return Err(e),
        }
        if offset > 0 {
            buffer_updated.bind(py).call1((offset,))?;
        }
        if count == 0 {
            // close_notify
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    fn do_read_copied(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (read, target, incoming) = {
            let st = this.st(py);
            let target = st.direct.then(|| st.ssl_target.clone_ref(py).into_bound(py));
            (
                st.ssl_read.clone_ref(py).into_bound(py),
                target,
                st.incoming.clone_ref(py),
            )
        };
        // The plaintext is decrypted into this thread's shared buffer (its ciphertext is
        // already in the incoming BIO) and copied out once, at its exact size. Reading
        // each record into a `bytes` of `MAX_SIZE` made the allocator map, shrink and
        // unmap 256 KiB per record.
        let buffer = shared_buffer(py)?.0;
        let mut chunks: Vec<Bound<'_, PyAny>> = Vec::new();
        let mut filled = 0;
        let mut closed = false;
        loop {
            if filled == MAX_SIZE {
                chunks.push(copy_shared(py, &buffer, filled).into_any());
                filled = 0;
            }
            // The writable view covers the buffer from `filled` to the end; it is
            // released before anything else can use those bytes.
            let view = shared_view(py, &buffer, filled, MAX_SIZE - filled, ffi::PyBUF_WRITE)?;
            let got = read.call1((MAX_SIZE - filled, &view));
            view.call_method0(intern!(py, "release"))?;
            match got {
                Ok(count) => {
                    let count: usize = count.extract()?;
                    if count == 0 {
                        closed = true;
                        break;
                    }
                    filled += count.min(MAX_SIZE - filled);
                    // With no ciphertext left in the incoming BIO and none of the current
                    // record's plaintext left in the SSL object (`SSL_pending`; Python's
                    // SSL objects read one record at a time, no read-ahead), the next read
                    // could only raise SSLWantReadError: skip it (and the exception).
                    if let Some(t) = &target {
                        if pending(&incoming, py)? == 0
                            && t.call_method0(intern!(py, "pending"))?.extract::<usize>()? == 0
                        {
                            break;
                        }
                    }
                }
                Err(e) if is_again(py, &e)? => break,
                Err(e) => return Err(e),
            }
        }
        if filled > 0 {
            chunks.push(copy_shared(py, &buffer, filled).into_any());
        }
        let data = match chunks.len() {
            0 => None,
            1 => chunks.pop(),
            // b''.join(chunks), as sslproto: one copy into the result.
            _ => Some(PyBytes::new(py, b"").call_method1(intern!(py, "join"), (chunks,))?),
        };
        if let Some(data) = data {
            let cb = this.st(py).app_data_received.as_ref().map(|c| c.clone_ref(py));
            match cb {
                Some(cb) => cb.bind(py).call1((data,))?,
                None => match this.app_protocol(py) {
                    Some(p) => p.call_method1(intern!(py, "data_received"), (data,))?,
                    None => py.None().into_bound(py),
                },
            };
        }
        if closed {
            // close_notify
            Self::call_eof_received(slf)?;
            Self::start_shutdown(slf)?;
        }
        Ok(())
    }

    fn call_eof_received(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let call = {
            let mut st = this.st_mut(py);
            if st.app_state == AppState::ConMade {
                st.app_state = AppState::Eof;
                true
            } else {
                false
            }
        };
        if !call {
            return Ok(());
        }
        let result = match this.app_protocol(py) {
            Some(p) => p.call_method0(intern!(py, "eof_received")).and_then(|k| k.is_truthy()),
            None => Ok(false),
        };
        match result {
            Ok(true) => {
                logger(py)?.call_method1(
                    intern!(py, "warning"),
                    ("returning true from eof_received() has no effect when using ssl",),
                )?;
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) if is_fatal(py, &e) => Err(e),
            Err(e) => Self::fatal_error(
                slf,
                e.into_value(py).into_bound(py).into_any(),
                "Error calling eof_received()",
            ),
        }
    }

    // ---- flow control ----

    fn write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        let st = self.st(py);
        Ok(pending(&st.outgoing, py)? + st.write_buffer_size)
    }

    fn control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let size = this.write_buffer_size(py)?;
        let method = {
            let mut st = this.st_mut(py);
            if size >= st.outgoing_high && !st.app_writing_paused {
                st.app_writing_paused = true;
                "pause_writing"
            } else if size <= st.outgoing_low && st.app_writing_paused {
                st.app_writing_paused = false;
                "resume_writing"
            } else {
                return Ok(());
            }
        };
        let Some(protocol) = this.app_protocol(py) else {
            return Ok(());
        };
        match protocol.call_method0(method) {
            Ok(_) => Ok(()),
            Err(e) if is_fatal(py, &e) => Err(e),
            Err(e) => {
                let ctx = PyDict::new(py);
                ctx.set_item("message", format!("protocol.{method}() failed"))?;
                ctx.set_item("exception", e.into_value(py))?;
                ctx.set_item("transport", this.st(py).app_transport.as_ref().map(|t| t.clone_ref(py)))?;
                ctx.set_item("protocol", slf)?;
                this.loop_(py)?
                    .call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
                Ok(())
            }
        }
    }

    fn control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let size = pending(&this.st(py).incoming, py)?;
        let method = {
            let mut st = this.st_mut(py);
            if size >= st.incoming_high && !st.ssl_reading_paused {
                st.ssl_reading_paused = true;
                "pause_reading"
            } else if size <= st.incoming_low && st.ssl_reading_paused {
                st.ssl_reading_paused = false;
                "resume_reading"
            } else {
                return Ok(());
            }
        };
        if let Some(t) = this.transport(py) {
            t.call_method0(method)?;
        }
        Ok(())
    }

    fn get_app_transport<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        if let Some(t) = &this.st(py).app_transport {
            return Ok(t.bind(py).clone());
        }
        if this.st(py).app_transport_created {
            return Err(PyRuntimeError::new_err("Creating _SSLProtocolTransport twice"));
        }
        let facade =
            crate::transports::accept::alloc_instance(py_attr!(py, "ferroloop._transports", "SSLProtocolTransport")?)?;
        facade.setattr(intern!(py, "_ssl_protocol"), slf)?;
        facade.setattr(intern!(py, "write"), slf.getattr(intern!(py, "_app_write"))?)?;
        let mut st = this.st_mut(py);
        st.app_transport = Some(facade.clone().unbind());
        st.app_transport_created = true;
        Ok(facade)
    }
}

fn no_transport_error() -> PyErr {
    pyo3::exceptions::PyAttributeError::new_err("'NoneType' object has no attribute 'write'")
}

#[pymethods]
impl SslProtocol {
    #[new]
    #[pyo3(signature = (
        loop_, app_protocol, sslcontext, waiter, server_side=false, server_hostname=None,
        call_connection_made=true, ssl_handshake_timeout=None, ssl_shutdown_timeout=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        loop_: &Bound<'_, PyAny>,
        app_protocol: &Bound<'_, PyAny>,
        sslcontext: Option<&Bound<'_, PyAny>>,
        waiter: Option<&Bound<'_, PyAny>>,
        server_side: bool,
        server_hostname: Option<&Bound<'_, PyAny>>,
        call_connection_made: bool,
        ssl_handshake_timeout: Option<&Bound<'_, PyAny>>,
        ssl_shutdown_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let py = loop_.py();
        let constants = py_attr!(py, "asyncio", "constants")?;
        let timeout = |value: Option<&Bound<'_, PyAny>>, name: &str, default: &str| -> PyResult<Py<PyAny>> {
            match value.filter(|v| !v.is_none()) {
                None => Ok(constants.getattr(default)?.unbind()),
                Some(v) => {
                    if v.le(0)? {
                        return Err(PyValueError::new_err(format!(
                            "{name} should be a positive number, got {}",
                            v.str()?
                        )));
                    }
                    Ok(v.clone().unbind())
                }
            }
        };
        let handshake_timeout = timeout(ssl_handshake_timeout, "ssl_handshake_timeout", "SSL_HANDSHAKE_TIMEOUT")?;
        let shutdown_timeout = timeout(ssl_shutdown_timeout, "ssl_shutdown_timeout", "SSL_SHUTDOWN_TIMEOUT")?;
        let ssl = py_attr!(py, "ferroloop._tls", "ssl")?;
        let server_hostname = server_hostname.filter(|h| !h.is_none());
        let sslcontext = match sslcontext.filter(|c| c.is_truthy().unwrap_or(true)) {
            Some(c) => c.clone(),
            None => {
                if server_side {
                    return Err(PyValueError::new_err("Server side SSL needs a valid SSLContext"));
                }
                let ctx = ssl.call_method0("create_default_context")?;
                if !server_hostname.map(|h| h.is_truthy()).transpose()?.unwrap_or(false) {
                    ctx.setattr("check_hostname", false)?;
                }
                ctx
            }
        };
        let hostname = match server_hostname {
            Some(h) if h.is_truthy()? && !server_side => Some(h.clone()),
            _ => None,
        };
        let extra = PyDict::new(py);
        extra.set_item("sslcontext", &sslcontext)?;
        let memory_bio = ssl.getattr(intern!(py, "MemoryBIO"))?;
        let incoming = memory_bio.call0()?;
        let outgoing = memory_bio.call0()?;
        let sslobj = wrap_bio(&sslcontext, &incoming, &outgoing, server_side, hostname)?;
        let (target, direct) = ssl_target(&sslobj)?;
        let (incoming_high, incoming_low) = flowcontrol_defaults(None, None, HIGH_WATER_SSL_READ_KB)?;
        let (outgoing_high, outgoing_low) = flowcontrol_defaults(None, None, HIGH_WATER_SSL_WRITE_KB)?;
        let proto = SslProtocol {
            state: GilCell::new(SslState {
                loop_: Some(loop_.clone().unbind()),
                app_protocol: None,
                app_data_received: None,
                app_get_buffer: None,
                app_buffer_updated: None,
                app_is_buffer: false,
                app_transport: None,
                app_transport_created: false,
                app_closed: false,
                transport: None,
                transport_write: None,
                ssl_read: target.getattr(intern!(py, "read"))?.unbind(),
                ssl_write: target.getattr(intern!(py, "write"))?.unbind(),
                ssl_target: target.unbind(),
                direct,
                sslcontext: sslcontext.unbind(),
                sslobj: sslobj.unbind(),
                incoming_write: incoming.getattr("write")?.unbind(),
                outgoing_read: outgoing.getattr("read")?.unbind(),
                incoming: incoming.unbind(),
                outgoing: outgoing.unbind(),
                extra: extra.unbind(),
                write_backlog: VecDeque::new(),
                write_buffer_size: 0,
                waiter: waiter.filter(|w| !w.is_none()).map(|w| w.clone().unbind()),
                accepted: None,
                server_side,
                handshake_timeout,
                shutdown_timeout,
                handshake_start_time: None,
                handshake_timeout_handle: None,
                shutdown_timeout_handle: None,
                state: State::Unwrapped,
                conn_lost: 0,
                app_state: if call_connection_made {
                    AppState::Init
                } else {
                    AppState::ConMade
                },
                ssl_writing_paused: false,
                app_reading_paused: false,
                ssl_reading_paused: false,
                incoming_high,
                incoming_low,
                eof_received: false,
                app_writing_paused: false,
                outgoing_high,
                outgoing_low,
            }),
        };
        proto._set_app_protocol(app_protocol)?;
        Ok(proto)
    }

    fn _set_app_protocol(&self, app_protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = app_protocol.py();
        let buffered = app_protocol.hasattr(intern!(py, "get_buffer"))?
            && app_protocol.is_instance(py_attr!(py, "asyncio", "BufferedProtocol")?)?;
        let method = |name: &str| app_protocol.getattr(name).ok().map(Bound::unbind);
        let (dr, gb, bu) = if buffered {
            (None, method("get_buffer"), method("buffer_updated"))
        } else {
            (method("data_received"), None, None)
        };
        let old = {
            let mut st = self.st_mut(py);
            st.app_is_buffer = buffered;
            (
                st.app_protocol.replace(app_protocol.clone().unbind()),
                std::mem::replace(&mut st.app_data_received, dr),
                std::mem::replace(&mut st.app_get_buffer, gb),
                std::mem::replace(&mut st.app_buffer_updated, bu),
            )
        };
        drop(old);
        Ok(())
    }

    fn _get_app_transport<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        Self::get_app_transport(slf)
    }

    #[getter(_app_transport)]
    fn app_transport_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st(py).app_transport.as_ref().map(|t| t.clone_ref(py))
    }

    #[getter(_app_protocol)]
    fn app_protocol_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st(py).app_protocol.as_ref().map(|t| t.clone_ref(py))
    }

    #[getter(_transport)]
    fn transport_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st(py).transport.as_ref().map(|t| t.clone_ref(py))
    }

    #[getter(_sslobj)]
    fn sslobj_attr(&self, py: Python<'_>) -> Py<PyAny> {
        self.st(py).sslobj.clone_ref(py)
    }

    #[getter(_sslcontext)]
    fn sslcontext_attr(&self, py: Python<'_>) -> Py<PyAny> {
        self.st(py).sslcontext.clone_ref(py)
    }

    #[getter(_server_side)]
    fn server_side_attr(&self, py: Python<'_>) -> bool {
        self.st(py).server_side
    }

    #[getter(_state)]
    fn state_attr(&self, py: Python<'_>) -> &'static str {
        self.st(py).state.name()
    }

    #[getter(_app_closed)]
    fn app_closed_attr(&self, py: Python<'_>) -> bool {
        self.st(py).app_closed
    }

    #[getter(_app_reading_paused)]
    fn app_reading_paused_attr(&self, py: Python<'_>) -> bool {
        self.st(py).app_reading_paused
    }

    #[getter(_app_writing_paused)]
    fn app_writing_paused_attr(&self, py: Python<'_>) -> bool {
        self.st(py).app_writing_paused
    }

    #[getter(_ssl_writing_paused)]
    fn ssl_writing_paused_attr(&self, py: Python<'_>) -> bool {
        self.st(py).ssl_writing_paused
    }

    #[getter(_ssl_reading_paused)]
    fn ssl_reading_paused_attr(&self, py: Python<'_>) -> bool {
        self.st(py).ssl_reading_paused
    }

    #[getter(_outgoing_high_water)]
    fn outgoing_high_attr(&self, py: Python<'_>) -> usize {
        self.st(py).outgoing_high
    }

    #[getter(_outgoing_low_water)]
    fn outgoing_low_attr(&self, py: Python<'_>) -> usize {
        self.st(py).outgoing_low
    }

    #[getter(_incoming_high_water)]
    fn incoming_high_attr(&self, py: Python<'_>) -> usize {
        self.st(py).incoming_high
    }

    #[getter(_incoming_low_water)]
    fn incoming_low_attr(&self, py: Python<'_>) -> usize {
        self.st(py).incoming_low
    }

    #[getter(_ssl_handshake_timeout)]
    fn handshake_timeout_attr(&self, py: Python<'_>) -> Py<PyAny> {
        self.st(py).handshake_timeout.clone_ref(py)
    }

    #[getter(_ssl_shutdown_timeout)]
    fn shutdown_timeout_attr(&self, py: Python<'_>) -> Py<PyAny> {
        self.st(py).shutdown_timeout.clone_ref(py)
    }

    // ---- the stream transport's protocol ----

    fn connection_made(slf: &Bound<'_, Self>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let write = transport.getattr(intern!(py, "write"))?;
        let old = {
            let mut st = slf.get().st_mut(py);
            (
                st.transport.replace(transport.clone().unbind()),
                st.transport_write.replace(write.unbind()),
            )
        };
        drop(old);
        Self::start_handshake(slf)
    }

    fn connection_lost(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let outgoing_read = {
            let mut st = this.st_mut(py);
            st.write_backlog.clear();
            st.write_buffer_size = 0;
            st.conn_lost += 1;
            if st.app_transport.is_some() {
                st.app_closed = true;
            }
            st.outgoing_read.clone_ref(py)
        };
        outgoing_read.bind(py).call0()?;
        let lost = {
            let mut st = this.st_mut(py);
            if st.state != State::DoHandshake && matches!(st.app_state, AppState::ConMade | AppState::Eof) {
                st.app_state = AppState::ConLost;
                true
            } else {
                false
            }
        };
        if lost {
            if let Some(p) = this.app_protocol(py) {
                this.loop_(py)?.call_method1(
                    intern!(py, "call_soon"),
                    (p.getattr(intern!(py, "connection_lost"))?, exc),
                )?;
            }
        }
        this.set_state(py, State::Unwrapped)?;
        let taken = {
            let mut st = this.st_mut(py);
            (
                st.transport.take(),
                st.transport_write.take(),
                st.app_transport.take(),
                st.app_protocol.take(),
                st.app_data_received.take(),
                st.app_get_buffer.take(),
                st.app_buffer_updated.take(),
            )
        };
        drop(taken);
        Self::wakeup_waiter(slf, (!exc.is_none()).then(|| exc.clone()))?;
        let handles = {
            let mut st = this.st_mut(py);
            (st.shutdown_timeout_handle.take(), st.handshake_timeout_handle.take())
        };
        Self::cancel_handle(handles.0, py)?;
        Self::cancel_handle(handles.1, py)
    }

    fn get_buffer(&self, py: Python<'_>, _n: isize) -> PyResult<Py<PyAny>> {
        Ok(shared_buffer(py)?.1)
    }

    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: usize) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let write = this.st(py).incoming_write.clone_ref(py);
        let buffer = shared_buffer(py)?.0;
        let nbytes = nbytes.min(MAX_SIZE);
        // MemoryBIO.write copies the bytes out before returning, and the read-only view
        // is released right after.
        let view = shared_view(py, &buffer, 0, nbytes, ffi::PyBUF_READ)?;
        let written = write.bind(py).call1((&view,));
        view.call_method0(intern!(py, "release"))?;
        written?;
        match this.state(py) {
            State::DoHandshake => Self::do_handshake(slf),
            State::Wrapped => Self::do_read(slf),
            State::Flushing => Self::do_flush(slf),
            State::Shutdown => Self::do_shutdown(slf),
            State::Unwrapped => Ok(()),
        }
    }

    fn eof_received(slf: &Bound<'_, Self>) -> PyResult<Option<bool>> {
        let py = slf.py();
        let this = slf.get();
        this.st_mut(py).eof_received = true;
        let result = (|| -> PyResult<Option<bool>> {
            if this.debug(py)? {
                logger(py)?.call_method1(intern!(py, "debug"), ("%r received EOF", slf))?;
            }
            match this.state(py) {
                State::DoHandshake => {
                    Self::on_handshake_complete(slf, Some(PyConnectionResetError::new_err(())))?;
                }
                State::Wrapped => {
                    this.set_state(py, State::Flushing)?;
                    if this.st(py).app_reading_paused {
                        return Ok(Some(true));
                    }
                    Self::do_flush(slf)?;
                }
                State::Flushing => {
                    Self::do_write(slf)?;
                    this.set_state(py, State::Shutdown)?;
                    Self::do_shutdown(slf)?;
                }
                State::Shutdown => Self::do_shutdown(slf)?,
                State::Unwrapped => {}
            }
            Ok(None)
        })();
        match result {
            Err(e) if e.is_instance_of::<PyException>(py) => {
                if let Some(t) = this.transport(py) {
                    t.call_method0(intern!(py, "close"))?;
                }
                Err(e)
            }
            r => r,
        }
    }

    fn pause_writing(&self, py: Python<'_>) -> PyResult<()> {
        let mut st = self.st_mut(py);
        if st.ssl_writing_paused {
            return Err(PyAssertionError::new_err(()));
        }
        st.ssl_writing_paused = true;
        Ok(())
    }

    fn resume_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().st_mut(py);
            if !st.ssl_writing_paused {
                return Err(PyAssertionError::new_err(()));
            }
            st.ssl_writing_paused = false;
        }
        Self::process_outgoing(slf)
    }

    // ---- callbacks scheduled on the loop ----

    fn _check_handshake_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.state(py) != State::DoHandshake {
            return Ok(());
        }
        let timeout = this.st(py).handshake_timeout.clone_ref(py);
        let msg = format!(
            "SSL handshake is taking longer than {} seconds: aborting the connection",
            timeout.bind(py).str()?
        );
        let exc = PyConnectionAbortedError::new_err(msg)
            .into_value(py)
            .into_bound(py)
            .into_any();
        Self::fatal_error(slf, exc, "Fatal error on transport")
    }

    fn _check_shutdown_timeout(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !matches!(this.state(py), State::Flushing | State::Shutdown) {
            return Ok(());
        }
        if let Some(t) = this.transport(py) {
            let exc = py_attr!(py, "asyncio", "TimeoutError")?.call1(("SSL shutdown timed out",))?;
            Self::force_close_transport(py, &t, exc)?;
        }
        Ok(())
    }

    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)
    }

    /// What `_resume_reading` schedules.
    fn _resume(slf: &Bound<'_, Self>) -> PyResult<()> {
        match slf.get().state(slf.py()) {
            State::Wrapped => Self::do_read(slf),
            State::Flushing => Self::do_flush(slf),
            State::Shutdown => Self::do_shutdown(slf),
            _ => Ok(()),
        }
    }

    /// A server connection's handshake failed: asyncio's `_accept_connection2` closes
    /// the transport and, in debug mode, reports the error.
    fn _accept_failed(
        &self,
        py: Python<'_>,
        protocol: &Bound<'_, PyAny>,
        transport: &Bound<'_, PyAny>,
        exc: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        transport.call_method0(intern!(py, "close"))?;
        if self.debug(py)? {
            let ctx = PyDict::new(py);
            ctx.set_item("message", "Error on transport creation for incoming connection")?;
            ctx.set_item("exception", exc)?;
            ctx.set_item("protocol", protocol)?;
            ctx.set_item("transport", transport)?;
            self.loop_(py)?
                .call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
        }
        Ok(())
    }

    // ---- what the application transport calls ----

    #[pyo3(signature = (name, default=None))]
    fn _get_extra_info(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let default = default.unwrap_or_else(|| py.None());
        if let Some(v) = self.st(py).extra.bind(py).get_item(name)? {
            return Ok(v.unbind());
        }
        match self.transport(py) {
            Some(t) => Ok(t.call_method1(intern!(py, "get_extra_info"), (name, default))?.unbind()),
            None => Ok(default),
        }
    }

    fn _app_write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if !crate::transports::stream::is_bytes_like(data) {
            return Err(PyTypeError::new_err(format!(
                "data: expecting a bytes-like instance, got {}",
                data.get_type().name()?
            )));
        }
        if data.len()? == 0 {
            return Ok(());
        }
        Self::write_appdata(slf, &PyTuple::new(slf.py(), [data])?.into_any())
    }

    fn _write_appdata(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::write_appdata(slf, list_of_data)
    }

    /// The application transport's `close()`: false if it was closed already (the
    /// transport then detaches itself, as asyncio's does).
    fn _app_close(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let py = slf.py();
        {
            let mut st = slf.get().st_mut(py);
            if st.app_closed {
                return Ok(false);
            }
            st.app_closed = true;
        }
        Self::start_shutdown(slf)?;
        Ok(true)
    }

    /// Marks the application transport closed; true if it was open (for its `__del__`).
    fn _app_mark_closed(&self, py: Python<'_>) -> bool {
        !std::mem::replace(&mut self.st_mut(py).app_closed, true)
    }

    fn _app_force_close(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        slf.get().st_mut(slf.py()).app_closed = true;
        Self::abort(slf, exc.clone())
    }

    fn _start_shutdown(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::start_shutdown(slf)
    }

    #[pyo3(signature = (exc=None))]
    fn _abort(slf: &Bound<'_, Self>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        Self::abort(slf, exc.unwrap_or_else(|| slf.py().None().into_bound(slf.py())))
    }

    fn _get_write_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        self.write_buffer_size(py)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn _set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (h, l) = flowcontrol_defaults(high, low, HIGH_WATER_SSL_WRITE_KB)?;
        let mut st = self.st_mut(py);
        st.outgoing_high = h;
        st.outgoing_low = l;
        Ok(())
    }

    #[pyo3(signature = (high=None, low=None))]
    fn _set_read_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (h, l) = flowcontrol_defaults(high, low, HIGH_WATER_SSL_READ_KB)?;
        let mut st = self.st_mut(py);
        st.incoming_high = h;
        st.incoming_low = l;
        Ok(())
    }

    fn _control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_app_writing(slf)
    }

    fn _control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_ssl_reading(slf)
    }

    fn _get_read_buffer_size(&self, py: Python<'_>) -> PyResult<usize> {
        pending(&self.st(py).incoming, py)
    }

    fn _pause_reading(&self, py: Python<'_>) {
        self.st_mut(py).app_reading_paused = true;
    }

    fn _resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().st_mut(py);
            if !st.app_reading_paused {
                return Ok(());
            }
            st.app_reading_paused = false;
        }
        slf.get()
            .loop_(py)?
            .call_method1(intern!(py, "call_soon"), (slf.getattr(intern!(py, "_resume"))?,))?;
        Ok(())
    }

    /// For asyncio's tests: data in the write backlog.
    #[pyo3(name = "_test__append_write_backlog")]
    fn test_append_write_backlog(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let n = data.len()?;
        let mut st = self.st_mut(py);
        st.write_backlog.push_back(data.clone().unbind());
        st.write_buffer_size += n;
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(st) = self.state.try_borrow() {
            visit.call(&st.loop_)?;
            visit.call(&st.app_protocol)?;
            visit.call(&st.app_data_received)?;
            visit.call(&st.app_get_buffer)?;
            visit.call(&st.app_buffer_updated)?;
            visit.call(&st.app_transport)?;
            visit.call(&st.transport)?;
            visit.call(&st.transport_write)?;
            visit.call(&st.sslcontext)?;
            visit.call(&st.sslobj)?;
            visit.call(&st.ssl_target)?;
            visit.call(&st.ssl_read)?;
            visit.call(&st.ssl_write)?;
            visit.call(&st.incoming)?;
            visit.call(&st.outgoing)?;
            visit.call(&st.incoming_write)?;
            visit.call(&st.outgoing_read)?;
            visit.call(&st.extra)?;
            for d in &st.write_backlog {
                visit.call(d)?;
            }
            visit.call(&st.waiter)?;
            if let Some((p, t)) = &st.accepted {
                visit.call(p)?;
                visit.call(t)?;
            }
            visit.call(&st.handshake_timeout)?;
            visit.call(&st.shutdown_timeout)?;
            visit.call(&st.handshake_timeout_handle)?;
            visit.call(&st.shutdown_timeout_handle)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self.state.try_borrow_mut().map(|mut st| {
            (
                st.loop_.take(),
                st.app_protocol.take(),
                st.app_data_received.take(),
                st.app_get_buffer.take(),
                st.app_buffer_updated.take(),
                st.app_transport.take(),
                st.transport.take(),
                st.transport_write.take(),
                std::mem::take(&mut st.write_backlog),
                st.waiter.take(),
                st.accepted.take(),
                st.handshake_timeout_handle.take(),
                st.shutdown_timeout_handle.take(),
            )
        });
        drop(taken);
    }
}

/// `sslcontext.wrap_bio(incoming, outgoing, server_side=, server_hostname=)`. For a context
/// whose `wrap_bio` and `sslobject_class` are the standard ones, what they do (the
/// `SSLObject._create` classmethod) without their Python frames: an `SSLObject` made
/// without `__init__`, the context's C `_wrap_bio` with it as the owner, stored as its
/// `_sslobj`.
fn wrap_bio<'py>(
    sslcontext: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
    outgoing: &Bound<'py, PyAny>,
    server_side: bool,
    hostname: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = sslcontext.py();
    let standard_ctx = py_attr!(py, "ssl", "SSLContext")?;
    let standard_obj = py_attr!(py, "ssl", "SSLObject")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "server_side"), server_side)?;
    let standard = sslcontext
        .get_type()
        .getattr(intern!(py, "wrap_bio"))?
        .is(&standard_ctx.getattr(intern!(py, "wrap_bio"))?)
        && sslcontext.getattr(intern!(py, "sslobject_class"))?.is(standard_obj);
    if !standard {
        kwargs.set_item(intern!(py, "server_hostname"), hostname)?;
        return sslcontext.call_method(intern!(py, "wrap_bio"), (incoming, outgoing), Some(&kwargs));
    }
    let hostname = match hostname {
        Some(h) => sslcontext.call_method1(intern!(py, "_encode_hostname"), (h,))?,
        None => py.None().into_bound(py),
    };
    let obj = py_attr!(py, "builtins", "object")?.call_method1(intern!(py, "__new__"), (standard_obj,))?;
    kwargs.set_item(intern!(py, "server_hostname"), hostname)?;
    kwargs.set_item(intern!(py, "owner"), &obj)?;
    kwargs.set_item(intern!(py, "session"), py.None())?;
    let c_obj = sslcontext.call_method(intern!(py, "_wrap_bio"), (incoming, outgoing), Some(&kwargs))?;
    obj.setattr(intern!(py, "_sslobj"), c_obj)?;
    Ok(obj)
}

/// The protocol factory of a TLS server's acceptor: the user's protocol under a server-side
/// `ferroloop._tls.SSLProtocol` (made without its Python `__init__`, whose only work, the
/// application transport, is done here), as asyncio's `_accept_connection2` makes them.
#[pyclass(module = "ferroloop._core", name = "TLSServerFactory", frozen)]
pub struct TlsServerFactory {
    loop_: Py<PyAny>,
    protocol_factory: Py<PyAny>,
    sslcontext: Py<PyAny>,
    handshake_timeout: Py<PyAny>,
    shutdown_timeout: Py<PyAny>,
}

#[pymethods]
impl TlsServerFactory {
    #[new]
    fn new(
        loop_: Py<PyAny>,
        protocol_factory: Py<PyAny>,
        sslcontext: Py<PyAny>,
        ssl_handshake_timeout: Py<PyAny>,
        ssl_shutdown_timeout: Py<PyAny>,
    ) -> Self {
        TlsServerFactory {
            loop_,
            protocol_factory,
            sslcontext,
            handshake_timeout: ssl_handshake_timeout,
            shutdown_timeout: ssl_shutdown_timeout,
        }
    }

    fn __call__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let protocol = self.protocol_factory.bind(py).call0()?;
        let cls = py_attr!(py, "ferroloop._tls", "SSLProtocol")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item(intern!(py, "ssl_handshake_timeout"), &self.handshake_timeout)?;
        kwargs.set_item(intern!(py, "ssl_shutdown_timeout"), &self.shutdown_timeout)?;
        let args = (
            cls,
            &self.loop_,
            &protocol,
            &self.sslcontext,
            py.None(),
            true,
            py.None(),
        );
        let obj = cls.call_method(intern!(py, "__new__"), args, Some(&kwargs))?;
        let ssl_protocol = obj.cast::<SslProtocol>()?;
        let transport = SslProtocol::get_app_transport(ssl_protocol)?;
        ssl_protocol.get().st_mut(py).accepted = Some((protocol.unbind(), transport.unbind()));
        Ok(obj)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.protocol_factory)?;
        visit.call(&self.sslcontext)?;
        visit.call(&self.handshake_timeout)?;
        visit.call(&self.shutdown_timeout)
    }
}

pub(crate) fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SslProtocol>()?;
    m.add_class::<TlsServerFactory>()
}

/// `slice(start, None)`: what follows `start` when indexing a buffer. (PyO3's
/// `PySlice::new` passes `PySlice_New` new references to its bounds, which that does not
/// steal, so every int it makes for them leaks.)
fn slice_from(py: Python<'_>, start: usize) -> PyResult<Bound<'_, PySlice>> {
    Ok(py
        .get_type::<PySlice>()
        .call1((start, py.None()))?
        .cast_into::<PySlice>()?)
}
