"""Differential tests of the pipe transports: generated sequences of operations on a
write pipe transport (write, writelines, write_eof, close, abort) or a read pipe
transport (pause_reading, resume_reading, close), each with a peer at the other end of
the pipe (reads, writes, closing its end), run on asyncio and on ferroloop, which must
give the same trace of protocol callbacks, exceptions, transport states and data.

The pipe is shrunk to one page (F_SETPIPE_SZ), so a few small writes fill it and a
large one queues in the transport and pauses the protocol until the peer reads. After
each operation the runner lets the loop settle until what that operation set off has
arrived; data is compared as concatenated bytes, never by its chunking.

Examples: FERROLOOP_DIFF_EXAMPLES as in test_differential.py (this file runs a
quarter of that per transport kind, at least 5); `make differential` runs many more.
"""

from __future__ import annotations

import asyncio
import fcntl
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transport_helpers import diff_exc_summary as exc_summary
from transport_helpers import pattern, run_on_asyncio_and_ferroloop

EXAMPLES = max(5, int(os.environ.get("FERROLOOP_DIFF_EXAMPLES", "40")) // 4)

SMALL = st.sampled_from([1, 100, 1000, 3000])
BIG = 256 * 1024
SETTLE_TIMEOUT = 10.0
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

write_op = st.one_of(
    st.tuples(st.just("write"), SMALL),
    st.tuples(st.just("write"), st.just(BIG)),
    st.tuples(st.just("writelines"), st.lists(SMALL, min_size=0, max_size=3)),
    st.tuples(st.just("write_eof")),
    st.tuples(st.just("close")),
    st.tuples(st.just("abort")),
    st.tuples(st.just("peer_read")),
    st.tuples(st.just("peer_close")),
)
read_op = st.one_of(
    st.tuples(st.just("peer_write"), SMALL),
    st.tuples(st.just("peer_close")),
    st.tuples(st.just("pause_reading")),
    st.tuples(st.just("resume_reading")),
    st.tuples(st.just("close")),
)


class Traced(asyncio.Protocol):
    def __init__(self, trace):
        self.trace = trace
        self.data = bytearray()
        self.lost = False
        self.paused = False

    def connection_made(self, transport):
        self.trace.append(("made",))

    def data_received(self, data):
        if not self.trace or self.trace[-1] != ("data",):
            self.trace.append(("data",))
        self.data += data

    def eof_received(self):
        self.trace.append(("eof",))

    def pause_writing(self):
        self.paused = True
        self.trace.append(("pause_writing",))

    def resume_writing(self):
        self.paused = False
        self.trace.append(("resume_writing",))

    def connection_lost(self, exc):
        self.lost = True
        self.trace.append(("lost", exc_summary(exc)))


def small_pipe():
    """An anonymous pipe of one page: (read fd, write fd)."""
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, os.sysconf("SC_PAGE_SIZE"))
    return r, w


async def iterations(n=3):
    for _ in range(n):
        await asyncio.sleep(0)
    await asyncio.sleep(0.002)


async def run_write_scenario(loop, ops):
    trace = []
    r, w = small_pipe()
    os.set_blocking(r, False)
    transport, proto = await loop.connect_write_pipe(lambda: Traced(trace), open(w, "wb", 0))
    closing = False  # close(), write_eof(), abort() or a loss
    aborted = False
    peer_gone = False
    peer_got = bytearray()
    peer_eof = False
    accepted = bytearray()  # what the transport took to send

    async def peer_read():
        # Reads what the transport sends until it has sent all it accepted (or the
        # pipe's end of file), letting the loop flush in between.
        nonlocal peer_eof
        end = loop.time() + SETTLE_TIMEOUT
        while not peer_eof and loop.time() < end:
            try:
                chunk = os.read(r, 65536)
            except BlockingIOError:
                # Everything accepted was read (so nothing is queued), or nothing more
                # will be sent.
                if len(peer_got) >= len(accepted) or aborted or proto.lost:
                    break
                await asyncio.sleep(0.001)
                continue
            if not chunk:
                peer_eof = True
                break
            peer_got.extend(chunk)
        await iterations()

    for i, o in enumerate(ops):
        name = o[0]
        try:
            if name == "write":
                data = pattern(o[1], seed=i)
                will_send = not closing
                transport.write(data)
                if will_send:
                    accepted.extend(data)
            elif name == "writelines":
                lines = [pattern(n, seed=i + k) for k, n in enumerate(o[1])]
                will_send = not closing
                transport.writelines(lines)
                if will_send:
                    accepted.extend(b"".join(lines))
            elif name == "write_eof":
                transport.write_eof()
                closing = True
            elif name == "close":
                transport.close()
                closing = True
            elif name == "abort":
                if closing:
                    # asyncio's abort() after close(), write_eof() or a loss schedules
                    # connection_lost() again, which then fails inside the transport
                    # (README, known differences): not compared.
                    trace.append(("skip", i))
                    continue
                transport.abort()
                closing = aborted = True
            elif name == "peer_read":
                if peer_gone:
                    trace.append(("skip", i))
                    continue
                await peer_read()
            elif name == "peer_close":
                if peer_gone:
                    trace.append(("skip", i))
                    continue
                os.close(r)
                peer_gone = True
        except Exception as exc:  # noqa: BLE001 - traced, and compared
            trace.append(("raised", i, exc_summary(exc)))
        await iterations()
        if proto.lost:
            closing = True
        trace.append(
            ("after", i, transport.is_closing(), proto.paused, transport.get_write_buffer_size())
        )

    # The end: close what is open, let the peer read to its end.
    if not peer_gone:
        if not proto.lost:
            transport.close()
            closing = True
        await peer_read()
        os.close(r)
    end = loop.time() + SETTLE_TIMEOUT
    while not proto.lost and loop.time() < end:
        await asyncio.sleep(0.001)
    await iterations()
    # What the peer received is a prefix of what the transport accepted.
    assert peer_got == accepted[: len(peer_got)]
    return {"trace": trace, "peer_len": len(peer_got), "peer_eof": peer_eof, "lost": proto.lost}


async def run_read_scenario(loop, ops):
    trace = []
    r, w = small_pipe()
    transport, proto = await loop.connect_read_pipe(lambda: Traced(trace), open(r, "rb", 0))
    reading = True  # what the scenario asked for
    closed = False  # close() was called
    peer_gone = False
    written = bytearray()  # what the peer wrote

    async def settle():
        # Until what the peer sent (and its end of file) has arrived, while reading.
        end = loop.time() + SETTLE_TIMEOUT
        while reading and not closed and not proto.lost and loop.time() < end:
            behind = len(proto.data) < len(written)
            if not behind and not peer_gone:
                break
            await asyncio.sleep(0.001)
        await iterations()

    for i, o in enumerate(ops):
        name = o[0]
        try:
            if name == "peer_write":
                if peer_gone or len(proto.data) + os.sysconf("SC_PAGE_SIZE") < len(written) + o[1]:
                    # A closed end, or no room in the pipe for this write.
                    trace.append(("skip", i))
                    continue
                data = pattern(o[1], seed=i)
                os.write(w, data)
                written.extend(data)
            elif name == "peer_close":
                if peer_gone:
                    trace.append(("skip", i))
                    continue
                os.close(w)
                peer_gone = True
            elif name == "pause_reading":
                transport.pause_reading()
                reading = False
            elif name == "resume_reading":
                transport.resume_reading()
                reading = True
            elif name == "close":
                transport.close()
                closed = True
        except Exception as exc:  # noqa: BLE001 - traced, and compared
            trace.append(("raised", i, exc_summary(exc)))
        await settle()
        trace.append(("after", i, transport.is_closing(), len(proto.data)))

    if not peer_gone:
        os.close(w)
    if not proto.lost:
        transport.close()
    end = loop.time() + SETTLE_TIMEOUT
    while not proto.lost and loop.time() < end:
        await asyncio.sleep(0.001)
    await iterations()
    # What arrived is a prefix of what the peer wrote.
    assert proto.data == written[: len(proto.data)]
    return {"trace": trace, "data": bytes(proto.data), "lost": proto.lost}


RUNNERS = {"write": run_write_scenario, "read": run_read_scenario}


def run_both(kind, ops, ferroloop_module):
    def scenario(loop):
        return RUNNERS[kind](loop, ops)

    return run_on_asyncio_and_ferroloop(scenario, ferroloop_module)


@pytest.mark.parametrize("kind", ["write", "read"])
def test_pipe_traces_match_asyncio(ferroloop_module, hang_guard, kind):
    ops_strategy = st.lists(write_op if kind == "write" else read_op, min_size=1, max_size=12)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(ops=ops_strategy)
    def check(ops):
        expected, got = run_both(kind, ops, ferroloop_module)
        assert got == expected, f"scenario {ops}"

    check()
