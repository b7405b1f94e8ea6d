//! The one type through which the loop dispatches socket readiness to the transports
//! implemented in Rust, and how it runs their read and write paths: as asyncio runs the
//! reader and writer handles of its transports.
//!
//! A transport kind joins by implementing [`Native`] and adding a line to the
//! `native_transports!` list below; the loop's watches, ready queue and run step hold
//! and call [`NativeWatch`] and [`NativeReady`] without naming any kind. Implementing
//! [`Watched`] too gives it [`set_watch`], which every kind starts and stops its
//! watches with.
//!
//! The path runs in the watch's context (`context.rs`), and is an exception boundary:
//! whatever it raises goes to the loop's exception handler with the keys asyncio's
//! `Handle._run` gives it (`message`, `exception`, `handle`, and `source_traceback` in
//! debug mode), and the loop goes on. Only SystemExit and KeyboardInterrupt leave the
//! run step, as they leave asyncio's.

use std::os::fd::RawFd;

use pyo3::gc::{PyTraverseError, PyVisit};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::types::{PyDict, PyTuple};
use pyo3::PyClass;

use crate::event_loop::LoopCore;
use crate::handle_mem;
use crate::handles::{format_callback_source, Handle};
use crate::transports::context::{copy_current, Entered};
use crate::transports::datagram::DatagramTransport;
use crate::transports::pipe::{ReadPipeTransport, WritePipeTransport};
use crate::transports::stream::{is_fatal, StreamTransport};

/// What a transport implements for the loop to call its read and write paths directly.
///
/// The transport watches its fd through [`LoopCore::watch_native`] (which keeps the
/// context and, in debug mode, the traceback of the call) and `LoopCore::unwatch_raw`,
/// and registers itself as the fd's owner with `LoopCore::register_transport` (so that
/// `add_reader` and friends refuse the fd while [`Native::open_facade`] says it is open).
pub(crate) trait Native: PyClass<Frozen = True> + Sync {
    /// The socket is readable and the transport watches it for reading. Watches are
    /// level-triggered: this is called again on the next step while data is waiting.
    /// What a protocol callback raises and the transport handles as asyncio's does (a
    /// fatal error, a failed flow-control call) stays inside; anything returned goes to
    /// the exception handler (see [`NativeReady::run`]).
    fn on_readable(slf: &Bound<'_, Self>) -> PyResult<()>;

    /// The socket is writable and the transport watches it for writing.
    fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()>;

    /// The name of the transport's method that asyncio's reader (`readable`) or writer
    /// handle would call (`_read_ready`, `_write_ready`...): the transport has a method
    /// of that name that runs the same path, and the handle of an error report holds it.
    fn callback_name(py: Python<'_>, readable: bool) -> &'static str;

    /// The object protocols see, while the transport is not closing: `add_reader` and
    /// friends refuse its fd then, naming it. `None` for a transport that does not own
    /// its fd (a pipe transport, as asyncio's are not in `loop._transports`).
    fn open_facade<'py>(_slf: &Bound<'py, Self>) -> Option<Bound<'py, PyAny>> {
        None
    }
}

/// What [`set_watch`] needs of a transport: its fd, its loop while it has one, and its
/// record of the directions the loop watches the fd in for it.
pub(crate) trait Watched: Native {
    fn watched_fd(&self) -> RawFd;

    fn watch_loop(&self, py: Python<'_>) -> Option<Py<LoopCore>>;

    /// Records whether the loop watches the fd for reading (`read`) or for writing;
    /// returns what was recorded before.
    fn record_watch(&self, py: Python<'_>, read: bool, on: bool) -> bool;
}

/// Starts (`on`) or stops the loop's watch of a transport's fd for reading (`read`) or
/// writing. Nothing happens when the watch is already so, or once the transport has let
/// go of its loop; a watch that cannot start is not recorded, and the error returned.
pub(crate) fn set_watch<T: Watched>(slf: &Bound<'_, T>, read: bool, on: bool) -> PyResult<()>
where
    Py<T>: Into<NativeTransport>,
{
    let py = slf.py();
    let this = slf.get();
    let Some(loop_) = this.watch_loop(py) else {
        return Ok(());
    };
    if this.record_watch(py, read, on) == on {
        return Ok(());
    }
    if on {
        match loop_
            .get()
            .watch_native(py, this.watched_fd(), slf.clone().unbind().into(), read)
        {
            Ok(old) => drop(old),
            Err(e) => {
                this.record_watch(py, read, false);
                return Err(e);
            }
        }
    } else {
        drop(loop_.get().unwatch_raw(py, this.watched_fd(), read));
    }
    Ok(())
}

/// Declares the native transport kinds: one variant of [`NativeTransport`] each, and
/// the matches over them.
macro_rules! native_transports {
    ($($(#[$doc:meta])* $kind:ident($ty:ty),)+) => {
        /// A native transport, of any kind.
        pub(crate) enum NativeTransport {
            $($(#[$doc])* $kind(Py<$ty>),)+
        }

        $(
            impl From<Py<$ty>> for NativeTransport {
                fn from(t: Py<$ty>) -> NativeTransport {
                    NativeTransport::$kind(t)
                }
            }
        )+

        impl NativeTransport {
            fn clone_ref(&self, py: Python<'_>) -> NativeTransport {
                match self {
                    $(NativeTransport::$kind(t) => NativeTransport::$kind(t.clone_ref(py)),)+
                }
            }

            fn as_any(&self) -> &Py<PyAny> {
                match self {
                    $(NativeTransport::$kind(t) => t.as_any(),)+
                }
            }

            /// Runs the read or write path (`Ready`'s fields but the transport).
            #[inline]
            fn dispatch(self, loop_: &Bound<'_, LoopCore>, ready: &ReadyPath<'_>) -> PyResult<()> {
                // Bound, so that dropping it is a plain decref (dropping a Py first looks
                // for the GIL in a thread-local).
                match self {
                    $(NativeTransport::$kind(t) => dispatch(loop_, &t.into_bound(loop_.py()), ready),)+
                }
            }

            /// `obj`, when it is a native transport.
            pub(crate) fn from_object(obj: &Bound<'_, PyAny>) -> Option<NativeTransport> {
                $(
                    if let Ok(t) = obj.cast::<$ty>() {
                        return Some(NativeTransport::$kind(t.clone().unbind()));
                    }
                )+
                None
            }

            /// See [`Native::open_facade`].
            pub(crate) fn open_facade<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
                match self {
                    $(NativeTransport::$kind(t) => <$ty>::open_facade(t.bind(py)),)+
                }
            }
        }
    };
}

native_transports! {
    /// TCP and Unix stream sockets (`stream.rs`).
    Stream(StreamTransport),
    /// UDP and Unix datagram sockets (`datagram.rs`).
    Datagram(DatagramTransport),
    /// The read end of a pipe, FIFO, socket or character device (`pipe/read.rs`).
    ReadPipe(ReadPipeTransport),
    /// The write end of one (`pipe/write.rs`); readable once its reader is gone.
    WritePipe(WritePipeTransport),
}

/// A native transport's read or write watch, as the loop keeps it for the fd: asyncio's
/// reader or writer handle, without a handle object.
pub(crate) struct NativeWatch {
    transport: NativeTransport,
    /// A copy of the context current when the watch was added: the path runs in it.
    context: Py<PyAny>,
    /// In debug mode, where the watch was added (asyncio's handle keeps it), for reports.
    source_traceback: Option<Py<PyAny>>,
}

impl NativeWatch {
    pub(crate) fn new(
        py: Python<'_>,
        transport: NativeTransport,
        source_traceback: Option<Py<PyAny>>,
    ) -> PyResult<NativeWatch> {
        Ok(NativeWatch {
            transport,
            context: copy_current(py)?.unbind(),
            source_traceback,
        })
    }

    /// The ready queue's entry for this watch, when the fd is readable (`readable`) or
    /// writable.
    #[inline]
    pub(crate) fn ready(&self, py: Python<'_>, fd: RawFd, readable: bool) -> NativeReady {
        NativeReady {
            transport: self.transport.clone_ref(py),
            context: self.context.clone_ref(py),
            source_traceback: self.source_traceback.as_ref().map(|t| t.clone_ref(py)),
            fd,
            readable,
        }
    }

    /// Whether this watch's path runs in `context`: the watch made the ready entry that
    /// holds it.
    pub(crate) fn runs_in(&self, context: &Bound<'_, PyAny>) -> bool {
        self.context.is(context)
    }

    pub(crate) fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(self.transport.as_any())?;
        visit.call(&self.context)?;
        visit.call(&self.source_traceback)
    }
}

/// An entry of the ready queue: a native transport's fd is readable or writable.
pub(crate) struct NativeReady {
    transport: NativeTransport,
    /// The watch's context.
    context: Py<PyAny>,
    /// The watch's traceback, in debug mode.
    source_traceback: Option<Py<PyAny>>,
    fd: RawFd,
    readable: bool,
}

impl NativeReady {
    /// Runs the transport's read or write path in the watch's context; what it raises
    /// goes to the exception handler as asyncio's handle reports it. `Err` only for
    /// SystemExit and KeyboardInterrupt.
    #[inline]
    pub(crate) fn run(self, loop_: &Bound<'_, LoopCore>) -> PyResult<()> {
        let py = loop_.py();
        let ready = ReadyPath {
            context: self.context.into_bound(py),
            source_traceback: self.source_traceback.map(|t| t.into_bound(py)),
            fd: self.fd,
            readable: self.readable,
        };
        self.transport.dispatch(loop_, &ready)
    }

    pub(crate) fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(self.transport.as_any())?;
        visit.call(&self.context)?;
        visit.call(&self.source_traceback)
    }
}

/// A [`NativeReady`] being run, but its transport.
struct ReadyPath<'py> {
    context: Bound<'py, PyAny>,
    source_traceback: Option<Bound<'py, PyAny>>,
    fd: RawFd,
    readable: bool,
}

fn dispatch<T: Native>(loop_: &Bound<'_, LoopCore>, transport: &Bound<'_, T>, ready: &ReadyPath<'_>) -> PyResult<()> {
    let py = loop_.py();
    let result = match Entered::enter(&ready.context) {
        Ok(_in) if ready.readable => T::on_readable(transport),
        Ok(_in) => T::on_writable(transport),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if is_fatal(py, &e) => Err(e),
        // Reported outside the context: from Python 3.12 the exception handler runs in
        // the context of the handle it is given, which it enters.
        Err(e) => {
            let callback = transport.as_any().getattr(T::callback_name(py, ready.readable))?;
            report(loop_, &callback, ready, e)
        }
    }
}

/// `Handle._run`'s report of an exception from `callback`, with a handle of that
/// callback in the watch's context, made only now. When the path removed or replaced
/// its own watch before it failed, asyncio's handle was cancelled by then, and the report
/// shows it so: `Exception in callback None()`.
fn report(loop_: &Bound<'_, LoopCore>, callback: &Bound<'_, PyAny>, ready: &ReadyPath<'_>, err: PyErr) -> PyResult<()> {
    let py = loop_.py();
    let context = &ready.context;
    let watching = loop_.get().watches(py, ready.fd, ready.readable, context);
    let args = PyTuple::empty(py);
    let state = Handle::new_state(
        callback.clone().unbind(),
        args.clone().unbind(),
        (context.clone().unbind(), false),
        loop_.clone().unbind(),
        ready.source_traceback.as_ref().map(|t| t.clone().unbind()),
        false,
    );
    let handle = handle_mem::new_handle(py, state, None)?;
    let source = if watching {
        format_callback_source(py, callback, args.as_any())?
    } else {
        Handle::do_cancel(&handle)?;
        let none = py.None().into_bound(py);
        format_callback_source(py, &none, &none)?
    };
    let ctx = PyDict::new(py);
    ctx.set_item(intern!(py, "message"), format!("Exception in callback {source}"))?;
    ctx.set_item(intern!(py, "exception"), err.into_value(py))?;
    ctx.set_item(intern!(py, "handle"), handle)?;
    if let Some(tb) = &ready.source_traceback {
        ctx.set_item(intern!(py, "source_traceback"), tb)?;
    }
    loop_.call_method1(intern!(py, "call_exception_handler"), (ctx,))?;
    Ok(())
}
