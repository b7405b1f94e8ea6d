//! A level-triggered epoll poller.
//!
//! asyncio's `add_reader` calls its callback again and again while the fd stays
//! readable, so readiness is level-triggered here (mio is edge-triggered, which
//! would lose events for a callback that does not drain the fd).
//! Timeouts use `epoll_pwait2` (nanoseconds) where the kernel has it, so timers are
//! not rounded up to whole milliseconds, and fall back to `epoll_wait`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What an fd is watched for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Interest {
    pub readable: bool,
    pub writable: bool,
}

impl Interest {
    pub const NONE: Interest = Interest {
        readable: false,
        writable: false,
    };
    pub const READ: Interest = Interest {
        readable: true,
        writable: false,
    };
    pub const WRITE: Interest = Interest {
        readable: false,
        writable: true,
    };

    pub fn is_empty(self) -> bool {
        !self.readable && !self.writable
    }

    fn to_epoll(self) -> u32 {
        let mut bits = 0;
        if self.readable {
            bits |= libc::EPOLLIN as u32;
        }
        if self.writable {
            bits |= libc::EPOLLOUT as u32;
        }
        bits
    }
}

/// One readiness report. Errors and hang-ups count as both readable and writable,
/// as they do for `selectors.EpollSelector`.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
}

/// Set once the kernel answers ENOSYS to epoll_pwait2; from then on the millisecond poll
/// (`epoll_pwait` with no mask) is used.
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

/// The kernel's signal set size (`_NSIG / 8`), which `epoll_pwait` checks against only
/// when given a mask.
const SIGSET_BYTES: usize = 8;

/// The epoll instance. Registration takes `&self` (epoll_ctl is thread-safe), so the
/// loop can change interests while its poll buffer is lent to a blocked `wait`.
pub struct Poller {
    epfd: OwnedFd,
}

/// The buffers of `Poller::wait`, reused across calls so polling allocates nothing.
pub struct Events {
    raw: Vec<libc::epoll_event>,
    out: Vec<Event>,
}

impl Events {
    pub fn with_capacity(n: usize) -> Events {
        Events {
            raw: Vec::with_capacity(n),
            out: Vec::with_capacity(n),
        }
    }

    pub fn clear(&mut self) {
        self.out.clear();
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Event> {
        self.out.iter()
    }

    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: epoll_create1(2) returned a new descriptor that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Poller { epfd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.to_epoll(),
            u64: token,
        };
        syscall!(epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev)).map(|_| ())
    }

    pub fn register(&self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
    }

    pub fn modify(&self, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest, token)
    }

    pub fn deregister(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, Interest::NONE, 0)
    }

    /// Waits for readiness, at most `timeout` (`None`: without limit), filling `events`.
    /// EINTR is returned to the caller, which must give signal handlers a chance to run.
    pub fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        events.raw.clear();
        events.out.clear();
        let n = self.wait_raw(&mut events.raw, timeout)?;
        // SAFETY: the kernel initialised the first `n` entries, and n <= capacity.
        unsafe { events.raw.set_len(n) };
        for ev in &events.raw {
            let bits = ev.events;
            let err = bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
            events.out.push(Event {
                token: ev.u64,
                readable: err || bits & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0,
                writable: err || bits & libc::EPOLLOUT as u32 != 0,
            });
        }
        if n == events.raw.capacity() {
            // A full batch: let the next call take more at once.
            events.raw.reserve(n);
        }
        Ok(())
    }

    fn wait_raw(&self, raw: &mut Vec<libc::epoll_event>, timeout: Option<Duration>) -> io::Result<usize> {
        let epfd = self.epfd.as_raw_fd();
        let cap = raw.capacity().min(libc::c_int::MAX as usize) as libc::c_int;
        let buf = raw.as_mut_ptr();
        if let Some(t) = timeout {
            if !t.is_zero() && !NO_PWAIT2.load(Ordering::Relaxed) {
                let ts = libc::timespec {
                    tv_sec: t.as_secs() as libc::time_t,
                    tv_nsec: t.subsec_nanos() as _,
                };
                // SAFETY: buf has room for `cap` events; ts lives across the call;
                // a null sigmask means "leave the signal mask alone".
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_epoll_pwait2,
                        epfd,
                        buf,
                        cap,
                        &ts as *const libc::timespec,
                        0usize,
                        0usize,
                    )
                };
                if r >= 0 {
                    return Ok(r as usize);
                }
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ENOSYS) {
                    return Err(err);
                }
                NO_PWAIT2.store(true, Ordering::Relaxed);
            }
        }
        let ms: libc::c_int = match timeout {
            None => -1,
            // Round up: waking early would spin until the deadline.
            Some(t) => {
                let ms = t.as_nanos().div_ceil(1_000_000);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        // epoll_pwait with no signal mask is epoll_wait, and every architecture has it
        // (arm64 has no epoll_wait of its own).
        let no_mask = std::ptr::null::<libc::sigset_t>();
        raw_syscall!(libc::SYS_epoll_pwait, epfd, buf, cap, ms, no_mask, SIGSET_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK)).unwrap();
        // SAFETY: pipe2(2) returned two new descriptors that nothing else owns.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn readiness_is_level_triggered() {
        let (r, w) = pipe();
        let p = Poller::new().unwrap();
        let mut evs = Events::with_capacity(8);
        p.register(r.as_raw_fd(), Interest::READ, 1).unwrap();
        p.wait(&mut evs, Some(Duration::ZERO)).unwrap();
        assert!(evs.is_empty());
        syscall!(write(w.as_raw_fd(), b"x".as_ptr() as *const libc::c_void, 1)).unwrap();
        // Not drained: reported on every wait.
        for _ in 0..3 {
            p.wait(&mut evs, Some(Duration::ZERO)).unwrap();
            let all: Vec<Event> = evs.iter().copied().collect();
            assert_eq!(all.len(), 1);
            assert!(all[0].readable && !all[0].writable);
            assert_eq!(all[0].token, 1);
        }
    }

    #[test]
    fn modify_and_deregister() {
        let (r, w) = pipe();
        let p = Poller::new().unwrap();
        let mut evs = Events::with_capacity(8);
        p.register(w.as_raw_fd(), Interest::WRITE, 2).unwrap();
        p.wait(&mut evs, Some(Duration::ZERO)).unwrap();
        assert!(evs.iter().next().unwrap().writable);
        p.modify(w.as_raw_fd(), Interest::NONE, 2).unwrap();
        p.wait(&mut evs, Some(Duration::ZERO)).unwrap();
        assert!(evs.is_empty());
        p.deregister(w.as_raw_fd()).unwrap();
        assert!(p.deregister(w.as_raw_fd()).is_err());
        drop(r);
    }

    #[test]
    fn timeout_is_not_rounded_to_milliseconds() {
        let p = Poller::new().unwrap();
        let mut evs = Events::with_capacity(8);
        let t0 = std::time::Instant::now();
        p.wait(&mut evs, Some(Duration::from_micros(200))).unwrap();
        let dt = t0.elapsed();
        assert!(dt >= Duration::from_micros(200));
    }

    #[test]
    fn hangup_counts_as_readable() {
        let (r, w) = pipe();
        let p = Poller::new().unwrap();
        let mut evs = Events::with_capacity(8);
        p.register(r.as_raw_fd(), Interest::READ, 3).unwrap();
        drop(w);
        p.wait(&mut evs, Some(Duration::ZERO)).unwrap();
        assert!(evs.iter().next().unwrap().readable);
    }
}
