//! A level-triggered epoll poller.
//!
//! asyncio's `add_reader` calls its callback again and again while the fd stays
//! readable, so readiness is level-triggered here (mio is edge-triggered, which
//! would lose events for a callback that does not drain the fd).
//! Timeouts use `epoll_pwait2` (nanoseconds) where the kernel has it, so timers are
//! not rounded up to whole milliseconds, and fall back to the millisecond poll
//! (`epoll_pwait` with no mask, rounding up) where it is missing or refused.

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

/// Set once epoll_pwait2 is found missing (ENOSYS: a kernel older than 5.11) or refused
/// (EPERM: a seccomp profile older than the call, as some container runtimes install,
/// answers so for every call it does not know); from then on the millisecond poll
/// (`epoll_pwait` with no mask) is used. epoll_pwait2 itself never fails with EPERM.
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

/// The millisecond poll's timeout: -1 (no limit) for `None`, else `timeout` rounded up to
/// whole milliseconds, never down (waking early would spin until the deadline), at most
/// `c_int::MAX`.
fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(t) => t.as_nanos().div_ceil(1_000_000).min(libc::c_int::MAX as u128) as libc::c_int,
    }
}

/// The kernel's signal set size (`_NSIG / 8`), which `epoll_pwait` checks against only
/// when given a mask.
const SIGSET_BYTES: usize = 8;

/// The epoll instance. Registration takes `&self` (epoll_ctl is thread-safe), so the
/// loop can change interests while its poll buffer is lent to a blocked `wait`.
pub struct Poller {
    epfd: OwnedFd,
    /// The fork generation the instance was made in (`fork::generation`): under another,
    /// it was inherited and belongs to the parent.
    generation: u64,
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
        Ok(Poller {
            epfd,
            generation: crate::reactor::fork::generation(),
        })
    }

    /// Whether this poller was inherited across fork(): then registering and polling fail
    /// with `fork::InheritedLoop`, and deregistering does nothing (the interest list is
    /// the parent's).
    pub fn inherited(&self) -> bool {
        self.generation != crate::reactor::fork::generation()
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, interest: Interest, token: u64) -> io::Result<()> {
        if self.inherited() {
            return if op == libc::EPOLL_CTL_DEL {
                Ok(())
            } else {
                Err(crate::reactor::fork::inherited_error())
            };
        }
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
        if self.inherited() {
            return Err(crate::reactor::fork::inherited_error());
        }
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
                if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) {
                    return Err(err);
                }
                NO_PWAIT2.store(true, Ordering::Relaxed);
            }
        }
        let ms = timeout_ms(timeout);
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
    fn millisecond_timeouts_round_up() {
        let ms = |ns: u64| timeout_ms(Some(Duration::from_nanos(ns)));
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(ms(0), 0);
        assert_eq!(ms(1), 1);
        assert_eq!(ms(999_999), 1);
        assert_eq!(ms(1_000_000), 1);
        assert_eq!(ms(1_000_001), 2);
        assert_eq!(ms(1_500_000), 2);
        assert_eq!(ms(86_400_000_000_000), 86_400_000);
        assert_eq!(timeout_ms(Some(Duration::MAX)), libc::c_int::MAX);
    }

    /// What the forked child of `refused_pwait2_falls_back` reports by its exit status.
    const CHILD_OK: i32 = 0;
    const CHILD_NO_SECCOMP: i32 = 10;
    const CHILD_NOT_REFUSED: i32 = 11;
    const CHILD_WAIT_FAILED: i32 = 12;
    const CHILD_WOKE_EARLY: i32 = 13;
    const CHILD_NO_FALLBACK: i32 = 14;

    /// The child: installs a seccomp filter that answers EPERM to epoll_pwait2, as a
    /// container profile that predates the call does, then polls with a timeout just
    /// over one millisecond. Makes system calls only: no allocation, no lock another
    /// thread of the parent may have held at fork.
    fn refused_pwait2_child(p: &Poller, evs: &mut Events) -> i32 {
        let stmt = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        // Only the call's number is looked at: the child makes native calls alone.
        let filter = [
            stmt(
                libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
                std::mem::offset_of!(libc::seccomp_data, nr) as u32,
            ),
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: libc::SYS_epoll_pwait2 as u32,
            },
            stmt(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as libc::c_ushort,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        if syscall!(prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)).is_err() {
            return CHILD_NO_SECCOMP;
        }
        let mode = libc::SECCOMP_SET_MODE_FILTER;
        let prog_ptr = &prog as *const libc::sock_fprog;
        if raw_syscall!(libc::SYS_seccomp, mode, 0, prog_ptr).is_err() {
            return CHILD_NO_SECCOMP;
        }
        let ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        let (epfd, buf, ts_ptr) = (p.epfd.as_raw_fd(), evs.raw.as_mut_ptr(), &ts as *const libc::timespec);
        let r = raw_syscall!(libc::SYS_epoll_pwait2, epfd, buf, 1, ts_ptr, 0, 0);
        if r.map_err(|e| e.raw_os_error()) != Err(Some(libc::EPERM)) {
            return CHILD_NOT_REFUSED;
        }
        let t0 = std::time::Instant::now();
        if p.wait(evs, Some(Duration::from_nanos(1_000_001))).is_err() {
            return CHILD_WAIT_FAILED;
        }
        // Rounded up to 2 ms, not down to 1.
        if t0.elapsed() < Duration::from_millis(2) {
            return CHILD_WOKE_EARLY;
        }
        if !NO_PWAIT2.load(Ordering::Relaxed) {
            return CHILD_NO_FALLBACK;
        }
        CHILD_OK
    }

    #[test]
    fn refused_pwait2_falls_back_to_the_millisecond_poll() {
        // In a child process: the filter cannot be taken back, and the fallback, once
        // taken, holds for the whole process. The poller is the child's own (one
        // inherited across fork() refuses to poll: `fork.rs`); `Poller::new` allocates
        // nothing.
        let mut evs = Events::with_capacity(8);
        // The fork handler is installed here, not in the child (that may allocate).
        crate::reactor::fork::generation();
        // SAFETY: fork(2). The child runs `refused_pwait2_child`, which makes only system
        // calls on memory allocated before the fork, and leaves with _exit(2), running
        // no destructor and no atexit handler of the parent's.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let code = match Poller::new() {
                Ok(p) => refused_pwait2_child(&p, &mut evs),
                Err(_) => CHILD_WAIT_FAILED,
            };
            // SAFETY: _exit(2) ends the child at once; nothing of it is used after.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        syscall!(waitpid(pid, &mut status, 0)).unwrap();
        assert!(libc::WIFEXITED(status), "the child did not exit: status {status:#x}");
        match libc::WEXITSTATUS(status) {
            CHILD_OK => {}
            CHILD_NO_SECCOMP => {
                // Not a failure of the poller: this machine cannot run the test.
                eprintln!("seccomp filters are not available here: refused epoll_pwait2 not tested");
            }
            CHILD_NOT_REFUSED => panic!("the seccomp filter did not refuse epoll_pwait2"),
            CHILD_WAIT_FAILED => panic!("a poll with a timeout failed when epoll_pwait2 was refused"),
            CHILD_WOKE_EARLY => panic!("the millisecond poll woke before the timeout"),
            CHILD_NO_FALLBACK => panic!("the poll did not switch to the millisecond poll"),
            code => panic!("the child exited with {code}"),
        }
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
