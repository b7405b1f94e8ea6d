"""Sending files: ``loop.sendfile`` and ``loop.sock_sendfile``.

``SendfileMixin`` is a base class of ``ferroloop.Loop``, with the behaviour of asyncio's
Unix selector loop (``BaseEventLoop.sendfile``/``sock_sendfile``, the selector loop's
``_sendfile_native`` and the Unix loop's ``_sock_sendfile_native``): same checks, same
messages, same file positions afterwards.

Zero-copy: ``os.sendfile()`` from the file to the socket, called when the socket is
writable, until ``count`` bytes (or the whole file) are sent. For a transport, its write
queue is flushed first (``_make_empty_waiter`` on the Rust stream transport), reading is
paused and writes are refused while the file goes out, and the transport's socket is
watched by ``sendfile`` itself meanwhile. Each call sends what the socket buffer takes,
so the Python work per call is small against the kernel's; that is why this stays Python.

Where zero-copy cannot serve (not a regular file, ``os.sendfile()`` refusing it before
anything was sent, a transport that is not one of ferroloop's stream transports), the
fallback reads the file in an executor and writes what it read (for a transport, with
its flow control), unless ``fallback=False``: then ``SendfileNotAvailableError``.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import sys
from asyncio import base_events, constants, exceptions, protocols

from ferroloop._sock import _check_ssl_socket
from ferroloop._transports import SocketTransport, SSLProtocolTransport

__all__ = ["SendfileMixin"]

# The fallback of loop.sendfile() reads the file in blocks of this size (asyncio's
# _sendfile_fallback; sock_sendfile's uses constants.SENDFILE_FALLBACK_READBUFFER_SIZE).
_TRANSPORT_FALLBACK_BLOCK = 16384


class _SendfileFallbackProtocol(protocols.Protocol):
    """asyncio's ``_SendfileFallbackProtocol`` for ferroloop's stream and TLS transports: it
    stands in for the transport's protocol while the fallback writes, pausing the
    writer when the transport's buffer is above its high-water mark."""

    def __init__(self, loop, transp):
        self._loop = loop
        self._transport = transp
        self._proto = transp.get_protocol()
        self._should_resume_reading = transp.is_reading()
        core = getattr(transp, "_core", None)  # a stream transport's; a TLS one says itself
        self._should_resume_writing = (core if core is not None else transp)._protocol_paused
        transp.pause_reading()
        transp.set_protocol(self)
        if self._should_resume_writing:
            self._write_ready_fut = self._loop.create_future()
        else:
            self._write_ready_fut = None

    async def drain(self):
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        fut = self._write_ready_fut
        if fut is None:
            return
        await fut

    def connection_made(self, transport):
        raise RuntimeError("Invalid state: connection should have been established already.")

    def connection_lost(self, exc):
        if self._write_ready_fut is not None:
            # Never happens if peer disconnects after sending the whole content
            # Thus disconnection is always an exception from user perspective
            if exc is None:
                self._write_ready_fut.set_exception(ConnectionError("Connection is closed by peer"))
            else:
                self._write_ready_fut.set_exception(exc)
        self._proto.connection_lost(exc)

    def pause_writing(self):
        if self._write_ready_fut is not None:
            return
        self._write_ready_fut = self._loop.create_future()

    def resume_writing(self):
        if self._write_ready_fut is None:
            return
        self._write_ready_fut.set_result(False)
        self._write_ready_fut = None

    def data_received(self, data):
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self):
        raise RuntimeError("Invalid state: reading should be paused")

    async def restore(self):
        self._transport.set_protocol(self._proto)
        if self._should_resume_reading:
            self._transport.resume_reading()
        if self._write_ready_fut is not None:
            # Nothing waits for it any more: the protocol is switched back.
            self._write_ready_fut.cancel()
        if self._should_resume_writing:
            self._proto.resume_writing()


class SendfileMixin:
    """asyncio's sendfile methods, for ``ferroloop.Loop``.

    Needs from the class it is mixed into: asyncio's public loop API (``add_writer``,
    ``remove_writer``, ``create_future``, ``run_in_executor``, ``sock_sendall``,
    ``get_debug``) and the core's ``_release_transport_fd``/``_claim_transport_fd``.
    """

    # ---- loop.sendfile ----

    async def sendfile(self, transport, file, offset=0, count=None, *, fallback=True):
        """Send a file to transport; return the number of bytes sent.

        ``os.sendfile()`` where it can serve, else (with ``fallback``) the file is read
        and written. ``file`` must be a regular file opened in binary mode. ``offset``
        is where to start; ``count`` how many bytes to send (None: to the end of the
        file). The file position is left after the last byte sent, also on error.
        Raises ``SendfileNotAvailableError`` when zero-copy cannot serve and
        ``fallback`` is False.
        """
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        mode = getattr(transport, "_sendfile_compatible", constants._SendfileMode.UNSUPPORTED)
        if mode is constants._SendfileMode.UNSUPPORTED:
            raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
        if mode is constants._SendfileMode.TRY_NATIVE:
            try:
                return await self._sendfile_native(transport, file, offset, count)
            except exceptions.SendfileNotAvailableError:
                if not fallback:
                    raise

        if not fallback:
            raise RuntimeError(
                f"fallback is disabled and native sendfile is not "
                f"supported for transport {transport!r}"
            )

        return await self._sendfile_fallback(transport, file, offset, count)

    async def _sendfile_native(self, transp, file, offset, count):
        if not isinstance(transp, SocketTransport):
            raise exceptions.SendfileNotAvailableError("sendfile syscall is not supported")
        core = transp._core
        fd = core._sock_fd
        # The socket is watched by sock_sendfile while the file goes out.
        self._release_transport_fd(fd, core)
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await core._make_empty_waiter()
        try:
            return await self.sock_sendfile(core._sock, file, offset, count, fallback=False)
        finally:
            core._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()
            if core._sock is not None:  # the connection is not lost meanwhile
                self._claim_transport_fd(fd, core)

    async def _sendfile_fallback(self, transp, file, offset, count):
        if offset:
            file.seek(offset)
        blocksize = min(count, _TRANSPORT_FALLBACK_BLOCK) if count else _TRANSPORT_FALLBACK_BLOCK
        buf = bytearray(blocksize)
        total_sent = 0
        if isinstance(transp, (SocketTransport, SSLProtocolTransport)):
            proto = _SendfileFallbackProtocol(self, transp)
        else:
            # Someone else's transport: asyncio's own (it wants a _FlowControlMixin).
            proto = base_events._SendfileFallbackProtocol(transp)
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        return total_sent
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    return total_sent  # EOF
                await proto.drain()
                transp.write(view[:read])
                total_sent += read
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)
            await proto.restore()

    # ---- loop.sock_sendfile ----

    async def sock_sendfile(self, sock, file, offset=0, count=None, *, fallback=True):
        """Send a file through the connected non-blocking stream socket ``sock``;
        return the number of bytes sent (``loop.sendfile``'s arguments)."""
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        _check_ssl_socket(sock)
        self._check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except exceptions.SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    async def _sock_sendfile_native(self, sock, file, offset, count):
        try:
            os.sendfile  # noqa: B018 - whether the platform has it
        except AttributeError:
            raise exceptions.SendfileNotAvailableError("os.sendfile() is not available")
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file")
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # empty file

        # On 32-bit architectures truncate to 1GiB to avoid OverflowError (asyncio 3.13).
        blocksize = min(blocksize, sys.maxsize // 2 + 1)

        fut = self.create_future()
        self._sock_sendfile_native_impl(fut, None, sock, fileno, offset, count, blocksize, 0)
        return await fut

    def _sock_sendfile_native_impl(
        self, fut, registered_fd, sock, fileno, offset, count, blocksize, total_sent
    ):
        fd = sock.fileno()
        if registered_fd is not None:
            # Remove the callback early: it is rare that the socket is writable and the
            # call still says EAGAIN.
            self.remove_writer(registered_fd)
        if fut.cancelled():
            self._sock_sendfile_update_filepos(fileno, offset, total_sent)
            return
        if count:
            blocksize = count - total_sent
            if blocksize <= 0:
                self._sock_sendfile_update_filepos(fileno, offset, total_sent)
                fut.set_result(total_sent)
                return

        try:
            sent = os.sendfile(fd, fileno, offset, blocksize)
        except (BlockingIOError, InterruptedError):
            if registered_fd is None:
                self._sock_add_cancellation_callback(fut, sock)
            self.add_writer(
                fd,
                self._sock_sendfile_native_impl,
                fut,
                fd,
                sock,
                fileno,
                offset,
                count,
                blocksize,
                total_sent,
            )
        except OSError as exc:
            if (
                registered_fd is not None
                and exc.errno == errno.ENOTCONN
                and type(exc) is not ConnectionError
            ):
                # ENOTCONN after the first call: the connection was closed in the middle
                # of the operation; reported as ConnectionError, as on every POSIX system.
                new_exc = ConnectionError("socket is not connected", errno.ENOTCONN)
                new_exc.__cause__ = exc
                exc = new_exc
            if total_sent == 0:
                # Mostly a file that is not a regular (mmap-able) file: the caller falls
                # back on plain sends.
                err = exceptions.SendfileNotAvailableError("os.sendfile call failed")
                self._sock_sendfile_update_filepos(fileno, offset, total_sent)
                fut.set_exception(err)
            else:
                self._sock_sendfile_update_filepos(fileno, offset, total_sent)
                fut.set_exception(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._sock_sendfile_update_filepos(fileno, offset, total_sent)
            fut.set_exception(exc)
        else:
            if sent == 0:
                # EOF
                self._sock_sendfile_update_filepos(fileno, offset, total_sent)
                fut.set_result(total_sent)
            else:
                offset += sent
                total_sent += sent
                if registered_fd is None:
                    self._sock_add_cancellation_callback(fut, sock)
                self.add_writer(
                    fd,
                    self._sock_sendfile_native_impl,
                    fut,
                    fd,
                    sock,
                    fileno,
                    offset,
                    count,
                    blocksize,
                    total_sent,
                )

    def _sock_sendfile_update_filepos(self, fileno, offset, total_sent):
        if total_sent > 0:
            os.lseek(fileno, offset, os.SEEK_SET)

    def _sock_add_cancellation_callback(self, fut, sock):
        def cb(fut):
            if fut.cancelled():
                fd = sock.fileno()
                if fd != -1:
                    self.remove_writer(fd)

        fut.add_done_callback(cb)

    async def _sock_sendfile_fallback(self, sock, file, offset, count):
        if offset:
            file.seek(offset)
        blocksize = (
            min(count, constants.SENDFILE_FALLBACK_READBUFFER_SIZE)
            if count
            else constants.SENDFILE_FALLBACK_READBUFFER_SIZE
        )
        buf = bytearray(blocksize)
        total_sent = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break  # EOF
                await self.sock_sendall(sock, view[:read])
                total_sent += read
            return total_sent
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)

    def _check_sendfile_params(self, sock, file, offset, count):
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if not sock.type == socket.SOCK_STREAM:
            raise ValueError("only SOCK_STREAM type sockets are supported")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        if not isinstance(offset, int):
            raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
        if offset < 0:
            raise ValueError(f"offset must be a non-negative integer (got {offset!r})")
