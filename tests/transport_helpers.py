"""Helpers shared by the transport tests (test_transport*.py, test_pipes.py).

A transport under test is usually one end of a connected socket pair wrapped
with ``loop.connect_accepted_socket()``; the other end stays a plain
non-blocking socket that the test drives with ``loop.sock_recv()`` /
``loop.sock_sendall()`` (or directly, without yielding to the loop).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import re
import socket
import ssl

import pytest

KINDS = ["tcp", "unix"]

# asyncio's defaults (transports._FlowControlMixin): (low, high).
DEFAULT_LIMITS = (16 * 1024, 64 * 1024)

# A payload much larger than a small socket buffer holds.
MIB = 1024 * 1024


def pipe_files():
    """An anonymous pipe as unbuffered file objects: (read end, write end)."""
    r, w = os.pipe()
    return open(r, "rb", 0), open(w, "wb", 0)


async def read_fd_while(fd, until=lambda: False) -> bytes:
    """Reads the fd (made non-blocking) until ``until()`` or end of file, letting the loop
    run in between: what was read."""
    os.set_blocking(fd, False)
    got = bytearray()
    while not until():
        try:
            chunk = os.read(fd, MIB)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        if not chunk:
            break
        got += chunk
    return bytes(got)


@functools.cache
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``localhost`` and a client context that
    trusts it, made once."""
    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def fds() -> int:
    """The number of open fds, once garbage left by earlier tests is collected."""
    from net_helpers import fd_count

    gc.collect()
    return fd_count()


def diff_exc_summary(exc):
    """An exception as the differential tests compare it: ``(class name, message)``."""
    if exc is None:
        return None
    return (type(exc).__name__, str(exc))


def run_on_asyncio_and_ferroloop(scenario, ferroloop_module, timeout=120):
    """What ``scenario(loop)`` returns on a new asyncio loop and on a new ferroloop loop,
    in that order; each run must leave the open fds as it found them."""
    results = []
    for make in (asyncio.SelectorEventLoop, ferroloop_module.new_event_loop):
        loop = make()
        try:
            before = fds()
            results.append(loop.run_until_complete(asyncio.wait_for(scenario(loop), timeout)))
            assert fds() == before, f"an fd was left behind on {loop!r}"
        finally:
            loop.close()
    return results


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes of a non-repeating-looking pattern (cheap to build)."""
    block = bytes((i * 7 + seed) & 0xFF for i in range(251))  # prime length
    return (block * (n // len(block) + 1))[:n]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair over 127.0.0.1: (ours, peer)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        ours = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    return ours, peer


def sock_pair(kind: str) -> tuple[socket.socket, socket.socket]:
    if kind == "tcp":
        return tcp_pair()
    if kind == "unix":
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    raise ValueError(kind)  # pragma: no cover


async def make_transport(loop, factory, kind="unix", *, sndbuf=None, peer_rcvbuf=None):
    """Wrap one end of a fresh pair in a transport: (transport, protocol, peer).

    ``sndbuf`` shrinks the transport socket's send buffer and ``peer_rcvbuf`` the
    peer's receive buffer, so that a write larger than they hold is queued.
    """
    ours, peer = sock_pair(kind)
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if peer_rcvbuf is not None:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_rcvbuf)
    peer.setblocking(False)
    try:
        transport, protocol = await loop.connect_accepted_socket(factory, ours)
    except BaseException:
        ours.close()
        peer.close()
        raise
    return transport, protocol, peer


async def peer_read_exactly(loop, peer, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(peer, min(n - len(buf), MIB))
        if not chunk:
            raise EOFError(bytes(buf))
        buf += chunk
    return bytes(buf)


async def peer_read_to_eof(loop, peer) -> bytes:
    buf = bytearray()
    while True:
        chunk = await loop.sock_recv(peer, MIB)
        if not chunk:
            return bytes(buf)
        buf += chunk


def peer_recv_now(peer, n=65536):
    """What the peer can read right now, without running the loop (b'' if nothing)."""
    try:
        return peer.recv(n)
    except BlockingIOError:
        return None


def peer_recv_blocking(peer, n, timeout=10.0) -> bytes:
    """Read exactly ``n`` bytes from the peer, blocking (the loop does not run)."""
    peer.settimeout(timeout)
    try:
        buf = bytearray()
        while len(buf) < n:
            chunk = peer.recv(n - len(buf))
            if not chunk:
                raise EOFError(bytes(buf))
            buf += chunk
        return bytes(buf)
    finally:
        peer.setblocking(False)


async def fill_write_buffer(transport, chunk=pattern(64 * 1024), limit=4096):
    """Write until something is queued; return what was written."""
    written = bytearray()
    for _ in range(limit):
        transport.write(chunk)
        written += chunk
        if transport.get_write_buffer_size():
            return bytes(written)
    raise AssertionError("the write buffer never filled")  # pragma: no cover


def capture_exceptions(loop) -> list:
    """Install an exception handler that records the contexts it gets."""
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    return contexts


_REPR = re.compile(r"^<(\w+)(?: (.*))?>$")


def repr_body(obj) -> str:
    """The repr of a transport without its class name (which may differ)."""
    m = _REPR.match(repr(obj))
    assert m, repr(obj)
    return m.group(2) or ""


class Proto(asyncio.Protocol):
    """A protocol that records every call, in order."""

    eof_result = None

    def __init__(self, loop):
        self.loop = loop
        self.transport = None
        self.data = bytearray()
        self.events = []
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.lost_calls = 0
        self._waiter = None

    # -- protocol callbacks

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)
        self._wake()

    def data_received(self, data):
        assert isinstance(data, bytes)
        self.events.append("data")
        self.data += data
        self._wake()

    def eof_received(self):
        self.events.append("eof")
        self._wake()
        return self.eof_result

    def pause_writing(self):
        self.events.append(("pause", self.transport.get_write_buffer_size()))
        self._wake()

    def resume_writing(self):
        self.events.append(("resume", self.transport.get_write_buffer_size()))
        self._wake()

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost_calls += 1
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()

    # -- waiting

    def _wake(self):
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, predicate):
        """Wait until ``predicate()`` holds (re-checked after every callback)."""
        while not predicate():
            self._waiter = self.loop.create_future()
            await self._waiter

    async def wait_data(self, n):
        await self.wait(lambda: len(self.data) >= n or self.lost.done())
        assert len(self.data) >= n, (len(self.data), self.events[-5:])
        return bytes(self.data)

    def kinds(self):
        """The events without their details, consecutive 'data' merged."""
        out = []
        for e in self.events:
            name = e[0] if isinstance(e, tuple) else e
            if name == "data" and out and out[-1] == "data":
                continue
            out.append(name)
        return out


async def wait_until(predicate, interval=0.005):
    """Poll ``predicate`` (for states no callback reports, e.g. a drained buffer)."""
    while not predicate():
        await asyncio.sleep(interval)


def both(loop, oracle_loop, scenario, *args):
    """Run ``scenario(loop, *args)`` on the loop under test and on asyncio's loop."""
    from net_helpers import run

    got = run(loop, scenario(loop, *args))
    expected = run(oracle_loop, scenario(oracle_loop, *args))
    return got, expected


kinds = pytest.mark.parametrize("kind", KINDS)
