//! The pipe transports, with the semantics of asyncio's `_UnixReadPipeTransport` and
//! `_UnixWritePipeTransport` and the data path in Rust: `connect_read_pipe` and
//! `connect_write_pipe` over pipes, FIFOs, sockets and character devices (ttys and ptys
//! among them), and, later, a subprocess's stdio.
//!
//! Both are native transports (`native.rs`): the loop runs their read and write paths
//! as asyncio runs the reader and writer handles of its pipe transports, each in a copy
//! of the context current when the watch was added (reading starts in a callback
//! scheduled when the transport is made, so in a copy of that context; a write that
//! queues starts the writer), and what escapes a path goes to the exception handler as
//! asyncio's handle of `_read_ready` or `_write_ready` reports it. The write queue, flow
//! control and fatal-error report are the transport core's (`write_queue.rs`, `flow.rs`,
//! `fatal.rs`), with the pipe transports' own messages. Neither transport is recorded as
//! the owner of its fd (asyncio's pipe transports are not in `loop._transports`).
//!
//! Protocols see thin Python facades (`ferroloop._transports.ReadPipeTransport` and
//! `WritePipeTransport`); [`read_pipe_transport`] and [`write_pipe_transport`] make them
//! from Rust, over a pipe object or over a bare fd the transport then owns.
//!
//! Reading is in `read.rs`, writing in `write.rs`; this module holds what both share:
//! the checks of the file given, the file a transport closes, and their construction.

mod read;
mod write;

use std::os::fd::RawFd;

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::event_loop::LoopCore;
use crate::gil::py_attr;
use crate::transports::stream::io_to_pyerr;

pub(crate) use read::{read_pipe_transport, ReadPipeTransport};
pub(crate) use write::{write_pipe_transport, WritePipeTransport};

/// The kinds of file asyncio's pipe transports take, from `fstat`: `(is_fifo,
/// is_socket, is_char)`. An fstat error is raised as `os.fstat` raises it.
fn file_kind(fd: RawFd) -> PyResult<(bool, bool, bool)> {
    // SAFETY: all-zero is a valid `stat`, which fstat fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    syscall!(fstat(fd, &mut st)).map_err(io_to_pyerr)?;
    let fmt = st.st_mode & libc::S_IFMT;
    Ok((fmt == libc::S_IFIFO, fmt == libc::S_IFSOCK, fmt == libc::S_IFCHR))
}

/// `os.set_blocking(fd, False)`.
fn set_nonblocking(fd: RawFd) -> PyResult<()> {
    let flags = syscall!(fcntl(fd, libc::F_GETFL)).map_err(io_to_pyerr)?;
    if flags & libc::O_NONBLOCK == 0 {
        syscall!(fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK)).map_err(io_to_pyerr)?;
    }
    Ok(())
}

/// The file a pipe transport reads or writes: the Python object it was given, whose
/// `close()` closes it, or a bare fd that the transport owns.
struct PipeFile {
    /// The pipe object (`get_extra_info('pipe')`); `None` for a bare fd.
    obj: Option<Py<PyAny>>,
    /// Neither closed by the transport nor let go of (asyncio's `_pipe is not None`).
    open: bool,
}

impl PipeFile {
    /// The file of a transport being made: `pipe`, or the bare fd when there is none.
    fn opened(pipe: Option<&Bound<'_, PyAny>>) -> PipeFile {
        PipeFile {
            obj: pipe.map(|p| p.clone().unbind()),
            open: true,
        }
    }

    /// Closes the file if the transport still has it; the object is kept (for
    /// `get_extra_info('pipe')` it is in the extra dict anyway).
    fn close(&mut self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        if !std::mem::replace(&mut self.open, false) {
            return Ok(());
        }
        match &self.obj {
            Some(obj) => obj.bind(py).call_method0(intern!(py, "close")).map(drop),
            None => {
                // SAFETY: the transport owns this bare fd and closes it once (`open`).
                unsafe { libc::close(fd) };
                Ok(())
            }
        }
    }

    /// The file as the transport has it, which from now on no longer has it open: closed
    /// by the caller once the transport's state is released (`close()` may run Python).
    fn take(&mut self, py: Python<'_>) -> PipeFile {
        PipeFile {
            obj: self.obj.as_ref().map(|o| o.clone_ref(py)),
            open: std::mem::replace(&mut self.open, false),
        }
    }
}

/// What both pipe transports' Python side looks at.
fn pipe_getter(py: Python<'_>, file: &PipeFile) -> Option<Py<PyAny>> {
    file.open.then(|| file.obj.as_ref().map(|o| o.clone_ref(py))).flatten()
}

fn log(py: Python<'_>, level: &Bound<'_, pyo3::types::PyString>, msg: &str, facade: &Bound<'_, PyAny>) -> PyResult<()> {
    py_attr!(py, "asyncio.log", "logger")?.call_method1(level, (msg, facade))?;
    Ok(())
}

/// `loop.call_soon(callback, arg)` for the transport's own callbacks, in a copy of the
/// context current now (inside the read or write path, the transport's).
fn call_soon(loop_: &Bound<'_, LoopCore>, callback: &Bound<'_, PyAny>, args: &[Bound<'_, PyAny>]) -> PyResult<()> {
    LoopCore::call_soon_internal(loop_, callback, &PyTuple::new(loop_.py(), args)?)
}

// ---------------------------------------------------------------------------------------
// Construction.

/// What both constructors do first, as asyncio's `__init__`: `extra['pipe']`, the file
/// kind check, non-blocking mode. Returns the extra dict and the file kind.
fn prepare<'py>(
    py: Python<'py>,
    fd: RawFd,
    pipe: Option<&Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
    write: bool,
) -> PyResult<(Bound<'py, PyDict>, (bool, bool, bool))> {
    let extra = match extra {
        Some(d) => d, // as asyncio, a dict passed in is filled in place
        None => PyDict::new(py),
    };
    extra.set_item(intern!(py, "pipe"), pipe)?;
    if fd < 0 {
        return Err(PyValueError::new_err(format!("Invalid file descriptor: {fd}")));
    }
    let kind = file_kind(fd)?;
    let (fifo, socket, chr) = kind;
    if !(fifo || socket || chr) {
        return Err(PyValueError::new_err(if write {
            "Pipe transport is only for pipes, sockets and character devices"
        } else {
            "Pipe transport is for pipes/sockets only."
        }));
    }
    set_nonblocking(fd)?;
    Ok((extra, kind))
}

/// Schedules what follows the transport's making, as asyncio does: `connection_made`,
/// then the start of reading (`start`), then the waiter.
fn schedule_start<'py>(
    loop_: &Bound<'py, LoopCore>,
    protocol: &Bound<'py, PyAny>,
    facade: &Bound<'py, PyAny>,
    start: Option<Bound<'py, PyAny>>,
    waiter: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    let py = loop_.py();
    let connection_made = protocol.getattr(intern!(py, "connection_made"))?;
    LoopCore::call_soon(loop_, &connection_made, &PyTuple::new(py, [facade])?, None)?;
    if let Some(start) = start {
        LoopCore::call_soon(loop_, &start, &PyTuple::empty(py), None)?;
    }
    if let Some(w) = waiter.filter(|w| !w.is_none()) {
        LoopCore::call_soon(
            loop_,
            py_attr!(py, "ferroloop._transports", "_set_result_unless_cancelled")?,
            &PyTuple::new(py, [w.clone(), py.None().into_bound(py)])?,
            None,
        )?;
    }
    Ok(())
}

/// The file number of a pipe object, as asyncio takes it (`pipe.fileno()`).
fn pipe_fileno(pipe: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd: i64 = pipe.call_method0(intern!(pipe.py(), "fileno"))?.extract()?;
    RawFd::try_from(fd).map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}

/// `make_read_pipe_transport(loop, pipe, protocol, waiter=None, extra=None)`: the
/// loop's `_make_read_pipe_transport`, over a pipe object (anything with `fileno()`).
#[pyfunction]
#[pyo3(signature = (loop_, pipe, protocol, waiter=None, extra=None))]
pub(crate) fn make_read_pipe_transport<'py>(
    loop_: &Bound<'py, LoopCore>,
    pipe: &Bound<'py, PyAny>,
    protocol: &Bound<'py, PyAny>,
    waiter: Option<&Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    read_pipe_transport(loop_, pipe_fileno(pipe)?, Some(pipe), protocol, waiter, extra)
}

/// `make_write_pipe_transport(loop, pipe, protocol, waiter=None, extra=None)`: the
/// loop's `_make_write_pipe_transport` (see [`make_read_pipe_transport`]).
#[pyfunction]
#[pyo3(signature = (loop_, pipe, protocol, waiter=None, extra=None))]
pub(crate) fn make_write_pipe_transport<'py>(
    loop_: &Bound<'py, LoopCore>,
    pipe: &Bound<'py, PyAny>,
    protocol: &Bound<'py, PyAny>,
    waiter: Option<&Bound<'py, PyAny>>,
    extra: Option<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    write_pipe_transport(loop_, pipe_fileno(pipe)?, Some(pipe), protocol, waiter, extra)
}

pub(crate) fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReadPipeTransport>()?;
    m.add_class::<WritePipeTransport>()?;
    m.add_function(wrap_pyfunction!(make_read_pipe_transport, m)?)?;
    m.add_function(wrap_pyfunction!(make_write_pipe_transport, m)?)?;
    Ok(())
}
