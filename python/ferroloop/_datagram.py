"""Datagram endpoints and the datagram ``sock_*`` coroutines.

``DatagramMixin`` is a base class of ``ferroloop.Loop``. Endpoint setup is cold (once
per endpoint), so it is Python, modelled on the running Python's
``BaseEventLoop.create_datagram_endpoint``: same arguments, same checks in the same
order, same exceptions, messages and log records. The data path is the Rust transport
``ferroloop._core.make_datagram_transport`` makes.

``sock_recvfrom``, ``sock_recvfrom_into`` and ``sock_sendto`` are asyncio's selector
loop ones: try the call at once, else wait for readiness with a reader (writer) that
is removed when the future is done.
"""

from __future__ import annotations

import functools
import os
import socket
import stat
import sys
from asyncio.log import logger

from ferroloop._core import make_datagram_transport
from ferroloop._serve import _set_reuseport

__all__ = ["DatagramMixin"]

# From Python 3.13, create_datagram_endpoint(sock=...) refuses only stream sockets
# (so SOCK_SEQPACKET and SOCK_RAW are taken), with another message (gh-114887).
_ANY_NON_STREAM_SOCK = sys.version_info >= (3, 13)


class DatagramMixin:
    """asyncio's datagram methods, for ``ferroloop.Loop``.

    Needs from the class it is mixed into: asyncio's public loop API, and from
    ``NetworkMixin`` ``_ensure_resolved``, ``sock_connect``, ``_check_sock_arg``,
    ``_sock_add_reader``, ``_sock_add_writer`` and ``_sock_read_ready``.
    """

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        """Wrap a non-blocking datagram socket in a transport (Rust data path)."""
        return make_datagram_transport(self, sock, protocol, address, waiter, extra)

    async def create_datagram_endpoint(
        self,
        protocol_factory,
        local_addr=None,
        remote_addr=None,
        *,
        family=0,
        proto=0,
        flags=0,
        reuse_port=None,
        allow_broadcast=None,
        sock=None,
    ):
        """Create a datagram endpoint; return ``(transport, protocol)``.

        ``local_addr`` is bound and ``remote_addr`` connected to (with
        ``allow_broadcast``, only made the default destination); IPv4/IPv6 addresses
        are resolved, Unix ones (``family=AF_UNIX``) are paths. ``sock`` is an existing
        datagram socket, used as it is.
        """
        owned = sock is None  # whether the loop makes the socket
        if sock is not None:
            if _ANY_NON_STREAM_SOCK:
                if sock.type == socket.SOCK_STREAM:
                    raise ValueError(f"A datagram socket was expected, got {sock!r}")
            elif sock.type != socket.SOCK_DGRAM:
                raise ValueError(f"A UDP Socket was expected, got {sock!r}")
            if (
                local_addr
                or remote_addr
                or family
                or proto
                or flags
                or reuse_port
                or allow_broadcast
            ):
                # Name the offending arguments in the message.
                opts = dict(
                    local_addr=local_addr,
                    remote_addr=remote_addr,
                    family=family,
                    proto=proto,
                    flags=flags,
                    reuse_port=reuse_port,
                    allow_broadcast=allow_broadcast,
                )
                problems = ", ".join(f"{k}={v}" for k, v in opts.items() if v)
                raise ValueError(
                    f"socket modifier keyword arguments can not be used "
                    f"when sock is specified. ({problems})"
                )
            sock.setblocking(False)
            r_addr = None
        else:
            if not (local_addr or remote_addr):
                if family == 0:
                    raise ValueError("unexpected address family")
                addr_pairs_info = (((family, proto), (None, None)),)
            elif hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX:
                for addr in (local_addr, remote_addr):
                    if addr is not None and not isinstance(addr, str):
                        raise TypeError("string is expected")

                # A leading NUL is an abstract name: no file to remove.
                if local_addr and local_addr[0] not in (0, "\x00"):
                    try:
                        if stat.S_ISSOCK(os.stat(local_addr).st_mode):
                            os.remove(local_addr)
                    except FileNotFoundError:
                        pass
                    except OSError as err:
                        # The directory may allow creating the socket and nothing else.
                        logger.error(
                            "Unable to check or remove stale UNIX socket %r: %r", local_addr, err
                        )

                addr_pairs_info = (((family, proto), (local_addr, remote_addr)),)
            else:
                # The addresses of both ends, by (family, proto), in resolution order.
                addr_infos = {}
                for idx, addr in ((0, local_addr), (1, remote_addr)):
                    if addr is not None:
                        if not (isinstance(addr, tuple) and len(addr) == 2):
                            raise TypeError("2-tuple is expected")

                        infos = await self._ensure_resolved(
                            addr,
                            family=family,
                            type=socket.SOCK_DGRAM,
                            proto=proto,
                            flags=flags,
                        )
                        if not infos:
                            raise OSError("getaddrinfo() returned empty list")

                        for fam, _, pro, _, address in infos:
                            key = (fam, pro)
                            if key not in addr_infos:
                                addr_infos[key] = [None, None]
                            addr_infos[key][idx] = address

                # Only the (family, proto) pairs that have every address asked for.
                addr_pairs_info = [
                    (key, addr_pair)
                    for key, addr_pair in addr_infos.items()
                    if not (
                        (local_addr and addr_pair[0] is None)
                        or (remote_addr and addr_pair[1] is None)
                    )
                ]

                if not addr_pairs_info:
                    raise ValueError("can not get address information")

            exceptions = []

            for (family, proto), (local_address, remote_address) in addr_pairs_info:
                sock = None
                r_addr = None
                try:
                    sock = socket.socket(family=family, type=socket.SOCK_DGRAM, proto=proto)
                    if reuse_port:
                        _set_reuseport(sock)
                    if allow_broadcast:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                    sock.setblocking(False)

                    if local_addr:
                        sock.bind(local_address)
                    if remote_addr:
                        if not allow_broadcast:
                            await self.sock_connect(sock, remote_address)
                        r_addr = remote_address
                except OSError as exc:
                    if sock is not None:
                        sock.close()
                    exceptions.append(exc)
                except:
                    if sock is not None:
                        sock.close()
                    raise
                else:
                    break
            else:
                raise exceptions[0]

        # A socket the loop made is closed if no transport takes it (asyncio leaves it
        # to the garbage collector); one the caller gave stays the caller's.
        try:
            protocol = protocol_factory()
            waiter = self.create_future()
            transport = self._make_datagram_transport(sock, protocol, r_addr, waiter)
        except BaseException:
            if owned:
                sock.close()
            raise
        if self.get_debug():
            if local_addr:
                logger.info(
                    "Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                    local_addr,
                    remote_addr,
                    transport,
                    protocol,
                )
            else:
                logger.debug(
                    "Datagram endpoint remote_addr=%r created: (%r, %r)",
                    remote_addr,
                    transport,
                    protocol,
                )

        try:
            await waiter
        except:
            transport.close()
            raise

        return transport, protocol

    # ---- sock_* ----

    async def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram of up to ``bufsize`` bytes: ``(data, address)``."""
        self._check_sock_arg(sock)
        try:
            return sock.recvfrom(bufsize)
        except (BlockingIOError, InterruptedError):
            pass
        fut = self.create_future()
        self._sock_add_reader(
            fut, sock.fileno(), self._sock_read_ready, fut, sock.recvfrom, bufsize
        )
        return await fut

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into ``buf`` (up to ``nbytes``, or its size):
        ``(count, address)``."""
        self._check_sock_arg(sock)
        if not nbytes:
            nbytes = len(buf)
        try:
            return sock.recvfrom_into(buf, nbytes)
        except (BlockingIOError, InterruptedError):
            pass
        fut = self.create_future()
        self._sock_add_reader(
            fut,
            sock.fileno(),
            self._sock_read_ready,
            fut,
            functools.partial(sock.recvfrom_into, buf),
            nbytes,
        )
        return await fut

    async def sock_sendto(self, sock, data, address):
        """Send the datagram ``data`` to ``address``; return the number of bytes sent."""
        self._check_sock_arg(sock)
        try:
            return sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            pass
        fut = self.create_future()
        self._sock_add_writer(fut, sock.fileno(), self._sock_sendto, fut, sock, data, address)
        return await fut

    def _sock_sendto(self, fut, sock, data, address) -> None:
        if fut.done():
            # The future may have been cancelled in a previous iteration.
            return
        try:
            n = sock.sendto(data, 0, address)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(n)
