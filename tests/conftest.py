"""Shared fixtures for the loop behaviour tests.

Every behaviour test runs twice: once against ferroloop and once against the
standard library's selector event loop, which serves as the oracle. The
parameter ids are ``ferroloop`` and ``asyncio``, so ``pytest -k asyncio`` checks
the tests themselves against the stdlib loop and ``pytest -k ferroloop`` runs
only the loop under test.

Nothing here reaches into the private state of either loop.
"""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import os
import signal
import sys

import pytest

IMPLS = ["ferroloop", "asyncio"]

# A test that hangs (for example a loop that is never woken up) must not stall
# the whole run. Each test using a loop fixture arms SIGALRM: its handler raises
# HangTimeout, which interrupts a poll (EINTR) and fails just that test. If even
# that does not get through, faulthandler dumps every thread's stack and exits.
HANG_TIMEOUT = float(os.environ.get("FERROLOOP_TEST_HANG_TIMEOUT", "60"))


class HangTimeout(SystemExit):
    """Raised by the hang guard. A SystemExit so that neither a loop's callback
    machinery nor its exception handler swallows it on the way out."""


_hang_guard_file = None


def pytest_configure(config):
    # pytest's output capturing redirects fd 2 while tests run; keep a copy of
    # the real stderr so that a hang report is actually visible.
    global _hang_guard_file
    if _hang_guard_file is None:
        try:
            _hang_guard_file = os.fdopen(os.dup(sys.__stderr__.fileno()), "w")
        except (AttributeError, OSError, ValueError):
            _hang_guard_file = None


def pytest_unconfigure(config):
    global _hang_guard_file
    if _hang_guard_file is not None:
        _hang_guard_file.close()
        _hang_guard_file = None


def import_ferroloop():
    """Import ferroloop or fail the test with a clear message."""
    try:
        import ferroloop
    except ImportError as exc:  # pragma: no cover - depends on the install
        pytest.fail(
            f"ferroloop is not importable ({exc}). Build and install it first, "
            "or run only the asyncio oracle with `-k asyncio`.",
            pytrace=False,
        )
    return ferroloop


def make_loop(impl: str) -> asyncio.AbstractEventLoop:
    """A new, non-debug event loop of the given implementation."""
    if impl == "ferroloop":
        loop = import_ferroloop().new_event_loop()
    elif impl == "asyncio":
        # Go through the default policy explicitly so that a test which
        # installs ferroloop's policy cannot change what the oracle is.
        loop = asyncio.DefaultEventLoopPolicy().new_event_loop()
        assert isinstance(loop, asyncio.SelectorEventLoop)
    else:  # pragma: no cover
        raise ValueError(impl)
    # The environment (PYTHONASYNCIODEBUG, -X dev) may switch debug mode on for
    # new loops; the behaviour tests expect the default, non-debug mode unless
    # they turn it on themselves.
    loop.set_debug(False)
    return loop


@pytest.fixture(params=IMPLS)
def impl(request) -> str:
    """The name of the loop implementation under test."""
    return request.param


@pytest.fixture
def hang_guard():
    """Fail the test if it runs longer than HANG_TIMEOUT; exit if that fails."""

    def on_alarm(signum, frame):
        raise HangTimeout(f"test still running after {HANG_TIMEOUT:g}s: it hangs")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_TIMEOUT)
    if _hang_guard_file is not None:
        faulthandler.dump_traceback_later(HANG_TIMEOUT + 30, exit=True, file=_hang_guard_file)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if _hang_guard_file is not None:
            faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def new_loop(impl, hang_guard):
    """A factory for extra loops of the implementation under test.

    Every loop it makes is closed at teardown (unless a test closed it or
    dropped it on purpose), and the interpreter-wide state that running a loop
    touches is checked and restored, so one broken test cannot cascade.
    """
    loops = []
    hooks_before = sys.get_asyncgen_hooks()
    depth_before = sys.get_coroutine_origin_tracking_depth()

    def factory() -> asyncio.AbstractEventLoop:
        loop = make_loop(impl)
        loops.append(loop)
        return loop

    yield factory

    leaked_running = asyncio._get_running_loop()
    if leaked_running is not None:
        asyncio._set_running_loop(None)
    for loop in loops:
        if not loop.is_closed() and not loop.is_running():
            loop.close()
    hooks_after = sys.get_asyncgen_hooks()
    depth_after = sys.get_coroutine_origin_tracking_depth()
    sys.set_asyncgen_hooks(*hooks_before)
    sys.set_coroutine_origin_tracking_depth(depth_before)
    assert leaked_running is None, "a loop was left set as the running loop"
    assert hooks_after == hooks_before, "async generator hooks were not restored"
    assert depth_after == depth_before, "coroutine origin tracking depth was not restored"


@pytest.fixture
def loop(new_loop):
    """A fresh loop of the implementation under test, closed at teardown."""
    return new_loop()


@pytest.fixture
def untracked_loop_factory(impl, new_loop):
    """Makes loops that no fixture keeps a reference to, for the GC tests.

    (It depends on ``new_loop`` only for the hang guard and the checks.)
    """
    return functools.partial(make_loop, impl)


@pytest.fixture
def oracle_loop():
    """An asyncio selector loop, to compute expected results side by side."""
    loop = make_loop("asyncio")
    yield loop
    if not loop.is_closed():
        loop.close()


@pytest.fixture
def ferroloop_module(hang_guard):
    """The ferroloop package, for the tests that only make sense for it."""
    return import_ferroloop()
