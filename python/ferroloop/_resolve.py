"""Name resolution for connecting and serving: numeric hosts are answered on the loop's
thread, without the executor (asyncio's ``_ipaddr_info``); other names go through
``getaddrinfo``.
"""

from __future__ import annotations

import socket


_HAS_IPv6 = hasattr(socket, "AF_INET6")


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


class ResolutionMixin:
    """asyncio's ``_ensure_resolved``, for ``ferroloop.Loop`` (see ``_net.py``)."""

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
