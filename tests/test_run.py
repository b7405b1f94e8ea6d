"""ferroloop.run() has asyncio.run()'s semantics; asyncio.run is the oracle."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest


@pytest.fixture
def run(impl, request, new_loop):
    # (new_loop only for the hang guard and the interpreter-state checks)
    if impl == "ferroloop":
        return request.getfixturevalue("ferroloop_module").run
    return asyncio.run


def test_run_returns_the_result(run):
    async def main():
        await asyncio.sleep(0)
        return "result"

    assert run(main()) == "result"


def test_run_propagates_the_exception(run):
    async def main():
        await asyncio.sleep(0)
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        run(main())


def test_run_closes_the_loop_and_leaves_no_running_loop(run):
    loops = []

    async def main():
        loops.append(asyncio.get_running_loop())

    run(main())
    assert loops[0].is_closed()
    assert not loops[0].is_running()
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_run_cancels_leftover_tasks(run):
    events = []

    async def leftover(name):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append(f"{name} cancelled")
            raise
        finally:
            events.append(f"{name} finally")

    async def main():
        for name in ("t1", "t2"):
            asyncio.get_running_loop().create_task(leftover(name))
        await asyncio.sleep(0)
        return "main done"

    assert run(main()) == "main done"
    assert sorted(events) == ["t1 cancelled", "t1 finally", "t2 cancelled", "t2 finally"]


def test_run_reports_leftover_tasks_failing_during_cancellation(run):
    contexts = []

    async def stubborn():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ValueError("raised while being cancelled")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
        loop.create_task(stubborn())
        await asyncio.sleep(0)

    run(main())
    assert len(contexts) == 1
    ctx = contexts[0]
    assert ctx["message"] == "unhandled exception during asyncio.run() shutdown"
    assert str(ctx["exception"]) == "raised while being cancelled"
    assert isinstance(ctx["task"], asyncio.Task)


def test_run_shuts_down_async_generators(run):
    events = []
    keep = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append("agen finally")

    async def main():
        g = agen()
        keep.append(g)
        await g.__anext__()

    run(main())
    assert events == ["agen finally"]


def test_run_shuts_down_the_default_executor(run):
    threads = []

    async def main():
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: threads.append(threading.current_thread())
        )

    run(main())
    assert len(threads) == 1
    threads[0].join(10)  # already joined by run(); this only bounds a failure
    assert not threads[0].is_alive()


@pytest.mark.parametrize("debug", [True, False])
def test_run_honours_debug(run, debug):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert run(main(), debug=debug) is debug


def test_run_debug_default_follows_the_environment(run, monkeypatch):
    monkeypatch.delenv("PYTHONASYNCIODEBUG", raising=False)

    async def main():
        return asyncio.get_running_loop().get_debug()

    assert run(main()) is bool(sys.flags.dev_mode)


def test_run_inside_a_running_loop_raises(run):
    errors = []

    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            run(coro)
        except RuntimeError as exc:
            errors.append(exc)
        finally:
            coro.close()

    run(main())
    assert len(errors) == 1
    assert str(errors[0]) == "asyncio.run() cannot be called from a running event loop"


def test_run_rejects_non_coroutines(run):
    with pytest.raises(ValueError) as excinfo:
        run(42)
    assert str(excinfo.value) == "a coroutine was expected, got 42"


def test_run_twice_in_a_row(run):
    async def main(x):
        await asyncio.sleep(0)
        return x

    assert [run(main(i)) for i in range(3)] == [0, 1, 2]
