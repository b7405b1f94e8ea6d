"""Connection setup: TCP and Unix clients and servers, and the ``sock_*`` coroutines.

``NetworkMixin`` is a base class of ``ferroloop.Loop``, made of four mixins by
concern: ``_sock.py`` (the ``sock_*`` coroutines), ``_resolve.py`` (name
resolution), ``_connect.py`` (clients and ``start_tls``) and ``_serve.py``
(servers and accepting). Everything here is cold
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

from ferroloop._connect import ConnectionMixin
from ferroloop._resolve import ResolutionMixin
from ferroloop._serve import Server, ServerMixin
from ferroloop._sock import SocketMixin

__all__ = ["NetworkMixin", "Server"]


class NetworkMixin(SocketMixin, ResolutionMixin, ConnectionMixin, ServerMixin):
    """asyncio's TCP/Unix connection and server methods, for ``ferroloop.Loop``.

    Needs from the class it is mixed into: asyncio's public loop API
    (``add_reader`` and friends, ``create_future``, ``create_task``, ``call_later``,
    ``call_exception_handler``, ``get_debug``, ``getaddrinfo``) and
    ``_make_stream_transport(sock, protocol, waiter=None, extra=None, server=None)``.
    """
