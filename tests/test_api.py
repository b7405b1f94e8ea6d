"""Futures, tasks, the task factory, the running loop, and loop.time()."""

from __future__ import annotations

import asyncio
import time

import pytest


def run_one_batch(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


async def answer():
    await asyncio.sleep(0)
    return 42


def test_loop_is_an_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)


def test_closed_attribute_follows_close(loop):
    # asyncio's loop keeps `_closed`; libraries and test suites read it.
    assert loop._closed is False
    loop.close()
    assert loop._closed is True


# ------------------------------------------------------- futures and tasks


def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, "value")
    assert loop.run_until_complete(fut) == "value"


def test_create_task(loop):
    coro = answer()
    task = loop.create_task(coro)
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert task.get_coro() is coro
    assert task.get_name().startswith("Task-")
    assert loop.run_until_complete(task) == 42


def test_create_task_with_a_name(loop):
    task = loop.create_task(answer(), name="the-answer")
    assert task.get_name() == "the-answer"
    assert loop.run_until_complete(task) == 42


def test_tasks_run_in_creation_order(loop):
    order = []

    async def worker(i):
        order.append(i)

    async def main():
        await asyncio.gather(*[loop.create_task(worker(i)) for i in range(20)])

    loop.run_until_complete(main())
    assert order == list(range(20))


def test_task_factory_is_used_by_create_task(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    task = loop.create_task(answer(), name="named-after-factory")
    # The factory gets (loop, coro); the name is set on the task afterwards.
    assert calls == [(loop, {})]
    assert task.get_name() == "named-after-factory"
    assert loop.run_until_complete(task) == 42

    # run_until_complete wraps coroutines through the same factory.
    assert loop.run_until_complete(answer()) == 42
    assert len(calls) == 2

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    loop.run_until_complete(answer())
    assert len(calls) == 2


def test_task_factory_receives_the_context_when_given(loop):
    import contextvars

    calls = []

    def factory(lp, coro, **kwargs):
        calls.append(kwargs)
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    ctx = contextvars.Context()
    loop.run_until_complete(loop.create_task(answer(), context=ctx))
    assert calls == [{"context": ctx}]


def test_task_factory_may_return_a_custom_task(loop):
    class MyTask(asyncio.Task):
        pass

    loop.set_task_factory(lambda lp, coro, **kw: MyTask(coro, loop=lp, **kw))
    task = loop.create_task(answer())
    assert type(task) is MyTask
    assert loop.run_until_complete(task) == 42


# --------------------------------------------------------- running loop


def test_get_running_loop_and_get_event_loop_inside_callbacks(loop):
    seen = []

    def record(where):
        seen.append((where, asyncio.get_running_loop(), asyncio.get_event_loop()))

    loop.call_soon(record, "call_soon")
    loop.call_later(0, record, "call_later")
    loop.call_at(loop.time(), record, "call_at")
    loop.call_soon_threadsafe(record, "call_soon_threadsafe")
    loop.run_until_complete(asyncio.sleep(0.01))
    assert sorted(w for w, _, _ in seen) == [
        "call_at",
        "call_later",
        "call_soon",
        "call_soon_threadsafe",
    ]
    for _, running, event_loop in seen:
        assert running is loop
        assert event_loop is loop


def test_get_running_loop_and_current_task_inside_tasks(loop):
    async def main():
        this = asyncio.current_task()
        await asyncio.sleep(0)
        return asyncio.get_running_loop(), asyncio.get_event_loop(), this

    task = loop.create_task(main())
    running, event_loop, current = loop.run_until_complete(task)
    assert running is loop
    assert event_loop is loop
    assert current is task


def test_current_task_in_a_plain_callback_is_none(loop):
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.current_task()))
    run_one_batch(loop)
    assert seen == [None]


def test_no_running_loop_outside(loop):
    loop.run_until_complete(asyncio.sleep(0))
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()


def test_all_tasks_sees_the_loops_tasks(loop):
    async def sleeper():
        await asyncio.sleep(3600)

    async def main():
        t = loop.create_task(sleeper())
        await asyncio.sleep(0)
        tasks = asyncio.all_tasks()
        t.cancel()
        return t, tasks

    t, tasks = loop.run_until_complete(main())
    assert t in tasks
    assert len(tasks) == 2  # main and sleeper
    loop.run_until_complete(asyncio.sleep(0))
    assert asyncio.all_tasks(loop) == set()


# ------------------------------------------------------------------ time


def test_time_is_a_float_on_the_monotonic_clock(loop):
    for _ in range(100):
        before = time.monotonic()
        now = loop.time()
        after = time.monotonic()
        assert isinstance(now, float)
        # Same clock: a tiny slack only absorbs float conversion differences.
        assert before - 1e-6 <= now <= after + 1e-6


def test_time_is_monotonic_and_advances(loop):
    values = [loop.time() for _ in range(1000)]
    assert values == sorted(values)
    t0 = loop.time()
    time.sleep(0.02)
    assert loop.time() - t0 >= 0.019


def test_time_inside_a_callback_is_live(loop):
    # Not a cached per-iteration value: it moves while a callback runs.
    seen = []

    def cb():
        a = loop.time()
        time.sleep(0.01)
        seen.append(loop.time() - a)

    loop.call_soon(cb)
    run_one_batch(loop)
    assert seen[0] >= 0.009


def test_time_has_sub_millisecond_resolution(loop):
    values = []
    for _ in range(50):
        values.append(loop.time())
        spin_until = time.monotonic() + 0.0002
        while time.monotonic() < spin_until:
            pass

    def off_the_millisecond_grid(v):
        ms = v * 1000.0
        return abs(ms - round(ms)) > 1e-3  # more than a microsecond off a whole ms

    # Readings taken ~0.2 ms apart. With a real sub-millisecond clock nearly all
    # of them fall between whole milliseconds and some consecutive readings are
    # less than a millisecond apart; a clock rounded to milliseconds would put
    # every reading on the grid and every difference at 0 or >= 1 ms.
    assert sum(map(off_the_millisecond_grid, values)) >= 10
    diffs = [b - a for a, b in zip(values, values[1:])]
    assert any(0 < d < 0.0009 for d in diffs)
