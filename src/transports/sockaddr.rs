//! Socket addresses between the kernel's `sockaddr` and their Python forms, converted
//! exactly as CPython's socket module converts them (`makesockaddr` one way,
//! `getsockaddrarg` the other) for IPv4, IPv6 and Unix sockets. Whatever is not
//! converted here (other families, host names, out-of-range values) is left to the
//! socket module, which also raises its own errors for it.

use std::os::fd::RawFd;

use pyo3::exceptions::PyOSError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};

use crate::gil::py_attr;
use crate::transports::stream::io_to_pyerr;

/// A socket address as Python sees it, converted exactly as CPython's socket module
/// converts it (`makesockaddr`), for IPv4, IPv6 and Unix addresses; `None` for any
/// other family, which the caller must then ask the socket module for.
pub(crate) fn sockaddr_to_py<'py>(
    py: Python<'py>,
    ss: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    if len == 0 {
        return Ok(Some(py.None().into_bound(py)));
    }
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote an AF_INET address, and sockaddr_storage is
            // large and aligned enough for a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            let host = PyString::new(py, &ipv4_text(a)).into_any();
            let port = u16::from_be(a.sin_port) as i32;
            Ok(Some(
                PyTuple::new(py, [host, port.into_pyobject(py)?.into_any()])?.into_any(),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
            let host = PyString::new(py, &ipv6_text(a).map_err(io_to_pyerr)?).into_any();
            let port = u16::from_be(a.sin6_port) as i32;
            let items = [
                host,
                port.into_pyobject(py)?.into_any(),
                u32::from_be(a.sin6_flowinfo).into_pyobject(py)?.into_any(),
                a.sin6_scope_id.into_pyobject(py)?.into_any(),
            ];
            Ok(Some(PyTuple::new(py, items)?.into_any()))
        }
        libc::AF_UNIX => {
            let path = match unix_name(ss, len) {
                // Linux's abstract namespace: the name's bytes, as bytes.
                UnixName::Abstract(name) => return Ok(Some(PyBytes::new(py, name).into_any())),
                UnixName::Path(path) => path,
            };
            // A path, decoded with the file system encoding.
            // SAFETY: `path` is readable memory; the GIL is held.
            let s = unsafe {
                ffi::PyUnicode_DecodeFSDefaultAndSize(
                    path.as_ptr() as *const libc::c_char,
                    path.len() as ffi::Py_ssize_t,
                )
            };
            // SAFETY: a new reference or NULL with an exception set.
            Ok(Some(unsafe { Bound::from_owned_ptr_or_err(py, s)? }))
        }
        _ => Ok(None),
    }
}

/// The text form of an IPv4 address: inet_ntop's dotted quad (which glibc makes with
/// sprintf).
pub(crate) fn ipv4_text(a: &libc::sockaddr_in) -> String {
    let o = a.sin_addr.s_addr.to_ne_bytes();
    format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
}

/// The text form of an IPv6 address, as the socket module makes it (inet_ntop).
pub(crate) fn ipv6_text(a: &libc::sockaddr_in6) -> std::io::Result<String> {
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: sin6_addr is an AF_INET6 address; buf has room for the longest text form
    // (INET6_ADDRSTRLEN is 46).
    let r = unsafe {
        inet_ntop(
            libc::AF_INET6,
            &a.sin6_addr as *const libc::in6_addr as *const libc::c_void,
            buf.as_mut_ptr(),
            buf.len() as libc::socklen_t,
        )
    };
    if r.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: inet_ntop wrote a NUL-terminated ASCII string into buf.
    let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(text.to_string_lossy().into_owned())
}

/// The name in a Unix socket address the kernel wrote `len` bytes of (into zeroed
/// storage).
pub(crate) enum UnixName<'a> {
    /// Linux's abstract namespace (a leading NUL): every byte of the name.
    Abstract(&'a [u8]),
    /// A path: its bytes up to the terminating NUL.
    Path(&'a [u8]),
}

pub(crate) fn unix_name(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> UnixName<'_> {
    // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_un.
    let a = unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_un) };
    let path_at = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let path: &[u8] =
        // SAFETY: sun_path is an array of c_char, the same size as u8.
        unsafe { std::slice::from_raw_parts(a.sun_path.as_ptr() as *const u8, a.sun_path.len()) };
    let n = (len as usize).saturating_sub(path_at).min(path.len());
    if n > 0 && path[0] == 0 {
        return UnixName::Abstract(&path[..n]);
    }
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    UnixName::Path(&path[..end])
}

extern "C" {
    /// The C library's address parsing and formatting, which the socket module uses
    /// (not in the libc crate).
    fn inet_pton(af: libc::c_int, src: *const libc::c_char, dst: *mut libc::c_void) -> libc::c_int;
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// `getsockname()` / `getpeername()` of `sock`, `None` if the call fails, as asyncio's
/// transports fill their extra info. A plain `socket.socket` is asked through its fd;
/// a subclass through its methods, which it may override.
pub(crate) fn socket_name<'py>(sock: &Bound<'py, PyAny>, fd: RawFd, peer: bool) -> PyResult<Bound<'py, PyAny>> {
    let py = sock.py();
    if sock.get_type().is(py_attr!(py, "socket", "socket")?) {
        if let Some(addr) = raw_socket_name(py, fd, peer)? {
            return Ok(addr);
        }
    }
    let method = if peer {
        intern!(py, "getpeername")
    } else {
        intern!(py, "getsockname")
    };
    match sock.call_method0(method) {
        Ok(addr) => Ok(addr),
        Err(e) if e.is_instance_of::<PyOSError>(py) => Ok(py.None().into_bound(py)),
        Err(e) => Err(e),
    }
}

/// `socket_name` straight from the fd; `None` for a family the socket module must
/// convert.
fn raw_socket_name<'py>(py: Python<'py>, fd: RawFd, peer: bool) -> PyResult<Option<Bound<'py, PyAny>>> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let sa = &mut ss as *mut libc::sockaddr_storage as *mut libc::sockaddr;
    let r = if peer {
        syscall!(getpeername(fd, sa, &mut len))
    } else {
        syscall!(getsockname(fd, sa, &mut len))
    };
    if r.is_err() {
        return Ok(Some(py.None().into_bound(py)));
    }
    sockaddr_to_py(py, &ss, len)
}

/// A socket address for `sendto()`, as the kernel takes it.
pub(crate) struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    fn zeroed() -> SockAddr {
        SockAddr {
            // SAFETY: all-zero is a valid sockaddr_storage.
            storage: unsafe { std::mem::zeroed() },
            len: 0,
        }
    }

    pub(crate) fn as_ptr(&self) -> *const libc::sockaddr {
        &self.storage as *const libc::sockaddr_storage as *const libc::sockaddr
    }

    pub(crate) fn len(&self) -> libc::socklen_t {
        self.len
    }
}

/// An exact `str` of ASCII characters without NUL, as a C string; `None` otherwise.
fn ascii_host(obj: &Bound<'_, PyAny>) -> Option<std::ffi::CString> {
    let s = obj.cast_exact::<PyString>().ok()?.to_str().ok()?;
    if !s.is_ascii() {
        return None; // the socket module IDNA-encodes it first
    }
    std::ffi::CString::new(s).ok()
}

/// An exact `int` within `lo..=hi`; `None` otherwise.
fn int_in(obj: &Bound<'_, PyAny>, lo: i64, hi: i64) -> Option<i64> {
    let v: i64 = obj.cast_exact::<PyInt>().ok()?.extract().ok()?;
    (lo..=hi).contains(&v).then_some(v)
}

/// `addr` as `sendto()` on a socket of `family` takes it, when it is in a form that
/// the socket module converts without a name lookup: an IPv4 `(host, port)` or IPv6
/// `(host, port[, flowinfo[, scope_id]])` tuple whose host is a numeric address (an
/// exact `str`), or a Unix path as an exact `str` or `bytes`. `None` for anything else,
/// which must then go through the socket object (that may resolve a name, or raise).
pub(crate) fn py_to_sockaddr(family: libc::c_int, addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
    match family {
        libc::AF_INET => {
            let t = addr.cast_exact::<PyTuple>().ok()?;
            if t.len() != 2 {
                return None;
            }
            let host = ascii_host(&t.get_item(0).ok()?)?;
            let port = int_in(&t.get_item(1).ok()?, 0, 0xffff)?;
            inet_sockaddr(&host, port as u16)
        }
        libc::AF_INET6 => {
            let t = addr.cast_exact::<PyTuple>().ok()?;
            if !(2..=4).contains(&t.len()) {
                return None;
            }
            let host = ascii_host(&t.get_item(0).ok()?)?;
            if host.as_bytes().contains(&b'%') {
                return None; // a scope by interface name: getaddrinfo's to resolve
            }
            let port = int_in(&t.get_item(1).ok()?, 0, 0xffff)?;
            let flowinfo = match t.len() {
                2 => 0,
                _ => int_in(&t.get_item(2).ok()?, 0, 0xfffff)?,
            };
            let scope_id = match t.len() {
                4 => int_in(&t.get_item(3).ok()?, 0, u32::MAX as i64)?,
                _ => 0,
            };
            inet6_sockaddr(&host, port as u16, flowinfo as u32, scope_id as u32)
        }
        libc::AF_UNIX => {
            let encoded;
            let path: &[u8] = if let Ok(s) = addr.cast_exact::<PyString>() {
                // SAFETY: `s` is a live str; the result is a new reference or NULL with
                // an exception set. The GIL is held.
                let b = unsafe { ffi::PyUnicode_EncodeFSDefault(s.as_ptr()) };
                // SAFETY: as just said.
                match unsafe { Bound::from_owned_ptr_or_err(addr.py(), b) } {
                    Ok(b) => encoded = b.cast_into::<PyBytes>().ok()?,
                    Err(_) => return None, // the socket module raises the same error
                }
                encoded.as_bytes()
            } else if let Ok(b) = addr.cast_exact::<PyBytes>() {
                encoded = b.clone();
                encoded.as_bytes()
            } else {
                return None;
            };
            unix_sockaddr(path)
        }
        _ => None,
    }
}

/// An IPv4 address from its numeric text form (`None` for anything inet_pton refuses:
/// "", "<broadcast>" or a name, which the socket module converts).
pub(crate) fn inet_sockaddr(host: &std::ffi::CStr, port: u16) -> Option<SockAddr> {
    let mut out = SockAddr::zeroed();
    // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
    let sin = unsafe { &mut *(&mut out.storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in) };
    // SAFETY: `host` is NUL-terminated and sin_addr is writable memory of the size
    // AF_INET needs.
    let ok = unsafe {
        inet_pton(
            libc::AF_INET,
            host.as_ptr(),
            &mut sin.sin_addr as *mut libc::in_addr as *mut libc::c_void,
        )
    };
    if ok != 1 {
        return None;
    }
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = port.to_be();
    out.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    Some(out)
}

/// An IPv6 address from its numeric text form, as `inet_sockaddr`.
pub(crate) fn inet6_sockaddr(host: &std::ffi::CStr, port: u16, flowinfo: u32, scope_id: u32) -> Option<SockAddr> {
    let mut out = SockAddr::zeroed();
    // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
    let sin6 = unsafe { &mut *(&mut out.storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6) };
    // SAFETY: as above, for an AF_INET6 address.
    let ok = unsafe {
        inet_pton(
            libc::AF_INET6,
            host.as_ptr(),
            &mut sin6.sin6_addr as *mut libc::in6_addr as *mut libc::c_void,
        )
    };
    if ok != 1 {
        return None;
    }
    sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sin6.sin6_port = port.to_be();
    sin6.sin6_flowinfo = flowinfo.to_be();
    sin6.sin6_scope_id = scope_id;
    out.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    Some(out)
}

/// A Unix socket address for a path or (leading NUL) an abstract name, as bytes;
/// `None` when it does not fit ("AF_UNIX path too long", from the socket module).
pub(crate) fn unix_sockaddr(path: &[u8]) -> Option<SockAddr> {
    let mut out = SockAddr::zeroed();
    // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_un.
    let sun = unsafe { &mut *(&mut out.storage as *mut libc::sockaddr_storage as *mut libc::sockaddr_un) };
    // A path needs room for its NUL; an abstract name (leading NUL) does not.
    let abstract_name = path.first() == Some(&0);
    if path.len() > sun.sun_path.len() || (!abstract_name && path.len() == sun.sun_path.len()) {
        return None;
    }
    for (d, s) in sun.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    out.len = (std::mem::offset_of!(libc::sockaddr_un, sun_path) + path.len()) as libc::socklen_t;
    Some(out)
}
