"""run_in_executor, the default executor, and async generator finalization."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import sys
import threading

import pytest


def whoami(*args):
    return threading.current_thread(), args


# ---------------------------------------------------------------- executors


def test_run_in_executor_with_the_default_executor(loop):
    async def main():
        fut = loop.run_in_executor(None, whoami, 1, "a")
        assert isinstance(fut, asyncio.Future)
        assert fut.get_loop() is loop
        return await fut

    thread, args = loop.run_until_complete(main())
    assert args == (1, "a")
    assert thread is not threading.current_thread()


def test_run_in_executor_with_an_explicit_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="explicit-pool") as pool:
        thread, args = loop.run_until_complete(loop.run_in_executor(pool, whoami, "x"))
    assert args == ("x",)
    assert thread.name.startswith("explicit-pool")


def test_run_in_executor_propagates_exceptions(loop):
    def fail():
        raise KeyError("in worker")

    with pytest.raises(KeyError, match="in worker"):
        loop.run_until_complete(loop.run_in_executor(None, fail))


def test_run_in_executor_many_calls(loop):
    async def main():
        return await asyncio.gather(*[loop.run_in_executor(None, pow, i, 3) for i in range(200)])

    assert loop.run_until_complete(main()) == [i**3 for i in range(200)]


def test_set_default_executor_is_used_by_run_in_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="my-default")
    loop.set_default_executor(pool)
    thread, _ = loop.run_until_complete(loop.run_in_executor(None, whoami))
    assert thread.name.startswith("my-default")
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError):
        pool.submit(whoami)  # it was shut down


def test_shutdown_default_executor_joins_its_threads(loop):
    thread, _ = loop.run_until_complete(loop.run_in_executor(None, whoami))
    assert thread.is_alive()
    loop.run_until_complete(loop.shutdown_default_executor())
    thread.join(10)  # already joined by the shutdown; this only bounds a failure
    assert not thread.is_alive()


def test_run_in_default_executor_after_its_shutdown_raises(loop):
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError) as excinfo:
        loop.run_in_executor(None, whoami)
    assert str(excinfo.value) == "Executor shutdown has been called"
    # An explicit executor still works.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        _, args = loop.run_until_complete(loop.run_in_executor(pool, whoami, 5))
    assert args == (5,)


def test_shutdown_default_executor_without_one_returns(loop):
    assert loop.run_until_complete(loop.shutdown_default_executor()) is None


def test_close_shuts_down_the_default_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(pool)
    loop.run_until_complete(loop.run_in_executor(None, whoami))
    loop.close()
    with pytest.raises(RuntimeError):
        pool.submit(whoami)
    pool.shutdown(wait=True)


def test_run_in_executor_in_debug_mode_rejects_coroutine_functions(loop):
    async def coro_fn():
        pass

    loop.set_debug(True)
    with pytest.raises(TypeError) as excinfo:
        loop.run_in_executor(None, coro_fn)
    assert str(excinfo.value) == "coroutines cannot be used with run_in_executor()"


# -------------------------------------------------------- async generators


def test_asyncgen_hooks_installed_while_running_and_restored(loop):
    def my_firstiter(agen):
        pass

    def my_finalizer(agen):
        pass

    saved = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=my_firstiter, finalizer=my_finalizer)
    try:
        inside = []
        loop.call_soon(lambda: inside.append(sys.get_asyncgen_hooks()))
        loop.call_soon(loop.stop)
        loop.run_forever()
        after_run = sys.get_asyncgen_hooks()

        # Also restored when run_forever exits with an exception.
        def boom():
            raise KeyboardInterrupt

        loop.call_soon(boom)
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        after_error = sys.get_asyncgen_hooks()
    finally:
        sys.set_asyncgen_hooks(*saved)

    firstiter, finalizer = inside[0]
    assert callable(firstiter) and callable(finalizer)
    assert firstiter is not my_firstiter and finalizer is not my_finalizer
    assert after_run == (my_firstiter, my_finalizer)
    assert after_error == (my_firstiter, my_finalizer)


def test_shutdown_asyncgens_finalizes_suspended_generators(loop):
    events = []
    keep = []

    async def agen(name):
        try:
            events.append(f"{name}:start")
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0)  # finalization runs inside the loop
            events.append(f"{name}:finally")

    async def main():
        for name in ("g1", "g2"):
            g = agen(name)
            keep.append(g)  # kept alive, left suspended at the first yield
            assert await g.__anext__() == 1

    loop.run_until_complete(main())
    assert events == ["g1:start", "g2:start"]
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert sorted(events) == ["g1:finally", "g1:start", "g2:finally", "g2:start"]


def test_shutdown_asyncgens_reports_errors_to_the_exception_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    keep = []

    async def agen():
        try:
            yield 1
        finally:
            raise ValueError("broken finally")

    async def main():
        g = agen()
        keep.append(g)
        await g.__anext__()

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(contexts) == 1
    ctx = contexts[0]
    assert set(ctx) == {"message", "exception", "asyncgen"}
    assert ctx["asyncgen"] is keep[0]
    assert ctx["message"] == (
        f"an error occurred during closing of asynchronous generator {keep[0]!r}"
    )
    assert str(ctx["exception"]) == "broken finally"


def test_shutdown_asyncgens_with_no_generators(loop):
    assert loop.run_until_complete(loop.shutdown_asyncgens()) is None


def test_garbage_collected_asyncgen_is_finalized_by_the_running_loop(loop):
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            # Awaiting here only works if aclose() runs as a task on the loop.
            await asyncio.sleep(0)
            events.append(("finally", asyncio.get_running_loop() is loop))

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        del g
        gc.collect()
        for _ in range(100):
            if events:
                break
            await asyncio.sleep(0.001)

    loop.run_until_complete(main())
    assert events == [("finally", True)]


def test_asyncgen_first_iterated_in_the_loop_is_tracked(loop):
    events = []
    keep = []

    async def agen():
        try:
            yield 1
        finally:
            events.append("finally")

    async def main():
        g = agen()
        keep.append(g)
        async for _ in g:
            break  # leaves the generator suspended

    loop.run_until_complete(main())
    assert events == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert events == ["finally"]
