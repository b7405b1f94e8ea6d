"""Garbage collection of loops, handles and callbacks, and leaks over many
loop lifetimes."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import socket
import warnings
import weakref

import pytest

owner_var = contextvars.ContextVar("owner_var")


class Owner:
    """Something whose bound methods are used as callbacks."""

    def callback(self, *args):
        pass

    def handler(self, loop, context):
        pass

    def task_factory(self, loop, coro, **kwargs):
        return asyncio.Task(coro, loop=loop, **kwargs)


def collect():
    for _ in range(3):
        gc.collect()


def run_one_batch(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


# -------------------------------------------------------------- cycles


@pytest.mark.parametrize("was_run", [False, True], ids=["never-run", "after-a-run"])
def test_cycle_through_an_unclosed_loop_is_collected(untracked_loop_factory, was_run):
    """owner -> loop -> its queues/timers/readers -> handles -> owner."""
    sock_a, sock_b = socket.socketpair()

    def build():
        loop = untracked_loop_factory()
        owner = Owner()
        owner.loop = loop
        ctx = contextvars.Context()
        ctx.run(owner_var.set, owner)
        owner.handles = [
            loop.call_soon(owner.callback, owner),
            loop.call_later(3600, owner.callback, owner),
            loop.call_at(loop.time() + 7200, owner.callback),
            loop.call_soon(print, context=ctx),
            loop.call_soon_threadsafe(owner.callback),
        ]
        loop.add_reader(sock_a, owner.callback, owner)
        loop.add_writer(sock_b, owner.callback)
        loop.set_exception_handler(owner.handler)
        loop.set_task_factory(owner.task_factory)
        if was_run:
            loop.remove_writer(sock_b)
            loop.call_soon(lambda: loop.call_soon(owner.callback, owner))
            run_one_batch(loop)
        return weakref.ref(owner)

    try:
        with warnings.catch_warnings():
            # asyncio warns about a loop that is garbage collected unclosed.
            warnings.simplefilter("ignore", ResourceWarning)
            ref = build()
            collect()
        assert ref() is None, "the cycle through the loop was not collected"
    finally:
        sock_a.close()
        sock_b.close()


def test_cycle_through_an_unclosed_loop_with_a_serving_server_is_collected(untracked_loop_factory):
    """owner -> loop -> the listening socket's reader -> protocol factory -> owner."""
    before = len(os.listdir("/proc/self/fd"))

    def build():
        loop = untracked_loop_factory()
        owner = Owner()
        owner.loop = loop
        owner.server = loop.run_until_complete(loop.create_server(lambda: owner, "127.0.0.1", 0))
        return weakref.ref(owner), weakref.ref(loop)

    with warnings.catch_warnings():
        # Warnings about the loop and the listening socket, both left unclosed.
        warnings.simplefilter("ignore", ResourceWarning)
        owner_ref, loop_ref = build()
        collect()
    assert owner_ref() is None, "the cycle through the serving loop was not collected"
    assert loop_ref() is None
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("kind", ["call_soon", "call_later"])
def test_cycle_through_the_copied_context_of_a_pending_callback_is_collected(
    untracked_loop_factory, kind
):
    """owner -> loop -> pending handle -> the context copied for it -> owner.

    The context is the copy scheduling makes of the caller's context (no context=),
    which holds the owner in a context variable.
    """

    def schedule(loop, owner):
        owner_var.set(owner)
        if kind == "call_soon":
            loop.call_soon(owner.callback)
        else:
            loop.call_later(3600, owner.callback)

    def build():
        loop = untracked_loop_factory()
        owner = Owner()
        owner.loop = loop
        contextvars.Context().run(schedule, loop, owner)
        return weakref.ref(owner)

    with warnings.catch_warnings():
        # asyncio warns about a loop that is garbage collected unclosed.
        warnings.simplefilter("ignore", ResourceWarning)
        ref = build()
        collect()
    assert ref() is None, "the cycle through the copied context was not collected"


def test_what_a_kept_pending_handle_holds_survives_its_dropped_loop(untracked_loop_factory):
    """A pending handle held by the program keeps its arguments and its context whole
    when its unclosed loop is dropped and collected: nothing it holds is finalized or
    cleared."""

    finalized = []

    class Kept(Owner):
        def __del__(self):
            finalized.append(self)

    def schedule(loop, kind):
        owner_var.set(Kept())  # reachable only through the context copied for the handle
        args = Kept()  # reachable only through the handle
        if kind == "call_soon":
            return loop.call_soon(print, args), weakref.ref(args)
        return loop.call_later(3600, print, args), weakref.ref(args)

    kept = []
    for kind in ("call_soon", "call_later"):
        loop = untracked_loop_factory()
        kept.append(contextvars.Context().run(schedule, loop, kind))
        loop.call_soon(print)  # the kept handle is no longer the last one scheduled
        del loop
    with warnings.catch_warnings():
        # asyncio warns about a loop that is garbage collected unclosed.
        warnings.simplefilter("ignore", ResourceWarning)
        collect()
    assert finalized == []
    for handle, args_ref in kept:
        assert isinstance(args_ref(), Kept)
        get_context = getattr(handle, "get_context", None)  # Python 3.12+, and ferroloop
        ctx = get_context() if get_context is not None else handle._context
        assert isinstance(ctx.run(owner_var.get), Kept)
        handle.cancel()


def test_cycle_through_the_copied_context_of_a_kept_handle_is_collected(loop):
    """owner -> handle (kept after it ran) -> its copied context -> owner."""

    def schedule(owner):
        owner_var.set(owner)
        owner.handle = loop.call_soon(owner.callback)

    def build():
        owner = Owner()
        contextvars.Context().run(schedule, owner)
        return weakref.ref(owner)

    ref = build()
    run_one_batch(loop)
    collect()
    assert ref() is None


def test_context_given_out_by_a_queued_handle_is_tracked(loop):
    """The context of a handle is visible to the collector once someone else has it."""
    handle = loop.call_soon(print)
    if not hasattr(handle, "get_context"):
        pytest.skip("Handle.get_context() is new in Python 3.12: asyncio 3.11 has no oracle")
    ctx = handle.get_context()
    assert gc.is_tracked(ctx)
    handle.cancel()
    run_one_batch(loop)
    del handle
    assert gc.is_tracked(ctx)
    assert ctx.run(lambda: 42) == 42


def test_cycle_through_a_closed_loop_is_collected(untracked_loop_factory):
    def build():
        loop = untracked_loop_factory()
        owner = Owner()
        owner.loop = loop
        owner.handle = loop.call_later(3600, owner.callback, owner)
        loop.set_exception_handler(owner.handler)
        loop.close()
        return weakref.ref(owner)

    ref = build()
    collect()
    assert ref() is None


def test_cycle_between_a_handle_and_its_callback_is_collected(loop):
    """The loop stays alive; owner -> handle -> bound method -> owner."""

    def build():
        owner = Owner()
        owner.handle = loop.call_later(3600, owner.callback, owner)
        owner.soon = loop.call_soon(owner.callback)
        return weakref.ref(owner), owner.handle, owner.soon

    ref, timer, soon = build()
    timer.cancel()
    soon.cancel()
    del timer, soon
    collect()
    assert ref() is None


def test_cycle_through_a_handle_kept_after_it_ran_is_collected(loop):
    """owner -> handle -> bound method -> owner, with the handle run first."""

    def build():
        owner = Owner()
        owner.soon = loop.call_soon(owner.callback, owner)
        owner.timer = loop.call_later(0, owner.callback)
        return weakref.ref(owner)

    ref = build()
    loop.run_until_complete(asyncio.sleep(0.01))
    collect()
    assert ref() is None


def test_a_fired_timer_kept_by_its_owner_leaves_no_cycle(impl, loop):
    """owner -> timer -> bound method -> owner, the timer fired: ferroloop releases the
    callback of a timer that ran (as uvloop does), so the owner goes with its last
    reference and the collector has nothing to do. asyncio keeps it: a cycle."""

    def build():
        owner = Owner()
        owner.timer = loop.call_later(0, owner.callback, owner)
        owner.soon = loop.call_soon(owner.callback)
        return weakref.ref(owner), owner.timer, owner.soon

    gc.disable()
    try:
        ref, timer, soon = build()
        loop.run_until_complete(asyncio.sleep(0.01))
        assert ref() is not None  # held by the call_soon handle and the owner's cycle
        if impl == "ferroloop":
            assert timer._callback is None and timer._args is None
            assert not timer.cancelled()
            assert repr(timer).startswith("<TimerHandle when=")
        else:
            assert timer._callback is not None
        # A plain handle keeps its callback once run, in both.
        assert soon._callback is not None
        soon.cancel()
        del timer, soon
        if impl == "ferroloop":
            assert ref() is None
        else:
            assert ref() is not None
    finally:
        gc.enable()
    collect()
    assert ref() is None


def test_cycle_through_a_cancelled_timer_dropped_by_the_loop_is_collected(loop):
    """The loop drops cancelled timers as it goes; one the owner keeps stays collectable."""

    def build():
        owner = Owner()
        owner.timers = [loop.call_later(3600 + i, owner.callback, owner) for i in range(300)]
        for t in owner.timers:
            t.cancel()
        return weakref.ref(owner)

    ref = build()
    run_one_batch(loop)
    collect()
    assert ref() is None


def test_cycle_through_the_context_of_a_failed_callback_is_collected(loop):
    """The exception handler keeps the context, which holds the handle."""
    seen = []

    def build():
        owner = Owner()

        def fail():
            raise ZeroDivisionError(owner)

        owner.fail = fail
        loop.set_exception_handler(lambda lp, context: seen.append(context))
        loop.call_soon(fail)
        return weakref.ref(owner)

    ref = build()
    run_one_batch(loop)
    assert len(seen) == 1 and isinstance(seen[0]["exception"], ZeroDivisionError)
    loop.set_exception_handler(None)
    seen.clear()
    collect()
    assert ref() is None


def test_reused_handles_start_clean(loop):
    """Handles freed and made again carry nothing over: no weak references, no state."""
    refs = []
    for i in range(3000):
        h = loop.call_soon(noop, i)
        refs.append(weakref.ref(h))
        if i % 2:
            h.cancel()
        del h
        t = loop.call_later(3600, noop)
        refs.append(weakref.ref(t))
        t.cancel()
        del t
    run_one_batch(loop)
    collect()
    assert all(r() is None for r in refs)
    for i in range(300):
        h = loop.call_soon(noop, i)
        t = loop.call_at(1e9, noop, i)
        assert not h.cancelled() and not t.cancelled()
        assert weakref.ref(h)() is h and weakref.ref(t)() is t
        assert repr(h).startswith("<Handle noop(") and h._args == (i,)
        assert t.when() == 1e9
        t.cancel()
    run_one_batch(loop)


def test_weak_reference_callbacks_run_when_handles_are_freed(loop):
    fired = []
    h = loop.call_soon(noop)
    t = loop.call_later(3600, noop)
    refs = [
        weakref.ref(h, lambda r: fired.append("handle")),
        weakref.ref(t, lambda r: fired.append("timer")),
    ]
    t.cancel()
    del h, t
    run_one_batch(loop)
    assert sorted(fired) == ["handle", "timer"]
    assert all(r() is None for r in refs)


def test_callbacks_are_released_after_they_ran(loop):
    owner = Owner()
    ref = weakref.ref(owner)
    loop.call_soon(owner.callback, owner)
    loop.call_later(0, owner.callback)
    loop.call_soon_threadsafe(owner.callback)
    del owner
    loop.run_until_complete(asyncio.sleep(0.01))
    collect()
    assert ref() is None


def test_cancelled_timer_releases_its_callback_while_still_referenced(loop):
    owner = Owner()
    ref = weakref.ref(owner)
    handle = loop.call_later(3600, owner.callback, owner)
    handle.cancel()
    del owner
    collect()
    assert ref() is None
    assert handle.cancelled()  # the handle itself is still alive


def test_close_releases_pending_callbacks_and_readers(loop):
    sock_a, sock_b = socket.socketpair()
    try:
        owner = Owner()
        ref = weakref.ref(owner)
        loop.call_soon(owner.callback, owner)
        loop.call_later(3600, owner.callback)
        loop.add_reader(sock_a, owner.callback)
        loop.add_writer(sock_b, owner.callback)
        del owner
        collect()
        assert ref() is not None  # the loop holds it while the callbacks are pending
        loop.close()
        collect()
        assert ref() is None
    finally:
        sock_a.close()
        sock_b.close()


def test_removed_reader_releases_its_callback(loop):
    sock_a, sock_b = socket.socketpair()
    try:
        owner = Owner()
        ref = weakref.ref(owner)
        loop.add_reader(sock_a, owner.callback)
        loop.add_writer(sock_b, owner.callback)
        del owner
        assert loop.remove_reader(sock_a) is True
        assert loop.remove_writer(sock_b) is True
        collect()
        assert ref() is None
    finally:
        sock_a.close()
        sock_b.close()


def test_exception_handler_and_task_factory_are_released_when_reset(loop):
    owner = Owner()
    ref = weakref.ref(owner)
    loop.set_exception_handler(owner.handler)
    loop.set_task_factory(owner.task_factory)
    del owner
    loop.set_exception_handler(None)
    loop.set_task_factory(None)
    collect()
    assert ref() is None


# ------------------------------------------------- many loop lifetimes


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def noop(*args):
    pass


def measure_leaks(make_cycle, warmup, cycles):
    make_cycle(warmup)  # allocator pools, free lists and lazy imports settle
    collect()
    fds0, rss0, objs0 = open_fds(), rss_bytes(), len(gc.get_objects())
    make_cycle(cycles)
    collect()
    return open_fds() - fds0, rss_bytes() - rss0, len(gc.get_objects()) - objs0


# A leak of one small object per loop shows up as thousands of extra objects;
# a native leak of a few hundred bytes per loop as megabytes of RSS. These
# bounds stay far above the noise of a healthy run.
MAX_RSS_GROWTH = 1024 * 1024
MAX_OBJECT_GROWTH = 200


def test_a_closed_loop_is_freed_without_the_collector(untracked_loop_factory):
    # asyncio's loop, once closed, holds nothing that refers back to it; neither does
    # ferroloop's (the bound call_soon it keeps for speed goes with close()).
    loop = untracked_loop_factory()
    loop.run_until_complete(asyncio.sleep(0))
    ref = weakref.ref(loop)
    loop.close()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del loop
        assert ref() is None
    finally:
        if was_enabled:
            gc.enable()


def test_call_soon_replaced_on_the_instance_is_used_by_tasks(loop):
    # Tasks look call_soon up on the loop for every step: one set on the instance
    # (as tests with mocks do) is the one they call.
    calls = []
    original = loop.call_soon

    def spy(callback, *args, context=None):
        calls.append(callback)
        return original(callback, *args, context=context)

    loop.call_soon = spy

    async def main():
        await asyncio.sleep(0)
        return "done"

    assert loop.run_until_complete(main()) == "done"
    assert len(calls) >= 2
    del loop.call_soon
    assert loop.call_soon == original


def test_an_open_loop_keeps_its_bound_call_soon_until_close(impl, untracked_loop_factory):
    # A known difference (README): ferroloop keeps its bound call_soon as an instance
    # attribute while open, so replacing call_soon on the class does not reach a loop
    # made before; asyncio's loop looks it up on the class every time.
    loop = untracked_loop_factory()
    cls = type(loop)
    original = cls.call_soon
    try:
        cls.call_soon = lambda self, *a, **k: "from the class"
        from_class = loop.call_soon(noop) == "from the class"
    finally:
        cls.call_soon = original
    if impl == "ferroloop":
        assert "call_soon" in vars(loop)
        assert not from_class
    else:
        assert "call_soon" not in vars(loop)
        assert from_class
    run_one_batch(loop)
    loop.close()
    assert "call_soon" not in vars(loop)


def test_call_soon_overridden_by_a_subclass_is_used(impl):
    if impl == "ferroloop":
        import ferroloop

        base = ferroloop.Loop
    else:
        base = asyncio.SelectorEventLoop
    calls = []

    class Counting(base):
        def call_soon(self, callback, *args, context=None):
            calls.append(callback)
            return super().call_soon(callback, *args, context=context)

    loop = Counting()
    try:
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    assert len(calls) >= 2


def test_create_and_close_many_loops(untracked_loop_factory):
    def cycle(n):
        for _ in range(n):
            lp = untracked_loop_factory()
            lp.call_soon(noop, 1)
            lp.call_later(3600, noop)
            lp.close()

    cycles = 10_000
    fds, rss, objs = measure_leaks(cycle, 1000, cycles)
    assert fds == 0, f"{fds} file descriptors leaked over {cycles} loops"
    assert objs < MAX_OBJECT_GROWTH, f"{objs} objects leaked over {cycles} loops"
    assert rss < MAX_RSS_GROWTH, f"RSS grew by {rss} bytes ({rss / cycles:.0f} per loop)"


def test_run_and_close_many_loops(untracked_loop_factory):
    async def work(lp):
        fut = lp.create_future()
        lp.call_soon(fut.set_result, 1)
        lp.call_later(3600, noop)
        lp.call_soon_threadsafe(noop)
        await fut
        await asyncio.sleep(0)

    def cycle(n):
        for _ in range(n):
            lp = untracked_loop_factory()
            lp.run_until_complete(work(lp))
            lp.close()

    cycles = 3000
    fds, rss, objs = measure_leaks(cycle, 300, cycles)
    assert fds == 0, f"{fds} file descriptors leaked over {cycles} loops"
    assert objs < MAX_OBJECT_GROWTH, f"{objs} objects leaked over {cycles} loops"
    assert rss < MAX_RSS_GROWTH, f"RSS grew by {rss} bytes ({rss / cycles:.0f} per loop)"


def test_many_callbacks_on_one_loop_do_not_accumulate(loop):
    def batch(n):
        for _ in range(n // 100):
            for i in range(100):
                loop.call_soon(noop, i)
                loop.call_later(3600, noop).cancel()
            run_one_batch(loop)

    fds, rss, objs = measure_leaks(batch, 2000, 50_000)
    assert fds == 0
    assert objs < MAX_OBJECT_GROWTH, f"{objs} objects leaked over 50000 callbacks"
    assert rss < MAX_RSS_GROWTH, f"RSS grew by {rss} bytes"
