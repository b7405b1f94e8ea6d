"""Pipes: connect_read_pipe and connect_write_pipe, and their transports.

Every test runs against ferroloop and against asyncio's selector loop (the oracle).
The kinds of file covered: anonymous pipes, FIFOs, socket pairs, ptys (master and slave
sides) and /dev/null, and the kinds both loops refuse. Where the outcome depends on
the kernel, the test runs the same scenario on both loops and compares.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import gc
import io
import logging
import os
import socket
import sys
import tty
import warnings
import weakref

import pytest
from net_helpers import run, settle
from transport_helpers import (
    MIB,
    Proto,
    both,
    capture_exceptions,
    fds,
    pattern,
    pipe_files,
    repr_body,
)

# asyncio's flow control defaults: (low, high).
DEFAULT_LIMITS = (16 * 1024, 64 * 1024)
# What a pipe holds before a write blocks (Linux's default pipe size).
PIPE_CAPACITY = 64 * 1024


async def read_pipe(loop, pipe, cls=Proto):
    return await loop.connect_read_pipe(lambda: cls(loop), pipe)


async def write_pipe(loop, pipe, cls=Proto):
    return await loop.connect_write_pipe(lambda: cls(loop), pipe)


def drain_fd(fd) -> bytes:
    """What can be read from the non-blocking or blocking fd now, without waiting."""
    os.set_blocking(fd, False)
    out = bytearray()
    while True:
        try:
            chunk = os.read(fd, MIB)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


async def read_fd_until(fd, n, interval=0.001) -> bytes:
    """Read from the fd (made non-blocking) until ``n`` bytes came or it reaches EOF,
    letting the loop run in between."""
    os.set_blocking(fd, False)
    out = bytearray()
    while len(out) < n:
        try:
            chunk = os.read(fd, MIB)
        except BlockingIOError:
            await asyncio.sleep(interval)
            continue
        if not chunk:
            break
        out += chunk
    return bytes(out)


def exc_summary(exc):
    return None if exc is None else (type(exc), getattr(exc, "errno", None))


class LogRecords(logging.Handler):
    """Collects the asyncio logger's records while installed."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self.logger = logging.getLogger("asyncio")
        self.old_level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.old_level)

    def messages(self, level=logging.DEBUG):
        return [r.getMessage() for r in self.records if r.levelno >= level]


# ---------------------------------------------------------------- reading


def test_read_pipe_round_trip(loop):
    async def main():
        r, w = pipe_files()
        t, p = await read_pipe(loop, r)
        assert p.events == ["made"]
        assert p.transport is t
        assert isinstance(t, asyncio.ReadTransport)
        assert t.get_extra_info("pipe") is r
        assert t.get_extra_info("nope", 7) == 7
        assert t.is_reading() and not t.is_closing()
        assert not os.get_blocking(r.fileno())
        for chunk in (b"1", b"2345", b"x" * 1000):
            before = len(p.data)
            w.write(chunk)
            await p.wait_data(before + len(chunk))
        assert bytes(p.data) == b"12345" + b"x" * 1000
        w.close()
        assert await p.lost is None
        assert p.kinds() == ["made", "data", "eof", "lost"]
        assert r.closed
        assert t.is_closing()
        assert t.get_extra_info("pipe") is r

    run(loop, main())


def test_read_pipe_reads_up_to_256_kib_at_a_time(loop):
    """A socket pair holds more than a pipe: one readiness event gives at most asyncio's
    max_size (256 KiB)."""

    async def main():
        a, b = socket.socketpair()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
        sizes = []

        class Sizes(Proto):
            def data_received(self, data):
                sizes.append(len(data))
                super().data_received(data)

        payload = pattern(1024 * 1024)
        b.setblocking(False)
        sent = b.send(payload)
        t, p = await read_pipe(loop, a, Sizes)
        await p.wait_data(sent)
        assert bytes(p.data) == payload[:sent]
        assert max(sizes) <= 256 * 1024
        if sent > 256 * 1024:
            assert max(sizes) == 256 * 1024
        b.close()
        await p.lost

    run(loop, main())


def test_read_pipe_chunks_after_large_reads(loop):
    """Each readiness event is one read of up to 256 KiB, whatever the size of the read
    before it: a large read, then a larger one, then small ones, arrive exactly as
    asyncio delivers them (and intact)."""

    async def main():
        a, b = socket.socketpair()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MIB)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
        b.setblocking(False)
        sizes = []

        class Sizes(Proto):
            def data_received(self, data):
                sizes.append(len(data))
                super().data_received(data)

        t, p = await read_pipe(loop, a, Sizes)
        payload = pattern(64 * 1024 + 300 * 1024 + 40 * 1024 + 10 + 3, seed=5)
        sent = 0
        for size in (64 * 1024, 300 * 1024, 40 * 1024, 10, 3):
            t.pause_reading()
            b.sendall(payload[sent : sent + size])
            sent += size
            t.resume_reading()
            await p.wait_data(sent)
        assert sizes == [64 * 1024, 256 * 1024, 44 * 1024, 40 * 1024, 10, 3]
        assert bytes(p.data) == payload
        b.close()
        assert await p.lost is None

    run(loop, main())


def test_read_pipe_large_transfer_from_a_thread(loop):
    import threading

    payload = pattern(16 * MIB, seed=3)

    async def main():
        r, w = pipe_files()
        t, p = await read_pipe(loop, r)

        def writer():
            with w:
                w.write(payload)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            assert await p.lost is None
        finally:
            thread.join()
        assert len(p.data) == len(payload)
        assert bytes(p.data) == payload
        assert p.kinds() == ["made", "data", "eof", "lost"]

    run(loop, main(), timeout=60)


def test_read_pipe_eof_received_returning_true_still_closes(loop):
    """Unlike a socket transport, a read pipe closes at EOF whatever eof_received says."""

    class KeepOpen(Proto):
        eof_result = True

    async def main():
        r, w = pipe_files()
        t, p = await read_pipe(loop, r, KeepOpen)
        w.write(b"abc")
        w.close()
        assert await p.lost is None
        assert p.kinds() == ["made", "data", "eof", "lost"]
        assert t.is_closing()
        assert r.closed

    run(loop, main())


def test_read_pipe_close(loop):
    async def main():
        r, w = pipe_files()
        t, p = await read_pipe(loop, r)
        w.write(b"before")
        await p.wait_data(6)
        t.close()
        assert t.is_closing() and not t.is_reading()
        t.close()  # a second close does nothing
        w.write(b"after")
        assert await p.lost is None
        await settle()
        assert p.kinds() == ["made", "data", "lost"]
        assert p.lost_calls == 1
        assert bytes(p.data) == b"before"
        assert r.closed
        assert "closed" in repr(t)
        t.pause_reading()  # nothing happens once closed
        t.resume_reading()
        w.close()

    run(loop, main())


def test_read_pipe_close_before_connection_made_runs(loop):
    async def main():
        r, w = pipe_files()

        class CloseAtOnce(Proto):
            def connection_made(self, transport):
                super().connection_made(transport)
                transport.close()

        w.write(b"never read")
        t, p = await read_pipe(loop, r, CloseAtOnce)
        assert await p.lost is None
        assert p.kinds() == ["made", "lost"]
        w.close()

    run(loop, main())


def test_read_pipe_pause_and_resume(loop):
    async def main():
        r, w = pipe_files()
        t, p = await read_pipe(loop, r)
        t.pause_reading()
        assert not t.is_reading()
        t.pause_reading()  # twice is fine
        w.write(b"while paused")
        await settle(10)
        assert p.data == b""
        t.resume_reading()
        assert t.is_reading()
        t.resume_reading()
        await p.wait_data(12)
        assert bytes(p.data) == b"while paused"
        w.close()
        await p.lost
        assert not t.is_reading()

    run(loop, main())


def test_read_pipe_paused_before_reading_starts(loop):
    """pause_reading() in connection_made: reading never starts until resumed."""

    class PauseAtOnce(Proto):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    async def main():
        r, w = pipe_files()
        w.write(b"queued")
        t, p = await read_pipe(loop, r, PauseAtOnce)
        await settle(10)
        assert p.data == b""
        t.resume_reading()
        await p.wait_data(6)
        w.close()
        await p.lost

    run(loop, main())


def test_read_pipe_streamreader_with_a_tiny_limit(loop):
    """asyncio.StreamReaderProtocol pauses the transport when its buffer passes twice
    the limit (test_streams' pipe reader)."""

    async def main():
        r, w = pipe_files()
        reader = asyncio.StreamReader(limit=1)
        protocol = asyncio.StreamReaderProtocol(reader)
        t, _ = await loop.connect_read_pipe(lambda: protocol, r)
        w.write(b"data" * 1000)
        w.close()
        data = await reader.read(-1)
        assert data == b"data" * 1000
        await settle()
        assert t.is_closing()

    run(loop, main())


def test_read_pipe_repr(loop, oracle_loop):
    async def scenario(lp):
        r, w = pipe_files()
        t, p = await read_pipe(lp, r)
        fd = r.fileno()
        reprs = [repr_body(t)]
        t.pause_reading()
        reprs.append(repr_body(t))
        t.resume_reading()
        t.close()
        reprs.append(repr_body(t))
        await p.lost
        reprs.append(repr_body(t))
        w.close()
        return [x.replace(f"fd={fd}", "fd=N") for x in reprs]

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected
    assert got == ["fd=N polling", "fd=N idle", "closing fd=N idle", "closed fd=N closed"]


def test_read_pipe_on_a_socket(loop):
    async def main():
        a, b = socket.socketpair()
        t, p = await read_pipe(loop, a)
        assert t.get_extra_info("pipe") is a
        b.sendall(b"over a socket")
        await p.wait_data(13)
        b.close()
        assert await p.lost is None
        assert p.kinds() == ["made", "data", "eof", "lost"]
        assert a.fileno() == -1

    run(loop, main())


def test_read_pipe_on_a_fifo(loop, tmp_path):
    async def main():
        path = tmp_path / "fifo"
        os.mkfifo(path)
        r = open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", 0)
        w = open(path, "wb", 0)
        t, p = await read_pipe(loop, r)
        w.write(b"through a fifo")
        await p.wait_data(14)
        w.close()
        assert await p.lost is None
        assert p.kinds() == ["made", "data", "eof", "lost"]

    run(loop, main())


# ---------------------------------------------------------------- ptys


def test_read_pty_master_after_the_slave_closes(loop):
    """Reading a pty master whose slave is closed fails with EIO: connection_lost gets
    that OSError, there is no eof_received, and the exception handler is not told."""

    async def main():
        contexts = capture_exceptions(loop)
        master, slave = os.openpty()
        t, p = await read_pipe(loop, open(master, "rb", 0))
        os.write(slave, b"1")
        await p.wait_data(1)
        os.write(slave, b"2345")
        await p.wait_data(5)
        os.close(slave)
        exc = await p.lost
        assert isinstance(exc, OSError) and exc.errno == errno.EIO
        assert p.kinds() == ["made", "data", "lost"]
        assert contexts == []
        assert t.get_extra_info("pipe").closed

    run(loop, main())


def test_read_pty_eio_is_logged_in_debug_mode_only(loop):
    async def main():
        master, slave = os.openpty()
        t, p = await read_pipe(loop, open(master, "rb", 0))
        os.close(slave)
        await p.lost

    loop.set_debug(True)
    with LogRecords() as logs:
        run(loop, main())
    messages = logs.messages()
    assert any(m.endswith(": Fatal read error on pipe transport") for m in messages), messages


def test_write_pty_and_read_back(loop):
    """The slave side of a pty in raw mode, read and written through two transports
    (test_events' bidirectional pty)."""

    async def main():
        master, read_slave = os.openpty()
        write_slave = os.dup(read_slave)
        tty.setraw(read_slave)
        rt, rp = await read_pipe(loop, open(read_slave, "rb", 0))
        wt, wp = await write_pipe(loop, open(write_slave, "wb", 0))
        wt.write(b"to master")
        assert await read_fd_until(master, 9) == b"to master"
        os.write(master, b"to slave")
        await rp.wait_data(8)
        assert bytes(rp.data) == b"to slave"
        os.close(master)
        rt.close()
        wt.close()
        await rp.lost
        await wp.lost
        assert wp.kinds() == ["made", "lost"]

    run(loop, main())


def test_write_pty_whose_master_is_closed(loop):
    """A pty is a character device: not watched for reading, so a write that fails (EIO)
    ends the transport with connection_lost(OSError)."""

    async def main():
        contexts = capture_exceptions(loop)
        master, slave = os.openpty()
        t, p = await write_pipe(loop, open(slave, "wb", 0))
        os.close(master)
        t.write(b"into nothing")
        assert t.is_closing()
        exc = await p.lost
        assert isinstance(exc, OSError) and exc.errno == errno.EIO
        assert contexts == []
        t.write(b"dropped")  # counted, nothing raised

    run(loop, main())


# ---------------------------------------------------------------- writing


def test_write_pipe_transport_is_a_transport_whose_read_methods_are_not_implemented(loop):
    # asyncio's write pipe transport derives from Transport: code (uvloop's process tests
    # among it) calls pause_reading() on a subprocess's stdin and expects this error.
    async def main():
        r, w = pipe_files()
        t, _ = await write_pipe(loop, w)
        assert isinstance(t, asyncio.Transport)
        for name in ("pause_reading", "resume_reading", "is_reading"):
            with pytest.raises(NotImplementedError):
                getattr(t, name)()
        t.close()
        await settle()
        r.close()

    run(loop, main())


def test_write_pipe_round_trip(loop):
    async def main():
        r, w = pipe_files()
        t, p = await write_pipe(loop, w)
        assert isinstance(t, asyncio.WriteTransport)
        assert p.events == ["made"]
        assert t.get_extra_info("pipe") is w
        assert t.can_write_eof()
        assert t.get_write_buffer_size() == 0
        assert t.get_write_buffer_limits() == DEFAULT_LIMITS
        assert not os.get_blocking(w.fileno())
        t.write(b"1")
        assert await read_fd_until(r.fileno(), 1) == b"1"
        t.write(bytearray(b"23"))
        t.write(memoryview(b"45"))
        t.writelines([b"6", bytearray(b"7"), memoryview(b"89")])
        t.write(b"")
        assert await read_fd_until(r.fileno(), 8) == b"23456789"
        assert t.get_write_buffer_size() == 0
        t.close()
        assert t.is_closing()
        assert await p.lost is None
        assert w.closed
        assert await read_fd_until(r.fileno(), 1) == b""  # EOF
        r.close()

    run(loop, main())


def test_write_pipe_refuses_what_is_not_bytes(loop):
    async def main():
        r, w = pipe_files()
        t, p = await write_pipe(loop, w)
        for bad in ("text", 123, [b"x"], None):
            with pytest.raises(AssertionError) as info:
                t.write(bad)
            assert str(info.value) == repr(bad)
        with pytest.raises(TypeError):
            t.writelines(["text"])
        t.close()
        await p.lost
        r.close()

    run(loop, main())


def test_write_pipe_queues_what_the_pipe_cannot_take(loop, oracle_loop):
    """The first write fills the pipe and queues the rest; pause_writing above the high
    mark, and (as asyncio's pipe transport does) resume_writing only once the queue is
    empty, whatever the low mark."""

    async def scenario(lp):
        r, w = pipe_files()
        t, p = await write_pipe(lp, w)
        t.write(b"x" * (200 * 1024))
        queued = t.get_write_buffer_size()
        events = list(p.events)
        data = await read_fd_until(r.fileno(), 200 * 1024)
        await p.wait(lambda: ("resume", 0) in p.events)
        t.close()
        await p.lost
        r.close()
        return queued, events, p.events, len(data)

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected
    queued, events, all_events, n = got
    assert queued == 200 * 1024 - PIPE_CAPACITY
    assert events == ["made", ("pause", queued)]
    assert all_events == ["made", ("pause", queued), ("resume", 0), "lost"]
    assert n == 200 * 1024


def test_write_pipe_buffer_limits(loop, oracle_loop):
    async def scenario(lp):
        r, w = pipe_files()
        t, p = await write_pipe(lp, w)
        out = []
        for args in ((), (1000,), (None, 100), (1000, 10), (0, 0)):
            t.set_write_buffer_limits(*args)
            out.append(t.get_write_buffer_limits())
        for args in ((10, 100), (-1, None), (None, -1)):
            with pytest.raises(ValueError) as info:
                t.set_write_buffer_limits(*args)
            out.append(str(info.value))
        # Lowering the high mark below what is queued pauses at once.
        t.set_write_buffer_limits()
        t.write(b"y" * (PIPE_CAPACITY + 10))
        out.append(list(p.events))
        t.set_write_buffer_limits(high=5)
        out.append(list(p.events))
        t.abort()
        await p.lost
        r.close()
        return out

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected


def test_write_pipe_large_transfer_through_both_transports(loop):
    """A write pipe transport feeding a read pipe transport of the same loop: 32 MiB in
    64 KiB writes with flow control, all of it, in order."""
    chunk = 64 * 1024
    total = 32 * MIB
    payload = pattern(total, seed=5)

    class Writer(Proto):
        def __init__(self, loop):
            super().__init__(loop)
            self.can_write = loop.create_future()
            self.can_write.set_result(None)

        def pause_writing(self):
            super().pause_writing()
            self.can_write = self.loop.create_future()

        def resume_writing(self):
            super().resume_writing()
            self.can_write.set_result(None)

    async def main():
        r, w = pipe_files()
        rt, rp = await read_pipe(loop, r)
        wt, wp = await write_pipe(loop, w, Writer)
        view = memoryview(payload)
        for i in range(0, total, chunk):
            await wp.can_write
            wt.write(view[i : i + chunk])
        wt.close()
        assert await rp.lost is None
        assert await wp.lost is None
        assert len(rp.data) == total
        assert bytes(rp.data) == payload
        pauses = [e for e in wp.events if isinstance(e, tuple) and e[0] == "pause"]
        resumes = [e for e in wp.events if isinstance(e, tuple) and e[0] == "resume"]
        assert len(pauses) == len(resumes) > 0
        assert all(size == 0 for _, size in resumes)

    run(loop, main(), timeout=60)


def test_write_pipe_write_eof_flushes_then_closes(loop, oracle_loop):
    async def scenario(lp):
        r, w = pipe_files()
        t, p = await write_pipe(lp, w)
        t.write(b"z" * (100 * 1024))
        queued = t.get_write_buffer_size()
        t.write_eof()
        closing = t.is_closing()
        t.write_eof()  # twice is fine
        t.write(b"dropped")  # after write_eof: counted, not written
        t.close()  # nothing more to do
        data = await read_fd_until(r.fileno(), 200 * 1024)
        exc = await p.lost
        r.close()
        return queued, closing, len(data), exc, p.events, w.closed

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected
    assert got == (100 * 1024 - PIPE_CAPACITY, True, 100 * 1024, None, ["made", "lost"], True)


def test_write_pipe_close_with_nothing_queued(loop):
    async def main():
        r, w = pipe_files()
        t, p = await write_pipe(loop, w)
        t.write(b"abc")
        t.close()
        assert await p.lost is None
        assert await read_fd_until(r.fileno(), 10) == b"abc"
        r.close()

    run(loop, main())


def test_write_pipe_abort_drops_the_queue(loop, oracle_loop):
    async def scenario(lp):
        r, w = pipe_files()
        t, p = await write_pipe(lp, w)
        t.write(b"q" * (100 * 1024))
        t.abort()
        after = (t.is_closing(), t.get_write_buffer_size())
        exc = await p.lost
        data = await read_fd_until(r.fileno(), 200 * 1024)
        r.close()
        return after, exc, len(data), p.events

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected
    assert got[0] == (True, 0) and got[2] == PIPE_CAPACITY


def test_write_pipe_abort_after_write_eof_loses_the_connection_once(loop):
    """asyncio calls _call_connection_lost twice here, the second raising AttributeError
    into the exception handler; ferroloop calls connection_lost once, and nothing else."""

    async def main():
        contexts = capture_exceptions(loop)
        r, w = pipe_files()
        t, p = await write_pipe(loop, w)
        t.write_eof()
        t.abort()
        await p.lost
        await settle()
        r.close()
        return p.lost_calls, contexts

    calls, contexts = run(loop, main())
    assert calls == 1
    if isinstance(loop, asyncio.SelectorEventLoop):
        assert len(contexts) == 1
        assert isinstance(contexts[0]["exception"], AttributeError)
    else:
        assert contexts == []


def test_writes_after_close_are_counted_and_warned_about(loop, caplog):
    async def main():
        r, w = pipe_files()
        t, p = await write_pipe(loop, w)
        t.close()
        for _ in range(7):
            t.write(b"late")
        await p.lost
        t.write(b"even later")
        r.close()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run(loop, main())
    warned = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert warned == ["pipe closed by peer or os.write(pipe, data) raised exception."] * 3


def test_write_pipe_repr(loop, oracle_loop):
    async def scenario(lp):
        r, w = pipe_files()
        t, p = await write_pipe(lp, w)
        fd = w.fileno()
        reprs = [repr_body(t)]
        t.write(b"r" * (PIPE_CAPACITY + 100))
        reprs.append(repr_body(t))
        t.write_eof()
        reprs.append(repr_body(t))
        await read_fd_until(r.fileno(), PIPE_CAPACITY + 100)
        await p.lost
        reprs.append(repr_body(t))
        r.close()
        return [x.replace(f"fd={fd}", "fd=N") for x in reprs]

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected == [
        "fd=N idle bufsize=0",
        "fd=N polling bufsize=100",
        "closing fd=N polling bufsize=100",
        "closed fd=N closed",
    ]


def test_pipe_transport_repr_after_the_loop_closes(new_loop):
    """test_events' issue #314: the repr of a transport of a closed loop says 'open'."""
    loop = new_loop()

    async def connect():
        r, w = pipe_files()
        rt, _ = await read_pipe(loop, r)
        wt, _ = await write_pipe(loop, w)
        return r, w, rt, wt

    r, w, rt, wt = run(loop, connect())
    loop.close()
    assert repr_body(rt) == f"fd={r.fileno()} open"
    assert repr_body(wt) == f"fd={w.fileno()} open"
    # Taking the pipes over, as asyncio's test does: no warning, nothing closed.
    rt._pipe = None
    wt._pipe = None
    assert rt._pipe is None and wt._pipe is None
    assert not r.closed and not w.closed
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        del rt, wt
        gc.collect()
    r.close()
    w.close()


# ---------------------------------------------------------------- the reader goes away


def test_reader_gone_with_nothing_queued(loop, oracle_loop):
    async def scenario(lp):
        r, w = pipe_files()
        t, p = await write_pipe(lp, w)
        t.write(b"read and gone")
        r.close()
        exc = await p.lost
        t.write(b"after")  # counted, nothing raised
        return exc_summary(exc), p.events, t.is_closing(), w.closed

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected == (None, ["made", "lost"], True, True)


def test_reader_gone_with_data_queued_is_a_broken_pipe(loop, oracle_loop):
    async def scenario(lp):
        r, w = pipe_files()
        t, p = await write_pipe(lp, w)
        t.write(b"w" * (PIPE_CAPACITY * 3))
        queued = t.get_write_buffer_size()
        r.close()
        exc = await p.lost
        return queued, type(exc), exc.args, p.kinds(), t.get_write_buffer_size()

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected
    assert got[1] is BrokenPipeError and got[2] == ()
    assert got[3] == ["made", "pause", "lost"]
    assert got[4] == 0


def test_reader_gone_before_the_transport_watches(loop, oracle_loop):
    """The read end closed before the first write: the first write fails with EPIPE or
    the watch reports it, as the kernel and the loop's order decide; both loops agree."""

    async def scenario(lp):
        r, w = pipe_files()
        r.close()
        t, p = await write_pipe(lp, w)
        t.write(b"nobody reads")
        exc = await p.lost
        return exc_summary(exc), p.events

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected


def test_socket_peer_gone(loop, oracle_loop):
    """test_events' write_pipe_disconnect_on_close: a socket written to as a pipe."""

    async def scenario(lp):
        rsock, wsock = socket.socketpair()
        rsock.setblocking(False)
        pipeobj = io.open(wsock.detach(), "wb", 1024)
        t, p = await write_pipe(lp, pipeobj)
        t.write(b"1")
        data = await lp.sock_recv(rsock, 1024)
        rsock.close()
        exc = await p.lost
        return data, exc_summary(exc), p.events

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected == (b"1", None, ["made", "lost"])


def test_write_pipe_to_dev_null(loop):
    """A character device: written at once, never watched for reading."""

    async def main():
        f = open(os.devnull, "wb")
        t, p = await write_pipe(loop, f)
        t.write(b"n" * (10 * MIB))
        assert t.get_write_buffer_size() == 0
        assert repr_body(t).endswith("idle bufsize=0")
        t.close()
        assert await p.lost is None
        assert f.closed

    run(loop, main())


def test_write_pipe_to_a_fifo(loop, tmp_path):
    async def main():
        path = tmp_path / "fifo"
        os.mkfifo(path)
        r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        w = open(path, "wb", 0)
        t, p = await write_pipe(loop, w)
        t.write(b"into a fifo")
        assert await read_fd_until(r, 11) == b"into a fifo"
        os.close(r)
        assert await p.lost is None

    run(loop, main())


# ---------------------------------------------------------------- what is refused


class FdFile:
    """A file object over a bare fd (what open() refuses: a directory)."""

    def __init__(self, fd):
        self.fd = fd
        self.closed = False

    def fileno(self):
        return self.fd

    def close(self):
        if not self.closed:
            self.closed = True
            os.close(self.fd)


def test_refused_file_kinds(loop, oracle_loop, tmp_path):
    regular = tmp_path / "regular"
    regular.write_bytes(b"data")

    async def scenario(lp):
        out = []
        made = []

        def factory():
            made.append(1)
            return asyncio.Protocol()

        for opener in (
            lambda: open(regular, "rb"),
            lambda: open(regular, "wb"),
            lambda: FdFile(os.open(tmp_path, os.O_RDONLY)),
        ):
            for connect in (lp.connect_read_pipe, lp.connect_write_pipe):
                f = opener()
                with pytest.raises(ValueError) as info:
                    await connect(factory, f)
                out.append(str(info.value))
                out.append(f.closed)
                out.append(os.get_blocking(f.fileno()))
                f.close()
        out.append(len(made))
        return out

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected
    assert got[:6] == [
        "Pipe transport is for pipes/sockets only.",
        False,
        True,
        "Pipe transport is only for pipes, sockets and character devices",
        False,
        True,
    ]


# asyncio's transports made half-way (the fd was bad) fail in __del__.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_refused_objects(loop, oracle_loop):
    class BadFd:
        def fileno(self):
            return 9999

        def close(self):
            pass

    async def scenario(lp):
        out = []
        for pipe in (io.BytesIO(), 5, BadFd(), object()):
            for connect in (lp.connect_read_pipe, lp.connect_write_pipe):
                try:
                    await connect(asyncio.Protocol, pipe)
                except Exception as exc:
                    out.append((type(exc), getattr(exc, "errno", None)))
                else:  # pragma: no cover
                    out.append("accepted")
        return out

    with warnings.catch_warnings():
        # asyncio's half-made transports warn when collected.
        warnings.simplefilter("ignore", ResourceWarning)
        got, expected = both(loop, oracle_loop, scenario)
        gc.collect()
    assert got == expected
    assert (OSError, errno.EBADF) in got


# ---------------------------------------------------------------- callbacks that raise


def test_data_received_raising_goes_to_the_exception_handler(loop):
    class Raising(Proto):
        def data_received(self, data):
            super().data_received(data)
            if data.startswith(b"raise"):
                raise ZeroDivisionError("from data_received")

    async def main():
        contexts = capture_exceptions(loop)
        r, w = pipe_files()
        t, p = await read_pipe(loop, r, Raising)
        w.write(b"raise")
        await p.wait_data(5)
        await settle()
        w.write(b"after")
        await p.wait_data(10)
        assert not t.is_closing()
        (ctx,) = contexts
        assert isinstance(ctx["exception"], ZeroDivisionError)
        assert ctx["message"].startswith("Exception in callback ")
        assert ctx["message"].endswith("._read_ready()")
        # Handle._run's keys: the reader handle, not the transport and protocol.
        assert sorted(ctx) == ["exception", "handle", "message"]
        assert repr(ctx["handle"]).endswith("._read_ready()>")
        w.close()
        await p.lost

    run(loop, main())


@pytest.mark.parametrize("method", ["eof_received", "connection_lost"])
def test_read_pipe_callbacks_raising(loop, method):
    async def main():
        contexts = capture_exceptions(loop)
        done = loop.create_future()

        class Raising(Proto):
            def eof_received(self):
                super().eof_received()
                if method == "eof_received":
                    raise ZeroDivisionError(method)

            def connection_lost(self, exc):
                super().connection_lost(exc)
                done.set_result(None)
                if method == "connection_lost":
                    raise ZeroDivisionError(method)

        r, w = pipe_files()
        t, p = await read_pipe(loop, r, Raising)
        w.close()
        await done
        await settle()
        assert p.kinds() == ["made", "eof", "lost"]
        (ctx,) = contexts
        assert str(ctx["exception"]) == method
        assert ctx["message"].startswith("Exception in callback ")
        assert r.closed

    run(loop, main())


@pytest.mark.parametrize("method", ["pause_writing", "resume_writing"])
def test_flow_control_callbacks_raising(loop, method):
    async def main():
        contexts = capture_exceptions(loop)

        class Raising(Proto):
            def pause_writing(self):
                super().pause_writing()
                if method == "pause_writing":
                    raise ZeroDivisionError(method)

            def resume_writing(self):
                super().resume_writing()
                if method == "resume_writing":
                    raise ZeroDivisionError(method)

        r, w = pipe_files()
        t, p = await write_pipe(loop, w, Raising)
        t.write(b"f" * (PIPE_CAPACITY * 3))
        await read_fd_until(r.fileno(), PIPE_CAPACITY * 3)
        await p.wait(lambda: any(isinstance(e, tuple) and e[0] == "resume" for e in p.events))
        await settle()
        (ctx,) = contexts
        assert ctx["message"] == f"protocol.{method}() failed"
        assert str(ctx["exception"]) == method
        assert ctx["transport"] is t
        assert ctx["protocol"] is p
        t.close()
        await p.lost
        r.close()

    run(loop, main())


def test_connection_lost_raising_after_a_flush(loop):
    """close() with data queued: connection_lost runs from the write path; what it
    raises goes to the exception handler and the pipe is closed anyway."""

    async def main():
        contexts = capture_exceptions(loop)
        done = loop.create_future()

        class Raising(Proto):
            def connection_lost(self, exc):
                super().connection_lost(exc)
                done.set_result(None)
                raise ZeroDivisionError("lost")

        r, w = pipe_files()
        t, p = await write_pipe(loop, w, Raising)
        t.write(b"c" * (PIPE_CAPACITY * 2))
        t.close()
        await read_fd_until(r.fileno(), PIPE_CAPACITY * 2)
        await done
        await settle()
        (ctx,) = contexts
        assert str(ctx["exception"]) == "lost"
        assert ctx["message"].startswith("Exception in callback ")
        assert w.closed
        r.close()

    run(loop, main())


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_data_received_raising_an_interrupt_leaves_the_loop(loop, exc_type):
    class Interrupting(Proto):
        def data_received(self, data):
            raise exc_type("stop")

    async def main():
        r, w = pipe_files()
        t, p = await read_pipe(loop, r, Interrupting)
        w.write(b"x")
        await asyncio.sleep(5)

    with pytest.raises(exc_type):
        loop.run_until_complete(main())


# ---------------------------------------------------------------- context


def test_callbacks_run_in_the_context_of_creation(loop):
    var = contextvars.ContextVar("var", default="unset")

    class Recording(Proto):
        def __init__(self, loop):
            super().__init__(loop)
            self.seen = []

        def connection_made(self, transport):
            self.seen.append(("made", var.get()))
            super().connection_made(transport)

        def data_received(self, data):
            self.seen.append(("data", var.get()))
            super().data_received(data)

        def eof_received(self):
            self.seen.append(("eof", var.get()))
            super().eof_received()

        def pause_writing(self):
            self.seen.append(("pause", var.get()))
            super().pause_writing()

        def resume_writing(self):
            self.seen.append(("resume", var.get()))
            super().resume_writing()

        def connection_lost(self, exc):
            self.seen.append(("lost", var.get()))
            super().connection_lost(exc)

    async def main():
        r, w = pipe_files()
        var.set("read")
        rt, rp = await read_pipe(loop, r, Recording)
        r2, w2 = pipe_files()
        var.set("write")
        wt, wp = await write_pipe(loop, w2, Recording)
        var.set("later")
        w.write(b"abc")
        await rp.wait_data(3)
        w.close()
        await rp.lost
        wt.write(b"x" * (PIPE_CAPACITY * 3))
        await read_fd_until(r2.fileno(), PIPE_CAPACITY * 3)
        await wp.wait(lambda: ("resume", 0) in wp.events)
        r2.close()
        await wp.lost
        return rp.seen, wp.seen

    read_seen, write_seen = run(loop, main())
    assert read_seen == [("made", "read"), ("data", "read"), ("eof", "read"), ("lost", "read")]
    assert [name for name, _ in write_seen] == ["made", "pause", "resume", "lost"]
    assert write_seen[0] == ("made", "write")
    assert write_seen[1] == ("pause", "later")  # called by write() itself
    # The write path's callbacks run in a copy of the context of the write() that
    # queued data (asyncio's writer handle was added there).
    assert write_seen[2] == ("resume", "later")
    # The reader-gone watch runs in a copy of the context of creation.
    assert write_seen[3] == ("lost", "write")


# ---------------------------------------------------------------- debug mode


def test_debug_logs(loop):
    async def main():
        r, w = pipe_files()
        t, p = await read_pipe(loop, r)
        t.pause_reading()
        t.resume_reading()
        w.close()
        await p.lost
        r2, w2 = pipe_files()
        t2, p2 = await write_pipe(loop, w2)
        r2.close()
        await p2.lost

    loop.set_debug(True)
    with LogRecords() as logs:
        run(loop, main())
    messages = logs.messages()
    assert any(m.startswith("Read pipe ") and " connected: (" in m for m in messages)
    assert any(m.startswith("Write pipe ") and " connected: (" in m for m in messages)
    assert any(m.endswith(" pauses reading") for m in messages)
    assert any(m.endswith(" resumes reading") for m in messages)
    assert sum(m.endswith(" was closed by peer") for m in messages) == 2


# ---------------------------------------------------------------- fds and memory


def test_no_fds_left_behind(loop):
    async def main():
        before = fds()
        for i in range(50):
            r, w = pipe_files()
            rt, rp = await read_pipe(loop, r)
            wt, wp = await write_pipe(loop, w)
            wt.write(b"%d" % i)
            await rp.wait_data(1)
            if i % 2:
                wt.close()
            else:
                wt.abort()
            await wp.lost
            await rp.lost
        await settle()
        del rt, rp, wt, wp
        assert fds() == before

    run(loop, main())


def test_refusals_leave_no_fds(loop, tmp_path):
    regular = tmp_path / "f"
    regular.write_bytes(b"")

    async def main():
        before = fds()
        for _ in range(20):
            with open(regular, "rb") as f:
                with pytest.raises(ValueError):
                    await loop.connect_read_pipe(asyncio.Protocol, f)
        assert fds() == before

    run(loop, main())


def test_closed_transports_and_protocols_are_collected(loop):
    async def main():
        refs = []
        for _ in range(5):
            r, w = pipe_files()
            rt, rp = await read_pipe(loop, r)
            wt, wp = await write_pipe(loop, w)
            refs += [weakref.ref(x) for x in (rt, rp, wt, wp)]
            wt.close()
            await wp.lost
            await rp.lost
        del rt, rp, wt, wp
        await settle()
        return refs

    refs = run(loop, main())
    gc.collect()
    assert [r for r in refs if r() is not None] == []


def test_unclosed_transports_warn_and_close_their_pipes(loop):
    async def main():
        r, w = pipe_files()
        rt, rp = await read_pipe(loop, r)
        r2, w2 = pipe_files()
        wt, wp = await write_pipe(loop, w2)
        return r, w, r2, w2, weakref.ref(rt), weakref.ref(wt)

    r, w, r2, w2, rref, wref = run(loop, main())
    loop.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert rref() is None and wref() is None
    messages = sorted(str(c.message) for c in caught if c.category is ResourceWarning)
    assert len(messages) == 2
    assert all(m.startswith("unclosed transport <") for m in messages)
    assert r.closed and w2.closed
    w.close()
    r2.close()


def test_a_cycle_through_an_open_transport_is_collected(untracked_loop_factory):
    loop = untracked_loop_factory()

    class Cyclic(Proto):
        pass

    async def main():
        r, w = pipe_files()
        t, p = await read_pipe(loop, r, Cyclic)
        p.self_ref = p  # protocol -> transport -> protocol, and a self cycle
        t.close()
        await p.lost
        return weakref.ref(t), weakref.ref(p), w

    tref, pref, w = run(loop, main())
    loop.close()
    del loop
    gc.collect()
    assert tref() is None and pref() is None
    w.close()


@pytest.mark.skipif(sys.platform != "linux", reason="Linux /proc")
def test_many_round_trips_do_not_grow_memory(loop):
    import resource

    async def main():
        r, w = pipe_files()
        rt, rp = await read_pipe(loop, r)
        wt, wp = await write_pipe(loop, w)
        chunk = b"m" * 4096
        for _ in range(2000):
            wt.write(chunk)
        await rp.wait_data(2000 * 4096)
        rp.data.clear()
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(20000):
            wt.write(chunk)
            await rp.wait_data(4096)
            rp.data.clear()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
        wt.close()
        await rp.lost
        return grown

    grown_kib = run(loop, main(), timeout=60)
    assert grown_kib < 20 * 1024
