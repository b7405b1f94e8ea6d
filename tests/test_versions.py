"""The loop API as each CPython version's asyncio has it: what 3.12 and 3.13 added
(eager tasks, create_task's keyword arguments, the 3.13 Server API, keep_alive,
cleanup_socket), each run against both loops, so asyncio of the running version
is the oracle. A test of an API the running version lacks checks that both loops
refuse it alike."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from net_helpers import Echo, Recorder, run, settle
from versions import PY312, PY313

# asyncio 3.13.3 passes create_task's keyword arguments through to the task factory.
TASK_KWARGS = sys.version_info >= (3, 13, 3)

needs_312 = pytest.mark.skipif(not PY312, reason="asyncio added this in Python 3.12")
needs_313 = pytest.mark.skipif(not PY313, reason="asyncio added this in Python 3.13")


async def _noop():
    return "done"


# ---------------------------------------------------------------- tasks


@needs_312
def test_eager_task_factory_runs_the_first_step_at_once(loop):
    steps = []

    async def work():
        steps.append("first")
        await asyncio.sleep(0)
        steps.append("second")
        return 7

    async def main():
        loop.set_task_factory(asyncio.eager_task_factory)
        task = loop.create_task(work())
        steps.append("created")
        assert await task == 7
        # A coroutine that finishes in its first step gives a done task at once.
        done = loop.create_task(_noop())
        assert done.done() and done.result() == "done"

    run(loop, main())
    assert steps == ["first", "created", "second"]


@needs_312
def test_eager_task_factory_outside_a_running_loop_defers_the_first_step(loop):
    steps = []

    async def work():
        steps.append("ran")

    loop.set_task_factory(asyncio.eager_task_factory)
    task = loop.create_task(work())
    assert steps == [] and not task.done()
    loop.run_until_complete(task)
    assert steps == ["ran"]


@needs_312
def test_create_eager_task_factory_with_a_task_subclass(loop):
    class MyTask(asyncio.Task):
        pass

    async def main():
        loop.set_task_factory(asyncio.create_eager_task_factory(MyTask))
        task = loop.create_task(_noop(), name="mine")
        assert type(task) is MyTask and task.get_name() == "mine"
        assert task.done() and task.result() == "done"

    run(loop, main())


def test_create_task_keyword_arguments(loop):
    async def main():
        if TASK_KWARGS:
            task = loop.create_task(_noop(), eager_start=True)
            assert task.done() and task.result() == "done"
        else:
            coro = _noop()
            with pytest.raises(TypeError, match="unexpected keyword argument 'eager_start'"):
                loop.create_task(coro, eager_start=True)
            coro.close()
        task = loop.create_task(_noop(), name="named")
        assert task.get_name() == "named"
        assert await task == "done"

    run(loop, main())


def test_task_factory_receives_what_this_version_passes(loop):
    seen = []

    def factory(lp, coro, **kwargs):
        seen.append(sorted(kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    async def main():
        loop.set_task_factory(factory)
        ctx = __import__("contextvars").copy_context()
        t1 = loop.create_task(_noop())
        t2 = loop.create_task(_noop(), name="n", context=ctx)
        await asyncio.gather(t1, t2)
        assert t2.get_name() == "n"

    run(loop, main())
    # Before 3.13.3 the factory gets context= only (the name is set afterwards).
    assert seen == ([[], ["context", "name"]] if TASK_KWARGS else [[], ["context"]])


# ---------------------------------------------------------------- servers


def _client(addr):
    s = socket.create_connection(addr)
    s.setblocking(False)
    return s


@needs_313
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_server_close_and_abort_clients(loop, how):
    async def main():
        protocols = []

        def factory():
            p = Recorder(loop)
            protocols.append(p)
            return p

        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        clients = [_client(addr) for _ in range(3)]
        while len(protocols) < 3 or not all(p.transport for p in protocols):
            await asyncio.sleep(0.01)
        server.close()
        waiter = loop.create_task(server.wait_closed())
        await settle()
        assert not waiter.done()  # the connections are still there
        getattr(server, how)()
        await asyncio.wait_for(waiter, 5)
        for p in protocols:
            await asyncio.wait_for(p.lost, 5)
        for c in clients:
            c.close()

    run(loop, main())


@pytest.mark.skipif(PY313, reason="the API exists from Python 3.13 on")
def test_server_client_methods_absent_before_313(loop):
    async def main():
        server = await loop.create_server(lambda: Echo(loop), "127.0.0.1", 0)
        assert not hasattr(server, "close_clients")
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_server_keep_alive(loop):
    async def main():
        if not PY313:
            with pytest.raises(TypeError, match="unexpected keyword argument 'keep_alive'"):
                await loop.create_server(lambda: Echo(loop), "127.0.0.1", 0, keep_alive=True)
            return
        for keep_alive, expected in ((True, 1), (None, 0)):
            server = await loop.create_server(
                lambda: Echo(loop), "127.0.0.1", 0, keep_alive=keep_alive
            )
            sock = server.sockets[0]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == expected
            server.close()
            await server.wait_closed()

    run(loop, main())


def test_create_unix_server_cleanup_socket(loop, tmp_path):
    async def main():
        path = str(tmp_path / "s.sock")
        if not PY313:
            with pytest.raises(TypeError, match="unexpected keyword argument 'cleanup_socket'"):
                await loop.create_unix_server(lambda: Echo(loop), path, cleanup_socket=True)
            assert not os.path.exists(path)
            server = await loop.create_unix_server(lambda: Echo(loop), path)
            server.close()
            await server.wait_closed()
            assert os.path.exists(path)  # 3.11 and 3.12 leave the socket file
            return
        # 3.13: removed on close by default, kept with cleanup_socket=False.
        server = await loop.create_unix_server(lambda: Echo(loop), path)
        assert os.path.exists(path)
        server.close()
        await server.wait_closed()
        assert not os.path.exists(path)
        server = await loop.create_unix_server(lambda: Echo(loop), path, cleanup_socket=False)
        server.close()
        await server.wait_closed()
        assert os.path.exists(path)
        # A file that replaced the socket's is not removed.
        os.unlink(path)
        server = await loop.create_unix_server(lambda: Echo(loop), path)
        os.unlink(path)
        with open(path, "w"):
            pass
        server.close()
        await server.wait_closed()
        assert os.path.exists(path)

    run(loop, main())


# ---------------------------------------------------------------- running


@needs_312
def test_asyncio_run_with_loop_factory(ferroloop_module):
    seen = []

    async def main():
        seen.append(type(asyncio.get_running_loop()))
        return 5

    assert asyncio.run(main(), loop_factory=ferroloop_module.new_event_loop) == 5
    assert seen == [ferroloop_module.Loop]


def test_asyncio_runner_with_loop_factory(ferroloop_module):
    async def main():
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=ferroloop_module.new_event_loop) as runner:
        assert runner.run(main()) is ferroloop_module.Loop
        assert runner.run(main()) is ferroloop_module.Loop


def test_handles_are_made_in_place_on_the_interpreters_checked(ferroloop_module):
    from ferroloop import _core

    import sysconfig

    expected = (3, 11) <= sys.version_info[:2] <= (3, 13) and not sysconfig.get_config_var(
        "Py_GIL_DISABLED"
    )
    assert _core._handles_in_place is bool(expected)


def test_no_warnings_from_ferroloop_entry_points(tmp_path):
    """``python -W error`` through ferroloop.run, python -m ferroloop and a policy."""
    script = tmp_path / "prog.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys, ferroloop

            async def main():
                await asyncio.sleep(0)
                return type(asyncio.get_running_loop()).__module__

            assert ferroloop.run(main()).startswith("ferroloop")
            if sys.argv[1:] == ["via-main"]:
                assert asyncio.run(main()).startswith("ferroloop")
            print("ok")
            """
        )
    )
    for argv in (
        [sys.executable, "-W", "error", str(script)],
        [sys.executable, "-W", "error", "-m", "ferroloop", str(script), "via-main"],
    ):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "ok"
