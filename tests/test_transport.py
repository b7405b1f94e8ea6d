"""The stream transport (TCP and Unix sockets): writing, reading, flow control,
half-close, protocols, extra info and repr.

Every test runs against ferroloop and against asyncio's selector loop (the
oracle): same results, same exceptions and messages, same callback order.
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import os
import socket
from asyncio import trsock

import pytest
from versions import PY312
from net_helpers import run, settle
from transport_helpers import (
    DEFAULT_LIMITS,
    MIB,
    Proto,
    both,
    fds,
    fill_write_buffer,
    kinds,
    make_transport,
    pattern,
    peer_read_exactly,
    peer_read_to_eof,
    peer_recv_blocking,
    peer_recv_now,
    repr_body,
    wait_until,
)

# Small socket buffers, so that a write of 1 MiB is mostly queued. (Not much
# smaller: a tiny TCP window makes loopback transfers crawl.)
SMALL_BUF = 65536


# ---------------------------------------------------------------- basics


@kinds
def test_transport_is_an_asyncio_transport(loop, kind):
    before = fds()

    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop), kind)
        assert isinstance(t, asyncio.Transport)
        assert isinstance(t, asyncio.ReadTransport)
        assert isinstance(t, asyncio.WriteTransport)
        assert isinstance(t, asyncio.BaseTransport)
        # connect_accepted_socket() returns once connection_made() has run.
        assert p.events == ["made"]
        assert p.transport is t
        assert t.get_protocol() is p
        assert t.can_write_eof() is True
        assert t.is_closing() is False
        assert t.is_reading() is True
        assert t.get_write_buffer_size() == 0
        assert t.get_write_buffer_limits() == DEFAULT_LIMITS
        t.close()
        assert await p.lost is None
        peer.close()

    run(loop, main())
    assert fds() == before


def test_data_sent_before_the_transport_exists_arrives_after_connection_made(loop):
    async def main():
        ours, peer = socket.socketpair()
        peer.sendall(b"early")
        peer.setblocking(False)
        t, p = await loop.connect_accepted_socket(lambda: Proto(loop), ours)
        assert await p.wait_data(5) == b"early"
        assert p.events == ["made", "data"]
        t.close()
        await p.lost
        peer.close()

    run(loop, main())


# ---------------------------------------------------------------- write()


@kinds
def test_write_sends_at_once_when_nothing_is_queued(loop, kind):
    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop), kind)
        t.write(b"hello")
        # Nothing is queued: the bytes went to the socket inside write(), so the
        # peer reads them without the loop running in between.
        assert t.get_write_buffer_size() == 0
        assert peer_recv_blocking(peer, 5) == b"hello"
        t.write(bytearray(b"ba"))
        t.write(memoryview(b"xmvx")[1:3])
        assert t.get_write_buffer_size() == 0
        assert peer_recv_blocking(peer, 4) == b"bamv"
        assert "polling" not in repr_body(t).split("write=")[1]
        t.close()
        await p.lost
        peer.close()

    run(loop, main())


@kinds
def test_write_queues_only_the_remainder(loop, kind):
    payload = pattern(MIB)
    tail = b"tail" * 250

    async def main():
        t, p, peer = await make_transport(
            loop, lambda: Proto(loop), kind, sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
        )
        t.write(payload)
        queued = t.get_write_buffer_size()
        # Part went out at once, only the rest is queued.
        assert 0 < queued < len(payload)
        # The peer gets the first byte while the loop is not running: it was
        # sent from inside write().
        assert peer_recv_blocking(peer, 1) == payload[:1]
        # With data queued, a new write is queued whole, behind it.
        t.write(tail)
        assert t.get_write_buffer_size() == queued + len(tail)
        assert f"write=<polling, bufsize={queued + len(tail)}>" in repr_body(t)
        rest = await peer_read_exactly(loop, peer, len(payload) + len(tail) - 1)
        assert payload + tail == payload[:1] + rest
        await wait_until(lambda: t.get_write_buffer_size() == 0)
        await settle()
        assert "write=<idle, bufsize=0>" in repr_body(t)
        t.close()
        await p.lost
        peer.close()

    run(loop, main())


def test_write_of_empty_data_does_nothing(loop, impl):
    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop), "unix", sndbuf=SMALL_BUF)
        for empty in (b"", bytearray(), memoryview(b""), memoryview(b"abc")[3:]):
            t.write(empty)
        t.writelines([])
        t.writelines([b"", bytearray(), memoryview(b"")])
        assert t.get_write_buffer_size() == 0
        await settle()
        assert peer_recv_now(peer) is None
        # With data queued, an empty write does not change the queue either.
        await fill_write_buffer(t)
        size = t.get_write_buffer_size()
        t.write(b"")
        t.writelines([b""])
        if not (PY312 and impl == "asyncio"):
            # (asyncio 3.12+'s writelines() tries a send at once even with data queued,
            # so its queue may shrink here.)
            assert t.get_write_buffer_size() == size
        assert p.events == ["made"]
        t.abort()
        await p.lost
        peer.close()

    run(loop, main())


@kinds
@pytest.mark.parametrize("queued", [False, True], ids=["direct", "queued"])
def test_writelines_mixed_buffers_arrive_in_order(loop, kind, queued):
    parts = [
        b"bytes-",
        bytearray(b"bytearray-"),
        memoryview(b"memoryview-"),
        memoryview(b"..slice-..")[2:-2],
        pattern(100_000, seed=1),
        bytearray(pattern(70_000, seed=2)),
        memoryview(pattern(30_000, seed=3)),
        b"end",
    ]
    expected = b"".join(parts)

    async def main():
        t, p, peer = await make_transport(
            loop, lambda: Proto(loop), kind, sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
        )
        prefix = b""
        if queued:
            prefix = await fill_write_buffer(t)
            size = t.get_write_buffer_size()
            t.writelines(parts)
            assert t.get_write_buffer_size() == size + len(expected)
        else:
            t.writelines(parts)
            assert 0 <= t.get_write_buffer_size() <= len(expected)
        t.writelines(iter([b"-gen", bytearray(b"-erator")]))
        t.writelines((b"-tu", b"ple"))
        total = prefix + expected + b"-gen-erator-tuple"
        assert await peer_read_exactly(loop, peer, len(total)) == total
        t.close()
        assert await peer_read_to_eof(loop, peer) == b""
        await p.lost
        peer.close()

    run(loop, main())


def test_writelines_accepts_any_buffer_like_bytes_join(loop, request):
    # asyncio's WriteTransport.writelines() is write(b"".join(list_of_data)):
    # every object supporting the buffer protocol is accepted.
    ints = array.array("i", [1, 2, 3])
    parts = [array.array("B", b"arr"), ints, b"!"]
    expected = b"".join(parts)
    assert expected == b"arr" + ints.tobytes() + b"!"

    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop))
        try:
            t.writelines(parts)
            assert await peer_read_exactly(loop, peer, len(expected)) == expected
        finally:
            t.close()
            await p.lost
            peer.close()

    run(loop, main())


def test_write_of_a_memoryview_with_a_wider_format_sends_its_bytes(loop):
    ints = array.array("i", range(10))

    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop))
        t.write(memoryview(ints))
        assert await peer_read_exactly(loop, peer, len(ints.tobytes())) == ints.tobytes()
        t.close()
        await p.lost
        peer.close()

    run(loop, main())


def test_queued_mutable_buffers_are_copied(loop, request):
    if PY312 and "asyncio" in request.node.callspec.id:
        request.applymarker(
            pytest.mark.xfail(
                reason="asyncio 3.12+ queues memoryviews of the caller's buffers: a change "
                "made after write() is what gets sent",
                strict=True,
            )
        )

    async def main():
        t, p, peer = await make_transport(
            loop, lambda: Proto(loop), "unix", sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
        )
        prefix = await fill_write_buffer(t)
        ba = bytearray(b"A" * 50_000)
        backing = bytearray(b"B" * 50_000)
        small = bytearray(b"small")
        t.write(ba)
        t.write(memoryview(backing))
        t.writelines([small])
        # Changing the buffers after write() must not change what is sent.
        ba[:] = b"x" * 50_000
        backing[:] = b"y" * 50_000
        small[:] = b"SMALL"
        expected = prefix + b"A" * 50_000 + b"B" * 50_000 + b"small"
        assert await peer_read_exactly(loop, peer, len(expected)) == expected
        t.close()
        await p.lost
        peer.close()

    run(loop, main())


def test_large_transfer_between_two_transports(loop, tmp_path):
    """A TCP and a Unix connection made with create_server/create_connection."""
    payload = pattern(3 * MIB, seed=5)
    digest = hashlib.sha256(payload).hexdigest()

    class Sink(Proto):
        def eof_received(self):
            super().eof_received()
            self.transport.write(hashlib.sha256(self.data).hexdigest().encode())
            return None  # close once the digest is flushed

    async def one(server, connect):
        t, p = await connect()
        for i in range(0, len(payload), 100_000):
            t.write(payload[i : i + 100_000])
        t.write_eof()
        await p.wait(lambda: len(p.data) >= 64 or p.lost.done())
        assert p.data.decode() == digest
        assert await p.lost is None
        flow = ("pause", "resume")
        assert [k for k in p.kinds() if k not in flow] == ["made", "data", "eof", "lost"]
        assert p.kinds().count("pause") == p.kinds().count("resume")
        server.close()
        await server.wait_closed()

    async def main():
        server = await loop.create_server(lambda: Sink(loop), "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        await one(server, lambda: loop.create_connection(lambda: Proto(loop), *addr))
        path = str(tmp_path / "t.sock")
        server = await loop.create_unix_server(lambda: Sink(loop), path)
        await one(server, lambda: loop.create_unix_connection(lambda: Proto(loop), path))

    before = fds()
    run(loop, main())
    assert fds() == before


# ---------------------------------------------------------------- write_eof()


@kinds
def test_write_eof_peer_sees_eof_and_we_can_still_read(loop, kind):
    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop), kind)
        assert t.can_write_eof()
        t.write(b"request")
        t.write_eof()
        assert await peer_read_to_eof(loop, peer) == b"request"
        assert not t.is_closing()
        assert t.is_reading()
        await loop.sock_sendall(peer, b"response")
        assert await p.wait_data(8) == b"response"
        with pytest.raises(RuntimeError, match=r"^Cannot call write\(\) after write_eof\(\)$"):
            t.write(b"more")
        name = "writelines" if PY312 else "write"  # 3.12+ names writelines()
        with pytest.raises(RuntimeError, match=rf"^Cannot call {name}\(\) after write_eof\(\)$"):
            t.writelines([b"more"])
        # The write_eof() check comes before the empty-data check.
        with pytest.raises(RuntimeError, match=r"^Cannot call write\(\) after write_eof\(\)$"):
            t.write(b"")
        t.write_eof()  # a second call does nothing
        peer.shutdown(socket.SHUT_WR)
        assert await p.lost is None
        assert p.kinds() == ["made", "data", "eof", "lost"]
        peer.close()

    run(loop, main())


@kinds
def test_write_eof_waits_for_queued_data(loop, kind):
    payload = pattern(MIB, seed=4)

    async def main():
        t, p, peer = await make_transport(
            loop, lambda: Proto(loop), kind, sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
        )
        t.write(payload)
        assert t.get_write_buffer_size() > 0
        t.write_eof()
        assert not t.is_closing()
        assert await peer_read_to_eof(loop, peer) == payload
        await wait_until(lambda: t.get_write_buffer_size() == 0)
        t.close()
        assert await p.lost is None
        peer.close()

    run(loop, main())


def test_write_eof_after_close_does_nothing(loop):
    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop))
        t.close()
        t.write_eof()
        assert await p.lost is None
        t.write_eof()
        peer.close()

    run(loop, main())


# ---------------------------------------------------------------- close() / abort()


@kinds
def test_close_flushes_queued_data_then_calls_connection_lost_once(loop, kind):
    payload = pattern(MIB, seed=6)

    async def main():
        t, p, peer = await make_transport(
            loop, lambda: Proto(loop), kind, sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
        )
        t.write(payload)
        queued = t.get_write_buffer_size()
        assert queued > 0
        t.close()
        assert t.is_closing()
        assert not t.is_reading()
        assert t.get_write_buffer_size() == queued
        assert repr_body(t).startswith("closing ")
        t.close()  # a second close does nothing
        # While closing with data queued, a write is still queued behind it.
        t.write(b"+late")
        await settle()
        assert "lost" not in p.kinds()
        assert await peer_read_to_eof(loop, peer) == payload + b"+late"
        assert await p.lost is None
        await settle()
        assert p.lost_calls == 1
        assert p.kinds() == ["made", "pause", "resume", "lost"]
        assert t.get_protocol() is None
        assert repr_body(t).startswith("closed ")
        t.close()
        peer.close()

    before = fds()
    run(loop, main())
    assert fds() == before


@kinds
def test_close_calls_connection_lost_on_a_later_iteration(loop, kind):
    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop), kind)
        t.close()
        assert t.is_closing()
        assert p.events == ["made"]  # not called from inside close()
        assert await p.lost is None
        assert p.events == ["made", "lost"]
        assert await peer_read_to_eof(loop, peer) == b""
        peer.close()

    run(loop, main())


@kinds
def test_abort_drops_queued_data(loop, kind):
    payload = pattern(MIB, seed=7)

    async def main():
        t, p, peer = await make_transport(
            loop, lambda: Proto(loop), kind, sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
        )
        t.write(payload)
        assert t.get_write_buffer_size() > 0
        t.abort()
        assert t.get_write_buffer_size() == 0
        assert t.is_closing()
        assert "lost" not in p.kinds()
        assert await p.lost is None
        await settle()
        assert p.lost_calls == 1
        got = await peer_read_to_eof(loop, peer)
        assert len(got) < len(payload)
        assert payload.startswith(got)
        t.abort()  # does nothing any more
        t.close()
        peer.close()

    before = fds()
    run(loop, main())
    assert fds() == before


def test_abort_while_closing_with_queued_data(loop):
    async def main():
        t, p, peer = await make_transport(
            loop, lambda: Proto(loop), "unix", sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
        )
        await fill_write_buffer(t)
        t.close()
        t.abort()
        assert t.get_write_buffer_size() == 0
        assert await p.lost is None
        await settle()
        assert p.lost_calls == 1
        peer.close()

    run(loop, main())


# ---------------------------------------------------------------- reading


@kinds
def test_pause_and_resume_reading(loop, kind):
    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop), kind)
        assert t.is_reading()
        t.pause_reading()
        assert not t.is_reading()
        assert "read=idle" in repr_body(t)
        t.pause_reading()  # twice: no-op
        assert not t.is_reading()
        await loop.sock_sendall(peer, b"while paused")
        await asyncio.sleep(0.05)
        await settle()
        assert p.events == ["made"]
        t.resume_reading()
        assert t.is_reading()
        assert "read=polling" in repr_body(t)
        t.resume_reading()  # twice: no-op
        assert await p.wait_data(12) == b"while paused"
        # Paused again, EOF is not seen either, until reading resumes.
        t.pause_reading()
        await loop.sock_sendall(peer, b"+last")
        peer.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.05)
        await settle()
        assert p.kinds() == ["made", "data"]
        t.resume_reading()
        assert await p.lost is None
        assert bytes(p.data) == b"while paused+last"
        assert p.kinds() == ["made", "data", "eof", "lost"]
        peer.close()

    run(loop, main())


def test_reading_state_once_closing(loop):
    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop))
        t.pause_reading()
        t.close()
        assert not t.is_reading()
        t.resume_reading()  # no effect once closing
        assert not t.is_reading()
        t.pause_reading()
        await p.lost
        assert not t.is_reading()
        t.pause_reading()
        t.resume_reading()
        assert not t.is_reading()
        peer.close()

    run(loop, main())


# ---------------------------------------------------------------- flow control


def test_write_buffer_limits(loop):
    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop))
        assert t.get_write_buffer_limits() == (16384, 65536)
        t.set_write_buffer_limits(high=100)
        assert t.get_write_buffer_limits() == (25, 100)
        t.set_write_buffer_limits(low=100)
        assert t.get_write_buffer_limits() == (100, 400)
        t.set_write_buffer_limits(high=10, low=5)
        assert t.get_write_buffer_limits() == (5, 10)
        t.set_write_buffer_limits(7, 7)
        assert t.get_write_buffer_limits() == (7, 7)
        t.set_write_buffer_limits(high=0)
        assert t.get_write_buffer_limits() == (0, 0)
        t.set_write_buffer_limits()
        assert t.get_write_buffer_limits() == (16384, 65536)
        for kwargs, message in [
            ({"high": 10, "low": 20}, "high (10) must be >= low (20) must be >= 0"),
            ({"low": -1}, "high (-4) must be >= low (-1) must be >= 0"),
            ({"high": -1}, "high (-1) must be >= low (-1) must be >= 0"),
            ({"high": 5, "low": -1}, "high (5) must be >= low (-1) must be >= 0"),
        ]:
            with pytest.raises(ValueError) as info:
                t.set_write_buffer_limits(**kwargs)
            assert str(info.value) == message
            # A rejected call leaves the limits alone.
            assert t.get_write_buffer_limits() == (16384, 65536)
        assert p.events == ["made"]
        t.close()
        await p.lost
        peer.close()

    run(loop, main())


@kinds
def test_pause_and_resume_writing_once_per_crossing(loop, kind):
    chunk = pattern(16 * 1024, seed=8)

    async def main():
        t, p, peer = await make_transport(
            loop, lambda: Proto(loop), kind, sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
        )
        low, high = t.get_write_buffer_limits()
        sent = 0
        for crossing in (1, 2):
            # Write until the buffer goes above the high mark: pause_writing()
            # is called from inside the write() that crossed it.
            for _ in range(1000):
                before = t.get_write_buffer_size()
                t.write(chunk)
                sent += len(chunk)
                if t.get_write_buffer_size() > high:
                    break
            assert before <= high
            pauses = [e for e in p.events if e[0] == "pause"]
            assert len(pauses) == crossing
            assert pauses[-1][1] == t.get_write_buffer_size() > high
            # More writes above the mark: no second call.
            for _ in range(5):
                t.write(chunk)
                sent += len(chunk)
            assert len([e for e in p.events if e[0] == "pause"]) == crossing
            await peer_read_exactly(loop, peer, sent)
            await p.wait(lambda: len(p.events) > 0 and p.events[-1][0] == "resume")
            resumes = [e for e in p.events if e[0] == "resume"]
            assert len(resumes) == crossing
            assert resumes[-1][1] <= low
            await wait_until(lambda: t.get_write_buffer_size() == 0)
            sent = 0
        assert [e if isinstance(e, str) else e[0] for e in p.events] == [
            "made",
            "pause",
            "resume",
            "pause",
            "resume",
        ]
        t.close()
        await p.lost
        peer.close()

    run(loop, main())


@kinds
def test_backpressure_from_a_paused_reading_transport(loop, kind, tmp_path):
    """Both ends are transports: the reader pauses, the writer's buffer grows."""
    payload = pattern(2 * MIB, seed=10)

    async def main():
        accepted = loop.create_future()

        def server_factory():
            proto = Proto(loop)
            accepted.set_result(proto)
            return proto

        if kind == "tcp":
            server = await loop.create_server(server_factory, "127.0.0.1", 0)
            addr = server.sockets[0].getsockname()
            t, p = await loop.create_connection(lambda: Proto(loop), *addr)
        else:
            path = str(tmp_path / "bp.sock")
            server = await loop.create_unix_server(server_factory, path)
            t, p = await loop.create_unix_connection(lambda: Proto(loop), path)
        sp = await accepted
        await sp.made
        sp.transport.pause_reading()
        # Small buffers (loopback TCP would otherwise take in megabytes).
        sndsock = t.get_extra_info("socket")
        sndsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)
        rcvsock = sp.transport.get_extra_info("socket")
        rcvsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)
        for i in range(0, len(payload), 64 * 1024):
            t.write(payload[i : i + 64 * 1024])
        # Far more than the socket buffers hold: most of it is queued here.
        assert t.get_write_buffer_size() > 64 * 1024
        assert [e[0] for e in p.events[1:]] == ["pause"]
        await asyncio.sleep(0.05)
        assert sp.kinds() == ["made"]
        sp.transport.resume_reading()
        assert await sp.wait_data(len(payload)) == payload
        await p.wait(lambda: p.events[-1][0] == "resume")
        assert [e[0] for e in p.events[1:]] == ["pause", "resume"]
        t.close()
        assert await p.lost is None
        await sp.wait(lambda: sp.lost.done())
        assert sp.kinds() == ["made", "data", "eof", "lost"]
        server.close()
        await server.wait_closed()

    before = fds()
    run(loop, main())
    assert fds() == before


def test_resume_writing_waits_for_the_low_mark(loop):
    async def main():
        t, p, peer = await make_transport(
            loop, lambda: Proto(loop), "unix", sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
        )
        t.set_write_buffer_limits(high=0)  # low = 0: resume only when empty
        t.write(pattern(MIB))
        assert [e[0] for e in p.events[1:]] == ["pause"]
        await peer_read_exactly(loop, peer, MIB)
        await p.wait(lambda: p.events[-1][0] == "resume")
        assert p.events[-1] == ("resume", 0)
        t.close()
        await p.lost
        peer.close()

    run(loop, main())


def test_lowering_the_high_mark_pauses_at_once(loop):
    async def main():
        t, p, peer = await make_transport(
            loop, lambda: Proto(loop), "unix", sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
        )
        written = await fill_write_buffer(t, chunk=pattern(30_000))
        size = t.get_write_buffer_size()
        assert 0 < size <= 30_000
        assert p.events == ["made"]
        t.set_write_buffer_limits(high=size - 1, low=0)
        assert p.events == ["made", ("pause", size)]
        t.set_write_buffer_limits(high=size - 2, low=0)  # already paused
        assert p.events == ["made", ("pause", size)]
        assert await peer_read_exactly(loop, peer, len(written)) == written
        await p.wait(lambda: p.events[-1][0] == "resume")
        assert p.events == ["made", ("pause", size), ("resume", 0)]
        t.close()
        await p.lost
        peer.close()

    run(loop, main())


@pytest.mark.parametrize("method", ["pause_writing", "resume_writing"])
def test_flow_control_callback_raising_goes_to_the_exception_handler(loop, method):
    contexts = []

    class Failing(Proto):
        def pause_writing(self):
            super().pause_writing()
            if method == "pause_writing":
                raise ZeroDivisionError("pause")

        def resume_writing(self):
            super().resume_writing()
            if method == "resume_writing":
                raise ZeroDivisionError("resume")

    async def main():
        loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
        t, p, peer = await make_transport(
            loop, lambda: Failing(loop), "unix", sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
        )
        t.write(pattern(MIB))
        if method == "pause_writing":
            # Reported from inside write(), synchronously.
            assert len(contexts) == 1
        await peer_read_exactly(loop, peer, MIB)
        await p.wait(lambda: p.events[-1][0] == "resume")
        await settle()
        assert len(contexts) == 1
        ctx = contexts[0]
        assert set(ctx) == {"message", "exception", "transport", "protocol"}
        assert ctx["message"] == f"protocol.{method}() failed"
        assert isinstance(ctx["exception"], ZeroDivisionError)
        assert ctx["transport"] is t
        assert ctx["protocol"] is p
        # Not fatal: the transport goes on.
        assert not t.is_closing()
        t.write(b"still open")
        assert await peer_read_exactly(loop, peer, 10) == b"still open"
        t.close()
        assert await p.lost is None
        peer.close()

    run(loop, main())


# ---------------------------------------------------------------- set_protocol()


@kinds
def test_set_protocol_mid_stream(loop, kind):
    async def main():
        t, p1, peer = await make_transport(loop, lambda: Proto(loop), kind)
        await loop.sock_sendall(peer, b"one")
        await p1.wait_data(3)
        p2 = Proto(loop)
        t.set_protocol(p2)
        assert t.get_protocol() is p2
        await loop.sock_sendall(peer, b"two")
        peer.shutdown(socket.SHUT_WR)
        assert await p2.lost is None
        # connection_made is not called on the new protocol.
        assert p2.kinds() == ["data", "eof", "lost"]
        assert bytes(p2.data) == b"two"
        assert p1.kinds() == ["made", "data"]
        assert bytes(p1.data) == b"one"
        peer.close()

    run(loop, main())


class Buffered(asyncio.BufferedProtocol):
    """A BufferedProtocol that hashes what it receives."""

    def __init__(self, loop, size=65536):
        self.loop = loop
        self.buf = bytearray(size)
        self.hash = hashlib.sha256()
        self.count = 0
        self.hints = set()
        self.events = []
        self.transport = None
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.received = bytearray()
        self.keep = False

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def get_buffer(self, sizehint):
        self.hints.add(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buf)
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        chunk = self.buf[:nbytes]
        self.hash.update(chunk)
        self.count += nbytes
        if self.keep:
            self.received += chunk

    def eof_received(self):
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)


def test_set_protocol_switches_between_protocol_and_buffered_protocol(loop):
    async def main():
        t, p1, peer = await make_transport(loop, lambda: Proto(loop))
        await loop.sock_sendall(peer, b"plain")
        await p1.wait_data(5)
        b = Buffered(loop, 16)
        b.keep = True
        t.set_protocol(b)
        await loop.sock_sendall(peer, b"buffered")
        await wait_until(lambda: b.count >= 8)
        assert bytes(b.received) == b"buffered"
        p3 = Proto(loop)
        t.set_protocol(p3)
        await loop.sock_sendall(peer, b"plain again")
        await p3.wait_data(11)
        assert bytes(p1.data) == b"plain"
        assert bytes(p3.data) == b"plain again"
        t.close()
        assert await p3.lost is None
        assert not b.lost.done() and not p1.lost.done()
        peer.close()

    run(loop, main())


# ---------------------------------------------------------------- get_extra_info()


@kinds
def test_get_extra_info(loop, kind):
    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop), kind)
        sock = t.get_extra_info("socket")
        assert isinstance(sock, trsock.TransportSocket)
        assert t.get_extra_info("peername") == peer.getsockname()
        assert t.get_extra_info("sockname") == peer.getpeername()
        assert sock.getsockname() == t.get_extra_info("sockname")
        assert sock.family == (socket.AF_INET if kind == "tcp" else socket.AF_UNIX)
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        if kind == "tcp":
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        fd = sock.fileno()
        assert fd >= 0 and f"fd={fd} " in repr_body(t)
        os.fstat(fd)  # open while the transport is
        assert t.get_extra_info("no such key") is None
        assert t.get_extra_info("no such key", "default") == "default"
        assert t.get_extra_info("peercert") is None
        t.close()
        os.fstat(fd)  # still open until connection_lost
        assert sock.fileno() == fd
        await p.lost
        assert sock.fileno() == -1
        # The extra info outlives the connection.
        assert t.get_extra_info("peername") == peer.getsockname()
        peer.close()

    run(loop, main())


# ---------------------------------------------------------------- BufferedProtocol


@kinds
def test_buffered_protocol_receives_everything(loop, kind):
    payload = os.urandom(3 * MIB)

    async def main():
        t, p, peer = await make_transport(loop, lambda: Buffered(loop), kind)
        await loop.sock_sendall(peer, payload)
        peer.shutdown(socket.SHUT_WR)
        assert await p.lost is None
        assert p.count == len(payload)
        assert p.hash.hexdigest() == hashlib.sha256(payload).hexdigest()
        assert p.hints == {-1}
        assert p.events == ["made", "data", "eof", "lost"]
        peer.close()

    before = fds()
    run(loop, main())
    assert fds() == before


def test_buffered_protocol_with_a_tiny_buffer(loop):
    payload = pattern(10_000, seed=9)

    async def main():
        t, p, peer = await make_transport(loop, lambda: Buffered(loop, 7))
        p.keep = True
        await loop.sock_sendall(peer, payload)
        peer.shutdown(socket.SHUT_WR)
        await p.lost
        assert bytes(p.received) == payload
        peer.close()

    run(loop, main())


def test_buffered_protocol_into_a_memoryview_slice(loop):
    class Sliced(Buffered):
        def get_buffer(self, sizehint):
            super().get_buffer(sizehint)
            return memoryview(self.buf)[:5]

    async def main():
        t, p, peer = await make_transport(loop, lambda: Sliced(loop))
        p.keep = True
        await loop.sock_sendall(peer, b"0123456789abc")
        peer.shutdown(socket.SHUT_WR)
        await p.lost
        assert bytes(p.received) == b"0123456789abc"
        peer.close()

    run(loop, main())


# ---------------------------------------------------------------- eof_received()


@kinds
@pytest.mark.parametrize("result", [True, 1, "yes"], ids=repr)
def test_eof_received_true_keeps_the_transport_half_open(loop, kind, result):
    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop), kind)
        p.eof_result = result
        await loop.sock_sendall(peer, b"question")
        peer.shutdown(socket.SHUT_WR)
        await p.wait(lambda: "eof" in p.events)
        await settle()
        assert not t.is_closing()
        assert "read=idle" in repr_body(t)
        assert p.kinds() == ["made", "data", "eof"]
        t.write(b"answer after eof")
        assert await peer_read_exactly(loop, peer, 16) == b"answer after eof"
        t.close()
        assert await peer_read_to_eof(loop, peer) == b""
        assert await p.lost is None
        assert p.kinds() == ["made", "data", "eof", "lost"]
        peer.close()

    run(loop, main())


@pytest.mark.parametrize("result", [None, False, 0, ""], ids=repr)
def test_eof_received_false_closes_the_transport(loop, result):
    async def main():
        t, p, peer = await make_transport(loop, lambda: Proto(loop))
        p.eof_result = result
        peer.shutdown(socket.SHUT_WR)
        assert await p.lost is None
        assert p.events == ["made", "eof", "lost"]
        assert t.is_closing()
        assert await peer_read_to_eof(loop, peer) == b""
        peer.close()

    run(loop, main())


# ---------------------------------------------------------------- repr


async def _repr_states(loop, kind):
    """The reprs (without the class name, fd replaced by N) through a life."""
    t, p, peer = await make_transport(
        loop, lambda: Proto(loop), kind, sndbuf=SMALL_BUF, peer_rcvbuf=SMALL_BUF
    )
    fd = t.get_extra_info("socket").fileno()

    def shape():
        body = repr_body(t).replace(f"fd={fd}", "fd=N")
        size = t.get_write_buffer_size()
        return body.replace(f"bufsize={size}", "bufsize=SIZE") if size else body

    states = [shape()]
    t.pause_reading()
    states.append(shape())
    t.resume_reading()
    states.append(shape())
    await fill_write_buffer(t)
    states.append(shape())
    t.close()
    states.append(shape())
    await peer_read_to_eof(loop, peer)
    await p.lost
    states.append(shape())
    peer.close()
    return states


@kinds
def test_repr_matches_asyncio(loop, oracle_loop, kind):
    got, expected = both(loop, oracle_loop, _repr_states, kind)
    assert expected == [
        "fd=N read=polling write=<idle, bufsize=0>",
        "fd=N read=idle write=<idle, bufsize=0>",
        "fd=N read=polling write=<idle, bufsize=0>",
        "fd=N read=polling write=<polling, bufsize=SIZE>",
        "closing fd=N read=idle write=<polling, bufsize=SIZE>",
        "closed fd=N",
    ]
    assert got == expected
