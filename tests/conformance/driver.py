#!/usr/bin/env python3
"""Run CPython's own test_asyncio modules against ferroloop.

Every module runs in child processes of its own (CPython's tests mutate
global state: policies, child watchers, signal handlers, threads). The child
installs the loop under test, runs the module's unittest suite and streams one
JSON line per test to a results file. A test that runs longer than the
per-test timeout is stopped by faulthandler (which works even when the main
thread holds the GIL inside the extension): the hang is recorded with the
tracebacks of all threads, and a new child runs the rest of the module. A
child that crashes (segfault, abort) is handled the same way.

The outcomes are then compared with expected_failures.py:

* a failure (fail, error, hang, crash) that is not listed is an error,
* a listed test that passes is an error (the list only shrinks),
* a listed test that no longer exists is an error,
* a listed entry whose reason is 'TODO: triage' is an error,
* skipped tests are reported and never fail the run.

Loop under test: FERROLOOP_CONFORMANCE_LOOP=ferroloop (default) or
FERROLOOP_CONFORMANCE_LOOP=asyncio (the stdlib loop: everything must pass;
this validates the runner itself; the expected-failure list is not applied).

Usage:
    python tests/conformance/driver.py --all
    python tests/conformance/driver.py test_tasks test_locks
    python tests/conformance/driver.py test_events -k test_call_later
    python tests/conformance/driver.py --all --write-expected
    FERROLOOP_CONFORMANCE_LOOP=asyncio python tests/conformance/driver.py --all

Environment:
    FERROLOOP_CONFORMANCE_LOOP            ferroloop | asyncio
    FERROLOOP_CONFORMANCE_TEST_TIMEOUT    seconds per test (default 30)
    FERROLOOP_CONFORMANCE_MODULE_TIMEOUT  seconds per module (default 900)
    FERROLOOP_CONFORMANCE_JSON            counts file (default target/conformance.json)
    FERROLOOP_CONFORMANCE_WORKDIR         logs and raw results (default target/conformance)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EXPECTED_FILE = os.path.join(HERE, "expected_failures.py")

# The CPython modules that run against ferroloop, in run order.
MODULES = (
    "test_events",
    "test_tasks",
    "test_locks",
    "test_queues",
    "test_taskgroups",
    "test_timeouts",
    "test_waitfor",
    "test_runners",
    "test_context",
    "test_pep492",
    "test_threads",
    "test_futures2",
    "test_streams",
    "test_server",
    "test_buffered_proto",
    "test_sock_lowlevel",
    "test_ssl",
    "test_sslproto",
    "test_sendfile",
    "test_subprocess",
    # From CPython 3.12 (module_available() says whether this interpreter has it).
    "test_eager_task_factory",
    # From CPython 3.13.
    "test_staggered",
)

PACKAGE = "test.test_asyncio"


def module_available(module: str) -> bool:
    """Whether this interpreter's test_asyncio has the module (some came in later versions)."""
    return importlib.util.find_spec(f"{PACKAGE}.{module}") is not None

# Per module, the test classes CPython binds to its own loops (selectors,
# proactor): they are dropped, and a class with the same mixins bound to the
# loop under test replaces them (see _LOOP_BINDINGS below).
STDLIB_LOOP_CLASSES = {
    "test_events": frozenset(
        {
            "EPollEventLoopTests",
            "PollEventLoopTests",
            "SelectEventLoopTests",
            "KqueueEventLoopTests",
            "ProactorEventLoopTests",
        }
    ),
    "test_sock_lowlevel": frozenset(
        {
            "EPollEventLoopTests",
            "PollEventLoopTests",
            "SelectEventLoopTests",
            "KqueueEventLoopTests",
            "ProactorEventLoopTests",
        }
    ),
    "test_sendfile": frozenset(
        {
            "EPollEventLoopTests",
            "PollEventLoopTests",
            "SelectEventLoopTests",
            "KqueueEventLoopTests",
            "ProactorEventLoopTests",
        }
    ),
    "test_server": frozenset({"SelectorStartServerTests", "ProactorStartServerTests"}),
    "test_buffered_proto": frozenset(
        {"BufferedProtocolSelectorTests", "BufferedProtocolProactorTests"}
    ),
    "test_sslproto": frozenset({"SelectorStartTLSTests", "ProactorStartTLSTests"}),
}

# Modules every test of which must run on the loop under test: the runner
# records the type of each test's ``self.loop`` (after setUp) and reports a
# runner error when one is not the loop under test.
LOOP_CHECKED_MODULES = frozenset(
    {
        "test_streams",
        "test_server",
        "test_buffered_proto",
        "test_sock_lowlevel",
        "test_ssl",
        "test_sslproto",
        "test_sendfile",
    }
)

LOOP_MODES = ("ferroloop", "asyncio")

TODO_REASON = "TODO: triage"
NOT_IMPLEMENTED_PREFIX = "not implemented yet: "
NOT_IMPLEMENTED_APIS = (
    "sockets",
    "servers",
    "datagrams",
    "pipes",
    "subprocesses",
    "signals",
    "TLS",
    "sendfile",
)
# An entry whose reason starts with this may pass or fail (timing-dependent
# tests); it is never reported as an unexpected pass.
FLAKY_PREFIX = "flaky: "

FAIL_OUTCOMES = ("fail", "error", "hang", "crash")

DEFAULT_TEST_TIMEOUT = 30.0
DEFAULT_MODULE_TIMEOUT = 900.0
MAX_CHILD_RESTARTS = 60
DETAIL_LIMIT = 6000  # characters of traceback kept per test


# ---------------------------------------------------------------------------
# Configuration


def loop_mode() -> str:
    mode = os.environ.get("FERROLOOP_CONFORMANCE_LOOP", "ferroloop").strip() or "ferroloop"
    if mode not in LOOP_MODES:
        raise SystemExit(
            f"FERROLOOP_CONFORMANCE_LOOP={mode!r}: expected one of {', '.join(LOOP_MODES)}"
        )
    return mode


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not a number") from None


def default_test_timeout() -> float:
    return _env_float("FERROLOOP_CONFORMANCE_TEST_TIMEOUT", DEFAULT_TEST_TIMEOUT)


def default_module_timeout() -> float:
    return _env_float("FERROLOOP_CONFORMANCE_MODULE_TIMEOUT", DEFAULT_MODULE_TIMEOUT)


def json_path() -> str:
    return os.environ.get("FERROLOOP_CONFORMANCE_JSON") or os.path.join(
        REPO, "target", "conformance.json"
    )


def workdir() -> str:
    return os.environ.get("FERROLOOP_CONFORMANCE_WORKDIR") or os.path.join(
        REPO, "target", "conformance"
    )


def short_id(test_id: str) -> str:
    prefix = PACKAGE + "."
    return test_id[len(prefix):] if test_id.startswith(prefix) else test_id


def module_of(test_id: str) -> str:
    return test_id.split(".", 1)[0]


# ---------------------------------------------------------------------------
# The expected-failure list


def python_version() -> str:
    """The running interpreter's X.Y: the key of its own expected failures."""
    return "%d.%d" % sys.version_info[:2]


def _load_list_module(path: str):
    spec = importlib.util.spec_from_file_location("_ferroloop_expected_failures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not isinstance(module.EXPECTED_FAILURES, dict):
        raise TypeError(f"{path}: EXPECTED_FAILURES must be a dict")
    only_on = getattr(module, "ONLY_ON", {})
    if not isinstance(only_on, dict) or not all(isinstance(v, dict) for v in only_on.values()):
        raise TypeError(f"{path}: ONLY_ON must map 'X.Y' to a dict of entries")
    return module.EXPECTED_FAILURES, only_on


def load_expected(path: str = EXPECTED_FILE, version: str | None = None) -> dict[str, str]:
    """The expected failures of the running interpreter (or of ``version``): the
    entries for every version, and ONLY_ON's for this one (a fresh load every call)."""
    common, only_on = _load_list_module(path)
    expected = dict(common)
    expected.update(only_on.get(version or python_version(), {}))
    return expected


def load_only_on(path: str = EXPECTED_FILE) -> dict[str, dict[str, str]]:
    """ONLY_ON: per 'X.Y', the entries that apply to that version alone."""
    return {v: dict(e) for v, e in _load_list_module(path)[1].items()}


def reason_problem(reason: object) -> str | None:
    """Why a reason is not acceptable, or None when it is."""
    if not isinstance(reason, str) or not reason.strip():
        return "has no reason"
    if reason.strip() != reason:
        return f"reason {reason!r} has leading or trailing blanks"
    if reason == TODO_REASON or reason.startswith("TODO"):
        return f"is not triaged (reason {reason!r}): give it a real reason or fix the bug"
    if reason.lower().startswith("not implemented"):
        api = reason[len(NOT_IMPLEMENTED_PREFIX):]
        if not reason.startswith(NOT_IMPLEMENTED_PREFIX) or api not in NOT_IMPLEMENTED_APIS:
            allowed = ", ".join(repr(NOT_IMPLEMENTED_PREFIX + a) for a in NOT_IMPLEMENTED_APIS)
            return f"reason {reason!r} must be exactly one of {allowed}"
    if reason.startswith(FLAKY_PREFIX) and not reason[len(FLAKY_PREFIX):].strip():
        return "flaky entry without an explanation"
    return None


def validate_expected(expected: dict[str, str]) -> list[str]:
    """Problems with the list as a whole (independent of any run)."""
    problems = []
    for test_id, reason in sorted(expected.items()):
        if not isinstance(test_id, str) or test_id.count(".") < 2:
            problems.append(f"{test_id!r}: not a test id of the form module.Class.test")
            continue
        if module_of(test_id) not in MODULES:
            problems.append(f"{test_id}: module {module_of(test_id)!r} is not run by the runner")
        problem = reason_problem(reason)
        if problem:
            problems.append(f"{test_id}: {problem}")
    return problems


_HEADER = '''"""Expected failures of CPython's test_asyncio suite against ferroloop.

Maps a test id (module.Class.test, or module.Class.setUpClass etc. for a
failing fixture) to the reason it fails. Every entry states its reason:

* 'not implemented yet: <api>' for an API a later issue brings, <api> being
  one of: {apis};
* 'uses private attribute ... of the stdlib loop' for a test that pokes the
  stdlib loop's internals;
* 'flaky: <why>' for a timing-dependent test that may pass or fail;
* otherwise a sentence saying why the behaviour differs.

The runner fails on a failure that is not listed, on a listed test that
passes (so this list only shrinks), on a listed test that no longer exists,
and on the placeholder reason '{todo}'.

Regenerate from a run with:
    python tests/conformance/driver.py --all --write-expected
which keeps the existing reasons, drops entries that pass and adds new
failures with the placeholder reason (to be triaged before committing).
Comments in this file are not kept by the regeneration.

EXPECTED_FAILURES holds what fails on every interpreter the runner is used
with; ONLY_ON['X.Y'] what fails on CPython X.Y alone (tests that exist only
there, or behaviour that differs there), each entry's reason saying why that
version. An entry must be needed on every version it applies to: a listed
test that passes is an error.
"""

EXPECTED_FAILURES = {{
'''

_ONLY_ON_HEADER = """# Per CPython version: entries that apply to that version alone.
ONLY_ON = {
"""


def _render_entries(out: list[str], expected: dict[str, str], indent: str) -> None:
    order = {name: i for i, name in enumerate(MODULES)}
    keys = sorted(expected, key=lambda k: (order.get(module_of(k), len(order)), k))
    current = None
    for key in keys:
        mod = module_of(key)
        if mod != current:
            if current is not None:
                out.append("\n")
            out.append(f"{indent}# {mod}\n")
            current = mod
        out.append(f"{indent}{key!r}: {expected[key]!r},\n")


def render_expected(expected: dict[str, str], only_on: dict[str, dict[str, str]]) -> str:
    out = [_HEADER.format(apis=", ".join(NOT_IMPLEMENTED_APIS), todo=TODO_REASON)]
    _render_entries(out, expected, "    ")
    out.append("}\n\n")
    out.append(_ONLY_ON_HEADER)
    for version in sorted(only_on, key=lambda v: tuple(map(int, v.split(".")))):
        if not only_on[version]:
            continue
        out.append(f"    {version!r}: {{\n")
        _render_entries(out, only_on[version], "        ")
        out.append("    },\n")
    out.append("}\n")
    return "".join(out)


def write_expected(
    expected: dict[str, str], only_on: dict[str, dict[str, str]], path: str = EXPECTED_FILE
) -> None:
    text = render_expected(expected, only_on)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def regenerate_expected(
    old: dict[str, str], reports: list["ModuleReport"]
) -> dict[str, str]:
    """New list: failures of the modules run (old reasons kept, new ones
    'TODO: triage'); entries of modules not run are kept as they are."""
    ran = {r.module for r in reports if r.complete}
    new = {k: v for k, v in old.items() if module_of(k) not in ran}
    for report in reports:
        if not report.complete:
            # Keep what we had for a module whose run did not finish.
            new.update({k: v for k, v in old.items() if module_of(k) == report.module})
            continue
        for test_id, res in report.results.items():
            if res["outcome"] in FAIL_OUTCOMES:
                new[test_id] = old.get(test_id, TODO_REASON)
            elif res["outcome"] == "skip" and test_id in old:
                new[test_id] = old[test_id]  # not exercised here: keep
            elif res["outcome"] == "pass" and old.get(test_id, "").startswith(FLAKY_PREFIX):
                new[test_id] = old[test_id]
    return new


# ---------------------------------------------------------------------------
# Child side: install the loop, run one module's suite, stream results.


def _install_loop(mode: str):
    """Make asyncio's event loop policy produce loops of the loop under test.

    Returns (policy_class, loop_factory). Only public names are used: the
    policy class replaces ``asyncio.DefaultEventLoopPolicy``, which is what
    ``asyncio.set_event_loop_policy(None)`` (called by every module's
    tearDownModule) re-instantiates on the next ``get_event_loop_policy()``.
    """
    import asyncio

    if mode == "asyncio":
        return asyncio.DefaultEventLoopPolicy, asyncio.SelectorEventLoop

    import ferroloop

    factory = ferroloop.new_event_loop
    policy_class = getattr(ferroloop, "EventLoopPolicy", None)
    if policy_class is None:

        class FerroloopPolicy(asyncio.DefaultEventLoopPolicy):
            def new_event_loop(self):
                return ferroloop.new_event_loop()

        policy_class = FerroloopPolicy

    asyncio.DefaultEventLoopPolicy = policy_class
    if hasattr(asyncio, "unix_events"):
        asyncio.unix_events.DefaultEventLoopPolicy = policy_class
    asyncio.set_event_loop_policy(policy_class())
    return policy_class, factory


def _probe_loop_type() -> str:
    """The type of the loop asyncio.new_event_loop() gives right now."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return _loop_type_name(loop)
    finally:
        loop.close()


def _bind_test_events(module, loop_factory):
    """FerroloopEventLoopTests: test_events' loop mixins bound to the loop
    under test, like CPython's EPollEventLoopTests are bound to
    SelectorEventLoop(EpollSelector())."""
    from test.test_asyncio import utils as test_utils

    unix_mixin = module.UnixEventLoopTestsMixin

    class FerroloopEventLoopTests(
        unix_mixin,
        module.SubprocessTestsMixin,
        test_utils.TestCase,
    ):
        def create_event_loop(self):
            return loop_factory()

        # setUp is asyncio's own (UnixEventLoopTestsMixin's): before 3.13 it
        # attaches a SafeChildWatcher, whose SIGCHLD handler the loop runs; the
        # loop reaps its own children and never asks the watcher.

    return _register(module, FerroloopEventLoopTests, "FerroloopEventLoopTests")


def _register(module, cls, name: str):
    """Make cls a class of the CPython module, so that its test ids read
    module.Class.test like the module's own classes."""
    cls.__module__ = module.__name__
    cls.__name__ = name
    cls.__qualname__ = name
    setattr(module, name, cls)
    return cls


def _bind_test_sock_lowlevel(module, loop_factory):
    """FerroloopEventLoopTests: test_sock_lowlevel's BaseSockTestsMixin bound
    to the loop under test, like its EPollEventLoopTests are bound to
    SelectorEventLoop(EpollSelector())."""
    from test.test_asyncio import utils as test_utils

    class FerroloopEventLoopTests(module.BaseSockTestsMixin, test_utils.TestCase):
        def create_event_loop(self):
            return loop_factory()

    return _register(module, FerroloopEventLoopTests, "FerroloopEventLoopTests")


def _bind_test_sendfile(module, loop_factory):
    """FerroloopEventLoopTests: test_sendfile's SendfileTestsBase (loop.sendfile and
    loop.sock_sendfile) bound to the loop under test, like its EPollEventLoopTests are
    bound to SelectorEventLoop(EpollSelector())."""
    from test.test_asyncio import utils as test_utils

    class FerroloopEventLoopTests(module.SendfileTestsBase, test_utils.TestCase):
        def create_event_loop(self):
            return loop_factory()

    return _register(module, FerroloopEventLoopTests, "FerroloopEventLoopTests")


def _bind_test_server(module, loop_factory):
    """FerroloopStartServerTests: test_server's tests with new_loop() giving
    the loop under test. It derives from SelectorStartServerTests, which adds
    the Unix-socket test to BaseStartServer; only new_loop() changes."""

    class FerroloopStartServerTests(module.SelectorStartServerTests):
        def new_loop(self):
            return loop_factory()

    return _register(module, FerroloopStartServerTests, "FerroloopStartServerTests")


def _bind_test_buffered_proto(module, loop_factory):
    """BufferedProtocolFerroloopTests: BaseTestBufferedProtocol with new_loop()
    giving the loop under test (CPython's BufferedProtocolSelectorTests gives
    asyncio.SelectorEventLoop())."""
    import unittest

    class BufferedProtocolFerroloopTests(module.BaseTestBufferedProtocol, unittest.TestCase):
        def new_loop(self):
            return loop_factory()

    return _register(module, BufferedProtocolFerroloopTests, "BufferedProtocolFerroloopTests")


def _bind_test_sslproto(module, loop_factory):
    """FerroloopStartTLSTests: test_sslproto's BaseStartTLS (real connections
    through loop.start_tls, create_connection and create_server) with new_loop()
    giving the loop under test. SslProtoHandshakeTests drive asyncio's own
    sslproto.SSLProtocol over mock transports on asyncio.new_event_loop(), which
    the runner makes the loop under test."""
    import unittest

    class FerroloopStartTLSTests(module.BaseStartTLS, unittest.TestCase):
        def new_loop(self):
            return loop_factory()

    return _register(module, FerroloopStartTLSTests, "FerroloopStartTLSTests")


# Module -> function(module, loop_factory) returning the class that replaces
# the module's STDLIB_LOOP_CLASSES.
_LOOP_BINDINGS = {
    "test_events": _bind_test_events,
    "test_sock_lowlevel": _bind_test_sock_lowlevel,
    "test_sendfile": _bind_test_sendfile,
    "test_server": _bind_test_server,
    "test_buffered_proto": _bind_test_buffered_proto,
    "test_sslproto": _bind_test_sslproto,
}


def _flatten(suite):
    import unittest

    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def _load_tests(module_name: str, loop_factory):
    import importlib
    import unittest

    module = importlib.import_module(f"{PACKAGE}.{module_name}")
    loader = unittest.TestLoader()
    tests = list(_flatten(loader.loadTestsFromModule(module)))
    bind = _LOOP_BINDINGS.get(module_name)
    if bind is not None:
        dropped = STDLIB_LOOP_CLASSES[module_name]
        tests = [t for t in tests if type(t).__name__ not in dropped]
        cls = bind(module, loop_factory)
        tests = list(_flatten(loader.loadTestsFromTestCase(cls))) + tests
    return tests


def _loop_type_name(loop) -> str:
    cls = type(loop)
    return f"{cls.__module__}.{cls.__qualname__}"


def _watch_test_loop(test, emit) -> None:
    """Report the type of the test's ``self.loop`` once its setUp has run
    (the loop the test actually runs on; FunctionalTestCaseMixin's tearDown
    drops it, so it is read right after setUp)."""
    tid = short_id(test.id())
    setup = test.setUp

    def setUp():
        setup()
        loop = getattr(test, "loop", None)
        if loop is not None:
            emit(event="test_loop", id=tid, type=_loop_type_name(loop))

    test.setUp = setUp


def _fixture_id(description: str) -> str:
    # unittest's _ErrorHolder: "setUpClass (test.test_asyncio.test_x.Class)"
    name, _, parent = description.partition(" (")
    parent = parent.rstrip(")")
    return f"{short_id(parent)}.{name}" if parent else description


def child_main(args) -> int:
    import faulthandler
    import unittest

    from unittest.case import _SubTest

    out = open(args.results, "a", buffering=1, encoding="utf-8")

    def emit(**event):
        out.write(json.dumps(event) + "\n")
        out.flush()

    # A process started in the background by a non-interactive shell inherits
    # SIGINT ignored; CPython's tests (test_runners' _thread.interrupt_main())
    # expect Python's default KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    timeout = args.test_timeout
    fault = open(args.faulthandler_file, "w")
    faulthandler.enable(file=fault, all_threads=True)
    # Guards the imports too; re-armed around every test below.
    faulthandler.dump_traceback_later(timeout, exit=True, file=fault)

    policy_class, loop_factory = _install_loop(args.loop)
    emit(event="loop", phase="start", type=_probe_loop_type())

    skip = set()
    if args.skip_file and os.path.exists(args.skip_file):
        with open(args.skip_file, encoding="utf-8") as f:
            skip = {line.strip() for line in f if line.strip()}

    tests = _load_tests(args.module, loop_factory)
    ids = [short_id(t.id()) for t in tests]
    emit(event="collected", ids=ids)
    selected = [
        t
        for t, tid in zip(tests, ids)
        if tid not in skip and (not args.k or any(k in tid for k in args.k))
    ]

    rank = {None: 0, "skip": 1, "pass": 2, "fail": 3, "error": 3}

    class Result(unittest.TestResult):
        def __init__(self):
            super().__init__()
            self.current = {}

        def _state(self, test):
            if isinstance(test, _SubTest):
                test = test.test_case
            if not isinstance(test, unittest.TestCase):  # _ErrorHolder
                tid = _fixture_id(test.id())
                return self.current.setdefault(tid, {"outcome": None, "details": []}), tid
            tid = short_id(test.id())
            return self.current.setdefault(tid, {"outcome": None, "details": []}), tid

        def _set(self, test, outcome, detail=None):
            state, tid = self._state(test)
            if rank[outcome] >= rank[state["outcome"]]:
                state["outcome"] = outcome
            if detail:
                prefix = f"[{test.id()}]\n" if isinstance(test, _SubTest) else ""
                state["details"].append(prefix + detail)
            if not isinstance(test, (unittest.TestCase, _SubTest)):
                # Fixture errors have no startTest/stopTest: report now.
                self._flush(tid)

        def _flush(self, tid):
            state = self.current.pop(tid, None)
            if state is None:
                return
            detail = "\n".join(state["details"])
            if len(detail) > DETAIL_LIMIT:
                detail = detail[:DETAIL_LIMIT] + "\n... (truncated)"
            emit(event="result", id=tid, outcome=state["outcome"] or "pass", detail=detail)

        def startTest(self, test):
            super().startTest(test)
            emit(event="start", id=short_id(test.id()))
            _watch_test_loop(test, emit)
            faulthandler.dump_traceback_later(timeout, exit=True, file=fault)

        def stopTest(self, test):
            faulthandler.cancel_dump_traceback_later()
            super().stopTest(test)
            self._flush(short_id(test.id()))
            # Class and module fixtures run between tests: guard them too.
            faulthandler.dump_traceback_later(timeout, exit=True, file=fault)

        def addSuccess(self, test):
            super().addSuccess(test)
            self._set(test, "pass")

        def addError(self, test, err):
            super().addError(test, err)
            self._set(test, "error", self._exc_info_to_string(err, test))

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._set(test, "fail", self._exc_info_to_string(err, test))

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                kind = "fail" if issubclass(err[0], test.failureException) else "error"
                self._set(subtest, kind, self._exc_info_to_string(err, test))

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._set(test, "skip", reason)

        def addExpectedFailure(self, test, err):
            # CPython itself expects this test to fail: conforming.
            super().addExpectedFailure(test, err)
            self._set(test, "pass")

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._set(test, "fail", "unexpected success of a test CPython marks @expectedFailure")

    result = Result()
    faulthandler.dump_traceback_later(timeout, exit=True, file=fault)
    unittest.TestSuite(selected).run(result)
    faulthandler.cancel_dump_traceback_later()
    emit(event="loop", phase="end", type=_probe_loop_type())
    import asyncio

    emit(
        event="done",
        policy_ok=isinstance(asyncio.get_event_loop_policy(), policy_class),
    )
    out.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leftover non-daemon threads of a failed test must not keep us alive.
    os._exit(0)


# ---------------------------------------------------------------------------
# Parent side: run a module in children, restart after hangs and crashes.


@dataclasses.dataclass
class ModuleReport:
    module: str
    loop: str
    results: dict = dataclasses.field(default_factory=dict)  # id -> {outcome, detail}
    collected: list = dataclasses.field(default_factory=list)
    loop_types: list = dataclasses.field(default_factory=list)
    test_loop_types: dict = dataclasses.field(default_factory=dict)  # id -> type of self.loop
    errors: list = dataclasses.field(default_factory=list)  # runner-level problems
    complete: bool = False
    wall: float = 0.0
    log: str = ""
    # Filled by classify():
    passed: list = dataclasses.field(default_factory=list)
    expected_failures: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    unexpected_failures: list = dataclasses.field(default_factory=list)
    unexpected_passes: list = dataclasses.field(default_factory=list)
    stale: list = dataclasses.field(default_factory=list)
    untriaged: list = dataclasses.field(default_factory=list)
    listed_skipped: list = dataclasses.field(default_factory=list)
    reasons: dict = dataclasses.field(default_factory=dict)  # reason -> expected failures

    @property
    def ok(self) -> bool:
        return not (
            self.errors
            or self.unexpected_failures
            or self.unexpected_passes
            or self.stale
            or self.untriaged
        )

    def counts(self) -> dict:
        return {
            "passed": len(self.passed),
            "expected_failures": len(self.expected_failures),
            "skipped": len(self.skipped),
            "unexpected_failures": len(self.unexpected_failures),
            "unexpected_passes": len(self.unexpected_passes),
            "total": len(self.results),
        }

    def to_json(self) -> dict:
        data = self.counts()
        data.update(
            complete=self.complete,
            ok=self.ok,
            wall_seconds=round(self.wall, 1),
            loop_types=sorted(set(self.loop_types)),
            test_loop_types=_count_values(self.test_loop_types),
            expected_failures_by_reason=dict(sorted(self.reasons.items())),
            listed_but_skipped_ids=sorted(self.listed_skipped),
            unexpected_failures_ids=sorted(self.unexpected_failures),
            unexpected_passes_ids=sorted(self.unexpected_passes),
            stale_ids=sorted(self.stale),
            untriaged_ids=sorted(self.untriaged),
            runner_errors=self.errors,
            log=self.log,
        )
        return data


def _count_values(mapping: dict) -> dict:
    counts: dict = {}
    for value in mapping.values():
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def _read_events(path: str, offset: int = 0) -> list[dict]:
    """The JSON lines a child wrote from byte offset on."""
    events = []
    if not os.path.exists(path):
        return events
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f.read().decode("utf-8", "replace").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a crash
    return events


def _tail(path: str, limit: int = 3000) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    return text[-limit:]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_module(module: str, mode: str | None = None, *, k: list[str] | None = None,
               per_test_timeout: float | None = None,
               per_module_timeout: float | None = None,
               verbose: bool = False) -> ModuleReport:
    mode = mode or loop_mode()
    per_test_timeout = per_test_timeout or default_test_timeout()
    per_module_timeout = per_module_timeout or default_module_timeout()
    report = ModuleReport(module=module, loop=mode)
    out_dir = os.path.join(workdir(), mode, module)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)
    results_file = os.path.join(out_dir, "results.jsonl")
    skip_file = os.path.join(out_dir, "skip.txt")
    log_file = os.path.join(out_dir, "output.log")
    report.log = log_file
    cwd = tempfile.mkdtemp(prefix=f"conformance-{module}-")
    start = time.monotonic()
    deadline = start + per_module_timeout
    done = False
    try:
        for attempt in range(MAX_CHILD_RESTARTS + 1):
            with open(skip_file, "w", encoding="utf-8") as f:
                f.write("".join(tid + "\n" for tid in report.results))
            fault_file = os.path.join(out_dir, f"faulthandler.{attempt}.txt")
            offset = os.path.getsize(results_file) if os.path.exists(results_file) else 0
            cmd = [
                sys.executable, os.path.abspath(__file__), "--child", module,
                "--loop", mode,
                "--results", results_file,
                "--skip-file", skip_file,
                "--faulthandler-file", fault_file,
                "--test-timeout", str(per_test_timeout),
            ]
            for pattern in k or ():
                cmd += ["-k", pattern]
            env = dict(os.environ)
            env.pop("PYTHONFAULTHANDLER", None)
            with open(log_file, "a", encoding="utf-8") as log:
                log.write(f"\n===== child {attempt}: {' '.join(cmd)}\n")
                log.flush()
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=cwd, env=env, start_new_session=True,
                )
                try:
                    rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    proc.wait()
                    rc = None
                except BaseException:  # ^C: do not leave the child running
                    _kill_group(proc)
                    raise
                _kill_group(proc)  # grandchildren left behind by a test

            new_events = _read_events(results_file, offset)
            started = None
            finished = False
            for ev in new_events:
                kind = ev.get("event")
                if kind == "collected" and not report.collected:
                    report.collected = ev["ids"]
                elif kind == "start":
                    started = ev["id"]
                elif kind == "result":
                    report.results[ev["id"]] = {"outcome": ev["outcome"], "detail": ev["detail"]}
                    if ev["id"] == started:
                        started = None
                elif kind == "loop":
                    report.loop_types.append(ev["type"])
                elif kind == "test_loop":
                    report.test_loop_types[ev["id"]] = ev["type"]
                elif kind == "done":
                    finished = True
                    if not ev.get("policy_ok", True):
                        report.errors.append(
                            "after the module's tearDownModule, asyncio.get_event_loop_policy() "
                            "is not the policy of the loop under test"
                        )
            if verbose:
                print(f"  [{module}] child {attempt}: rc={rc}, {len(report.results)} results",
                      file=sys.stderr)
            if finished and rc == 0:
                done = True
                break
            if rc is None:
                report.errors.append(
                    f"module timeout: {module} did not finish in {per_module_timeout:.0f}s "
                    f"(FERROLOOP_CONFORMANCE_MODULE_TIMEOUT); last test started: {started}"
                )
                if started:
                    report.results[started] = {
                        "outcome": "hang",
                        "detail": f"killed at the module timeout ({per_module_timeout:.0f}s)",
                    }
                break
            dump = _tail(fault_file, DETAIL_LIMIT)
            if started is None:
                report.errors.append(
                    f"child for {module} exited with status {rc} outside any test "
                    f"(import, fixture or runner failure); see {log_file}\n"
                    + (dump or _tail(log_file))
                )
                break
            if dump.startswith("Timeout ("):
                outcome = "hang"
                detail = (
                    f"no result after {per_test_timeout:.0f}s "
                    f"(FERROLOOP_CONFORMANCE_TEST_TIMEOUT); tracebacks:\n{dump}"
                )
            else:
                outcome = "crash"
                detail = f"the test process died with status {rc}\n{dump or _tail(log_file)}"
            report.results[started] = {"outcome": outcome, "detail": detail}
            with open(results_file, "a", encoding="utf-8") as f:
                f.write(json.dumps({"event": "result", "id": started, "outcome": outcome,
                                    "detail": detail}) + "\n")
        else:
            report.errors.append(f"gave up after {MAX_CHILD_RESTARTS} restarts of {module}")
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    report.complete = done
    report.wall = time.monotonic() - start
    # Collected tests that never reported (a class or module fixture was
    # skipped or failed; the fixture's own error is recorded separately).
    if done:
        for tid in report.collected:
            if tid not in report.results and (not k or any(p in tid for p in k)):
                report.results[tid] = {
                    "outcome": "skip",
                    "detail": "not run (its class or module fixture was skipped or failed)",
                }
    return report


def expected_loop_type_prefix(mode: str) -> str:
    return "asyncio." if mode == "asyncio" else "ferroloop"


def classify(report: ModuleReport, expected: dict[str, str] | None, *,
             filtered: bool = False) -> ModuleReport:
    """Apply the expected-failure list (None: everything must pass)."""
    expected = expected or {}
    listed = {k: v for k, v in expected.items() if module_of(k) == report.module}
    for tid, res in sorted(report.results.items()):
        outcome = res["outcome"]
        reason = listed.get(tid)
        if outcome == "skip":
            report.skipped.append(tid)
            if reason is not None:
                report.listed_skipped.append(tid)
        elif outcome in FAIL_OUTCOMES:
            if reason is None:
                report.unexpected_failures.append(tid)
            else:
                report.expected_failures.append(tid)
                report.reasons[reason] = report.reasons.get(reason, 0) + 1
        elif reason is not None and not reason.startswith(FLAKY_PREFIX):
            report.unexpected_passes.append(tid)
        else:
            report.passed.append(tid)
    for tid, reason in sorted(listed.items()):
        if reason_problem(reason) and reason.startswith("TODO"):
            report.untriaged.append(tid)
        if report.complete and not filtered and tid not in report.results:
            report.stale.append(tid)
    prefix = expected_loop_type_prefix(report.loop)
    bad_types = [t for t in report.loop_types if not t.startswith(prefix)]
    if bad_types:
        report.errors.append(
            f"asyncio.new_event_loop() gave {sorted(set(bad_types))}, not the loop under test "
            f"({report.loop})"
        )
    elif report.complete and len(report.loop_types) < 2:
        report.errors.append("the child did not report the loop type at start and end")
    if report.module in LOOP_CHECKED_MODULES:
        other = sorted(
            f"{tid} ({t})" for tid, t in report.test_loop_types.items() if not t.startswith(prefix)
        )
        if other:
            report.errors.append(
                f"tests that did not run on the loop under test ({report.loop}): "
                + ", ".join(other)
            )
    return report


def format_failure(report: ModuleReport, limit_lines: int = 60, limit_tests: int = 25) -> str:
    """The message for a module whose run does not match the list: the
    offending ids first, then the tracebacks of the unexpected failures."""
    lines = [f"{report.module} against {report.loop}: " + summary_line(report)]
    for err in report.errors:
        lines.append(f"RUNNER ERROR: {err}")
    if report.unexpected_failures:
        lines.append(f"\nUNEXPECTED FAILURES ({len(report.unexpected_failures)}):")
        lines.extend(
            f"    {tid}  [{report.results[tid]['outcome']}]" for tid in report.unexpected_failures
        )
    if report.unexpected_passes:
        lines.append(
            f"\nUNEXPECTED PASSES ({len(report.unexpected_passes)}; remove them from "
            "tests/conformance/expected_failures.py):"
        )
        lines.extend(f"    {tid}" for tid in report.unexpected_passes)
    if report.stale:
        lines.append("\nLISTED BUT NO LONGER EXISTS (remove from expected_failures.py):")
        lines.extend(f"    {tid}" for tid in report.stale)
    if report.untriaged:
        lines.append(f"\nUNTRIAGED (reason '{TODO_REASON}'; give a real reason):")
        lines.extend(f"    {tid}" for tid in report.untriaged)
    for tid in report.unexpected_failures[:limit_tests]:
        res = report.results[tid]
        detail = res["detail"].rstrip().splitlines()
        if len(detail) > limit_lines:
            detail = detail[: limit_lines // 2] + ["    ..."] + detail[-limit_lines // 2:]
        lines.append(f"\n--- {res['outcome'].upper()}: {tid}")
        lines.extend("    " + line for line in detail)
    if len(report.unexpected_failures) > limit_tests:
        lines.append(f"\n... tracebacks of {len(report.unexpected_failures) - limit_tests} more "
                     "unexpected failures in the results file")
    lines.append(f"\nfull output: {report.log}; results: "
                 f"{os.path.join(os.path.dirname(report.log), 'results.jsonl')}")
    return "\n".join(lines)


def summary_line(report: ModuleReport) -> str:
    c = report.counts()
    extra = ""
    if c["unexpected_failures"] or c["unexpected_passes"] or report.stale or report.untriaged:
        extra = (
            f", UNEXPECTED: {c['unexpected_failures']} failures / "
            f"{c['unexpected_passes']} passes / {len(report.stale)} stale / "
            f"{len(report.untriaged)} untriaged"
        )
    if report.errors:
        extra += f", {len(report.errors)} runner errors"
    return (
        f"{c['passed']} passed / {c['expected_failures']} expected failures / "
        f"{c['skipped']} skipped / {c['total']} total{extra} ({report.wall:.1f}s)"
    )


def summary_table(reports: list[ModuleReport]) -> str:
    if not reports:
        return ""
    loop = reports[0].loop
    width = max(len(r.module) for r in reports)
    lines = [f"conformance against {loop} (passed / expected failures / skipped / total):"]
    for r in reports:
        lines.append(f"  {r.module:<{width}}  {summary_line(r)}")
    lines.append("  " + overall_line(reports))
    return "\n".join(lines)


def overall(reports: list[ModuleReport]) -> dict:
    keys = ("passed", "expected_failures", "skipped", "unexpected_failures",
            "unexpected_passes", "total")
    totals = {key: sum(r.counts()[key] for r in reports) for key in keys}
    totals["stale"] = sum(len(r.stale) for r in reports)
    totals["untriaged"] = sum(len(r.untriaged) for r in reports)
    totals["runner_errors"] = sum(len(r.errors) for r in reports)
    totals["modules"] = len(reports)
    by_reason: dict[str, int] = {}
    for r in reports:
        for reason, n in r.reasons.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    totals["expected_failures_by_reason"] = dict(sorted(by_reason.items()))
    totals["ok"] = all(r.ok for r in reports)
    totals["wall_seconds"] = round(sum(r.wall for r in reports), 1)
    return totals


def overall_line(reports: list[ModuleReport]) -> str:
    t = overall(reports)
    ran = t["total"] - t["skipped"]
    rate = f", {100.0 * t['passed'] / ran:.1f}% of the tests run pass" if ran else ""
    return (
        f"overall: {t['passed']} passed / {t['expected_failures']} expected failures / "
        f"{t['skipped']} skipped / {t['total']} total in {t['modules']} modules{rate}; "
        f"{'OK' if t['ok'] else 'NOT OK'} ({t['wall_seconds']:.0f}s)"
    )


def write_json(reports: list[ModuleReport], path: str | None = None) -> str:
    path = path or json_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = {
        "loop": reports[0].loop if reports else loop_mode(),
        "python": platform.python_version(),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "modules": {r.module: r.to_json() for r in reports},
        "overall": overall(reports),
    }
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def check_loop_available(mode: str) -> str | None:
    """None when the loop under test can be imported, else a message."""
    if mode == "asyncio":
        return None
    proc = subprocess.run(
        [sys.executable, "-c", "import ferroloop; ferroloop.new_event_loop().close()"],
        capture_output=True, text=True,
    )
    if proc.returncode:
        return (
            f"ferroloop is not usable with {sys.executable}:\n{proc.stderr.strip()}\n"
            "Build it into the virtualenv first (make install), or set "
            "FERROLOOP_CONFORMANCE_LOOP=asyncio to check the runner against the stdlib loop."
        )
    return None


# ---------------------------------------------------------------------------
# Command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to run (default: all)")
    parser.add_argument("--all", action="store_true", help="run every module")
    parser.add_argument("--loop", choices=LOOP_MODES, help="overrides FERROLOOP_CONFORMANCE_LOOP")
    parser.add_argument("-k", action="append", help="only test ids containing this (repeatable)")
    parser.add_argument("--write-expected", action="store_true",
                        help="rewrite expected_failures.py from this run")
    parser.add_argument("--show", action="store_true",
                        help="print the traceback of every failing test, expected or not")
    parser.add_argument("--json", help="counts file (default FERROLOOP_CONFORMANCE_JSON)")
    # Child mode (internal).
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    parser.add_argument("--skip-file", help=argparse.SUPPRESS)
    parser.add_argument("--faulthandler-file", help=argparse.SUPPRESS)
    parser.add_argument("--test-timeout", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        args.module = args.child
        return child_main(args)

    mode = args.loop or loop_mode()
    if args.all or not args.modules:
        modules = [m for m in MODULES if module_available(m)]
    else:
        modules = args.modules
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown modules {unknown}; known: {', '.join(MODULES)}")
    missing = [m for m in modules if not module_available(m)]
    if missing:
        parser.error(f"this CPython's test_asyncio has no {', '.join(missing)}")
    if args.write_expected and mode != "ferroloop":
        parser.error("--write-expected needs the ferroloop loop")
    if args.write_expected and args.k:
        parser.error("--write-expected needs whole modules (no -k)")
    problem = check_loop_available(mode)
    if problem:
        print(problem, file=sys.stderr)
        return 2

    expected = load_expected() if mode == "ferroloop" else None
    reports = []
    for module in modules:
        print(f"running {module} against {mode} ...", file=sys.stderr, flush=True)
        report = classify(run_module(module, mode, k=args.k, verbose=True), expected,
                          filtered=bool(args.k))
        reports.append(report)
        print(f"  {module}: {summary_line(report)}", file=sys.stderr, flush=True)
        if args.show:
            for tid, res in sorted(report.results.items()):
                if res["outcome"] in FAIL_OUTCOMES:
                    tag = "expected" if tid in (expected or {}) else "UNEXPECTED"
                    print(f"\n--- {tag} {res['outcome']}: {tid}\n{res['detail']}")
        if not report.ok:
            print(format_failure(report), file=sys.stderr)

    if not args.k:
        print(f"counts written to {write_json(reports, args.json)}", file=sys.stderr)
    print(summary_table(reports))
    if args.write_expected:
        # The regeneration rewrites this version's view; entries that were this
        # version's alone stay in its ONLY_ON list, the rest go to the common list.
        only_on = load_only_on()
        mine = only_on.get(python_version(), {})
        new = regenerate_expected(load_expected(), reports)
        only_on[python_version()] = {k: v for k, v in new.items() if k in mine}
        common = {k: v for k, v in new.items() if k not in mine}
        write_expected(common, only_on)
        todo = sorted(k for k, v in new.items() if v == TODO_REASON)
        print(f"wrote {EXPECTED_FILE}: {len(new)} entries, {len(todo)} to triage")
    problems = validate_expected(load_expected()) if mode == "ferroloop" else []
    for p in problems:
        print(f"expected_failures.py: {p}", file=sys.stderr)
    return 0 if all(r.ok for r in reports) and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
