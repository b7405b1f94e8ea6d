"""add_reader / remove_reader / add_writer / remove_writer."""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest


@pytest.fixture
def socks():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def run_one_batch(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def run_until(loop, predicate, timeout=10.0):
    async def wait():
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.001)

    loop.run_until_complete(wait())


@pytest.mark.parametrize("as_object", [False, True], ids=["int-fd", "socket-object"])
def test_reader_is_called_when_data_arrives(loop, socks, as_object):
    a, b = socks
    target = a if as_object else a.fileno()
    got = []

    def on_readable(tag):
        got.append((tag, a.recv(100)))

    loop.add_reader(target, on_readable, "tag")
    # Nothing to read yet: the reader is not called.
    loop.run_until_complete(asyncio.sleep(0.02))
    assert got == []
    b.send(b"hello")
    run_until(loop, lambda: got)
    assert got == [("tag", b"hello")]
    assert loop.remove_reader(target) is True
    assert loop.remove_reader(target) is False
    b.send(b"ignored")
    loop.run_until_complete(asyncio.sleep(0.02))
    assert got == [("tag", b"hello")]


def test_reader_on_a_pipe(loop, pipe):
    r, w = pipe
    got = []
    loop.add_reader(r, lambda: got.append(os.read(r, 100)))
    loop.call_later(0.01, os.write, w, b"x")
    run_until(loop, lambda: got)
    assert got == [b"x"]
    assert loop.remove_reader(r) is True


@pytest.mark.parametrize("as_object", [False, True], ids=["int-fd", "socket-object"])
def test_writer_is_called_when_writable(loop, socks, as_object):
    a, _ = socks
    target = a if as_object else a.fileno()
    calls = []

    def on_writable(x, y):
        calls.append((x, y))
        loop.remove_writer(target)

    loop.add_writer(target, on_writable, 1, 2)
    run_until(loop, lambda: calls)
    assert calls == [(1, 2)]
    assert loop.remove_writer(target) is False


def test_writer_on_a_pipe(loop, pipe):
    _, w = pipe
    calls = []
    loop.add_writer(w, lambda: calls.append(os.write(w, b"y")))
    run_until(loop, lambda: calls)
    assert loop.remove_writer(w) is True
    assert calls[0] == 1


def test_remove_reader_and_writer_return_false_when_not_registered(loop, socks):
    a, b = socks
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(b.fileno()) is False
    assert loop.remove_writer(b.fileno()) is False


def test_remove_by_int_what_was_added_by_object_and_back(loop, socks):
    a, b = socks
    loop.add_reader(a, lambda: None)
    assert loop.remove_reader(a.fileno()) is True
    loop.add_writer(b.fileno(), lambda: None)
    assert loop.remove_writer(b) is True


def test_replacing_a_reader(loop, socks):
    a, b = socks
    got = []

    def first():
        got.append("first")

    def second():
        got.append(("second", a.recv(100)))

    loop.add_reader(a, first)
    loop.add_reader(a, second)
    b.send(b"data")
    run_until(loop, lambda: got)
    assert got == [("second", b"data")]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_replacing_a_writer(loop, socks):
    a, _ = socks
    got = []
    loop.add_writer(a, got.append, "first")
    loop.add_writer(a, got.append, "second")
    run_until(loop, lambda: got)
    assert loop.remove_writer(a) is True
    assert set(got) == {"second"}


def test_reader_and_writer_on_the_same_fd_are_independent(loop, socks):
    a, b = socks
    events = []
    loop.add_reader(a, lambda: events.append(("r", a.recv(100))))
    loop.add_writer(a, lambda: events.append("w"))
    run_until(loop, lambda: "w" in events)
    assert loop.remove_writer(a) is True
    assert loop.remove_writer(a) is False
    events.clear()
    b.send(b"after-writer-removed")
    run_until(loop, lambda: events)
    assert events == [("r", b"after-writer-removed")]
    assert loop.remove_reader(a) is True

    # And the other way round: removing the reader keeps the writer.
    loop.add_reader(a, lambda: events.append("r2"))
    loop.add_writer(a, lambda: events.append("w2"))
    assert loop.remove_reader(a) is True
    events.clear()
    run_until(loop, lambda: "w2" in events)
    assert "r2" not in events
    assert loop.remove_writer(a) is True


def test_readers_are_level_triggered(loop, socks):
    a, b = socks
    calls = []

    def on_readable():
        calls.append(1)  # deliberately does not read
        if len(calls) == 5:
            loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    b.send(b"unread")
    run_until(loop, lambda: len(calls) >= 5)
    loop.run_until_complete(asyncio.sleep(0.02))
    assert len(calls) == 5


def test_removing_a_reader_from_inside_its_callback(loop, socks):
    a, b = socks
    calls = []

    def on_readable():
        calls.append(a.recv(1))
        loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    b.send(b"abc")
    run_until(loop, lambda: calls)
    loop.run_until_complete(asyncio.sleep(0.02))
    assert calls == [b"a"]


def test_many_readers(loop):
    pairs = [socket.socketpair() for _ in range(50)]
    try:
        got = []
        for i, (a, b) in enumerate(pairs):
            a.setblocking(False)
            loop.add_reader(a, lambda a=a, i=i: got.append((i, a.recv(10))))
        for i, (a, b) in enumerate(pairs):
            b.send(str(i).encode())
        run_until(loop, lambda: len(got) == len(pairs))
        assert sorted(got) == [(i, str(i).encode()) for i in range(len(pairs))]
        assert all(loop.remove_reader(a) for a, _ in pairs)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_one_iteration_runs_ready_callbacks_then_io_callbacks_then_due_timers(loop, socks):
    a, b = socks
    order = []
    b.send(b"x")  # the reader is ready before the loop starts
    loop.add_reader(a, lambda: (order.append("io"), a.recv(1)))
    loop.call_at(loop.time() - 1, order.append, "timer")
    loop.call_soon(order.append, "soon")
    loop.stop()  # exactly one iteration
    loop.run_forever()
    assert order == ["soon", "io", "timer"]
    loop.remove_reader(a)


def test_stop_before_run_forever_still_polls_for_io_once(loop, socks):
    a, b = socks
    got = []
    loop.add_reader(a, lambda: got.append(a.recv(10)))
    b.send(b"ready")
    loop.stop()
    loop.run_forever()
    assert got == [b"ready"]
    loop.remove_reader(a)


def test_exception_in_a_reader_goes_to_the_exception_handler(loop, socks):
    a, b = socks
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def bad_reader():
        a.recv(10)
        raise ValueError("reader failed")

    loop.add_reader(a, bad_reader)
    b.send(b"x")
    run_until(loop, lambda: contexts)
    loop.remove_reader(a)
    assert set(contexts[0]) == {"message", "exception", "handle"}
    assert contexts[0]["message"].startswith("Exception in callback ")
    assert "bad_reader()" in contexts[0]["message"]
    assert str(contexts[0]["exception"]) == "reader failed"


def test_get_running_loop_inside_a_reader(loop, socks):
    a, b = socks
    seen = []
    loop.add_reader(a, lambda: (seen.append(asyncio.get_running_loop()), a.recv(1)))
    b.send(b"x")
    run_until(loop, lambda: seen)
    loop.remove_reader(a)
    assert seen[0] is loop


# ----------------------------------------------------------- invalid fds


class FilenoRaises:
    def fileno(self):
        raise ValueError("no fileno for you")

    def __repr__(self):
        return "<FilenoRaises>"


class FilenoNotInt:
    def fileno(self):
        return "three"

    def __repr__(self):
        return "<FilenoNotInt>"


class FilenoNone:
    def fileno(self):
        return None

    def __repr__(self):
        return "<FilenoNone>"


def closed_socket():
    s = socket.socket()
    s.close()
    return s


INVALID = [
    ("minus-one", lambda: -1, "Invalid file descriptor: -1"),
    ("str", lambda: "abc", "Invalid file object: 'abc'"),
    ("none", lambda: None, "Invalid file object: None"),
    ("float", lambda: 1.5, "Invalid file object: 1.5"),
    ("fileno-raises", FilenoRaises, "Invalid file object: <FilenoRaises>"),
    ("fileno-not-int", FilenoNotInt, "Invalid file object: <FilenoNotInt>"),
    ("fileno-none", FilenoNone, "Invalid file object: <FilenoNone>"),
    ("closed-socket", closed_socket, "Invalid file descriptor: -1"),
]


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
@pytest.mark.parametrize("make_bad,message", [x[1:] for x in INVALID], ids=[x[0] for x in INVALID])
def test_add_with_an_invalid_fd_raises_value_error(loop, method, make_bad, message):
    with pytest.raises(ValueError) as excinfo:
        getattr(loop, method)(make_bad(), lambda: None)
    assert type(excinfo.value) is ValueError
    assert str(excinfo.value) == message
    # The loop is still usable.
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"


@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
@pytest.mark.parametrize("make_bad,message", [x[1:] for x in INVALID], ids=[x[0] for x in INVALID])
def test_remove_with_an_invalid_fd_raises_value_error(loop, method, make_bad, message):
    with pytest.raises(ValueError) as excinfo:
        getattr(loop, method)(make_bad())
    assert type(excinfo.value) is ValueError
    assert str(excinfo.value) == message


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_with_a_closed_fd_raises_ebadf(loop, method):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as excinfo:
        getattr(loop, method)(r, lambda: None)
    assert excinfo.value.errno == errno.EBADF
    # Nothing was left registered.
    assert getattr(loop, method.replace("add", "remove"))(r) is False
    assert loop.run_until_complete(asyncio.sleep(0, "ok")) == "ok"


def test_fileno_raising_another_exception_propagates_it(loop):
    class FilenoOSError:
        def fileno(self):
            raise OSError(errno.EBADF, "custom")

    with pytest.raises(OSError) as excinfo:
        loop.add_reader(FilenoOSError(), lambda: None)
    assert excinfo.value.errno == errno.EBADF
    assert excinfo.value.strerror == "custom"


def test_add_and_remove_on_a_closed_loop(loop, socks):
    a, _ = socks
    loop.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        loop.add_reader(a, lambda: None)
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        loop.add_writer(a, lambda: None)
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_close_with_registered_readers(loop, socks):
    a, b = socks
    loop.add_reader(a, lambda: None)
    loop.add_writer(b, lambda: None)
    loop.close()
    assert loop.is_closed()
    # The sockets themselves are left alone.
    b.send(b"x")
    assert a.recv(1) == b"x"


# ------------------------------------------- watched objects closed since
#
# asyncio's selector keeps the object each registration was made with, and looks a
# registration up by that object when the object has no valid fd any more
# (selectors' _fileobj_lookup): a closed socket's fileno() is -1. Before that,
# asyncio's _ensure_fd_no_transport refuses an object whose fileno() raises.


@pytest.mark.parametrize("method", ["reader", "writer"])
def test_remove_the_watch_of_a_socket_closed_since(loop, socks, method):
    a, _ = socks
    ran = []
    getattr(loop, f"add_{method}")(a, ran.append, method)
    a.close()
    assert getattr(loop, f"remove_{method}")(a) is True
    # Gone: the closed socket is an invalid fd again.
    for remove in ("remove_reader", "remove_writer"):
        with pytest.raises(ValueError, match="^Invalid file descriptor: -1$"):
            getattr(loop, remove)(a)
    run_one_batch(loop)
    assert ran == []


@pytest.mark.parametrize("method", ["reader", "writer"])
def test_remove_the_watch_of_a_socket_closed_since_and_its_number_reused(loop, method):
    a, b = socket.socketpair()
    b.close()
    fd = a.fileno()
    getattr(loop, f"add_{method}")(a, lambda: None)
    a.close()
    c, d = socket.socketpair()
    try:
        if fd not in (c.fileno(), d.fileno()):
            pytest.skip("the closed socket's fd number was not reused")
        # The kernel dropped the closed socket's registration: removing it asks epoll
        # about a number that now names an unregistered socket (ENOENT), which is fine.
        assert getattr(loop, f"remove_{method}")(a) is True
        with pytest.raises(ValueError, match="^Invalid file descriptor: -1$"):
            getattr(loop, f"remove_{method}")(a)
        assert getattr(loop, f"remove_{method}")(fd) is False
    finally:
        c.close()
        d.close()


@pytest.mark.parametrize("method", ["reader", "writer"])
def test_remove_the_watch_of_an_fd_closed_since(loop, method):
    a, b = socket.socketpair()
    fd = a.detach()
    b.close()
    getattr(loop, f"add_{method}")(fd, lambda: None)
    os.close(fd)
    # epoll_ctl(DEL) fails with EBADF: the kernel forgot the fd when it was closed.
    assert getattr(loop, f"remove_{method}")(fd) is True
    assert getattr(loop, f"remove_{method}")(fd) is False


@pytest.mark.parametrize("method", ["reader", "writer"])
def test_remove_one_watch_of_a_socket_closed_since_while_the_other_stays(loop, socks, method):
    """Narrowing the registration takes epoll_ctl(MOD), which fails for the closed fd:
    asyncio's selector then drops the whole registration and raises."""
    a, _ = socks
    ran = []
    loop.add_reader(a, ran.append, "reader")
    loop.add_writer(a, ran.append, "writer")
    a.close()
    with pytest.raises(OSError) as excinfo:
        getattr(loop, f"remove_{method}")(a)
    assert type(excinfo.value) is OSError
    assert excinfo.value.errno == errno.EBADF
    assert str(excinfo.value) == f"[Errno {errno.EBADF}] {os.strerror(errno.EBADF)}"
    for remove in ("remove_reader", "remove_writer"):
        with pytest.raises(ValueError, match="^Invalid file descriptor: -1$"):
            getattr(loop, remove)(a)
    run_one_batch(loop)
    assert ran == []


def test_add_to_the_watch_of_a_socket_closed_since(loop, socks):
    a, _ = socks
    ran = []
    loop.add_reader(a, ran.append, "first")
    a.close()
    # The same interest: only the callback changes, nothing reaches the kernel.
    loop.add_reader(a, ran.append, "second")
    # Another interest takes epoll_ctl(MOD), which fails: the registration is dropped.
    with pytest.raises(OSError) as excinfo:
        loop.add_writer(a, ran.append, "writer")
    assert type(excinfo.value) is OSError
    assert excinfo.value.errno == errno.EBADF
    for remove in ("remove_reader", "remove_writer"):
        with pytest.raises(ValueError, match="^Invalid file descriptor: -1$"):
            getattr(loop, remove)(a)
    # A closed socket that was never watched is an invalid fd.
    for add in ("add_reader", "add_writer"):
        with pytest.raises(ValueError, match="^Invalid file descriptor: -1$"):
            getattr(loop, add)(a, ran.append, add)
    run_one_batch(loop)
    assert ran == []


def test_remove_the_watch_of_a_file_object_closed_since(loop):
    r, w = os.pipe()
    f = os.fdopen(r, "rb", buffering=0)
    try:
        loop.add_reader(f, lambda: None)
        f.close()
        # Its fileno() now raises: refused before the registration is looked up.
        with pytest.raises(ValueError, match=r"^Invalid file object: <_io\.FileIO \[closed\]>$"):
            loop.remove_reader(f)
        with pytest.raises(ValueError, match=r"^Invalid file object: <_io\.FileIO \[closed\]>$"):
            loop.add_reader(f, lambda: None)
        # Still registered, under its number.
        assert loop.remove_reader(r) is True
    finally:
        f.close()
        os.close(w)


def test_watch_functions_with_a_closed_socket_on_a_closed_loop(loop, socks):
    a, _ = socks
    loop.add_reader(a, lambda: None)
    a.close()
    never_watched = closed_socket()
    loop.close()
    for sock in (a, never_watched):
        for add in ("add_reader", "add_writer"):
            with pytest.raises(RuntimeError, match="^Event loop is closed$"):
                getattr(loop, add)(sock, lambda: None)
        for remove in ("remove_reader", "remove_writer"):
            assert getattr(loop, remove)(sock) is False
