"""call_soon_threadsafe under contention, and waking a loop blocked in poll."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import threading
import time

import pytest

N_THREADS = 8
CALLS_PER_THREAD = 2000
WATCHDOG_SECONDS = 10.0
FINALIZED = contextvars.ContextVar("FINALIZED")


def test_call_soon_threadsafe_from_many_threads_loses_nothing(loop):
    received = {t: [] for t in range(N_THREADS)}
    total = N_THREADS * CALLS_PER_THREAD
    count = 0
    done = loop.create_future()
    start = threading.Barrier(N_THREADS)

    def on_call(t, i):
        nonlocal count
        received[t].append(i)
        count += 1
        if count == total and not done.done():
            done.set_result(None)

    def worker(t):
        start.wait()
        for i in range(CALLS_PER_THREAD):
            loop.call_soon_threadsafe(on_call, t, i)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(N_THREADS)]

    def start_threads():
        # Started from a callback: the loop is running while they hammer it.
        for th in threads:
            th.start()

    async def main():
        loop.call_soon(start_threads)
        try:
            await asyncio.wait_for(done, 30)
        except asyncio.TimeoutError:
            pytest.fail(f"only {count} of {total} callbacks ran")

    try:
        loop.run_until_complete(main())
    finally:
        for th in threads:
            if th.ident is not None:
                th.join()
    assert count == total
    # Per thread, callbacks run in the order that thread scheduled them.
    for t in range(N_THREADS):
        assert received[t] == list(range(CALLS_PER_THREAD))


def test_call_soon_threadsafe_before_the_loop_runs(loop):
    ran = []

    def worker(t):
        for i in range(100):
            loop.call_soon_threadsafe(ran.append, (t, i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert sorted(ran) == [(t, i) for t in range(4) for i in range(100)]


@pytest.mark.parametrize("waiting_on", ["future-without-timers", "far-timer", "run_forever"])
def test_call_soon_threadsafe_wakes_a_loop_blocked_in_poll(loop, waiting_on):
    """The loop has nothing to do and sleeps in its poll with no (or a very
    long) timeout; a call from another thread must wake it promptly."""
    fut = loop.create_future()
    latency = []
    delivered = threading.Event()

    def deliver(sent_at):
        latency.append(time.monotonic() - sent_at)
        delivered.set()
        if waiting_on == "run_forever":
            loop.stop()
        else:
            fut.set_result("woken")

    def worker():
        time.sleep(0.2)  # let the loop settle into its poll
        loop.call_soon_threadsafe(deliver, time.monotonic())
        # Watchdog: if the loop was not woken, wake it through a socket so that
        # the test fails on the latency check below instead of hanging.
        if not delivered.wait(WATCHDOG_SECONDS):
            wake_w.send(b"!")

    # The watchdog socket adds an fd to the poll set, but no timeout.
    wake_r, wake_w = socket.socketpair()
    loop.add_reader(wake_r, wake_r.recv, 1)
    if waiting_on == "far-timer":
        far = loop.call_later(3600, lambda: None)
    th = threading.Thread(target=worker)
    th.start()
    try:
        if waiting_on == "run_forever":
            loop.run_forever()
        else:
            assert loop.run_until_complete(fut) == "woken"
    finally:
        th.join()
        loop.remove_reader(wake_r)
        wake_r.close()
        wake_w.close()
    if waiting_on == "far-timer":
        far.cancel()
    assert len(latency) == 1
    # A correct loop wakes within milliseconds; this bound only catches a loop
    # that was not woken by the call at all.
    assert latency[0] < WATCHDOG_SECONDS / 2, f"woken after {latency[0]:.3f}s"


def test_call_soon_threadsafe_while_the_step_drops_cancelled_timers(loop):
    """The run step drops the cancelled timers at the head of the heap before it
    polls. Dropping one may run a finalizer, which lets other threads run; a
    call_soon_threadsafe made from another thread then must not wait for the
    poll's timeout (here a watchdog timer; without one, forever)."""
    ran = []
    errors = []

    def on_call(sent_at):
        ran.append(("threadsafe", time.monotonic() - sent_at))
        loop.stop()

    def call_from_another_thread():
        try:
            loop.call_soon_threadsafe(on_call, time.monotonic())
        except BaseException as exc:  # noqa: BLE001 - recorded and checked below
            errors.append(exc)

    finalized_while_running = []

    class Finalized:
        def __del__(self):
            finalized_while_running.append(loop.is_running())
            # The other thread calls in while the loop's thread is in here.
            th = threading.Thread(target=call_from_another_thread)
            th.start()
            th.join()

    def watchdog():
        ran.append(("watchdog", None))
        loop.stop()

    # Only the first timer holds the object, in its context (cancel() drops a handle's
    # callback and arguments at once, its context only with the handle). Both timers
    # are cancelled, so the step drops both before it polls (asyncio drops the first
    # as it goes on to the second).
    context = contextvars.Context()
    context.run(FINALIZED.set, Finalized())
    first = loop.call_later(1, lambda: None, context=context)
    del context
    second = loop.call_later(2, lambda: None)
    loop.call_later(WATCHDOG_SECONDS / 2, watchdog)
    first.cancel()
    second.cancel()
    del first, second
    loop.run_forever()
    assert finalized_while_running == [True]  # in the step, not before it
    assert errors == []
    assert [what for what, _ in ran] == ["threadsafe"], f"the loop was not woken: {ran}"


def test_call_soon_threadsafe_wakes_the_loop_repeatedly(loop):
    results = []
    rounds = 20

    async def main():
        for i in range(rounds):
            fut = loop.create_future()
            th = threading.Thread(target=lambda: loop.call_soon_threadsafe(fut.set_result, i))
            th.start()
            results.append(await fut)
            th.join()

    loop.run_until_complete(main())
    assert results == list(range(rounds))


def test_stop_from_another_thread(loop):
    started = threading.Event()
    loop.call_soon(started.set)

    def worker():
        started.wait(10)
        loop.call_soon_threadsafe(loop.stop)

    th = threading.Thread(target=worker)
    th.start()
    loop.run_forever()
    th.join()
    assert started.is_set()
    assert not loop.is_running()


def test_call_soon_threadsafe_handle_can_be_cancelled(loop):
    ran = []
    h = loop.call_soon_threadsafe(ran.append, 1)
    h.cancel()
    assert h.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == []


def test_call_soon_threadsafe_on_a_closed_loop_from_another_thread(loop):
    loop.close()
    errors = []

    def worker():
        try:
            loop.call_soon_threadsafe(lambda: None)
        except BaseException as exc:  # noqa: BLE001 - recorded and checked below
            errors.append(exc)

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert len(errors) == 1
    assert type(errors[0]) is RuntimeError
    assert str(errors[0]) == "Event loop is closed"


def test_run_in_executor_results_come_back_while_many_threads_post(loop):
    """Executor completions (delivered through call_soon_threadsafe) interleave
    with a flood of direct call_soon_threadsafe calls."""
    flood = []

    def flooder():
        for i in range(3000):
            loop.call_soon_threadsafe(flood.append, i)

    async def main():
        th = threading.Thread(target=flooder)
        th.start()
        results = await asyncio.gather(
            *[loop.run_in_executor(None, pow, i, 2) for i in range(50)]
        )
        await loop.run_in_executor(None, th.join)
        await asyncio.sleep(0)
        return results

    assert loop.run_until_complete(main()) == [i * i for i in range(50)]
    assert flood == list(range(3000))


def test_threadsafe_handles_cancelled_from_other_threads_while_the_loop_runs(loop):
    """Threads post callbacks and cancel every other one at once, racing the loop that
    runs them: nothing crashes, a callback runs at most once, and every callback not
    cancelled runs. (Whether a cancelled one had already started is a race either way.)"""
    n_threads, per_thread = 4, 500
    started = {}  # handle id -> monotonic time the callback started
    cancelled_at = {}
    lock = threading.Lock()
    done = loop.create_future()
    finished = [0]

    def callback(key):
        with lock:
            assert key not in started, "a callback ran twice"
            started[key] = time.monotonic()

    def worker(t):
        for i in range(per_thread):
            key = (t, i)
            h = loop.call_soon_threadsafe(callback, key)
            if i % 2:
                h.cancel()
                with lock:
                    cancelled_at[key] = time.monotonic()
        loop.call_soon_threadsafe(thread_done)

    def thread_done():
        finished[0] += 1
        if finished[0] == n_threads:
            # One more iteration, so that what was posted last has run.
            loop.call_soon(lambda: done.done() or done.set_result(None))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    loop.call_soon(lambda: [th.start() for th in threads])
    loop.run_until_complete(asyncio.wait_for(done, WATCHDOG_SECONDS))
    for th in threads:
        th.join()
    assert len(cancelled_at) == n_threads * per_thread // 2
    kept = {(t, i) for t in range(n_threads) for i in range(0, per_thread, 2)}
    assert kept <= set(started)
