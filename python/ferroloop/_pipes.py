"""Pipes: ``connect_read_pipe`` and ``connect_write_pipe``.

``PipeMixin`` is a base class of ``ferroloop.Loop``. Connecting is cold (once per
pipe), so it is Python, asyncio's ``BaseEventLoop.connect_read_pipe`` and
``connect_write_pipe`` as they are; the transports, with their data path, are the Rust
ones ``ferroloop._core.make_read_pipe_transport`` and ``make_write_pipe_transport``
make (asyncio's ``_UnixReadPipeTransport`` and ``_UnixWritePipeTransport``).
"""

from __future__ import annotations

from asyncio.log import logger

from ferroloop._core import make_read_pipe_transport, make_write_pipe_transport

__all__ = ["PipeMixin"]


class PipeMixin:
    """asyncio's pipe methods, for ``ferroloop.Loop``.

    Needs from the class it is mixed into: ``create_future`` and ``get_debug``.
    """

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        """Wrap the read end of a pipe (or a FIFO, socket, character device) in a
        transport (Rust data path)."""
        return make_read_pipe_transport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        """Wrap the write end of a pipe (or a FIFO, socket, character device) in a
        transport (Rust data path)."""
        return make_write_pipe_transport(self, pipe, protocol, waiter, extra)

    async def connect_read_pipe(self, protocol_factory, pipe):
        """Register the read end of ``pipe`` (a file-like object with ``fileno()``:
        a pipe, FIFO, socket or character device) with the loop; return
        ``(transport, protocol)``. The pipe is made non-blocking."""
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_read_pipe_transport(pipe, protocol, waiter)

        try:
            await waiter
        except:
            transport.close()
            raise

        if self.get_debug():
            logger.debug(
                "Read pipe %r connected: (%r, %r)", pipe.fileno(), transport, protocol
            )
        return transport, protocol

    async def connect_write_pipe(self, protocol_factory, pipe):
        """Register the write end of ``pipe`` (a file-like object with ``fileno()``:
        a pipe, FIFO, socket or character device) with the loop; return
        ``(transport, protocol)``. The pipe is made non-blocking."""
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_write_pipe_transport(pipe, protocol, waiter)

        try:
            await waiter
        except:
            transport.close()
            raise

        if self.get_debug():
            logger.debug(
                "Write pipe %r connected: (%r, %r)", pipe.fileno(), transport, protocol
            )
        return transport, protocol
