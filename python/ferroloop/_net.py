"""Connection setup: TCP and Unix clients and servers, and the ``sock_*`` coroutines.

``NetworkMixin`` is a base class of ``ferroloop.Loop``. Everything here is cold
(done once per connection or per server), so it is Python, modelled on asyncio
3.11's ``BaseEventLoop``, ``BaseSelectorEventLoop`` and ``_UnixSelectorEventLoop``:
same arguments, same checks in the same order, same exceptions, messages and log
records. The data path of a connection is the Rust transport that
``self._make_stream_transport`` creates.

Only public loop methods are used for I/O readiness (``add_reader``,
``remove_reader``, ``add_writer``, ``remove_writer``), so an fd owned by a
transport is refused exactly as asyncio refuses it.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import errno
import functools
import itertools
import os
import socket
import stat
import sys
from asyncio import staggered, trsock
from asyncio.log import logger

from ferroloop._compat import PY313, bind_error_text
from ferroloop._core import Acceptor
from ferroloop._tls import SSLProtocol, TLSServerFactory

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover - CPython is normally built with ssl
    _ssl = None

__all__ = ["NetworkMixin", "Server"]

# asyncio.constants.ACCEPT_RETRY_DELAY: seconds before accepting again after the
# process ran out of fds (or buffers) in accept().
ACCEPT_RETRY_DELAY = 1

_HAS_IPv6 = hasattr(socket, "AF_INET6")


# accept() errors that mean "out of resources": back off instead of spinning.
_ACCEPT_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


# ---- helpers ----


def _check_ssl_socket(sock) -> None:
    if _ssl is not None and isinstance(sock, _ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def _set_reuseport(sock) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        )


def _numeric_addrinfo(host, port, family, type, proto, flowinfo=0, scopeid=0):
    """The getaddrinfo() entry for a host that is already a numeric IP address.

    Returns None when ``host`` (or ``port``, or the type/proto combination) needs
    a real lookup. Accepts exactly what asyncio's fast path accepts: IPv4 and
    IPv6 literals as ``inet_pton`` parses them (no IPv6 zone index), str or
    bytes, and numeric (or empty/None) ports.
    """
    if not hasattr(socket, "inet_pton"):  # pragma: no cover - always there on Linux
        return None
    if host is None or proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None

    if type == socket.SOCK_STREAM:
        proto = socket.IPPROTO_TCP
    elif type == socket.SOCK_DGRAM:
        proto = socket.IPPROTO_UDP
    else:
        return None

    if port is None or port == b"" or port == "":
        port = 0
    else:
        # A service name such as "http" goes through getaddrinfo().
        try:
            port = int(port)
        except (TypeError, ValueError):
            return None

    if family == socket.AF_UNSPEC:
        families = [socket.AF_INET, socket.AF_INET6] if _HAS_IPv6 else [socket.AF_INET]
    else:
        families = [family]

    if isinstance(host, bytes):
        host = host.decode("idna")
    if "%" in host:
        # inet_pton() rejects an IPv6 zone index ('fe80::1%eth0'): let
        # getaddrinfo() resolve the scope id.
        return None

    for af in families:
        try:
            socket.inet_pton(af, host)
        except OSError:
            continue
        if _HAS_IPv6 and af == socket.AF_INET6:
            return af, type, proto, "", (host, port, flowinfo, scopeid)
        return af, type, proto, "", (host, port)
    return None


def _interleave_addrinfos(addrinfos, first_address_family_count=1):
    """Reorder addrinfo tuples so that address families alternate (RFC 8305).

    The first ``first_address_family_count`` entries of the first family come
    first, then one address of each family in turn.
    """
    by_family = collections.OrderedDict()
    for addr in addrinfos:
        by_family.setdefault(addr[0], []).append(addr)
    lists = list(by_family.values())

    reordered = []
    if first_address_family_count > 1:
        reordered.extend(lists[0][: first_address_family_count - 1])
        del lists[0][: first_address_family_count - 1]
    reordered.extend(
        a for a in itertools.chain.from_iterable(itertools.zip_longest(*lists)) if a is not None
    )
    return reordered


# ---- the server ----


# The server object is asyncio's own: it only calls the loop's _start_serving and
# _stop_serving and is told of each connection by its transport (_attach/_detach),
# so each Python version's server semantics (wait_closed as 3.12.1 fixed it,
# close_clients/abort_clients in 3.13) come with that version.
Server = asyncio.base_events.Server


# ---- the loop methods ----

_UNSET = object()


def _since_313(method: str, name: str, value, default):
    """A keyword argument asyncio added in 3.13: its default there; refused
    before, as a function without that parameter refuses it."""
    if value is _UNSET:
        return default if PY313 else None
    if not PY313:
        raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")
    return value



class NetworkMixin:
    """asyncio's TCP/Unix connection and server methods, for ``ferroloop.Loop``.

    Needs from the class it is mixed into: asyncio's public loop API
    (``add_reader`` and friends, ``create_future``, ``create_task``, ``call_later``,
    ``call_exception_handler``, ``get_debug``, ``getaddrinfo``) and
    ``_make_stream_transport(sock, protocol, waiter=None, extra=None, server=None)``.
    """

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

    # ---- name resolution ----

    async def _ensure_resolved(
        self, address, *, family=0, type=socket.SOCK_STREAM, proto=0, flags=0
    ):
        """getaddrinfo() for ``address``, skipping the executor for numeric hosts."""
        host, port = address[:2]
        info = _numeric_addrinfo(host, port, family, type, proto, *address[2:])
        if info is not None:
            return [info]
        return await self.getaddrinfo(
            host, port, family=family, type=type, proto=proto, flags=flags
        )

    async def _create_server_getaddrinfo(self, host, port, family, flags):
        infos = await self._ensure_resolved(
            (host, port), family=family, type=socket.SOCK_STREAM, flags=flags
        )
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned empty list")
        return infos

    # ---- clients ----

    async def _connect_sock(self, exceptions, addr_info, local_addr_infos=None):
        """Create, bind and connect one socket; append its errors to ``exceptions``."""
        my_exceptions = []
        exceptions.append(my_exceptions)
        family, type_, proto, _, address = addr_info
        sock = None
        try:
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setblocking(False)
            if local_addr_infos is not None:
                for lfamily, _, _, _, laddr in local_addr_infos:
                    # Skip the local addresses of another family.
                    if lfamily != family:
                        continue
                    try:
                        sock.bind(laddr)
                        break
                    except OSError as exc:
                        msg = (
                            f"error while attempting to bind on "
                            f"address {laddr!r}: "
                            f"{bind_error_text(exc)}"
                        )
                        exc = OSError(exc.errno, msg)
                        my_exceptions.append(exc)
                else:  # every bind failed, or none was of this family
                    if my_exceptions:
                        raise my_exceptions.pop()
                    else:
                        raise OSError(f"no matching local address with {family=} found")
            await self.sock_connect(sock, address)
            return sock
        except OSError as exc:
            my_exceptions.append(exc)
            if sock is not None:
                sock.close()
            raise
        except:
            if sock is not None:
                sock.close()
            raise
        finally:
            exceptions = my_exceptions = None

    async def _create_connection_transport(
        self,
        sock,
        protocol_factory,
        ssl,
        server_hostname,
        server_side=False,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        *,
        owned=False,
    ):
        # `owned`: the loop made the socket, so it closes it if no transport
        # takes it over (the protocol factory raised).
        try:
            sock.setblocking(False)
            protocol = protocol_factory()
            waiter = self.create_future()
            if ssl:
                sslcontext = None if isinstance(ssl, bool) else ssl
                transport = self._make_ssl_transport(
                    sock,
                    protocol,
                    sslcontext,
                    waiter,
                    server_side=server_side,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout,
                )
            else:
                transport = self._make_stream_transport(sock, protocol, waiter)
        except BaseException:
            if owned:
                sock.close()
            raise

        try:
            await waiter
        except:
            transport.close()
            raise

        return transport, protocol

    async def create_connection(
        self,
        protocol_factory,
        host=None,
        port=None,
        *,
        ssl=None,
        family=0,
        proto=0,
        flags=0,
        sock=None,
        local_addr=None,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        happy_eyeballs_delay=None,
        interleave=None,
        all_errors=False,
    ):
        """Connect to a TCP server; return ``(transport, protocol)``.

        ``host``/``port`` are resolved (numeric hosts without the executor) and
        every address is tried in turn, or raced with staggered starts when
        ``happy_eyeballs_delay`` is given. ``all_errors=True`` raises an
        ``ExceptionGroup`` of every attempt's error when none succeeds.
        """
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")

        if server_hostname is None and ssl:
            # The host is the default server_hostname; without a host (a socket
            # or only a port was given) it must be given explicitly ('' skips
            # the hostname check).
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host

        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")

        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if sock is not None:
            _check_ssl_socket(sock)

        if happy_eyeballs_delay is not None and interleave is None:
            # Happy eyeballs interleaves the address families by default.
            interleave = 1

        owned = False  # whether the loop made `sock`
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")

            infos = await self._ensure_resolved(
                (host, port), family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
            )
            if not infos:
                raise OSError("getaddrinfo() returned empty list")

            if local_addr is not None:
                laddr_infos = await self._ensure_resolved(
                    local_addr, family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
                )
                if not laddr_infos:
                    raise OSError("getaddrinfo() returned empty list")
            else:
                laddr_infos = None

            if interleave:
                infos = _interleave_addrinfos(infos, interleave)

            exceptions = []
            if happy_eyeballs_delay is None:
                for addrinfo in infos:
                    try:
                        sock = await self._connect_sock(exceptions, addrinfo, laddr_infos)
                        break
                    except OSError:
                        continue
            else:
                sock, _, _ = await staggered.staggered_race(
                    (
                        functools.partial(self._connect_sock, exceptions, addrinfo, laddr_infos)
                        for addrinfo in infos
                    ),
                    happy_eyeballs_delay,
                    loop=self,
                )

            if sock is None:
                exceptions = [exc for sub in exceptions for exc in sub]
                try:
                    if all_errors:
                        raise ExceptionGroup("create_connection failed", exceptions)
                    if len(exceptions) == 1:
                        raise exceptions[0]
                    # If they all have the same str(), raise one.
                    model = str(exceptions[0])
                    if all(str(exc) == model for exc in exceptions):
                        raise exceptions[0]
                    # Raise a combined exception so the user can see every error.
                    raise OSError(
                        "Multiple exceptions: {}".format(", ".join(str(exc) for exc in exceptions))
                    )
                finally:
                    exceptions = None
            owned = True

        else:
            if sock is None:
                raise ValueError("host and port was not specified and no sock specified")
            if sock.type != socket.SOCK_STREAM:
                # AF_INET, AF_INET6 and AF_UNIX are all fine if SOCK_STREAM.
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")

        transport, protocol = await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            owned=owned,
        )
        if self.get_debug():
            sock = transport.get_extra_info("socket")
            logger.debug(
                "%r connected to %s:%r: (%r, %r)", sock, host, port, transport, protocol
            )
        return transport, protocol

    async def connect_accepted_socket(
        self,
        protocol_factory,
        sock,
        *,
        ssl=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Wrap an already accepted connection ``sock`` in a transport and protocol."""
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")

        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")

        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if sock is not None:
            _check_ssl_socket(sock)

        transport, protocol = await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            "",
            server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if self.get_debug():
            sock = transport.get_extra_info("socket")
            logger.debug("%r handled: (%r, %r)", sock, transport, protocol)
        return transport, protocol

    async def create_unix_connection(
        self,
        protocol_factory,
        path=None,
        *,
        ssl=None,
        sock=None,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Connect to the Unix socket ``path`` (or use the connected ``sock``)."""
        assert server_hostname is None or isinstance(server_hostname, str)
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            if ssl_handshake_timeout is not None:
                raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
            if ssl_shutdown_timeout is not None:
                raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")

            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except:
                sock.close()
                raise
            return await self._create_connection_transport(
                sock,
                protocol_factory,
                ssl,
                server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                owned=True,
            )

        if sock is None:
            raise ValueError("no path and sock were specified")
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        sock.setblocking(False)

        return await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    # ---- TLS ----

    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """A TLS transport over the connected socket ``rawsock``: the Rust TLS protocol
        over a stream transport; ``protocol`` sees the transport returned."""
        ssl_protocol = SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._make_stream_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    async def start_tls(
        self,
        transport,
        protocol,
        sslcontext,
        *,
        server_side=False,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Upgrade ``transport`` to TLS; return the new transport ``protocol`` should use."""
        if _ssl is None:  # pragma: no cover
            raise RuntimeError("Python ssl module is not available")

        if not isinstance(sslcontext, _ssl.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
            )

        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")

        waiter = self.create_future()
        ssl_protocol = SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False,
        )

        # Pause first, so that nothing reaches the TLS protocol before its
        # connection_made().
        transport.pause_reading()

        transport.set_protocol(ssl_protocol)
        conmade_cb = self.call_soon(ssl_protocol.connection_made, transport)
        resume_cb = self.call_soon(transport.resume_reading)

        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            raise

        return ssl_protocol._app_transport

    # ---- servers ----

    async def create_server(
        self,
        protocol_factory,
        host=None,
        port=None,
        *,
        family=socket.AF_UNSPEC,
        flags=socket.AI_PASSIVE,
        sock=None,
        backlog=100,
        ssl=None,
        reuse_address=None,
        reuse_port=None,
        keep_alive=_UNSET,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        start_serving=True,
    ):
        """Create a TCP server bound to ``host`` (a name, or a sequence of them) and ``port``.

        A host that several names resolve to is bound once. Returns a ``Server``.
        ``keep_alive`` (Python 3.13+) sets SO_KEEPALIVE on the listening sockets.
        """
        keep_alive = _since_313("create_server", "keep_alive", keep_alive, None)
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")

        if ssl_handshake_timeout is not None and ssl is None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")

        if ssl_shutdown_timeout is not None and ssl is None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if sock is not None:
            _check_ssl_socket(sock)

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")

            if reuse_address is None:
                reuse_address = os.name == "posix" and sys.platform != "cygwin"
            sockets = []
            if host == "":
                hosts = [None]
            elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
                hosts = [host]
            else:
                hosts = host

            fs = [
                self._create_server_getaddrinfo(h, port, family=family, flags=flags)
                for h in hosts
            ]
            infos = await asyncio.gather(*fs)
            infos = set(itertools.chain.from_iterable(infos))

            completed = False
            try:
                for res in infos:
                    af, socktype, proto, canonname, sa = res
                    try:
                        sock = socket.socket(af, socktype, proto)
                    except OSError:
                        # Assume a bad family/type/protocol combination.
                        if self.get_debug():
                            logger.warning(
                                "create_server() failed to create socket.socket(%r, %r, %r)",
                                af,
                                socktype,
                                proto,
                                exc_info=True,
                            )
                        continue
                    sockets.append(sock)
                    if reuse_address:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                    if reuse_port:
                        _set_reuseport(sock)
                    if keep_alive:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
                    # No dual stack (Linux's default): an AF_INET6 socket listens
                    # on IPv6 only.
                    if _HAS_IPv6 and af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                    try:
                        sock.bind(sa)
                    except OSError as err:
                        raise OSError(
                            err.errno,
                            "error while attempting "
                            "to bind on address %r: %s" % (sa, bind_error_text(err)),
                        ) from None
                completed = True
            finally:
                if not completed:
                    for s in sockets:
                        s.close()
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
            sockets = [sock]

        for s in sockets:
            s.setblocking(False)

        server = Server(
            self,
            sockets,
            protocol_factory,
            ssl,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        if start_serving:
            server._start_serving()
            # Skip one loop iteration so that the add_reader() calls go through.
            await asyncio.sleep(0)

        if self.get_debug():
            logger.info("%r is serving", server)
        return server

    async def create_unix_server(
        self,
        protocol_factory,
        path=None,
        *,
        sock=None,
        backlog=100,
        ssl=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        start_serving=True,
        cleanup_socket=_UNSET,
    ):
        """Create a server listening on the Unix socket ``path`` (or on ``sock``).

        A stale socket file at ``path`` is removed first; a name starting with NUL
        is in the abstract namespace. With ``cleanup_socket`` (Python 3.13+, on by
        default there) the socket file is removed when the server closes, unless it
        was replaced meanwhile.
        """
        cleanup_socket = _since_313("create_unix_server", "cleanup_socket", cleanup_socket, True)
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")

        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")

        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")

            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

            # A leading NUL (str or bytes) is an abstract name: no file to remove.
            if path[0] not in (0, "\x00"):
                try:
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    # The directory may allow creating the socket and nothing else.
                    logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)

            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    # Say which address is in use.
                    msg = f"Address {path!r} is already in use"
                    raise OSError(errno.EADDRINUSE, msg) from None
                raise
            except:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")

            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")

        if cleanup_socket:
            name = sock.getsockname()
            # Not for an abstract name (str or bytes) or an unnamed socket.
            if name and name[0] not in (0, "\x00"):
                try:
                    self._unix_server_inodes[sock] = os.stat(name).st_ino
                except FileNotFoundError:
                    pass

        sock.setblocking(False)
        server = Server(
            self,
            [sock],
            protocol_factory,
            ssl,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        if start_serving:
            server._start_serving()
            # Skip one loop iteration so that the add_reader() call goes through.
            await asyncio.sleep(0)

        return server

    # ---- accepting ----

    def _start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ) -> None:
        # The reader callback accepts up to `backlog` waiting connections each time the
        # socket is readable (bpo-27906) and sets each up, in Rust. Over TLS, the
        # protocol it is given is the TLS layer's, over the user's.
        factory = protocol_factory
        if sslcontext:
            factory = TLSServerFactory(
                self,
                protocol_factory,
                sslcontext,
                ssl_handshake_timeout,
                ssl_shutdown_timeout,
            )
        self.add_reader(sock.fileno(), Acceptor(self, sock, factory, server, backlog))

    def _retry_serving(self, protocol_factory, sock, server, backlog) -> None:
        # The accept retry timer: serve again unless the server closed the socket
        # meanwhile (asyncio would log a failed add_reader(-1) here).
        if sock.fileno() == -1:
            return
        # `protocol_factory` is the acceptor's: over TLS, already the TLS layer's.
        self._start_serving(protocol_factory, sock, None, server, backlog)

    @property
    def _unix_server_inodes(self) -> dict:
        """Listening Unix sockets whose file goes when they close: socket -> inode."""
        inodes = getattr(self, "_unix_server_inode_map", None)
        if inodes is None:
            # (An attribute, not self.__dict__: see Loop.__init__.)
            inodes = self._unix_server_inode_map = {}
        return inodes

    def _stop_serving(self, sock) -> None:
        inodes = getattr(self, "_unix_server_inode_map", None)
        path = sock.getsockname() if inodes and sock in inodes else None
        self.remove_reader(sock.fileno())
        sock.close()
        if path is not None:
            inode = inodes.pop(sock)
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    def _accept_failed(self, exc, protocol_factory, sock, server, backlog) -> None:
        """accept() failed with something other than an empty queue (from Acceptor)."""
        if exc.errno not in _ACCEPT_RESOURCE_ERRNOS:
            raise exc  # the loop logs it as an error of the reader callback
        # Linux keeps reporting the listening socket as readable: stop watching it
        # for a while, then try again.
        self.call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": exc,
                "socket": trsock.TransportSocket(sock),
            }
        )
        self.remove_reader(sock.fileno())
        self.call_later(
            ACCEPT_RETRY_DELAY,
            self._retry_serving,
            protocol_factory,
            sock,
            server,
            backlog,
        )
