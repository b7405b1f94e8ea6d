"""Unix signal handlers (add_signal_handler, remove_signal_handler), the wakeup fd, and
Ctrl-C in run_forever, run_until_complete and asyncio's Runner, each against asyncio's
loop as the oracle. The Ctrl-C tests send a real SIGINT to a child process.

SIGALRM is left alone: the hang guard (conftest.py) uses it.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref

import pytest

SIGUSR1 = signal.SIGUSR1
SIGUSR2 = signal.SIGUSR2
SIGINT = signal.SIGINT
SIGNALS_TOUCHED = (SIGUSR1, SIGUSR2, SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGRTMIN)

PY312 = sys.version_info >= (3, 12)


def wakeup_fd() -> int:
    """The current wakeup fd (set_wakeup_fd is the only way to read it)."""
    fd = signal.set_wakeup_fd(-1)
    if fd != -1:
        signal.set_wakeup_fd(fd)
    return fd


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def signal_state():
    """Every test starts with no wakeup fd and leaves the signals it touched, and the
    wakeup fd, as they were."""
    before = {sig: signal.getsignal(sig) for sig in SIGNALS_TOUCHED}
    previous_fd = signal.set_wakeup_fd(-1)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for sig, handler in before.items():
        signal.signal(sig, handler)
    signal.set_wakeup_fd(previous_fd)


def run_briefly(loop, seconds=0.0):
    loop.run_until_complete(asyncio.sleep(seconds))


def run_until(loop, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        run_briefly(loop, 0.001)


def raises_exactly(exc_type, message, func, *args):
    with pytest.raises(exc_type) as excinfo:
        func(*args)
    assert type(excinfo.value) is exc_type
    assert str(excinfo.value) == message


def private_handle(loop, sig):
    """The handle a loop keeps for a signal: private state of each loop, reached here
    only to cancel it."""
    if isinstance(loop, asyncio.SelectorEventLoop):
        return loop._signal_handlers[sig]
    return loop._signal_wakeup.handle(sig)


# ------------------------------------------------------------------ misuse


def test_argument_errors(loop):
    def handler():
        pass

    for method, args in [
        (loop.add_signal_handler, ("boom", handler)),
        (loop.remove_signal_handler, ("boom",)),
    ]:
        raises_exactly(TypeError, "sig must be an int, not 'boom'", method, *args)
    for sig in (signal.NSIG + 1, 0, -1, 1000):
        raises_exactly(
            ValueError, f"invalid signal number {sig}", loop.add_signal_handler, sig, handler
        )
        raises_exactly(ValueError, f"invalid signal number {sig}", loop.remove_signal_handler, sig)
    raises_exactly(TypeError, "sig must be an int, not 1.0", loop.add_signal_handler, 1.0, handler)
    raises_exactly(TypeError, "sig must be an int, not None", loop.remove_signal_handler, None)
    assert wakeup_fd() == -1


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_uncatchable_signals(loop, sig):
    raises_exactly(RuntimeError, f"sig {sig} cannot be caught", loop.add_signal_handler, sig, print)
    # Nothing was added, and the wakeup fd is released again.
    assert loop.remove_signal_handler(sig) is False
    assert wakeup_fd() == -1
    assert signal.getsignal(sig) == signal.SIG_DFL


def test_uncatchable_signal_keeps_the_other_handlers(loop):
    got = []
    loop.add_signal_handler(SIGUSR1, got.append, "usr1")
    with pytest.raises(RuntimeError, match="cannot be caught"):
        loop.add_signal_handler(signal.SIGKILL, print)
    assert wakeup_fd() != -1
    os.kill(os.getpid(), SIGUSR1)
    run_until(loop, lambda: got)
    assert got == ["usr1"]


async def a_coroutine_function():
    pass


def test_coroutines_are_refused(loop):
    message = "coroutines cannot be used with add_signal_handler()"
    raises_exactly(TypeError, message, loop.add_signal_handler, SIGUSR1, a_coroutine_function)
    coro = a_coroutine_function()
    try:
        raises_exactly(TypeError, message, loop.add_signal_handler, SIGUSR1, coro)
    finally:
        coro.close()

    # asyncio's marker of a function that returns a coroutine.
    def marked():
        pass

    marked._is_coroutine = asyncio.coroutines._is_coroutine
    raises_exactly(TypeError, message, loop.add_signal_handler, SIGUSR1, marked)
    # The callback is checked before the signal, and the signal before the loop's state.
    raises_exactly(TypeError, message, loop.add_signal_handler, "boom", a_coroutine_function)
    assert loop.remove_signal_handler(SIGUSR1) is False
    assert wakeup_fd() == -1


def test_generator_objects_as_each_version_decides(loop, oracle_loop):
    # asyncio 3.11 counts generator objects as coroutines; 3.12 on does not.
    def gen():
        yield

    def outcome(lp):
        g = gen()
        try:
            lp.add_signal_handler(SIGUSR1, g)
        except TypeError as exc:
            return str(exc)
        finally:
            lp.remove_signal_handler(SIGUSR1)
        return "added"

    assert outcome(loop) == outcome(oracle_loop)
    assert outcome(loop) == (
        "added" if PY312 else "coroutines cannot be used with add_signal_handler()"
    )


def test_no_deprecation_warning(loop):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError):
            loop.add_signal_handler(SIGUSR1, a_coroutine_function)
        loop.add_signal_handler(SIGUSR1, print)
        assert loop.remove_signal_handler(SIGUSR1)


def test_closed_loop(loop):
    loop.close()
    raises_exactly(RuntimeError, "Event loop is closed", loop.add_signal_handler, SIGUSR1, print)
    # The signal is checked first; removing needs no open loop.
    raises_exactly(ValueError, "invalid signal number 0", loop.add_signal_handler, 0, print)
    assert loop.remove_signal_handler(SIGUSR1) is False
    assert wakeup_fd() == -1


def test_only_the_main_thread_adds_handlers(loop):
    result = {}

    def expected_message():
        try:
            signal.set_wakeup_fd(-1)
        except ValueError as exc:
            return str(exc)

    def in_thread():
        result["expected"] = expected_message()
        try:
            loop.add_signal_handler(SIGUSR1, print)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert type(result["error"]) is RuntimeError
    assert str(result["error"]) == result["expected"]
    assert "main thread" in result["expected"]
    assert loop.remove_signal_handler(SIGUSR1) is False
    assert signal.getsignal(SIGUSR1) == signal.SIG_DFL
    assert wakeup_fd() == -1


def test_only_the_main_thread_removes_handlers(loop):
    loop.add_signal_handler(SIGUSR1, print)
    result = {}

    def in_thread():
        try:
            result["removed"] = loop.remove_signal_handler(SIGUSR1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    # signal.signal's own error, as asyncio lets it through.
    assert type(result["error"]) is ValueError
    assert "main thread" in str(result["error"])
    assert loop.remove_signal_handler(SIGUSR1) is False  # it was forgotten all the same


def test_non_callable_fails_when_the_signal_comes(loop):
    # asyncio checks nothing at add time; the call fails as a callback does.
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.add_signal_handler(SIGUSR1, 123)
    os.kill(os.getpid(), SIGUSR1)
    run_until(loop, lambda: contexts)
    (ctx,) = contexts
    assert set(ctx) == {"message", "exception", "handle"}
    assert ctx["message"] == "Exception in callback 123()"
    assert type(ctx["exception"]) is TypeError
    assert str(ctx["exception"]) == "'int' object is not callable"


# ------------------------------------------------------- what is left behind


def test_handler_installed_and_removed(loop):
    assert signal.getsignal(SIGUSR1) == signal.SIG_DFL
    assert wakeup_fd() == -1
    loop.add_signal_handler(SIGUSR1, print)
    installed = signal.getsignal(SIGUSR1)
    assert callable(installed) and installed not in (signal.SIG_DFL, signal.default_int_handler)
    assert wakeup_fd() != -1
    assert loop.remove_signal_handler(SIGUSR1) is True
    assert signal.getsignal(SIGUSR1) == signal.SIG_DFL
    assert wakeup_fd() == -1
    assert loop.remove_signal_handler(SIGUSR1) is False


def test_removal_restores_asyncio_defaults_not_the_previous_handler(loop):
    def custom(signum, frame):
        pass

    signal.signal(SIGUSR1, custom)
    signal.signal(SIGINT, custom)
    loop.add_signal_handler(SIGUSR1, print)
    loop.add_signal_handler(SIGINT, print)
    assert loop.remove_signal_handler(SIGINT)
    assert signal.getsignal(SIGINT) is signal.default_int_handler
    assert loop.remove_signal_handler(SIGUSR1)
    assert signal.getsignal(SIGUSR1) == signal.SIG_DFL


def test_wakeup_fd_lasts_until_the_last_handler_goes(loop):
    loop.add_signal_handler(SIGUSR1, print)
    fd = wakeup_fd()
    loop.add_signal_handler(SIGUSR2, print)
    assert wakeup_fd() == fd
    assert loop.remove_signal_handler(SIGUSR1)
    assert wakeup_fd() == fd
    assert loop.remove_signal_handler(SIGUSR2)
    assert wakeup_fd() == -1
    loop.add_signal_handler(SIGUSR2, print)
    assert wakeup_fd() == fd  # the same loop, the same fd


def test_replacing_a_handler(loop):
    got = []
    loop.add_signal_handler(SIGUSR1, got.append, "first")
    loop.add_signal_handler(SIGUSR1, got.append, "second")
    os.kill(os.getpid(), SIGUSR1)
    run_until(loop, lambda: got)
    run_briefly(loop)
    assert got == ["second"]
    assert loop.remove_signal_handler(SIGUSR1) is True
    assert loop.remove_signal_handler(SIGUSR1) is False
    assert signal.getsignal(SIGUSR1) == signal.SIG_DFL


def test_close_removes_every_handler_and_the_wakeup_fd(new_loop):
    before = open_fds()
    loop = new_loop()
    loop.add_signal_handler(SIGUSR1, print)
    loop.add_signal_handler(SIGINT, print)
    loop.add_signal_handler(signal.SIGCHLD, print)
    loop.close()
    assert signal.getsignal(SIGUSR1) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    assert signal.getsignal(SIGINT) is signal.default_int_handler
    assert wakeup_fd() == -1
    assert open_fds() == before
    loop.close()  # again: nothing to do
    raises_exactly(RuntimeError, "Event loop is closed", loop.add_signal_handler, SIGUSR1, print)


def test_close_of_a_running_loop_keeps_the_handlers(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(str(exc))

    loop.add_signal_handler(SIGUSR1, print)
    loop.call_soon(try_close)
    run_briefly(loop)
    assert errors == ["Cannot close a running event loop"]
    assert signal.getsignal(SIGUSR1) not in (signal.SIG_DFL, None)
    assert wakeup_fd() != -1
    loop.close()
    assert signal.getsignal(SIGUSR1) == signal.SIG_DFL
    assert wakeup_fd() == -1


def test_fds_do_not_grow(new_loop):
    before = open_fds()
    loop = new_loop()
    with_loop = open_fds()
    for _ in range(50):
        loop.add_signal_handler(SIGUSR1, print)
        loop.add_signal_handler(SIGUSR2, print)
        loop.remove_signal_handler(SIGUSR1)
        loop.remove_signal_handler(SIGUSR2)
    # At most the socket pair signals arrive through (asyncio has it from the start).
    assert open_fds() - with_loop in (0, 2)
    loop.close()
    assert open_fds() == before


def test_a_closed_loop_with_handlers_is_freed_without_the_collector(untracked_loop_factory):
    loop = untracked_loop_factory()
    loop.add_signal_handler(SIGUSR1, print, "x")
    loop.add_signal_handler(SIGUSR2, loop.stop)
    os.kill(os.getpid(), SIGUSR1)
    run_briefly(loop, 0.01)
    loop.close()
    ref = weakref.ref(loop)
    gc.disable()
    try:
        del loop
        assert ref() is None
    finally:
        gc.enable()


def test_an_unclosed_loop_is_closed_when_collected(untracked_loop_factory):
    loop = untracked_loop_factory()
    loop.add_signal_handler(SIGUSR1, print, loop)
    ref = weakref.ref(loop)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del loop
        gc.collect()
    assert ref() is None
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert signal.getsignal(SIGUSR1) == signal.SIG_DFL
    assert wakeup_fd() == -1


# ---------------------------------------------------------------- delivery


def test_handler_runs_as_a_loop_callback_with_its_args(loop):
    events = []

    def handler(*args):
        events.append(("handler", args, asyncio.get_running_loop() is loop))

    def send():
        events.append("before kill")
        os.kill(os.getpid(), SIGUSR1)
        events.append("after kill")

    loop.add_signal_handler(SIGUSR1, handler, 1, "two")
    loop.call_soon(send)
    run_until(loop, lambda: len(events) == 3)
    assert events == ["before kill", "after kill", ("handler", (1, "two"), True)]


def test_delivery_order(loop):
    # The signal's handle joins the ready queue when the wakeup fd is read, after what
    # was scheduled before; a handler removed once its handle is queued still runs.
    events = []

    def send():
        events.append("send")
        os.kill(os.getpid(), SIGUSR2)
        os.kill(os.getpid(), SIGUSR1)
        loop.call_soon(next_step)

    def next_step():
        events.append("next step")
        loop.call_soon(remove)

    def remove():
        events.append("remove")
        loop.remove_signal_handler(SIGUSR1)

    loop.add_signal_handler(SIGUSR1, events.append, "usr1")
    loop.add_signal_handler(SIGUSR2, events.append, "usr2")
    loop.call_soon(send)
    run_until(loop, lambda: "usr1" in events)
    assert events == ["send", "next step", "remove", "usr2", "usr1"]


def test_context_is_copied_when_the_handler_is_added(loop):
    var = contextvars.ContextVar("var", default="unset")
    seen = []

    def handler():
        seen.append(var.get())
        var.set(var.get() + "+")  # kept in the handle's context for the next time

    token = var.set("at add")
    try:
        loop.add_signal_handler(SIGUSR1, handler)
        var.set("later")
        os.kill(os.getpid(), SIGUSR1)
        run_until(loop, lambda: len(seen) == 1)
        os.kill(os.getpid(), SIGUSR1)
        run_until(loop, lambda: len(seen) == 2)
    finally:
        var.reset(token)
    assert seen == ["at add", "at add+"]
    assert var.get() == "unset"


def test_many_signals_sent_one_by_one_are_all_delivered_in_order(loop):
    got = []
    loop.add_signal_handler(SIGUSR1, got.append, 1)
    loop.add_signal_handler(SIGUSR2, got.append, 2)
    sent = []

    def send():
        for i in range(100):
            sig = SIGUSR1 if i % 2 else SIGUSR2
            sent.append(1 if sig == SIGUSR1 else 2)
            os.kill(os.getpid(), sig)  # delivered to this thread before kill returns

    loop.call_soon(send)
    run_until(loop, lambda: len(got) == 100)
    run_briefly(loop, 0.01)
    assert got == sent


def test_pending_signals_coalesce_and_each_is_delivered(loop):
    # POSIX keeps one pending instance of a standard signal: 100 sent while blocked
    # arrive as one each; real-time signals queue, and every one arrives.
    got = []
    rt = signal.SIGRTMIN
    loop.add_signal_handler(SIGUSR1, got.append, "usr1")
    loop.add_signal_handler(SIGUSR2, got.append, "usr2")
    loop.add_signal_handler(rt, got.append, "rt")
    # Sent to this thread: sent to the process, a signal this thread blocks would go to
    # another one (faulthandler's watchdog, say) and run there at once.
    me = threading.get_ident()
    signal.pthread_sigmask(signal.SIG_BLOCK, [SIGUSR1, SIGUSR2, rt])
    try:
        for i in range(100):
            signal.pthread_kill(me, SIGUSR1 if i % 2 else SIGUSR2)
        for _ in range(10):
            signal.pthread_kill(me, rt)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [SIGUSR1, SIGUSR2, rt])
    run_until(loop, lambda: len(got) >= 12)
    run_briefly(loop, 0.01)
    assert sorted(got) == ["rt"] * 10 + ["usr1", "usr2"]


def test_signals_from_another_process(loop):
    # A burst from outside: the same signal may coalesce while pending, so only its
    # last arrival is certain.
    got = {1: 0, 2: 0}
    done = []

    def count(n):
        got[n] += 1

    loop.add_signal_handler(SIGUSR1, count, 1)
    loop.add_signal_handler(SIGUSR2, count, 2)
    loop.add_signal_handler(signal.SIGHUP, done.append, True)
    code = (
        "import os, signal, sys\n"
        "pid = int(sys.argv[1])\n"
        "for i in range(100):\n"
        "    os.kill(pid, signal.SIGUSR1 if i % 2 else signal.SIGUSR2)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(os.getpid())])
    while proc.poll() is None:
        run_briefly(loop, 0.01)
    os.kill(os.getpid(), signal.SIGHUP)
    run_until(loop, lambda: done)
    assert proc.returncode == 0
    assert 1 <= got[1] <= 50 and 1 <= got[2] <= 50


@pytest.mark.parametrize("where", ["the loop's thread", "another thread"])
def test_signal_wakes_a_blocked_poll(loop, where):
    # Sent to the loop's thread, the signal interrupts the poll (EINTR); taken by
    # another thread, it reaches the poll through the wakeup fd alone.
    caught = []

    def handler():
        caught.append(loop.time())
        loop.stop()

    main = threading.get_ident()

    def send():
        time.sleep(0.1)
        target = main if where == "the loop's thread" else threading.get_ident()
        signal.pthread_kill(target, SIGUSR1)

    loop.add_signal_handler(SIGUSR1, handler)
    loop.call_later(30, loop.stop)
    t = threading.Thread(target=send)
    start = loop.time()
    t.start()
    loop.run_forever()
    t.join()
    assert len(caught) == 1
    assert caught[0] - start < 10


def test_handler_exception_goes_to_the_exception_handler(loop):
    contexts = []
    after = []

    def boom(n):
        raise ZeroDivisionError(n)

    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.add_signal_handler(SIGUSR1, boom, 7)
    loop.add_signal_handler(SIGUSR2, after.append, "next")
    os.kill(os.getpid(), SIGUSR1)
    os.kill(os.getpid(), SIGUSR2)
    run_until(loop, lambda: after)
    (ctx,) = contexts
    assert set(ctx) == {"message", "exception", "handle"}
    source = asyncio.format_helpers._format_callback_source(boom, (7,))
    assert ctx["message"] == f"Exception in callback {source}"
    assert type(ctx["exception"]) is ZeroDivisionError
    assert ctx["exception"].args == (7,)
    assert not ctx["handle"].cancelled()
    # The handler stays: the next signal runs it again.
    os.kill(os.getpid(), SIGUSR1)
    run_until(loop, lambda: len(contexts) == 2)


def test_handler_exception_in_debug_mode_has_the_source_traceback(loop, oracle_loop):
    def keys(lp):
        contexts = []
        lp.set_debug(True)
        lp.set_exception_handler(lambda _, ctx: contexts.append(ctx))
        lp.add_signal_handler(SIGUSR1, lambda: 1 / 0)
        os.kill(os.getpid(), SIGUSR1)
        run_until(lp, lambda: contexts)
        lp.remove_signal_handler(SIGUSR1)
        lp.set_debug(False)
        ctx = contexts[0]
        return sorted(ctx), [frame.name for frame in ctx["source_traceback"][-2:]]

    # The handle is made in add_signal_handler, called by keys().
    assert keys(loop) == keys(oracle_loop)
    assert keys(loop)[1] == ["keys", "add_signal_handler"]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_handler_raising_keyboard_interrupt_leaves_the_loop(loop, exc_type):
    def handler():
        raise exc_type("from handler")

    loop.add_signal_handler(SIGUSR1, handler)
    os.kill(os.getpid(), SIGUSR1)
    with pytest.raises(exc_type):
        loop.run_until_complete(asyncio.sleep(1))
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


def test_cancelled_handle_removes_its_handler_when_the_signal_comes(loop):
    got = []
    loop.add_signal_handler(SIGUSR1, got.append, 1)
    private_handle(loop, SIGUSR1).cancel()
    os.kill(os.getpid(), SIGUSR1)
    run_until(loop, lambda: signal.getsignal(SIGUSR1) == signal.SIG_DFL)
    assert got == []
    assert loop.remove_signal_handler(SIGUSR1) is False
    assert wakeup_fd() == -1


def test_sigchld_may_be_handled(loop):
    got = []
    loop.add_signal_handler(signal.SIGCHLD, got.append, "child")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    run_until(loop, lambda: got)
    proc.wait()
    assert loop.remove_signal_handler(signal.SIGCHLD)
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


def test_sigint_handled_by_the_loop(loop):
    # With a handler of the loop, SIGINT runs it instead of raising KeyboardInterrupt.
    got = []
    loop.add_signal_handler(SIGINT, got.append, "sigint")
    os.kill(os.getpid(), SIGINT)
    run_until(loop, lambda: got)
    assert loop.remove_signal_handler(SIGINT)
    assert signal.getsignal(SIGINT) is signal.default_int_handler


# ------------------------------------------------------ ferroloop's own parts


def test_no_python_code_of_ferroloop_runs_per_signal(ferroloop_module):
    # Per signal: CPython's C handler, the builtin Python-level handler, the Rust
    # reader of the wakeup fd, then the user's callback; none of it ferroloop's Python.
    loop = ferroloop_module.new_event_loop()
    got = []
    try:
        loop.add_signal_handler(SIGUSR1, got.append, 1)
        package = os.path.dirname(ferroloop_module.__file__)
        frames = []

        def profile(frame, event, arg):
            if event == "call" and frame.f_code.co_filename.startswith(package):
                frames.append(frame.f_code.co_name)

        def send():
            for _ in range(10):
                os.kill(os.getpid(), SIGUSR1)

        loop.call_soon(send)
        sys.setprofile(profile)
        try:
            while len(got) < 10:
                loop.call_soon(loop.stop)
                loop.run_forever()
        finally:
            sys.setprofile(None)
        assert frames == []
    finally:
        loop.close()


def test_closing_restores_the_wakeup_fd_that_was_there(ferroloop_module):
    # asyncio sets -1 when its last handler goes; ferroloop puts back what was there.
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        signal.set_wakeup_fd(a.fileno())
        loop = ferroloop_module.new_event_loop()
        loop.add_signal_handler(SIGUSR1, print)
        assert wakeup_fd() not in (-1, a.fileno())
        loop.close()
        assert wakeup_fd() == a.fileno()
    finally:
        signal.set_wakeup_fd(-1)
        a.close()
        b.close()


@pytest.mark.parametrize("first_closed", ["first", "second"])
def test_two_loops_with_handlers(ferroloop_module, first_closed):
    # Closing one loop leaves the other's wakeup fd in place; asyncio's would set -1
    # and the other loop would no longer hear of its signals.
    one = ferroloop_module.new_event_loop()
    two = ferroloop_module.new_event_loop()
    got = []
    try:
        one.add_signal_handler(SIGUSR1, got.append, "one")
        one_fd = wakeup_fd()
        two.add_signal_handler(SIGUSR2, got.append, "two")
        two_fd = wakeup_fd()
        assert one_fd != two_fd
        if first_closed == "first":
            one.close()
            assert wakeup_fd() == two_fd
            os.kill(os.getpid(), SIGUSR2)
            run_until(two, lambda: got)
            assert got == ["two"]
            two.close()
        else:
            two.close()
            assert wakeup_fd() == one_fd
            one.close()
        assert wakeup_fd() == -1
    finally:
        one.close()
        two.close()


def test_a_forked_child_does_not_share_the_wakeup_fd(ferroloop_module):
    # asyncio resets the wakeup fd in a forked child from 3.12 on; ferroloop does so
    # for its own on every version.
    loop = ferroloop_module.new_event_loop()
    try:
        loop.add_signal_handler(SIGUSR1, print)
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.write(w, str(signal.set_wakeup_fd(-1)).encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            seen = f.read()
        os.waitpid(pid, 0)
        assert seen == "-1"
        assert wakeup_fd() != -1
    finally:
        loop.close()


# ------------------------------------------------------------------- Ctrl-C

CHILD_PRELUDE = """\
import asyncio, signal, sys
# A child started by a non-interactive shell may inherit SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
impl = sys.argv[1]
if impl == "ferroloop":
    import ferroloop
    new_loop = ferroloop.new_event_loop
    run = ferroloop.run
else:
    new_loop = asyncio.SelectorEventLoop
    run = asyncio.run

def say(*args):
    print(*args, flush=True)

"""


def wait_until_polling(pid, timeout=5.0):
    """Waits until the process is blocked in epoll (its loop is idle), as it is when a
    person presses Ctrl-C. A signal that lands just before the poll, after the last
    check for pending handlers, waits for the poll's timeout on either loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/wchan") as f:
                where = f.read()
        except OSError:
            where = ""
        if "epoll" in where:
            return
        if where in ("", "0"):  # not shown by this kernel: give it time
            time.sleep(0.1)
            return
        time.sleep(0.002)


def run_child(impl, body, *, interrupts=1, prelude="", extra_args=(), wait_for_poll=True):
    """Runs `body` in a child on the loop `impl`; after each line "ready" it prints,
    sends the child SIGINT (once it waits in its poll, with `wait_for_poll`). Returns
    (returncode, stdout lines, stderr)."""
    code = CHILD_PRELUDE + prelude + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, impl, *extra_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        sent = 0
        while sent < interrupts:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.strip() == "ready":
                if wait_for_poll:
                    wait_until_polling(proc.pid)
                proc.send_signal(SIGINT)
                sent += 1
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines.extend(out.splitlines())
    return proc.returncode, lines, err


def test_ctrl_c_in_run_until_complete(impl, hang_guard):
    rc, lines, err = run_child(
        impl,
        """
        loop = new_loop()
        async def main():
            await asyncio.sleep(3600)
        task = loop.create_task(main())
        loop.call_soon(say, "ready")
        try:
            loop.run_until_complete(task)
        except KeyboardInterrupt:
            say("KeyboardInterrupt", loop.is_running(), loop.is_closed(), task.done())
        say(loop.run_until_complete(asyncio.sleep(0, "runs again")))
        task.cancel()
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            say("task cancelled")
        loop.close()
        say("closed", loop.is_closed())
        """,
    )
    assert (rc, lines) == (
        0,
        [
            "ready",
            "KeyboardInterrupt False False False",
            "runs again",
            "task cancelled",
            "closed True",
        ],
    ), err


def test_ctrl_c_in_run_forever(impl, hang_guard):
    rc, lines, err = run_child(
        impl,
        """
        loop = new_loop()
        loop.call_soon(say, "ready")
        try:
            loop.run_forever()
        except KeyboardInterrupt:
            say("KeyboardInterrupt", loop.is_running())
        loop.call_soon(loop.stop)
        loop.run_forever()
        say("ran again")
        loop.close()
        """,
    )
    assert (rc, lines) == (0, ["ready", "KeyboardInterrupt False", "ran again"]), err


RUNNER_ENTRIES = ["Runner", "run"] + (["asyncio.run(loop_factory=)"] if PY312 else [])

RUNNER_PRELUDE = """
entry = sys.argv[2]

def run_main(coro):
    if entry == "Runner":
        with asyncio.Runner(loop_factory=new_loop) as runner:
            return runner.run(coro)
    if entry == "run":
        return run(coro)
    return asyncio.run(coro, loop_factory=new_loop)

"""


@pytest.mark.parametrize("entry", RUNNER_ENTRIES)
def test_ctrl_c_cancels_the_main_task(impl, entry, hang_guard):
    rc, lines, err = run_child(
        impl,
        """
        async def main():
            say("ready")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                say("main cancelled")
                raise
        try:
            run_main(main())
        except KeyboardInterrupt:
            say("KeyboardInterrupt")
        say(signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        """,
        prelude=RUNNER_PRELUDE,
        extra_args=(entry,),
    )
    assert (rc, lines) == (0, ["ready", "main cancelled", "KeyboardInterrupt", "True"]), err


@pytest.mark.parametrize("entry", RUNNER_ENTRIES)
def test_ctrl_c_uncaught_ends_the_program_as_sigint(impl, entry, hang_guard):
    rc, lines, err = run_child(
        impl,
        """
        async def main():
            say("ready")
            await asyncio.sleep(3600)
        run_main(main())
        """,
        prelude=RUNNER_PRELUDE,
        extra_args=(entry,),
    )
    assert (rc, lines) == (-SIGINT, ["ready"]), err
    assert err.rstrip().endswith("KeyboardInterrupt")


def test_ctrl_c_the_main_task_may_swallow(impl, hang_guard):
    rc, lines, err = run_child(
        impl,
        """
        async def main():
            say("ready")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                return "swallowed"
        say(run_main(main()))
        """,
        prelude=RUNNER_PRELUDE,
        extra_args=("Runner",),
    )
    assert (rc, lines) == (0, ["ready", "swallowed"]), err


def test_second_ctrl_c_raises_keyboard_interrupt(impl, hang_guard):
    rc, lines, err = run_child(
        impl,
        """
        async def main():
            say("ready")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                say("main cancelled")
            say("ready")
            await asyncio.sleep(3600)
        try:
            run_main(main())
        except KeyboardInterrupt:
            say("KeyboardInterrupt")
        """,
        interrupts=2,
        prelude=RUNNER_PRELUDE,
        extra_args=("Runner",),
    )
    assert (rc, lines) == (0, ["ready", "main cancelled", "ready", "KeyboardInterrupt"]), err


def test_ctrl_c_while_busy(impl, hang_guard):
    # The loop never blocks: the handler runs between callbacks.
    rc, lines, err = run_child(
        impl,
        """
        async def main():
            say("ready")
            try:
                while True:
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                say("main cancelled")
                raise
        try:
            run_main(main())
        except KeyboardInterrupt:
            say("KeyboardInterrupt")
        """,
        prelude=RUNNER_PRELUDE,
        extra_args=("Runner",),
        wait_for_poll=False,
    )
    assert (rc, lines) == (0, ["ready", "main cancelled", "KeyboardInterrupt"]), err


def test_ctrl_c_with_loop_signal_handlers_in_place(impl, hang_guard):
    # The wakeup fd is the loop's then, and CPython writes SIGINT's number to it too;
    # the loop has no handler for it and leaves it to the Runner's.
    rc, lines, err = run_child(
        impl,
        """
        async def main():
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, say, "usr1")
            say("ready")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                say("main cancelled")
                raise
        try:
            run_main(main())
        except KeyboardInterrupt:
            say("KeyboardInterrupt")
        say(signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL, signal.set_wakeup_fd(-1))
        """,
        prelude=RUNNER_PRELUDE,
        extra_args=("Runner",),
    )
    assert (rc, lines) == (0, ["ready", "main cancelled", "KeyboardInterrupt", "True -1"]), err
