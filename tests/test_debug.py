"""Debug mode: how it is switched on, what it checks, and what it logs."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest


def run_one_batch(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


def callback():
    pass


async def coroutine_function():
    pass


# ------------------------------------------------------ switching it on


def test_get_and_set_debug(loop):
    assert loop.get_debug() is False  # the fixture's default
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_set_debug_while_running(loop):
    seen = []

    def flip():
        loop.set_debug(True)
        seen.append(loop.get_debug())

    loop.call_soon(flip)
    run_one_batch(loop)
    assert seen == [True]
    assert loop.get_debug() is True


def debug_of_new_loop(new_loop_code, env_overrides, flags=()):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")}
    env.update(env_overrides)
    code = new_loop_code + "; print(loop.get_debug()); loop.close()"
    proc = subprocess.run(
        [sys.executable, *flags, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# (ids avoid the word "asyncio" so that `-k asyncio` selects only the oracle)
ENV_CASES = [
    ("default", {}, (), "False"),
    ("env-debug-1", {"PYTHONASYNCIODEBUG": "1"}, (), "True"),
    # asyncio only checks that the variable is non-empty.
    ("env-debug-0", {"PYTHONASYNCIODEBUG": "0"}, (), "True"),
    ("env-debug-empty", {"PYTHONASYNCIODEBUG": ""}, (), "False"),
    ("-X-dev", {}, ("-X", "dev"), "True"),
    ("env-devmode-1", {"PYTHONDEVMODE": "1"}, (), "True"),
    ("-E-ignores-env-debug", {"PYTHONASYNCIODEBUG": "1"}, ("-E",), "False"),
]


@pytest.mark.parametrize(
    "env,flags,expected", [c[1:] for c in ENV_CASES], ids=[c[0] for c in ENV_CASES]
)
def test_debug_mode_of_a_new_loop_follows_the_environment(impl, request, env, flags, expected):
    if impl == "ferroloop":
        ferroloop = request.getfixturevalue("ferroloop_module")
        # -E drops PYTHONPATH: find the package where this interpreter found it.
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(ferroloop.__file__)))
        code = (
            f"import sys; sys.path.insert(0, {package_parent!r}); "
            "import ferroloop; loop = ferroloop.new_event_loop()"
        )
    else:
        code = "import asyncio; loop = asyncio.new_event_loop()"
    assert debug_of_new_loop(code, env, flags) == expected


# --------------------------------------------------------- what it checks


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "call_soon_threadsafe"])
@pytest.mark.parametrize("kind", ["coroutine-function", "coroutine", "non-callable"])
def test_debug_mode_rejects_bad_callbacks(loop, method, kind):
    loop.set_debug(True)
    coro = None
    if kind == "coroutine-function":
        bad = coroutine_function
    elif kind == "coroutine":
        bad = coro = coroutine_function()
    else:
        bad = 42
    # call_later goes through call_at, and asyncio names that in the message.
    name = "call_at" if method == "call_later" else method
    try:
        with pytest.raises(TypeError) as excinfo:
            if method == "call_soon":
                loop.call_soon(bad)
            elif method == "call_later":
                loop.call_later(1, bad)
            elif method == "call_at":
                loop.call_at(loop.time() + 1, bad)
            else:
                loop.call_soon_threadsafe(bad)
    finally:
        if coro is not None:
            coro.close()
    assert type(excinfo.value) is TypeError
    if kind == "non-callable":
        assert str(excinfo.value) == f"a callable object was expected by {name}(), got 42"
    else:
        assert str(excinfo.value) == f"coroutines cannot be used with {name}()"


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_debug_mode_rejects_calls_from_another_thread_while_running(loop, method):
    loop.set_debug(True)
    errors = []

    def worker():
        try:
            if method == "call_soon":
                loop.call_soon(callback)
            elif method == "call_later":
                loop.call_later(1, callback)
            else:
                loop.call_at(loop.time() + 1, callback)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    def start():
        th = threading.Thread(target=worker)
        th.start()
        th.join()
        loop.stop()

    loop.call_soon(start)
    loop.run_forever()
    assert [type(e) for e in errors] == [RuntimeError]
    assert str(errors[0]) == (
        "Non-thread-safe operation invoked on an event loop other than the current one"
    )


def test_debug_mode_allows_call_soon_threadsafe_from_another_thread(loop):
    loop.set_debug(True)
    ran = []

    def start():
        th = threading.Thread(target=lambda: loop.call_soon_threadsafe(ran.append, "ok"))
        th.start()
        th.join()

    loop.call_soon(start)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert ran == ["ok"]


def test_debug_mode_allows_other_threads_when_the_loop_is_not_running(loop):
    loop.set_debug(True)
    results = []

    def worker():
        results.append(type(loop.call_soon(callback)).__name__)

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert results == ["Handle"]


# ----------------------------------------------------------- what it logs


def test_slow_callback_is_logged_in_debug_mode(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    assert loop.slow_callback_duration == 0.1
    loop.set_debug(True)
    loop.slow_callback_duration = 0.02

    def slow_callback():
        time.sleep(0.05)

    h = loop.call_soon(slow_callback)
    run_one_batch(loop)
    # (Filtered: on a loaded machine some other step may be slow too.)
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio"
        and r.levelno == logging.WARNING
        and "slow_callback" in r.getMessage()
    ]
    assert len(messages) == 1, [r.getMessage() for r in caplog.records]
    message = messages[0]
    m = re.fullmatch(r"Executing (<Handle .*>) took (\d+\.\d{3}) seconds", message)
    assert m, message
    assert m.group(1) == repr(h)
    assert "slow_callback() at " in m.group(1)
    assert float(m.group(2)) >= 0.04


def test_slow_timer_callback_is_logged_in_debug_mode(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.02

    def slow_timer():
        time.sleep(0.05)

    loop.call_later(0.001, slow_timer)
    loop.run_until_complete(asyncio.sleep(0.1))
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and r.levelno == logging.WARNING and "slow_timer" in r.getMessage()
    ]
    assert len(messages) == 1, [r.getMessage() for r in caplog.records]
    assert re.fullmatch(
        r"Executing <TimerHandle when=\S+ .*slow_timer\(\) at .*> took \d+\.\d{3} seconds",
        messages[0],
    ), messages[0]


def test_slow_callbacks_are_not_logged_outside_debug_mode(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.03)
    run_one_batch(loop)
    assert [r for r in caplog.records if r.name == "asyncio"] == []


def test_fast_callbacks_are_not_logged_in_debug_mode(loop, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 5.0  # far above any scheduling noise
    for _ in range(100):
        loop.call_soon(callback)
    run_one_batch(loop)
    assert [r for r in caplog.records if r.name == "asyncio"] == []


def test_exception_context_has_the_source_traceback_in_debug_mode(loop):
    loop.set_debug(True)
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def fail():
        raise ValueError("x")

    line = sys._getframe().f_lineno + 1
    h = loop.call_soon(fail)
    run_one_batch(loop)
    assert len(contexts) == 1
    ctx = contexts[0]
    assert set(ctx) == {"message", "exception", "handle", "source_traceback"}
    assert ctx["handle"] is h
    last = ctx["source_traceback"][-1]
    assert (last.filename, last.lineno) == (__file__, line)


def test_coroutine_origin_tracking_while_a_debug_loop_runs(loop):
    before = sys.get_coroutine_origin_tracking_depth()
    loop.set_debug(True)
    seen = []
    loop.call_soon(lambda: seen.append(sys.get_coroutine_origin_tracking_depth()))
    run_one_batch(loop)
    assert seen == [10]  # asyncio.constants.DEBUG_STACK_DEPTH
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_no_coroutine_origin_tracking_outside_debug_mode(loop):
    before = sys.get_coroutine_origin_tracking_depth()
    seen = []
    loop.call_soon(lambda: seen.append(sys.get_coroutine_origin_tracking_depth()))
    run_one_batch(loop)
    assert seen == [before]


# ------------------------------------------------------ name resolution


def _address_info_messages(caplog):
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and "address info" in r.getMessage()
    ]


def test_getaddrinfo_is_logged_in_debug_mode(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(True)
    infos = loop.run_until_complete(
        loop.getaddrinfo("localhost", 80, family=socket.AF_INET, type=socket.SOCK_STREAM)
    )
    assert infos
    messages = _address_info_messages(caplog)
    assert len(messages) == 2, messages
    assert messages[0] == (
        "Get address info localhost:80, family=<AddressFamily.AF_INET: 2>, "
        "type=<SocketKind.SOCK_STREAM: 1>"
    )
    assert re.fullmatch(
        r"Getting address info localhost:80, family=<AddressFamily.AF_INET: 2>, "
        r"type=<SocketKind.SOCK_STREAM: 1> took \d+\.\d{3}ms: .*",
        messages[1],
    ), messages[1]
    assert messages[1].endswith(repr(infos))


def test_getaddrinfo_is_not_logged_outside_debug_mode(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.run_until_complete(loop.getaddrinfo("localhost", 80))
    assert _address_info_messages(caplog) == []
