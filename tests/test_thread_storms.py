"""Threads storming the loop: call_soon_threadsafe from many threads while the loop
runs, stops, runs again and closes; run_in_executor storms, with a close while jobs
are still running; KeyboardInterrupt at any point of a step (raised by a callback of
each kind, or delivered by SIGINT at random times in a child process).

Every test runs on ferroloop and on asyncio's selector loop (the oracle).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from transport_helpers import fds

N_THREADS = 8


# ---------------------------------------------------------------- run, stop, close


def test_threadsafe_calls_while_the_loop_runs_stops_and_closes(loop):
    """Threads post without pause while the loop runs, is stopped, runs again and is
    closed. Every call either returns a handle or raises RuntimeError('Event loop is
    closed'), and once one raises, every later one does; per thread, the callbacks
    that ran are the first ones posted, in order; nothing crashes."""
    ran = {t: [] for t in range(N_THREADS)}
    posted = {t: 0 for t in range(N_THREADS)}
    errors = {t: [] for t in range(N_THREADS)}
    go = threading.Barrier(N_THREADS + 1)
    quit_after = 200_000

    def worker(t):
        go.wait()
        for i in range(quit_after):
            try:
                loop.call_soon_threadsafe(ran[t].append, i)
            except RuntimeError as exc:
                errors[t].append((i, str(exc)))
                if len(errors[t]) >= 100:
                    return
            else:
                if errors[t]:
                    errors[t].append((i, "accepted after a refusal"))
                    return
                posted[t] = i + 1
            if i % 64 == 0:
                time.sleep(0)  # let the loop thread have the GIL too

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(N_THREADS)]
    for th in threads:
        th.start()
    try:
        go.wait()
        for _ in range(3):
            loop.call_later(0.05, loop.stop)
            loop.run_forever()
            time.sleep(0.01)  # stopped, not closed: calls are still accepted
        loop.close()
    finally:
        for th in threads:
            th.join(60)
    assert not any(th.is_alive() for th in threads)
    for t in range(N_THREADS):
        assert posted[t] > 0
        assert errors[t], "the thread never saw the loop closed"
        assert len(errors[t]) == 100
        assert errors[t][0][0] == posted[t]
        assert {msg for _, msg in errors[t]} == {"Event loop is closed"}
        assert ran[t] == list(range(len(ran[t])))
        assert 0 < len(ran[t]) <= posted[t]


def test_nothing_posted_before_close_is_lost_across_stops(loop):
    """Threads post a fixed number of calls while another thread stops the loop again
    and again; the loop is run until the threads are done and once more: every call
    ran exactly once, in each thread's order. Then close() and a refusal."""
    calls = 3000
    ran = {t: [] for t in range(N_THREADS)}
    done = threading.Event()

    def worker(t):
        for i in range(calls):
            loop.call_soon_threadsafe(ran[t].append, i)
            if i % 100 == 0:
                time.sleep(0.0005)  # spread the posts over many runs

    def stopper():
        while not done.is_set():
            loop.call_soon_threadsafe(loop.stop)
            time.sleep(0.002)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(N_THREADS)]
    stop_thread = threading.Thread(target=stopper)

    def start_threads():
        stop_thread.start()
        for th in threads:
            th.start()

    loop.call_soon(start_threads)
    runs = 0
    try:
        while runs == 0 or any(th.is_alive() for th in threads):
            keepalive = loop.call_later(0.1, loop.stop)
            loop.run_forever()
            keepalive.cancel()
            runs += 1
    finally:
        done.set()
        for th in threads:
            th.join(60)
        stop_thread.join(60)
    # The last posts (and stray stops): run until all of it ran.
    while sum(map(len, ran.values())) < N_THREADS * calls:
        loop.call_later(0.1, loop.stop)
        loop.run_forever()
    assert runs > 1
    for t in range(N_THREADS):
        assert ran[t] == list(range(calls))
    loop.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        loop.call_soon_threadsafe(print)


# ---------------------------------------------------------------- executor storms


def work(i):
    if i % 7 == 3:
        raise ValueError(i)
    return i * i


def test_run_in_executor_storm(loop):
    """Thousands of jobs on the default executor and on one of our own, some raising,
    a third cancelled while in flight, and threads posting meanwhile: each outcome
    comes back, cancelled futures stay cancelled, nothing reaches the exception
    handler, and the executors shut down."""
    from concurrent.futures import ThreadPoolExecutor

    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    own = ThreadPoolExecutor(max_workers=16)
    n = 3000
    flood = []

    def flooder():
        for i in range(5000):
            loop.call_soon_threadsafe(flood.append, i)

    async def main():
        th = threading.Thread(target=flooder)
        th.start()
        futs = [loop.run_in_executor(None if i % 2 else own, work, i) for i in range(n)]
        for f in futs[::3]:
            f.cancel()
        results = await asyncio.gather(*futs, return_exceptions=True)
        await loop.run_in_executor(None, th.join)
        await asyncio.sleep(0)
        await loop.shutdown_default_executor()
        return results

    try:
        results = loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        own.shutdown(wait=True)
    for i, r in enumerate(results):
        if i % 3 == 0:
            assert isinstance(r, asyncio.CancelledError)
        elif i % 7 == 3:
            assert isinstance(r, ValueError) and r.args == (i,)
        else:
            assert r == i * i
    assert flood == list(range(5000))
    assert contexts == []


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        self.records.append((record.name, record.levelname, type(exc).__name__, str(exc)))


def _close_with_jobs_in_flight(loop):
    """close() while executor jobs still run: what happens to their results."""
    release = threading.Event()
    handler = Records()
    loggers = [logging.getLogger("asyncio"), logging.getLogger("concurrent.futures")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        futs = []

        async def start():
            for i in range(20):
                futs.append(loop.run_in_executor(None, lambda i=i: (release.wait(10), i)[1]))
            await asyncio.sleep(0)

        loop.run_until_complete(start())
        loop.close()  # shuts the default executor down without waiting
        release.set()
        time.sleep(0.3)  # the jobs finish after the close
        states = [f.done() for f in futs]
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    return states, sorted(set(handler.records))


def test_close_while_executor_jobs_run(loop, oracle_loop):
    got = _close_with_jobs_in_flight(loop)
    expected = _close_with_jobs_in_flight(oracle_loop)
    # The asyncio futures never complete: their loop is closed.
    assert expected[0] == [False] * 20
    assert got == expected


# ---------------------------------------------------------------- KeyboardInterrupt in a step

KI_SOURCES = ["soon", "timer", "threadsafe", "reader", "data_received", "signal_handler"]


def _interrupt_in_a_step(loop, source):
    """A batch of callbacks in which one of ``source``'s kind raises KeyboardInterrupt:
    the trace of what ran in the interrupted run and in the next ones, and the loop's
    state in between."""
    if source == "signal_handler":
        # ferroloop makes the socket pair signals arrive through with the first handler
        # (asyncio has it from the start), and keeps it until close().
        loop.add_signal_handler(signal.SIGUSR1, print)
        loop.remove_signal_handler(signal.SIGUSR1)
    before = fds()
    trace = []
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    armed = [True]

    def maybe_interrupt(tag):
        trace.append(tag)
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt(tag)

    class P(asyncio.Protocol):
        def data_received(self, data):
            maybe_interrupt(("data", data))

    async def setup():
        if source == "data_received":
            return (await loop.connect_accepted_socket(P, b))[0]
        return None

    transport = loop.run_until_complete(setup())
    loop.call_soon(trace.append, "before")
    if source == "soon":
        loop.call_soon(maybe_interrupt, "soon")
    elif source == "timer":
        loop.call_later(0, maybe_interrupt, "timer")
    elif source == "threadsafe":
        th = threading.Thread(target=loop.call_soon_threadsafe, args=(maybe_interrupt, "ts"))
        th.start()
        th.join()
    elif source == "reader":
        a.send(b"x")

        def on_readable():
            b.recv(10)
            maybe_interrupt("reader")

        loop.add_reader(b.fileno(), on_readable)
    elif source == "data_received":
        a.send(b"x")
    elif source == "signal_handler":
        loop.add_signal_handler(signal.SIGUSR1, maybe_interrupt, "signal")
        os.kill(os.getpid(), signal.SIGUSR1)
    loop.call_soon(trace.append, "after")
    loop.call_later(0.05, trace.append, "later")
    outcome = []
    stopper = loop.call_later(0.2, loop.stop)
    try:
        loop.run_forever()
        outcome.append("no interrupt")
    except KeyboardInterrupt as exc:
        outcome.append(("interrupted", str(exc)))
    stopper.cancel()
    state = (loop.is_running(), loop.is_closed(), asyncio._get_running_loop() is None)
    trace.append("-- next run --")
    # The loop is reusable: the rest of the work runs, and a coroutine completes.
    loop.call_later(0.2, loop.stop)
    loop.run_forever()
    result = loop.run_until_complete(asyncio.sleep(0.01, "fine"))
    if source == "reader":
        loop.remove_reader(b.fileno())
    if source == "signal_handler":
        loop.remove_signal_handler(signal.SIGUSR1)
    a.close()
    if transport is not None:
        transport.close()
        loop.run_until_complete(asyncio.sleep(0.01))
    else:
        b.close()
    assert fds() == before
    loop.close()
    return outcome, state, trace, result


@pytest.mark.parametrize("source", KI_SOURCES)
def test_keyboard_interrupt_from_a_callback_leaves_the_loop_reusable(loop, oracle_loop, source):
    got = _interrupt_in_a_step(loop, source)
    expected = _interrupt_in_a_step(oracle_loop, source)
    outcome, state, trace, result = expected
    assert outcome[0][0] == "interrupted"
    # What was scheduled after the interrupting callback ran, in the next run at the latest.
    assert "before" in trace and "after" in trace and "later" in trace
    assert state == (False, False, True)
    assert result == "fine"
    assert got == expected


SIGINT_CHILD = textwrap.dedent(
    """
    import asyncio, gc, json, os, random, signal, sys, threading, time

    impl, seed, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    if impl == "ferroloop":
        import ferroloop
        new_loop = ferroloop.new_event_loop
    else:
        new_loop = asyncio.SelectorEventLoop

    class Echo(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t
        def data_received(self, data):
            self.t.write(data)

    async def busy(loop, addr):
        # Every kind of work at once: callbacks, timers, threadsafe posts, transports.
        def spin(n):
            if n:
                loop.call_soon(spin, n - 1)
        stop = threading.Event()
        def poster():
            while not stop.is_set():
                try:
                    loop.call_soon_threadsafe(len, ())
                except RuntimeError:
                    return
                time.sleep(0.0005)
        th = threading.Thread(target=poster, daemon=True)
        th.start()
        writer = None
        try:
            reader, writer = await asyncio.open_connection(*addr)
            for i in range(100000):
                spin(50)
                loop.call_later(rng.random() / 1000, len, ())
                writer.write(b"x" * 1000)
                await reader.readexactly(1000)
                await asyncio.sleep(0)
        finally:
            stop.set()
            if writer is not None:
                writer.close()

    async def serve():
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()

    # SIGINT raises KeyboardInterrupt, as the default handler does, but only while the
    # loop runs: a KeyboardInterrupt can be lost where Python ignores exceptions (a
    # finalizer, a weakref callback), so the killer sends SIGINT again until the
    # interrupt has left run_until_complete, and a signal that comes after that must not
    # raise in the test's own code.
    current = [None]

    def on_sigint(signum, frame):
        if current[0] is not None and current[0].is_running():
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)

    interrupted = 0
    fds = []
    for r in range(rounds):
        loop = new_loop()
        server, addr = loop.run_until_complete(serve())
        delay = rng.uniform(0.005, 0.15)
        done = threading.Event()

        def kill(delay=delay, done=done):
            time.sleep(delay)
            while not done.is_set():
                os.kill(os.getpid(), signal.SIGINT)
                done.wait(0.3)

        killer = threading.Thread(target=kill, daemon=True)
        current[0] = loop
        try:
            killer.start()  # (a signal before the loop runs is ignored, and sent again)
            loop.run_until_complete(busy(loop, addr))
        except KeyboardInterrupt:
            interrupted += 1
        current[0] = None
        done.set()
        killer.join()
        assert not loop.is_running()
        # Reusable: a fresh connection through the same server, then everything closed.
        async def check():
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            await writer.wait_closed()
        loop.run_until_complete(asyncio.wait_for(check(), 10))
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0.01))
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        gc.collect()
        fds.append(len(os.listdir("/proc/self/fd")))
    print(json.dumps({"interrupted": interrupted, "fds": fds}))
    """
)


def test_sigint_at_random_times_leaves_the_loop_reusable(impl, hang_guard):
    """In a child, SIGINT (raising KeyboardInterrupt while the loop runs) arrives at random
    times while the loop is busy with callbacks, timers, threadsafe posts and a
    transport: each time run_until_complete raises KeyboardInterrupt, the loop is
    still usable (a new connection is served), and it closes; the child's fds do not
    grow over the rounds."""
    rounds = int(os.environ.get("FERROLOOP_SIGINT_ROUNDS", "15"))

    def child(name, seed):
        out = subprocess.run(
            [sys.executable, "-c", SIGINT_CHILD, name, str(seed), str(rounds)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    for seed in (1,):
        result = child(impl, seed)
        assert result["interrupted"] == rounds
        assert result["fds"] == [result["fds"][0]] * rounds
