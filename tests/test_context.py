"""contextvars propagation through the loop's scheduling methods and tasks."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading

import pytest

var = contextvars.ContextVar("var", default="default")

METHODS = ["call_soon", "call_later", "call_at", "call_soon_threadsafe"]


def schedule(loop, method, callback, *args, **kwargs):
    """Schedule ``callback`` with one of the loop's methods, to run promptly."""
    if method == "call_soon":
        return loop.call_soon(callback, *args, **kwargs)
    if method == "call_later":
        return loop.call_later(0, callback, *args, **kwargs)
    if method == "call_at":
        return loop.call_at(loop.time(), callback, *args, **kwargs)
    if method == "call_soon_threadsafe":
        return loop.call_soon_threadsafe(callback, *args, **kwargs)
    raise ValueError(method)


def run_until_idle(loop):
    loop.run_until_complete(asyncio.sleep(0.01))


@pytest.mark.parametrize("method", METHODS)
def test_callback_runs_in_the_given_context(loop, method):
    ctx = contextvars.Context()
    ctx.run(var.set, "in-ctx")
    seen = []

    def cb():
        seen.append(var.get())
        var.set("changed-by-callback")
        seen.append(contextvars.copy_context()[var])

    schedule(loop, method, cb, context=ctx)
    run_until_idle(loop)
    assert seen == ["in-ctx", "changed-by-callback"]
    # The callback ran *in* ctx, not in a copy of it.
    assert ctx[var] == "changed-by-callback"
    assert var.get() == "default"


@pytest.mark.parametrize("method", METHODS)
def test_default_context_is_a_copy_taken_when_scheduling(loop, method):
    seen = []

    def cb():
        seen.append(var.get())
        var.set("set-in-callback")

    def scheduler():
        var.set("at-schedule-time")
        schedule(loop, method, cb)
        var.set("changed-after-scheduling")
        return var.get()

    outer = contextvars.copy_context()
    assert outer.run(scheduler) == "changed-after-scheduling"
    run_until_idle(loop)
    assert seen == ["at-schedule-time"]
    # The callback's write stayed in its own copy.
    assert outer[var] == "changed-after-scheduling"
    assert var.get() == "default"


@pytest.mark.parametrize("method", METHODS)
def test_each_callback_gets_its_own_copy(loop, method):
    seen = []

    def writer():
        var.set("written")
        seen.append(("writer", var.get()))

    def reader():
        seen.append(("reader", var.get()))

    token = var.set("scheduler")
    try:
        schedule(loop, method, writer)
        schedule(loop, method, reader)
    finally:
        var.reset(token)
    run_until_idle(loop)
    assert seen == [("writer", "written"), ("reader", "scheduler")]


@pytest.mark.parametrize("method", METHODS)
def test_a_context_that_is_not_a_context_is_used_as_asyncio_uses_it(loop, method):
    """context= is not checked: its run() is called, and an object without one fails
    in the callback, through the exception handler."""
    seen, errors = [], []

    class RunsItself:
        def run(self, callback, *args):
            seen.append("run")
            return callback(*args)

    loop.set_exception_handler(lambda lp, context: errors.append(context))
    schedule(loop, method, seen.append, "called", context=RunsItself())
    kept = schedule(loop, method, seen.append, "never", context=1)
    schedule(loop, method, seen.append, "never", context="text")
    run_until_idle(loop)
    del kept
    run_until_idle(loop)
    assert seen == ["run", "called"]
    assert [type(c["exception"]) for c in errors] == [AttributeError, AttributeError]
    assert [str(c["exception"]) for c in errors] == [
        "'int' object has no attribute 'run'",
        "'str' object has no attribute 'run'",
    ]
    assert all(c["message"].startswith("Exception in callback ") for c in errors)


def test_the_same_context_can_be_shared_by_several_callbacks(loop):
    ctx = contextvars.Context()
    seen = []

    def bump():
        var.set(var.get() + "+")
        seen.append(var.get())

    for _ in range(3):
        loop.call_soon(bump, context=ctx)
    run_until_idle(loop)
    assert seen == ["default+", "default++", "default+++"]
    assert ctx[var] == "default+++"


def test_call_soon_threadsafe_copies_the_calling_threads_context(loop):
    seen = []

    def thread_main():
        var.set("from-thread")
        loop.call_soon_threadsafe(lambda: seen.append(var.get()))

    var.set("main-thread")
    try:
        t = threading.Thread(target=thread_main)
        t.start()
        t.join()
        run_until_idle(loop)
    finally:
        var.set("default")
    assert seen == ["from-thread"]


def test_handle_get_context(loop, impl):
    if impl == "asyncio" and sys.version_info < (3, 12):
        pytest.skip("Handle.get_context() is new in Python 3.12: asyncio 3.11 has no oracle")
    ctx = contextvars.Context()
    h = loop.call_soon(lambda: None, context=ctx)
    assert h.get_context() is ctx
    th = loop.call_later(10, lambda: None, context=ctx)
    assert th.get_context() is ctx
    th.cancel()

    token = var.set("snapshot")
    try:
        h2 = loop.call_soon(lambda: None)
    finally:
        var.reset(token)
    default_ctx = h2.get_context()
    assert isinstance(default_ctx, contextvars.Context)
    assert default_ctx[var] == "snapshot"


def test_create_task_with_context(loop):
    ctx = contextvars.Context()
    ctx.run(var.set, "task-ctx")

    async def coro():
        before = var.get()
        await asyncio.sleep(0)
        var.set("set-in-task")
        await asyncio.sleep(0)
        return before, var.get()

    async def main():
        return await loop.create_task(coro(), context=ctx)

    assert loop.run_until_complete(main()) == ("task-ctx", "set-in-task")
    assert ctx[var] == "set-in-task"
    assert var.get() == "default"


def test_create_task_copies_the_current_context_by_default(loop):
    async def child():
        seen = var.get()
        var.set("child-wrote")
        return seen

    async def main():
        var.set("parent")
        task = loop.create_task(child())
        var.set("parent-changed")
        result = await task
        return result, var.get()

    assert loop.run_until_complete(main()) == ("parent", "parent-changed")


def test_future_done_callbacks_run_in_their_context(loop):
    ctx = contextvars.Context()
    ctx.run(var.set, "done-callback-ctx")
    seen = []
    fut = loop.create_future()
    fut.add_done_callback(lambda f: seen.append(var.get()), context=ctx)
    loop.call_soon(fut.set_result, None)
    run_until_idle(loop)
    assert seen == ["done-callback-ctx"]


def test_context_does_not_leak_between_run_until_complete_calls(loop):
    async def setter():
        var.set("leak?")

    async def getter():
        return var.get()

    loop.run_until_complete(setter())
    assert loop.run_until_complete(getter()) == "default"
    assert var.get() == "default"
