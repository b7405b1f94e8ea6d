//! The bulk modes: one stream of bytes, one way, as fast as the server under test moves it.
//!
//! `sink` reads (a connection the server writes into, or a FIFO it writes), `source` writes
//! (a FIFO the server reads). The stream is opened once; then a warmup whose bytes are not
//! counted, then the measured window. An operation is one MiB moved inside the window; there
//! is no latency to record. The fd is non-blocking and waited on with `poll`, so that the
//! clock is looked at even when the server stops moving bytes.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

use crate::args::{Config, Mode};
use crate::driver::Report;
use crate::hist::Histogram;
use crate::net::{self, Connect};

const MIB: u64 = 1024 * 1024;
/// Longest wait in `poll`, so the clock is looked at often enough.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// How long to keep trying to connect (the server may still be setting up).
const CONNECT_FOR: Duration = Duration::from_secs(10);

/// Waits until `fd` is readable (`events` = POLLIN) or writable (POLLOUT), for at most
/// `timeout`. `Ok(false)` on timeout.
fn wait(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    match n {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// Opens the stream: the FIFO, or a connection to the target (retried for a while).
fn open_stream(cfg: &Config) -> io::Result<RawFd> {
    if let Some(path) = &cfg.fifo {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("NUL in the FIFO's path"))?;
        let flags = if cfg.mode == Mode::Sink {
            libc::O_RDONLY
        } else {
            libc::O_WRONLY
        };
        // SAFETY: `c` is a NUL-terminated path that outlives the call. Blocking open: the
        // server holds the other end already.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is ours; F_GETFL/F_SETFL with valid flags.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        return Ok(fd);
    }
    let deadline = Instant::now() + CONNECT_FOR;
    loop {
        match net::connect(&cfg.target)? {
            Connect::Done(fd) => return Ok(fd),
            Connect::InProgress(fd) => {
                wait(fd, libc::POLLOUT, CONNECT_FOR)?;
                match net::take_error(fd) {
                    Ok(()) => return Ok(fd),
                    Err(e) => {
                        net::close(fd);
                        if Instant::now() >= deadline {
                            return Err(e);
                        }
                    }
                }
            }
            Connect::Again if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Connect::Again => return Err(io::Error::other("the server's backlog stays full")),
        }
    }
}

/// One read or write; `Ok(None)` when the fd is not ready.
fn step(cfg: &Config, fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let r = if cfg.mode == Mode::Sink {
        net::read(fd, buf)
    } else if cfg.fifo.is_some() {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    } else {
        net::write(fd, buf)
    };
    match r {
        Ok(0) if cfg.mode == Mode::Sink => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the stream",
        )),
        Ok(n) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs a bulk mode: moves bytes until the end of the window; prints `window-start` and
/// `window-end` on stderr at its edges. With `cfg.hold`, `after_window` is called before the
/// stream is closed (it is then neither read nor written).
pub fn run(cfg: &Config, after_window: impl FnOnce(&Report)) -> io::Result<Report> {
    let fd = open_stream(cfg)?;
    let mut buf = vec![0u8; cfg.size];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let events = if cfg.mode == Mode::Sink {
        libc::POLLIN
    } else {
        libc::POLLOUT
    };
    let window_start_at = Instant::now() + cfg.warmup;
    let window_end_at = window_start_at + cfg.duration;
    let mut in_window = false;
    let mut moved: u64 = 0;
    let mut cpu_start = 0.0;
    let mut started = window_start_at;
    let result = loop {
        let now = Instant::now();
        if !in_window && now >= window_start_at {
            in_window = true;
            moved = 0;
            started = now;
            cpu_start = net::cpu_seconds();
            eprintln!("window-start");
        }
        if now >= window_end_at {
            break Ok(now);
        }
        match step(cfg, fd, &mut buf) {
            Ok(Some(n)) => moved += n as u64,
            Ok(None) => {
                if let Err(e) = wait(fd, events, MAX_WAIT) {
                    break Err(e);
                }
            }
            Err(e) => break Err(e),
        }
    };
    let ended = match result {
        Ok(t) => t,
        Err(e) => {
            net::close(fd);
            return Err(e);
        }
    };
    let cpu_seconds = net::cpu_seconds() - cpu_start;
    eprintln!("window-end");
    let _ = io::stderr().flush();
    let report = Report {
        ops: moved as f64 / MIB as f64,
        seconds: ended.saturating_duration_since(started).as_secs_f64(),
        errors: 0,
        cpu_seconds,
        hist: Histogram::new(),
        tls: None,
    };
    after_window(&report);
    net::close(fd);
    Ok(report)
}
