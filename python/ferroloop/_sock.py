"""The ``sock_*`` coroutines: ``sock_recv``, ``sock_recv_into``, ``sock_sendall``,
``sock_connect`` and ``sock_accept`` on a non-blocking socket, each waiting with a
reader or writer of its own (removed when its future is done, as asyncio's), with
asyncio 3.11's checks, messages and cancellation behaviour.
"""

from __future__ import annotations

import functools
import socket

from ferroloop._resolve import _HAS_IPv6

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover - CPython is normally built with ssl
    _ssl = None


def _check_ssl_socket(sock) -> None:
    if _ssl is not None and isinstance(sock, _ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


class SocketMixin:
    """asyncio's ``sock_*`` coroutines, for ``ferroloop.Loop`` (see ``_net.py``)."""

    # ---- fd watches of the sock_* coroutines ----
    #
    # asyncio's sock_* coroutines remove their reader (writer) when the future is
    # done, unless it was replaced meanwhile: then its handle is cancelled.

    def _sock_add_reader(self, fut, fd, callback, *args) -> None:
        handle = self._add_reader(fd, callback, *args)
        fut.add_done_callback(functools.partial(self._sock_watch_done, fd, True, handle))

    def _sock_add_writer(self, fut, fd, callback, *args) -> None:
        handle = self._add_writer(fd, callback, *args)
        fut.add_done_callback(functools.partial(self._sock_watch_done, fd, False, handle))

    def _sock_watch_done(self, fd, read, handle, fut) -> None:
        if handle.cancelled():
            return  # replaced by another reader (writer) on the same fd
        if read:
            self.remove_reader(fd)
        else:
            self.remove_writer(fd)

    def _check_sock_arg(self, sock) -> None:
        _check_ssl_socket(sock)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    # ---- sock_* ----

    async def sock_recv(self, sock, n):
        """Receive up to ``n`` bytes from the non-blocking socket ``sock``."""
        self._check_sock_arg(sock)
        try:
            return sock.recv(n)
        except (BlockingIOError, InterruptedError):
            pass
        fut = self.create_future()
        self._sock_add_reader(fut, sock.fileno(), self._sock_read_ready, fut, sock.recv, n)
        return await fut

    async def sock_recv_into(self, sock, buf):
        """Receive data from ``sock`` into the writable buffer ``buf``; return the count."""
        self._check_sock_arg(sock)
        try:
            return sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            pass
        fut = self.create_future()
        self._sock_add_reader(fut, sock.fileno(), self._sock_read_ready, fut, sock.recv_into, buf)
        return await fut

    def _sock_read_ready(self, fut, read, arg) -> None:
        """The socket is readable: complete ``fut`` with ``read(arg)`` (recv or recv_into)."""
        if fut.done():
            return
        try:
            result = read(arg)
        except (BlockingIOError, InterruptedError):
            return  # try again next time
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    async def sock_sendall(self, sock, data):
        """Send all of ``data`` on the connected socket ``sock``."""
        self._check_sock_arg(sock)
        try:
            n = sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0

        if n == len(data):
            return  # all sent

        fut = self.create_future()
        # The position is a one-element list so that the callback can advance it.
        self._sock_add_writer(
            fut, sock.fileno(), self._sock_sendall, fut, sock, memoryview(data), [n]
        )
        return await fut

    def _sock_sendall(self, fut, sock, view, pos) -> None:
        if fut.done():
            # The future may have been cancelled in a previous iteration.
            return
        start = pos[0]
        try:
            n = sock.send(view[start:])
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            return

        start += n
        if start == len(view):
            fut.set_result(None)
        else:
            pos[0] = start

    async def sock_connect(self, sock, address):
        """Connect the non-blocking socket ``sock`` to ``address``.

        An IPv4/IPv6 address whose host is not numeric is resolved first.
        """
        self._check_sock_arg(sock)

        if sock.family == socket.AF_INET or (_HAS_IPv6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto
            )
            _, _, _, _, address = resolved[0]

        fut = self.create_future()
        self._sock_connect(fut, sock, address)
        try:
            return await fut
        finally:
            # Break the cycle through the exception's traceback.
            fut = None

    def _sock_connect(self, fut, sock, address) -> None:
        fd = sock.fileno()
        try:
            sock.connect(address)
        except (BlockingIOError, InterruptedError):
            # The connection goes on in the background (EINPROGRESS, or EINTR:
            # bpo-23618); it is done when the socket becomes writable.
            self._sock_add_writer(fut, fd, self._sock_connect_cb, fut, sock, address)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)
        finally:
            fut = None

    def _sock_connect_cb(self, fut, sock, address) -> None:
        if fut.done():
            return
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err != 0:
                raise OSError(err, f"Connect call failed {address}")
        except (BlockingIOError, InterruptedError):
            pass  # still registered: called again later
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)
        finally:
            fut = None

    async def sock_accept(self, sock):
        """Accept a connection on the listening socket ``sock``: ``(conn, address)``.

        ``conn`` is a new non-blocking socket.
        """
        self._check_sock_arg(sock)
        fut = self.create_future()
        self._sock_accept(fut, sock)
        return await fut

    def _sock_accept(self, fut, sock) -> None:
        fd = sock.fileno()
        try:
            conn, address = sock.accept()
            conn.setblocking(False)
        except (BlockingIOError, InterruptedError):
            self._sock_add_reader(fut, fd, self._sock_accept, fut, sock)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result((conn, address))
