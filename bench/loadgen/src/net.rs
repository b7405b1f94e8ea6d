//! Thin wrappers over the libc socket and epoll calls the load generator needs.
//!
//! Every socket is non-blocking and close-on-exec. TCP sockets get `TCP_NODELAY`; UDP sockets
//! are connected, so they send to and receive from the server alone. Writes use `MSG_NOSIGNAL`
//! so that a peer that went away gives `EPIPE` rather than a signal.

use std::ffi::OsStr;
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::RawFd;
use std::path::PathBuf;

/// Where to connect.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// A UDP server: each slot gets its own connected datagram socket.
    Udp(SocketAddr),
}

/// Result of starting a non-blocking connect.
pub enum Connect {
    /// The connection is established.
    Done(RawFd),
    /// The connection is in progress: wait for the socket to become writable.
    InProgress(RawFd),
    /// The listener's backlog is full (Unix sockets): try again later.
    Again,
}

/// Turns a `-1` return into the current `errno` error.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`check`] for calls returning `ssize_t`.
fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` lives for the duration of the call and the length passed matches its size.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(ret).map(|_| ())
}

/// Builds the C socket address for `target`.
fn sockaddr(target: &Target) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: `sockaddr_storage` is plain old data for which all-zero bytes are a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match target {
        Target::Tcp(SocketAddr::V4(a)) | Target::Udp(SocketAddr::V4(a)) => {
            // SAFETY: `sockaddr_storage` is larger than and aligned at least like `sockaddr_in`.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        Target::Tcp(SocketAddr::V6(a)) | Target::Udp(SocketAddr::V6(a)) => {
            // SAFETY: `sockaddr_storage` is larger than and aligned at least like `sockaddr_in6`.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
        Target::Unix(path) => {
            // SAFETY: `sockaddr_storage` is larger than and aligned at least like `sockaddr_un`.
            let sun = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_un) };
            sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let bytes = OsStr::as_bytes(path.as_os_str());
            if bytes.len() >= sun.sun_path.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "unix socket path too long"));
            }
            for (dst, &src) in sun.sun_path.iter_mut().zip(bytes) {
                *dst = src as libc::c_char;
            }
            mem::size_of::<libc::sa_family_t>() + bytes.len() + 1
        }
    };
    Ok((storage, len as libc::socklen_t))
}

/// Starts a non-blocking connection to `target`.
pub fn connect(target: &Target) -> io::Result<Connect> {
    let (addr, len) = sockaddr(target)?;
    let family = addr.ss_family as libc::c_int;
    let kind = if matches!(target, Target::Udp(_)) {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    // SAFETY: plain system call with constant arguments; the result is checked.
    let fd = check(unsafe { libc::socket(family, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    if matches!(target, Target::Tcp(_)) {
        if let Err(e) = set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1) {
            close(fd);
            return Err(e);
        }
    }
    // SAFETY: `addr` is a valid socket address of `len` bytes that outlives the call.
    let ret = unsafe { libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) };
    if ret == 0 {
        return Ok(Connect::Done(fd));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINPROGRESS) => Ok(Connect::InProgress(fd)),
        Some(libc::EAGAIN) => {
            close(fd);
            Ok(Connect::Again)
        }
        _ => {
            close(fd);
            Err(err)
        }
    }
}

/// The pending error of a socket (`SO_ERROR`), used to learn how a connect ended.
pub fn take_error(fd: RawFd) -> io::Result<()> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` holds the size of `value`.
    let ret = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    check(ret)?;
    if value == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(value))
    }
}

/// Makes `close` reset the connection at once instead of leaving it in `TIME_WAIT`, so that a
/// long connection-churn run does not run out of local ports.
pub fn set_linger_zero(fd: RawFd) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` lives for the duration of the call and the length passed matches its size.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    check(ret).map(|_| ())
}

/// Reads into `buf`; `Ok(0)` is end of stream.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    check_size(unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) })
}

/// Writes from `buf`, returning how many bytes the kernel took.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    check_size(unsafe { libc::send(fd, buf.as_ptr() as *const libc::c_void, buf.len(), libc::MSG_NOSIGNAL) })
}

/// Closes a descriptor, ignoring errors (there is nothing useful to do with them here).
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it after this call.
    unsafe {
        libc::close(fd);
    }
}

/// CPU time (user + system) this process has used so far, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: `rusage` is plain old data for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: `usage` is valid for writes; RUSAGE_SELF cannot fail with a valid pointer.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// An epoll instance.
pub struct Epoll {
    fd: RawFd,
}

/// Readiness reported for one registered descriptor.
#[derive(Clone, Copy)]
pub struct Event {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
    pub error: bool,
}

impl Epoll {
    /// Creates the epoll instance.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system call; the result is checked.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, write: bool) -> io::Result<()> {
        let mut events = libc::EPOLLIN | libc::EPOLLRDHUP;
        if write {
            events |= libc::EPOLLOUT;
        }
        let mut ev = libc::epoll_event {
            events: events as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid event that outlives the call; both descriptors are ours.
        check(unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) }).map(|_| ())
    }

    /// Registers `fd` for reading, and for writing too when `write` is set (level-triggered).
    pub fn add(&self, fd: RawFd, token: u64, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, write)
    }

    /// Changes the interest of a registered `fd`.
    pub fn modify(&self, fd: RawFd, token: u64, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, write)
    }

    /// Waits up to `timeout_ms` and fills `out` with the ready descriptors.
    pub fn wait(&self, buf: &mut [libc::epoll_event], out: &mut Vec<Event>, timeout_ms: i32) -> io::Result<()> {
        out.clear();
        // SAFETY: `buf` is valid for writes of `buf.len()` events.
        let n = unsafe { libc::epoll_wait(self.fd, buf.as_mut_ptr(), buf.len() as libc::c_int, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        for ev in &buf[..n as usize] {
            let bits = ev.events as libc::c_int;
            out.push(Event {
                token: ev.u64,
                readable: bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP) != 0,
                writable: bits & libc::EPOLLOUT != 0,
                error: bits & libc::EPOLLERR != 0,
            });
        }
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        close(self.fd);
    }
}
