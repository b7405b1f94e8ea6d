"""A loop and fork(): the child's inherited loop is harmless to its parent.

An epoll instance and an eventfd are shared across fork(), so a child that
registered, removed or polled on its parent's loop would change or steal from
it. ferroloop's inherited loop refuses to run or watch in the child (a clear
RuntimeError), removes nothing from the kernel's interest list when closed there,
and the parent's loop goes on serving. asyncio has no such guard (a child
closing an inherited selector loop unregisters the parent's fds), so the tests
of the guard run on ferroloop alone; a child that makes a loop of its own works
on both."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sys

import pytest
from net_helpers import fd_count, run
from versions import PY312

# Python 3.12+ warns about fork() in a process with threads (the executor's here):
# what these tests do in the child does not take locks another thread could hold.
pytestmark = pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")

INHERITED = "this event loop was created in another process"


def _fork_and_report(body) -> str:
    """Forks; the child runs body() and sends back what it returns; the parent
    waits for the child and returns that text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            text = body()
        except BaseException as exc:
            text = f"child raised {type(exc).__name__}: {exc}"
        os.write(w, text.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return b"".join(chunks).decode()


def test_an_inherited_loop_refuses_to_run_or_watch_in_the_child(ferroloop_module):
    loop = ferroloop_module.new_event_loop()
    r, w = os.pipe()
    try:
        loop.add_reader(r, lambda: None)

        def child():
            out = []
            for name, call in (
                ("run_until_complete", lambda: loop.run_until_complete(asyncio.sleep(0))),
                ("run_forever", loop.run_forever),
                ("add_reader", lambda: loop.add_reader(w, lambda: None)),
            ):
                try:
                    call()
                    out.append(f"{name}: ran")
                except RuntimeError as exc:
                    out.append(f"{name}: {INHERITED in str(exc)}")
            # Removing and closing are allowed, and touch nothing of the parent's.
            out.append(f"remove_reader: {loop.remove_reader(r)}")
            loop.call_soon_threadsafe(lambda: None)  # wakes nothing of the parent's
            loop.close()
            out.append(f"closed: {loop.is_closed()}")
            return "\n".join(out)

        assert _fork_and_report(child).splitlines() == [
            "run_until_complete: True",
            "run_forever: True",
            "add_reader: True",
            "remove_reader: True",
            "closed: True",
        ]
        # The parent's watch is still registered with the kernel.
        fired = []
        loop.remove_reader(r)
        loop.add_reader(r, lambda: (fired.append(os.read(r, 10)), loop.stop()))
        os.write(w, b"x")
        loop.call_later(5, loop.stop)
        loop.run_forever()
        assert fired == [b"x"]
    finally:
        loop.close()
        os.close(r)
        os.close(w)


def test_a_child_forked_under_a_running_server_leaves_it_serving(ferroloop_module):
    loop = ferroloop_module.new_event_loop()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()

        def child():
            # Everything a careless child might do with what it inherited.
            server.close()
            loop.stop()
            try:
                loop.close()
            except RuntimeError as exc:
                return str(exc)
            return "closed"

        said = await loop.run_in_executor(None, _fork_and_report, child)
        assert said in ("closed", "Cannot close a running event loop")
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"still here")
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still here"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    try:
        before = fd_count()
        run(loop, main())
        assert fd_count() <= before
    finally:
        loop.close()


def _child_runs_a_loop_of_its_own(queue, use_ferroloop):
    import asyncio as aio

    async def work():
        await aio.sleep(0.01)
        return type(aio.get_running_loop()).__module__

    if use_ferroloop:
        import ferroloop

        queue.put(ferroloop.run(work()))
    else:
        queue.put(aio.run(work()))


@pytest.mark.skipif(sys.platform != "linux", reason="the fork start method is Linux's default")
def test_multiprocessing_fork_child_under_a_running_loop(loop, impl):
    """As test_events' test_get_event_loop_new_process: a multiprocessing child forked
    while the loop runs makes and runs a loop of its own."""
    if impl == "asyncio" and not PY312:
        pytest.skip("asyncio before 3.12 does not reset the running loop in a forked child")
    ctx = multiprocessing.get_context("fork")

    async def main():
        queue = ctx.Queue()
        proc = ctx.Process(target=_child_runs_a_loop_of_its_own, args=(queue, impl == "ferroloop"))
        proc.start()
        result = await loop.run_in_executor(None, queue.get, True, 30)
        await loop.run_in_executor(None, proc.join, 30)
        assert proc.exitcode == 0
        queue.close()
        return result

    result = run(loop, main())
    assert result.startswith("ferroloop" if impl == "ferroloop" else "asyncio")


def test_the_parent_loop_still_polls_after_the_child_polls_nothing(ferroloop_module):
    """A socket the parent watches becomes readable while a child holds the inherited
    loop: the event reaches the parent (the child never polls the shared epoll)."""
    loop = ferroloop_module.new_event_loop()
    a, b = socket.socketpair()
    try:
        got = []
        loop.add_reader(a, lambda: (got.append(a.recv(10)), loop.stop()))

        def child():
            try:
                loop.run_forever()
            except RuntimeError:
                pass
            b.send(b"ping")
            return "sent"

        assert _fork_and_report(child) == "sent"
        loop.call_later(5, loop.stop)
        loop.run_forever()
        assert got == [b"ping"]
    finally:
        loop.close()
        a.close()
        b.close()
