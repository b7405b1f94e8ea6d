"""Subprocesses against both loops: asyncio.create_subprocess_exec/_shell, the
process protocol's callbacks and their order, Popen's keywords and its spawn
errors, killing and signalling, large outputs on both pipes at once, reaping
(no zombies, with or without awaiting), fds (none of the loop's leak into a
child, none left behind), and the reaping fallback where pidfds are refused."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from net_helpers import fd_count, run

PY = sys.executable
PIPE = asyncio.subprocess.PIPE


def _gone(pid: int) -> bool:
    """True once ``pid`` is neither running nor a zombie of ours."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


async def _until_gone(pid: int, timeout: float = 10) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if not os.path.exists(f"/proc/{pid}") or _gone(pid) and _zombie_free(pid):
            return True
        await asyncio.sleep(0.01)
    return False


def _zombie_free(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return True


def test_communicate_large_output_on_both_pipes(loop):
    code = textwrap.dedent(
        """
        import sys
        data = sys.stdin.buffer.read()
        sys.stdout.buffer.write(data * 2)
        sys.stderr.buffer.write(data[::-1])
        sys.exit(3)
        """
    )
    data = os.urandom(1 << 20) * 3

    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, "-c", code, stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        out, err = await p.communicate(data)
        return out == data * 2, err == data[::-1], p.returncode

    assert run(loop, main(), timeout=60) == (True, True, 3)


def test_shell_and_exit_codes(loop):
    async def main():
        codes = []
        for cmd in ("exit 0", "exit 7", "kill -9 $$"):
            p = await asyncio.create_subprocess_shell(cmd)
            codes.append(await p.wait())
        p = await asyncio.create_subprocess_shell("echo hi; echo err >&2", stdout=PIPE, stderr=PIPE)
        codes.append(await p.communicate())
        return codes

    assert run(loop, main()) == [0, 7, -9, (b"hi\n", b"err\n")]


@pytest.mark.parametrize("how", ["terminate", "kill", "send_signal"])
def test_signalling_a_running_child(loop, how):
    async def main():
        p = await asyncio.create_subprocess_exec("sleep", "30")
        if how == "send_signal":
            p.send_signal(signal.SIGUSR1)
        else:
            getattr(p, how)()
        return await asyncio.wait_for(p.wait(), 10)

    expected = {"terminate": -signal.SIGTERM, "kill": -signal.SIGKILL, "send_signal": -signal.SIGUSR1}
    assert run(loop, main()) == expected[how]


def test_spawn_errors_surface_as_popen_raises_them_and_leak_nothing(loop):
    def bad_preexec():
        raise ValueError("preexec failed")

    async def main():
        errors = []
        for kwargs in (
            dict(args=("no-such-program-anywhere",)),
            dict(args=("true",), cwd="/no/such/dir"),
            dict(args=("true",), preexec_fn=bad_preexec),
        ):
            args = kwargs.pop("args")
            try:
                await asyncio.create_subprocess_exec(*args, stdout=PIPE, **kwargs)
            except Exception as exc:
                errors.append((type(exc).__name__, getattr(exc, "errno", None)))
        return errors

    before = fd_count()
    assert run(loop, main()) == [
        ("FileNotFoundError", errno.ENOENT),
        ("FileNotFoundError", errno.ENOENT),
        ("SubprocessError", None),
    ]
    assert fd_count() == before


def test_invalid_arguments_as_asyncio(loop):
    async def main():
        out = []
        for call in (
            lambda: loop.subprocess_exec(asyncio.SubprocessProtocol, PY, universal_newlines=True),
            lambda: loop.subprocess_exec(asyncio.SubprocessProtocol, PY, bufsize=4096),
            lambda: loop.subprocess_shell(asyncio.SubprocessProtocol, ["ls"]),
            lambda: loop.subprocess_shell(asyncio.SubprocessProtocol, "ls", text=True),
            lambda: loop.subprocess_exec(asyncio.SubprocessProtocol, PY, encoding="utf-8"),
        ):
            try:
                await call()
            except (ValueError, TypeError) as exc:
                out.append((type(exc).__name__, str(exc)))
        return out

    got = run(loop, main())
    assert len(got) == 5 and all(name == "ValueError" for name, _ in got)


def test_stdio_forms(loop, tmp_path):
    path = tmp_path / "out.txt"

    async def main():
        results = []
        p = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; print('o'); print('e', file=sys.stderr)",
            stdout=PIPE, stderr=subprocess.STDOUT,
        )
        results.append(await p.communicate())
        p = await asyncio.create_subprocess_exec(
            PY, "-c", "print('x')", stdout=subprocess.DEVNULL
        )
        results.append(await p.communicate())
        with open(path, "wb") as f:
            p = await asyncio.create_subprocess_exec(PY, "-c", "print('to file')", stdout=f)
            await p.wait()
        with open(path, "rb") as f:
            p = await asyncio.create_subprocess_exec(
                PY, "-c", "import sys; print(sys.stdin.read().upper())", stdin=f.fileno(), stdout=PIPE
            )
            results.append(await p.communicate())
        return results

    assert run(loop, main()) == [(b"o\ne\n", None), (None, None), (b"TO FILE\n\n", None)]


def test_popen_keywords(loop, tmp_path):
    r, w = os.pipe()
    code = textwrap.dedent(
        """
        import os, sys
        fd = int(sys.argv[1])
        os.write(fd, b"passed")
        print(os.getcwd(), os.environ.get("FERRO_X"), os.getsid(0) == os.getpid(),
              oct(os.umask(0)), os.getpgid(0) == os.getpid())
        """
    )

    async def main():
        p = await asyncio.create_subprocess_exec(
            PY, "-c", code, str(w), stdout=PIPE, cwd=str(tmp_path),
            env={**os.environ, "FERRO_X": "yes"}, pass_fds=(w,),
            start_new_session=True, umask=0o027,
        )
        out, _ = await p.communicate()
        return out.decode().split(), p.returncode

    try:
        words, rc = run(loop, main())
        assert rc == 0
        assert words == [str(tmp_path), "yes", "True", "0o27", "True"]
        assert os.read(r, 10) == b"passed"
    finally:
        os.close(r)
        os.close(w)


class Recorder(asyncio.SubprocessProtocol):
    def __init__(self, loop):
        self.events = []
        self.done = loop.create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def pipe_data_received(self, fd, data):
        self.events.append(("data", fd))

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe_lost", fd, exc))

    def process_exited(self):
        self.events.append("exited")

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.done.set_result(None)


def test_protocol_callbacks_and_their_order(loop):
    async def main():
        transport, proto = await loop.subprocess_exec(
            lambda: Recorder(loop), PY, "-c",
            "import sys; sys.stdout.write('a'); sys.stdout.flush(); sys.stderr.write('b')",
            stdin=PIPE, stdout=PIPE, stderr=PIPE,
        )
        assert transport.get_pid() > 0
        assert transport.get_pipe_transport(0) is not None
        transport.get_pipe_transport(0).close()
        await asyncio.wait_for(proto.done, 10)
        rc = transport.get_returncode()
        transport.close()
        return proto.events, rc

    events, rc = run(loop, main())
    assert rc == 0
    assert events[0] == "made" and events[-1] == ("lost", None)
    middle = events[1:-1]
    assert ("data", 1) in middle and ("data", 2) in middle
    assert {e for e in middle if e[0] == "pipe_lost"} == {
        ("pipe_lost", 0, None), ("pipe_lost", 1, None), ("pipe_lost", 2, None)
    }
    assert "exited" in middle
    # Data on a pipe comes before that pipe's loss.
    assert middle.index(("data", 1)) < middle.index(("pipe_lost", 1, None))


def test_close_kills_a_running_child(loop):
    async def main():
        transport, proto = await loop.subprocess_exec(lambda: Recorder(loop), "sleep", "30")
        pid = transport.get_pid()
        transport.close()
        await asyncio.wait_for(proto.done, 10)
        return pid, transport.get_returncode()

    pid, rc = run(loop, main())
    assert rc == -signal.SIGKILL


def test_many_children_at_once_are_all_reaped(loop):
    async def main():
        procs = [await asyncio.create_subprocess_exec("true") for _ in range(150)]
        codes = await asyncio.gather(*(p.wait() for p in procs))
        gone = [await _until_gone(p.pid) for p in procs]
        return set(codes), all(gone)

    assert run(loop, main(), timeout=120) == ({0}, True)


def test_a_child_nobody_awaits_leaves_no_zombie(loop):
    async def main():
        p = await asyncio.create_subprocess_exec("true")
        pid = p.pid
        del p
        return await _until_gone(pid)

    assert run(loop, main())


def test_no_fd_of_the_loop_leaks_into_the_child(loop):
    async def main():
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        p = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))",
            stdout=PIPE,
        )
        out, _ = await p.communicate()
        server.close()
        await server.wait_closed()
        return eval(out)

    fds = run(loop, main())
    # stdin, stdout (the pipe), stderr, and the fd listdir itself opened.
    assert len(fds) <= 4 and fds[:3] == [0, 1, 2]


def test_fds_are_released(loop):
    async def main():
        for _ in range(5):
            p = await asyncio.create_subprocess_exec(
                PY, "-c", "print(1)", stdin=PIPE, stdout=PIPE, stderr=PIPE
            )
            await p.communicate(b"")

    run(loop, main())
    before = fd_count()
    run(loop, main())
    assert fd_count() == before


def test_reaping_without_pidfds(ferroloop_module, monkeypatch):
    """Where pidfd_open is refused (an old kernel, a seccomp profile), children are
    reaped by polling waitpid on a timer."""

    def refused(pid, flags=0):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", refused)

    async def main():
        p = await asyncio.create_subprocess_exec(PY, "-c", "print('ok')", stdout=PIPE)
        out, _ = await p.communicate()
        q = await asyncio.create_subprocess_exec("sleep", "0.2")
        return out, p.returncode, await q.wait(), await _until_gone(q.pid)

    assert ferroloop_module.run(main()) == (b"ok\n", 0, 0, True)
