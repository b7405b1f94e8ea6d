//! Wakes a poller blocked in epoll from another thread: an eventfd that the
//! poller watches for readability.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd. `wake` may be called from any thread.
pub struct Waker {
    fd: OwnedFd,
    /// The fork generation it was made in: an inherited eventfd is the parent's, and
    /// waking it would wake the parent's loop.
    generation: u64,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
        // SAFETY: eventfd(2) returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker {
            fd,
            generation: crate::reactor::fork::generation(),
        })
    }

    /// Makes the eventfd readable. A full counter (EAGAIN) already means "readable".
    pub fn wake(&self) {
        if self.generation != crate::reactor::fork::generation() {
            return;
        }
        let one: u64 = 1;
        let _ = syscall!(write(self.fd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8));
    }

    /// Resets the counter so the next poll blocks again.
    pub fn drain(&self) {
        let mut buf: u64 = 0;
        let _ = syscall!(read(self.fd.as_raw_fd(), &mut buf as *mut u64 as *mut libc::c_void, 8));
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::poller::{Events, Interest, Poller};
    use std::time::Duration;

    #[test]
    fn wakes_a_blocked_poll_from_another_thread() {
        let waker = std::sync::Arc::new(Waker::new().unwrap());
        let poller = Poller::new().unwrap();
        let mut evs = Events::with_capacity(4);
        poller.register(waker.as_raw_fd(), Interest::READ, 7).unwrap();
        let w = waker.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w.wake();
        });
        poller.wait(&mut evs, Some(Duration::from_secs(10))).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs.iter().next().unwrap().token, 7);
        t.join().unwrap();
        waker.drain();
        poller.wait(&mut evs, Some(Duration::ZERO)).unwrap();
        assert!(evs.is_empty());
    }
}
