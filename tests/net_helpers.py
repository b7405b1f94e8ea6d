"""Helpers shared by the connection-setup tests (test_net.py, test_net_unix.py)."""

from __future__ import annotations

import asyncio
import os
import socket
from asyncio import trsock

import pytest


def fd_count() -> int:
    """The number of open fds of this process."""
    return len(os.listdir("/proc/self/fd"))


def has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = has_ipv6()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="IPv6 loopback is not available")


def free_port(family=socket.AF_INET, host="127.0.0.1") -> int:
    """A TCP port nobody listens on (bound once, then released)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run(loop, coro, timeout=30):
    """Run ``coro`` on ``loop`` with a timeout, so a broken test fails instead of hanging."""

    async def guarded():
        return await asyncio.wait_for(coro, timeout)

    return loop.run_until_complete(guarded())


async def settle(n=5):
    """Let a few loop iterations run (scheduled callbacks, connection_lost)."""
    for _ in range(n):
        await asyncio.sleep(0)


class Recorder(asyncio.Protocol):
    """A protocol that records what happens to it."""

    def __init__(self, loop):
        self.loop = loop
        self.transport = None
        self.data = bytearray()
        self.eof = False
        self.events = []
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self._waiter = None

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        self.data += data
        self._wake()

    def eof_received(self):
        self.events.append("eof")
        self.eof = True
        self._wake()

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()

    def _wake(self):
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read_exactly(self, n):
        while len(self.data) < n:
            if self.eof or self.lost.done():
                raise EOFError(bytes(self.data))
            self._waiter = self.loop.create_future()
            await self._waiter
        return bytes(self.data[:n])

    async def wait_eof(self):
        while not self.eof and not self.lost.done():
            self._waiter = self.loop.create_future()
            await self._waiter


class Echo(Recorder):
    """Server side: echoes what it receives; closes on EOF."""

    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


class Factory:
    """A protocol factory that keeps the protocols it made."""

    def __init__(self, loop, cls=Echo):
        self.loop = loop
        self.cls = cls
        self.protocols = []
        self._waiter = None

    def __call__(self):
        proto = self.cls(self.loop)
        self.protocols.append(proto)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return proto

    async def wait_for(self, n):
        """Wait until ``n`` connections have been made; return the n-th protocol."""
        while len(self.protocols) < n:
            self._waiter = self.loop.create_future()
            await self._waiter
        proto = self.protocols[n - 1]
        await proto.made
        return proto


async def close_client(transport, proto):
    transport.close()
    await proto.lost


async def close_server(server):
    server.close()
    await server.wait_closed()


def assert_accept_out_of_resources(ctx, listener, errnum):
    """`ctx` is what the exception handler gets when accept() on `listener` runs out of
    a resource (errno `errnum`), as asyncio reports it."""
    assert ctx["message"] == "socket.accept() out of system resource"
    assert isinstance(ctx["exception"], OSError)
    assert ctx["exception"].errno == errnum
    assert isinstance(ctx["socket"], trsock.TransportSocket)
    assert ctx["socket"].fileno() == listener.fileno()


def subclass_getaddrinfo(loop, infos, calls=None):
    """Make ``loop.getaddrinfo`` return ``infos`` (and record its calls in ``calls``)."""

    async def fake_getaddrinfo(host, port, *, family=0, type=0, proto=0, flags=0):
        if calls is not None:
            calls.append((host, port, family, type, proto, flags))
        return list(infos)

    loop.getaddrinfo = fake_getaddrinfo


def spy_getaddrinfo(loop):
    """Record the calls of ``loop.getaddrinfo`` (which keeps working)."""
    calls = []
    real = loop.getaddrinfo

    async def spy(host, port, *, family=0, type=0, proto=0, flags=0):
        calls.append((host, port))
        return await real(host, port, family=family, type=type, proto=proto, flags=flags)

    loop.getaddrinfo = spy
    return calls
