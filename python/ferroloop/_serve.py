"""Serving: ``create_server`` and ``create_unix_server`` (binding, the server object,
``start_serving``), and accepting: the Rust ``Acceptor`` as the listening socket's
reader, TLS servers, the retry after ``accept()`` ran out of resources, and the
cleanup of a Unix server's socket file.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import errno
import itertools
import os
import socket
import stat
import sys
from asyncio import trsock
from asyncio.log import logger

from ferroloop._compat import PY313, bind_error_text
from ferroloop._core import Acceptor
from ferroloop._resolve import _HAS_IPv6
from ferroloop._sock import _check_ssl_socket
from ferroloop._tls import TLSServerFactory


# asyncio.constants.ACCEPT_RETRY_DELAY: seconds before accepting again after the
# process ran out of fds (or buffers) in accept().
ACCEPT_RETRY_DELAY = 1


# accept() errors that mean "out of resources": back off instead of spinning.
_ACCEPT_RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _set_reuseport(sock) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        )


# ---- the server ----


# The server object is asyncio's own: it only calls the loop's _start_serving and
# _stop_serving and is told of each connection by its transport (_attach/_detach),
# so each Python version's server semantics (wait_closed as 3.12.1 fixed it,
# close_clients/abort_clients in 3.13) come with that version.
Server = asyncio.base_events.Server


# ---- keyword arguments asyncio added in 3.13 ----

_UNSET = object()


def _since_313(method: str, name: str, value, default):
    """A keyword argument asyncio added in 3.13: its default there; refused
    before, as a function without that parameter refuses it."""
    if value is _UNSET:
        return default if PY313 else None
    if not PY313:
        raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")
    return value


class ServerMixin:
    """asyncio's server methods, for ``ferroloop.Loop`` (see ``_net.py``)."""

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
