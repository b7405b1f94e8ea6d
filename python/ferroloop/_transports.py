"""The transport objects that protocols see.

``SocketTransport`` is a subclass of ``asyncio.Transport``, so
``isinstance(transport, asyncio.Transport)`` holds. The work is done by the Rust
``StreamTransport`` it wraps: the hot methods (write, writelines, is_closing,
get_write_buffer_size, pause_reading, resume_reading, is_reading) are slots that hold
the Rust object's bound methods, so calling them costs one slot load more than calling
the Rust object directly, and runs no Python code.
"""

from __future__ import annotations

import asyncio
import warnings
from asyncio import trsock

from ferroloop._core import StreamTransport


def _set_result_unless_cancelled(fut, result) -> None:
    if not fut.cancelled():
        fut.set_result(result)


class SocketTransport(asyncio.Transport):
    """A stream transport over a connected TCP or Unix socket."""

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

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        extra = dict(extra) if extra else {}
        extra["socket"] = trsock.TransportSocket(sock)
        try:
            extra["sockname"] = sock.getsockname()
        except OSError:
            extra["sockname"] = None
        if "peername" not in extra:
            try:
                extra["peername"] = sock.getpeername()
            except OSError:
                extra["peername"] = None
        super().__init__(extra)
        # The Rust transport sets TCP_NODELAY on TCP sockets (every one, whatever proto
        # the socket was made with; asyncio skips those made with proto 0).
        core = StreamTransport(loop, sock, protocol, self, server)
        self._core = core
        self.write = core.write
        self.writelines = core.writelines
        self.is_closing = core.is_closing
        self.get_write_buffer_size = core.get_write_buffer_size
        self.pause_reading = core.pause_reading
        self.resume_reading = core.resume_reading
        self.is_reading = core.is_reading
        core._register()
        loop.call_soon(protocol.connection_made, self)
        # Reading starts only once connection_made() has run.
        loop.call_soon(core._start_reading)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

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
