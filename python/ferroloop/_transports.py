"""The transport objects that protocols see.

``SocketTransport`` is a subclass of ``asyncio.Transport``, so
``isinstance(transport, asyncio.Transport)`` holds. The work is done by the Rust
``StreamTransport`` it wraps: the hot methods (write, writelines, is_closing,
get_write_buffer_size, pause_reading, resume_reading, is_reading) are slots that hold
the Rust object's bound methods, so calling them costs one slot load more than calling
the Rust object directly, and runs no Python code. ``write`` is filled when the
transport is made; each other slot on its first lookup, so a short connection only
makes the bound methods it uses.

Transports are made by ``ferroloop._core.make_socket_transport``, which does what
asyncio's ``_SelectorSocketTransport.__init__`` does, in Rust, and fills the slots
without running ``__init__``.

``DatagramSocketTransport`` is the same kind of facade over the Rust
``DatagramTransport``, made by ``ferroloop._core.make_datagram_transport``; its
``sendto`` slot is filled when it is made.

``ReadPipeTransport`` and ``WritePipeTransport`` are the facades over the Rust pipe
transports (``ferroloop._core.make_read_pipe_transport`` and
``make_write_pipe_transport``); the write transport's ``write`` slot is filled when it
is made.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from asyncio.constants import _SendfileMode


def _set_result_unless_cancelled(fut, result) -> None:
    if not fut.cancelled():
        fut.set_result(result)


# The methods held in slots: looked up on every call by protocols, so one slot load.
_CORE_METHODS = frozenset(
    (
        "write",
        "writelines",
        "is_closing",
        "get_write_buffer_size",
        "pause_reading",
        "resume_reading",
        "is_reading",
    )
)


class SocketTransport(asyncio.Transport):
    """A stream transport over a connected TCP or Unix socket."""

    # loop.start_tls() accepts it, as asyncio's selector socket transport.
    _start_tls_compatible = True
    # loop.sendfile() sends with os.sendfile(), falling back to reading and writing.
    _sendfile_compatible = _SendfileMode.TRY_NATIVE

    __slots__ = (
        "_core",
        "write",
        "writelines",
        "is_closing",
        "get_write_buffer_size",
        "pause_reading",
        "resume_reading",
        "is_reading",
        "__weakref__",
    )

    def __init__(self, *args, **kwargs):
        raise TypeError(
            "SocketTransport objects are made by the loop (ferroloop._core.make_socket_transport)"
        )

    def __getattr__(self, name):
        # A hot method's slot is filled with the Rust bound method the first time it is
        # looked up; a connection that never calls it never makes it.
        if name in _CORE_METHODS:
            method = getattr(self._core, name)
            object.__setattr__(self, name, method)
            return method
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return "<{} {}>".format(self.__class__.__name__, " ".join(self._core._repr_info()))

    def __del__(self, _warn=warnings.warn) -> None:
        core = getattr(self, "_core", None)
        sock = core._sock if core is not None else None
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()

    def close(self) -> None:
        self._core.close()

    def abort(self) -> None:
        self._core.abort()

    def _force_close(self, exc) -> None:
        # What TLS closes the connection with (asyncio's _SelectorTransport method).
        self._core._force_close(exc)

    def write_eof(self) -> None:
        self._core.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def set_protocol(self, protocol) -> None:
        self._core.set_protocol(protocol)

    def get_protocol(self):
        return self._core.get_protocol()

    def get_write_buffer_limits(self):
        return self._core.get_write_buffer_limits()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._core.set_write_buffer_limits(high, low)


# The datagram transport's methods held in slots (``sendto`` is filled when the
# transport is made).
_DATAGRAM_CORE_METHODS = frozenset(
    (
        "sendto",
        "is_closing",
        "get_write_buffer_size",
        "pause_reading",
        "resume_reading",
        "is_reading",
    )
)


class DatagramSocketTransport(asyncio.Transport, asyncio.DatagramTransport):
    """A datagram transport over a UDP or Unix datagram socket.

    Both an ``asyncio.DatagramTransport`` and an ``asyncio.Transport``, as asyncio's
    own datagram transport is from Python 3.12 (on 3.11 it is only the latter). Like
    asyncio's, ``write()`` and ``writelines()`` are the abstract ones and raise
    ``NotImplementedError``.
    """

    __slots__ = (
        "_core",
        "sendto",
        "is_closing",
        "get_write_buffer_size",
        "pause_reading",
        "resume_reading",
        "is_reading",
        "__weakref__",
    )

    def __init__(self, *args, **kwargs):
        raise TypeError(
            "DatagramSocketTransport objects are made by the loop "
            "(ferroloop._core.make_datagram_transport)"
        )

    def __getattr__(self, name):
        if name in _DATAGRAM_CORE_METHODS:
            method = getattr(self._core, name)
            object.__setattr__(self, name, method)
            return method
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return "<{} {}>".format(self.__class__.__name__, " ".join(self._core._repr_info()))

    def __del__(self, _warn=warnings.warn) -> None:
        core = getattr(self, "_core", None)
        sock = core._sock if core is not None else None
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()

    def close(self) -> None:
        self._core.close()

    def abort(self) -> None:
        self._core.abort()

    def set_protocol(self, protocol) -> None:
        self._core.set_protocol(protocol)

    def get_protocol(self):
        return self._core.get_protocol()

    def get_write_buffer_limits(self):
        return self._core.get_write_buffer_limits()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._core.set_write_buffer_limits(high, low)


# asyncio's ``_SSLProtocolTransport._force_close`` checks for a detached transport from
# 3.13 on; before, it raises AttributeError.
_FORCE_CLOSE_DETACHED_RAISES = sys.version_info < (3, 13)


def _detached_ssl_write(data) -> None:
    """``write`` of a TLS transport closed and detached: asyncio's checks, then its error."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expecting a bytes-like instance, got {type(data).__name__}")
    if not data:
        return
    raise AttributeError("'NoneType' object has no attribute '_write_appdata'")


class SSLProtocolTransport(asyncio.Transport):
    """The transport a protocol sees over TLS: asyncio's ``_SSLProtocolTransport``.

    The work is done by the Rust ``SSLProtocolCore`` in ``_ssl_protocol`` (the
    protocol of the stream transport underneath); ``write`` is a slot holding its
    bound ``_app_write``, filled when the transport is made.
    """

    __slots__ = ("_ssl_protocol", "write", "__weakref__")

    _start_tls_compatible = True
    _sendfile_compatible = asyncio.constants._SendfileMode.FALLBACK

    def __init__(self, *args, **kwargs):
        raise TypeError("SSLProtocolTransport objects are made by the loop")

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} object at {id(self):#x}>"

    @property
    def _closed(self) -> bool:
        # Detached (``_ssl_protocol`` None) only once closed.
        proto = self._ssl_protocol
        return True if proto is None else proto._app_closed

    def get_extra_info(self, name, default=None):
        """Get optional transport information."""
        return self._ssl_protocol._get_extra_info(name, default)

    def set_protocol(self, protocol) -> None:
        self._ssl_protocol._set_app_protocol(protocol)

    def get_protocol(self):
        return self._ssl_protocol._app_protocol

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the transport: send close_notify once buffered data is flushed.

        As asyncio's: closing it again (or closing it after the connection began to
        shut down) detaches it from the SSL protocol, so that a protocol that keeps its
        transport keeps no SSL protocol, SSL object or context alive.
        """
        proto = self._ssl_protocol
        if proto is None or not proto._app_close():
            self._ssl_protocol = None
            self.write = _detached_ssl_write

    def __del__(self, _warn=warnings.warn) -> None:
        proto = getattr(self, "_ssl_protocol", None)
        if proto is not None and proto._app_mark_closed():
            _warn("unclosed transport <asyncio._SSLProtocolTransport object>", ResourceWarning)

    def is_reading(self) -> bool:
        return not self._ssl_protocol._app_reading_paused

    def pause_reading(self) -> None:
        self._ssl_protocol._pause_reading()

    def resume_reading(self) -> None:
        self._ssl_protocol._resume_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._ssl_protocol._set_write_buffer_limits(high, low)
        self._ssl_protocol._control_app_writing()

    def get_write_buffer_limits(self):
        return (self._ssl_protocol._outgoing_low_water, self._ssl_protocol._outgoing_high_water)

    def get_write_buffer_size(self) -> int:
        return self._ssl_protocol._get_write_buffer_size()

    def set_read_buffer_limits(self, high=None, low=None) -> None:
        self._ssl_protocol._set_read_buffer_limits(high, low)
        self._ssl_protocol._control_ssl_reading()

    def get_read_buffer_limits(self):
        return (self._ssl_protocol._incoming_low_water, self._ssl_protocol._incoming_high_water)

    def get_read_buffer_size(self) -> int:
        return self._ssl_protocol._get_read_buffer_size()

    @property
    def _protocol_paused(self) -> bool:
        return self._ssl_protocol._app_writing_paused

    def writelines(self, list_of_data) -> None:
        self._ssl_protocol._write_appdata(list_of_data)

    def write_eof(self) -> None:
        """Not supported over TLS, as with asyncio."""
        raise NotImplementedError

    def can_write_eof(self) -> bool:
        return False

    def abort(self) -> None:
        """Close the transport at once: buffered data is lost, no close_notify."""
        proto = self._ssl_protocol
        if proto is not None:
            proto._app_force_close(None)

    def _force_close(self, exc) -> None:
        proto = self._ssl_protocol
        if proto is not None:
            proto._app_force_close(exc)
        elif _FORCE_CLOSE_DETACHED_RAISES:
            raise AttributeError("'NoneType' object has no attribute '_abort'")

    def _test__append_write_backlog(self, data) -> None:
        self._ssl_protocol._test__append_write_backlog(data)


class _PipeFacade:
    """What the two pipe transports' facades share: methods of the core cached in slots
    on first use (``_CORE_METHODS``), the repr, the unclosed-transport warning, asyncio's
    ``_pipe`` and ``_fileno`` attributes, and the methods every transport has."""

    __slots__ = ()
    _CORE_METHODS: frozenset = frozenset()
    _MADE_BY = ""

    def __init__(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} objects are made by the loop ({self._MADE_BY})")

    def __getattr__(self, name):
        if name in self._CORE_METHODS:
            method = getattr(self._core, name)
            object.__setattr__(self, name, method)
            return method
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return "<{} {}>".format(self.__class__.__name__, " ".join(self._core._repr_info()))

    def __del__(self, _warn=warnings.warn) -> None:
        core = getattr(self, "_core", None)
        if core is not None and core._open:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core._close_pipe()

    # asyncio's transport keeps its pipe object as ``_pipe`` (None once closed); code
    # that sets it to None takes the pipe over, as with asyncio's.
    @property
    def _pipe(self):
        return self._core._pipe

    @_pipe.setter
    def _pipe(self, value):
        if value is not None:
            raise ValueError("only None can be assigned to _pipe")
        self._core._forget_pipe()

    @property
    def _fileno(self):
        return self._core._fileno

    def close(self) -> None:
        self._core.close()

    def abort(self) -> None:
        self._core.abort()

    def set_protocol(self, protocol) -> None:
        self._core.set_protocol(protocol)

    def get_protocol(self):
        return self._core.get_protocol()


class ReadPipeTransport(_PipeFacade, asyncio.ReadTransport):
    """A read transport over a pipe, FIFO, socket or character device (a pty...)."""

    __slots__ = (
        "_core",
        "is_closing",
        "pause_reading",
        "resume_reading",
        "is_reading",
        "__weakref__",
    )
    _CORE_METHODS = frozenset(("is_closing", "pause_reading", "resume_reading", "is_reading"))
    _MADE_BY = "ferroloop._core.make_read_pipe_transport"


class WritePipeTransport(_PipeFacade, asyncio.Transport):
    """A write transport over a pipe, FIFO, socket or character device (a pty...).

    A ``Transport``, not only a ``WriteTransport``, as asyncio's write pipe transport is:
    its read methods (``pause_reading``...) raise ``NotImplementedError``."""

    __slots__ = ("_core", "write", "is_closing", "get_write_buffer_size", "__weakref__")
    _CORE_METHODS = frozenset(("write", "is_closing", "get_write_buffer_size"))
    _MADE_BY = "ferroloop._core.make_write_pipe_transport"

    @property
    def _protocol_paused(self):
        return self._core._protocol_paused

    def write_eof(self) -> None:
        self._core.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_limits(self):
        return self._core.get_write_buffer_limits()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._core.set_write_buffer_limits(high, low)
