//! Which process a poller belongs to, across `fork()`.
//!
//! An epoll instance and an eventfd are shared between a parent and a child forked
//! from it: a child that registered, removed or polled on an inherited epoll would
//! change or steal from its parent's loop. A `pthread_atfork` handler counts the forks
//! this process was born from; a poller or waker made under another count was
//! inherited, and then touches nothing of the kernel objects it names (they remain the
//! parent's), failing with `InheritedLoop` instead.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// How many `fork()`s lie between this process and the first that loaded the module.
static GENERATION: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

extern "C" fn after_fork_in_child() {
    // Async-signal-safe: one atomic add.
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Installs the fork handler (once per process) and returns the current generation.
pub fn generation() -> u64 {
    INSTALL.call_once(|| {
        // SAFETY: registering a handler that only does an atomic add; the handler is a
        // plain `extern "C" fn` that lives as long as the process.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        // Without the handler (ENOMEM), forks go unnoticed: nothing else changes.
        debug_assert_eq!(rc, 0);
    });
    GENERATION.load(Ordering::Relaxed)
}

/// The error of an operation on an epoll instance or eventfd inherited across fork().
#[derive(Debug)]
pub struct InheritedLoop;

impl fmt::Display for InheritedLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "this event loop was created in another process and was inherited across fork(); \
             it cannot be used here (its poller is still its parent's): create a new event loop",
        )
    }
}

impl std::error::Error for InheritedLoop {}

/// An `io::Error` carrying `InheritedLoop`.
pub fn inherited_error() -> io::Error {
    io::Error::other(InheritedLoop)
}

/// Whether `err` is the inherited-loop error.
pub fn is_inherited(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<InheritedLoop>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_sees_a_new_generation() {
        let before = generation();
        // SAFETY: the child only reads an atomic and exits with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if generation() == before + 1 { 0 } else { 1 };
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child made above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(generation(), before);
    }
}
