//! One place where raw syscalls are made and errno is read.

/// Calls a libc function and turns a `-1` return into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        #[allow(unused_unsafe)]
        // SAFETY: the caller passes arguments valid for this libc function; the
        // return value is checked for the error sentinel before use.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// Makes the system call numbered `nr` through libc's `syscall()`, each argument widened
/// to a register-sized `c_long`, and turns a negative return into
/// `io::Error::last_os_error()`.
///
/// For the data path (send, recv and the poll): libc's named wrappers of those calls are
/// thread cancellation points, and each call pays for switching asynchronous cancellation
/// on and off around the syscall. Nothing in this process cancels threads, so the calls
/// the loop makes once per message skip that.
macro_rules! raw_syscall {
    ($nr: expr $(, $arg: expr)* $(,)*) => {{
        // SAFETY: the caller passes arguments valid for system call `nr`; the return
        // value is checked for the error sentinel before use.
        let res = unsafe { libc::syscall($nr $(, $arg as libc::c_long)*) };
        if res < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res as usize)
        }
    }};
}
