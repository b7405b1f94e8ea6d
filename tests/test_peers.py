"""Peers that misbehave: resets (SO_LINGER 0 closes) in the middle of a write and of
a read, half-closes in both directions, a peer that vanishes during the TLS
handshake (a server's and a client's), and a subprocess killed in the middle of its
output.

Each scenario runs on ferroloop and on asyncio's selector loop (the oracle) and
records the protocol callbacks, with their exceptions, the exception handler's
contexts and what the peer saw: the two traces must be the same. Data is compared as
the concatenated bytes, never by how it was chunked. No fd is left behind.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import struct
import sys

import pytest
import trustme
from net_helpers import settle
from transport_helpers import (
    MIB,
    Proto,
    both,
    fds,
    kinds,
    make_transport,
    pattern,
    peer_read_exactly,
    peer_read_to_eof,
)


def exc_summary(exc):
    if exc is None:
        return None
    return (type(exc).__name__, getattr(exc, "errno", None), str(exc))


def rst_close(sock):
    """Close ``sock`` with a reset (TCP) rather than an orderly shutdown."""
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def handler_trace(loop):
    trace = []
    loop.set_exception_handler(
        lambda lp, ctx: trace.append((ctx["message"], exc_summary(ctx.get("exception"))))
    )
    return trace


class Traced(Proto):
    """Proto whose trace carries the data as one string of bytes and connection_lost's
    exception."""

    def trace(self):
        return {
            "events": self.kinds(),
            "data": bytes(self.data),
            "lost": exc_summary(self.lost.result()) if self.lost.done() else "not lost",
        }


async def wait_fds(n, timeout=10.0):
    """Wait until the process has at most ``n`` fds (a closed connection's fd goes when
    its transport's connection_lost has run)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while fds() > n and loop.time() < end:
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- resets


async def _reset_mid_read(loop, kind, paused):
    before = fds()
    handled = handler_trace(loop)
    t, p, peer = await make_transport(loop, lambda: Traced(loop), kind)
    await loop.sock_sendall(peer, b"a" * 1000)
    await p.wait_data(1000)
    if paused:
        # The rest arrives while the transport does not read, and the reset after it.
        t.pause_reading()
    peer.sendall(b"b" * 5000)
    rst_close(peer)
    if paused:
        await asyncio.sleep(0.05)
        assert len(p.data) == 1000
        t.resume_reading()
    await p.lost
    await settle()
    assert fds() == before
    return p.trace(), t.is_closing(), handled


@kinds
@pytest.mark.parametrize("paused", [False, True], ids=["reading", "paused"])
def test_reset_mid_read(loop, oracle_loop, kind, paused):
    got, expected = both(loop, oracle_loop, _reset_mid_read, kind, paused)
    assert expected[0]["events"][:2] == ["made", "data"]
    assert expected[0]["events"][-1] == "lost"
    assert got == expected


class Flooder(Traced):
    """Writes 4 MiB as soon as it is connected."""

    def connection_made(self, transport):
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        transport.write(pattern(4 * MIB))


async def _reset_mid_write(loop, kind, tmp_path):
    before = fds()
    handled = handler_trace(loop)
    protocols = []

    def factory():
        protocols.append(Flooder(loop))
        return protocols[-1]

    if kind == "tcp":
        server = await loop.create_server(factory, "127.0.0.1", 0)
        client = socket.socket()
    else:
        server = await loop.create_unix_server(factory, str(tmp_path / f"{id(loop)}.sock"))
        client = socket.socket(socket.AF_UNIX)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.setblocking(False)
    await loop.sock_connect(client, server.sockets[0].getsockname())
    head = await peer_read_exactly(loop, client, 1000)
    assert head == pattern(1000)
    while not protocols or "pause" not in protocols[0].kinds():
        await asyncio.sleep(0.005)
    rst_close(client)
    p = protocols[0]
    await p.lost
    server.close()
    await server.wait_closed()
    await settle()
    assert fds() == before
    return p.trace(), p.transport.get_write_buffer_size(), handled


@kinds
def test_reset_mid_write(loop, oracle_loop, kind, tmp_path):
    got, expected = both(loop, oracle_loop, _reset_mid_write, kind, tmp_path)
    assert expected[0]["events"] == ["made", "pause", "lost"]
    assert expected[0]["lost"][0] in ("ConnectionResetError", "BrokenPipeError")
    assert got == expected


# ---------------------------------------------------------------- half-closes


async def _peer_half_closes(loop, kind, keep_open):
    before = fds()
    handled = handler_trace(loop)

    class P(Traced):
        eof_result = keep_open

        def eof_received(self):
            # The peer still reads: answer through the half that is open.
            self.transport.write(b"reply to " + bytes(self.data))
            return super().eof_received()

    t, p, peer = await make_transport(loop, lambda: P(loop), kind)
    await loop.sock_sendall(peer, b"request")
    peer.shutdown(socket.SHUT_WR)
    await p.wait(lambda: "eof" in p.events)
    await settle()
    state = {"closing": t.is_closing(), "lost": p.lost.done()}
    if keep_open:
        t.write(b" and more")
        t.write_eof()
    got = await peer_read_to_eof(loop, peer)
    if keep_open:
        t.close()
    await p.lost
    peer.close()
    await settle()
    assert fds() == before
    return p.trace(), state, got, handled


@kinds
@pytest.mark.parametrize("keep_open", [None, True], ids=["eof-closes", "eof-keeps-open"])
def test_the_peer_half_closes(loop, oracle_loop, kind, keep_open):
    got, expected = both(loop, oracle_loop, _peer_half_closes, kind, keep_open)
    trace, state, peer_got, handled = expected
    assert trace["events"] == ["made", "data", "eof", "lost"]
    assert handled == []
    assert state == {"closing": not keep_open, "lost": not keep_open}
    assert peer_got == b"reply to request" + (b" and more" if keep_open else b"")
    assert got == expected


async def _transport_half_closes(loop, kind, how):
    before = fds()
    handled = handler_trace(loop)
    t, p, peer = await make_transport(loop, lambda: Traced(loop), kind)
    t.write(b"request")
    t.write_eof()
    errors = []
    try:
        t.write(b"too late")
    except Exception as exc:  # noqa: BLE001 - asyncio raises for a write after write_eof()
        errors.append(exc_summary(exc))
    got = await peer_read_to_eof(loop, peer)
    # The other half is still open: the peer answers, then goes.
    await loop.sock_sendall(peer, b"response")
    if how == "close":
        peer.close()
    else:
        await p.wait_data(len(b"response"))
        rst_close(peer)
    await p.lost
    await settle()
    assert fds() == before
    return p.trace(), t.can_write_eof(), errors, got, handled


@kinds
@pytest.mark.parametrize("how", ["close", "reset"])
def test_the_transport_half_closes(loop, oracle_loop, kind, how):
    got, expected = both(loop, oracle_loop, _transport_half_closes, kind, how)
    trace, can_write_eof, errors, peer_got, handled = expected
    assert can_write_eof and handled == []
    assert peer_got == b"request"
    assert trace["data"] == b"response"
    assert errors == [("RuntimeError", None, "Cannot call write() after write_eof()")]
    assert got == expected


# ---------------------------------------------------------------- TLS handshakes


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def client_ctx(ca):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


# A TLS record header announcing a handshake message, and the start of a ClientHello.
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(20)
SERVER_VANISHES = ["silent-close", "silent-reset", "partial-close", "partial-reset"]


async def _server_peer_vanishes(loop, server_ctx, client_ctx, how):
    before = fds()
    handled = handler_trace(loop)
    made = []
    server = await loop.create_server(
        lambda: made.append(Traced(loop)) or made[-1], "127.0.0.1", 0, ssl=server_ctx
    )
    base = fds()
    client = socket.socket()
    client.setblocking(False)
    await loop.sock_connect(client, server.sockets[0].getsockname())
    if how.startswith("partial"):
        await loop.sock_sendall(client, PARTIAL_HELLO)
    # Let the server take the connection and start its handshake.
    await asyncio.sleep(0.05)
    if how.endswith("reset"):
        rst_close(client)
    else:
        client.close()
    await wait_fds(base)
    await settle(10)
    # The server goes on: a proper client is served.
    t, p = await loop.create_connection(
        lambda: Traced(loop),
        *server.sockets[0].getsockname(),
        ssl=client_ctx,
        server_hostname="localhost",
    )
    await made[1].made
    t.close()
    await p.lost
    await made[1].lost
    server.close()
    await server.wait_closed()
    await settle()
    await wait_fds(before)
    assert fds() == before
    return [p.trace() for p in made], handled


@pytest.mark.parametrize("how", SERVER_VANISHES)
def test_a_client_vanishes_during_the_tls_handshake(loop, oracle_loop, server_ctx, client_ctx, how):
    got, expected = both(loop, oracle_loop, _server_peer_vanishes, server_ctx, client_ctx, how)
    # The server's protocol was made but never connected; the next client's was.
    assert expected[0][0] == {"events": [], "data": b"", "lost": "not lost"}
    assert expected[0][1]["events"][0] == "made"
    assert got == expected


CLIENT_VANISHES = ["at-once", "after-hello-close", "after-hello-reset", "garbage"]


async def _client_peer_vanishes(loop, client_ctx, how):
    before = fds()
    handled = handler_trace(loop)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)

    async def fake_server():
        conn, _ = await loop.sock_accept(listener)
        try:
            if how != "at-once":
                hello = await loop.sock_recv(conn, 65536)
                assert hello[:1] == b"\x16"
            if how == "garbage":
                await loop.sock_sendall(conn, b"HTTP/1.1 400 Bad Request\r\n\r\n")
        finally:
            if how.endswith("reset"):
                rst_close(conn)
            else:
                conn.close()

    server_task = loop.create_task(fake_server())
    made = []
    with pytest.raises(Exception) as info:
        await loop.create_connection(
            lambda: made.append(Traced(loop)) or made[-1],
            *listener.getsockname(),
            ssl=client_ctx,
            server_hostname="localhost",
        )
    await server_task
    listener.close()
    await settle()
    await wait_fds(before)
    assert fds() == before
    return exc_summary(info.value), [p.trace() for p in made], handled


@pytest.mark.parametrize("how", CLIENT_VANISHES)
def test_a_server_vanishes_during_the_tls_handshake(loop, oracle_loop, client_ctx, how):
    got, expected = both(loop, oracle_loop, _client_peer_vanishes, client_ctx, how)
    assert expected[0][0] in {"ConnectionResetError", "SSLError", "SSLEOFError"}, expected
    assert got == expected


# ---------------------------------------------------------------- subprocesses


class ProcTrace(asyncio.SubprocessProtocol):
    def __init__(self, loop):
        self.events = []
        self.out = {1: bytearray(), 2: bytearray()}
        self.first_output = loop.create_future()
        self.done = loop.create_future()

    def connection_made(self, transport):
        self.events.append("made")

    def pipe_data_received(self, fd, data):
        self.out[fd] += data
        if not self.events or self.events[-1] != ("data", fd):
            self.events.append(("data", fd))
        if not self.first_output.done():
            self.first_output.set_result(None)

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_lost", fd, exc_summary(exc)))

    def process_exited(self):
        self.events.append("exited")

    def connection_lost(self, exc):
        self.events.append(("lost", exc_summary(exc)))
        self.done.set_result(None)


# Writes to stdout without end; never reads stdin.
CHATTY = "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n    sys.stdout.flush()\n"


async def _killed_mid_output(loop, stdin_backlog):
    before = fds()
    handled = handler_trace(loop)
    transport, proto = await loop.subprocess_exec(
        lambda: ProcTrace(loop),
        sys.executable,
        "-c",
        CHATTY,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdin = transport.get_pipe_transport(0)
    if stdin_backlog:
        # More than the pipe holds: the rest stays queued in the transport.
        stdin.write(b"y" * (1024 * 1024))
    await proto.first_output
    queued = stdin.get_write_buffer_size() > 0
    transport.send_signal(signal.SIGKILL)
    await asyncio.wait_for(proto.done, 30)
    rc = transport.get_returncode()
    transport.close()
    await settle()
    assert fds() == before
    events = proto.events
    # The order of the pipes' losses and of the exit is the kernel's and the
    # scheduler's, on either loop; what must hold: "made" first, connection_lost
    # last, each pipe's data before its loss.
    middle = events[1:-1]
    for fd in (1, 2):
        lost_at = [i for i, e in enumerate(middle) if e[:2] == ("pipe_lost", fd)]
        assert len(lost_at) == 1
        assert all(i < lost_at[0] for i, e in enumerate(middle) if e == ("data", fd))
    return {
        "first": events[0],
        "last": events[-1],
        "ends": sorted((e for e in middle if e[0] != "data"), key=repr),
        "stderr": bytes(proto.out[2]),
        "queued": queued,
        "rc": rc,
        "handled": handled,
    }


@pytest.mark.parametrize("stdin_backlog", [False, True], ids=["stdin-idle", "stdin-queued"])
def test_a_subprocess_killed_mid_output(loop, oracle_loop, stdin_backlog):
    got, expected = both(loop, oracle_loop, _killed_mid_output, stdin_backlog)
    assert expected["rc"] == -signal.SIGKILL
    assert expected["first"] == "made" and expected["last"] == ("lost", None)
    assert ("pipe_lost", 1, None) in expected["ends"] and "exited" in expected["ends"]
    assert expected["queued"] == stdin_backlog
    assert got == expected
