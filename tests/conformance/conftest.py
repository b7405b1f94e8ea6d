"""pytest plumbing of the conformance runner: per-module counts in the
terminal summary and in the JSON counts file."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

_DRIVER_NAME = "ferroloop_conformance_driver"


def load_driver():
    """driver.py, imported once under a name no other test directory uses."""
    module = sys.modules.get(_DRIVER_NAME)
    if module is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "driver.py")
        spec = importlib.util.spec_from_file_location(_DRIVER_NAME, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_DRIVER_NAME] = module
        spec.loader.exec_module(module)
    return module


class ConformanceSession:
    def __init__(self):
        self.driver = load_driver()
        self.mode = self.driver.loop_mode()
        self.reports = []
        self._loop_problem = None
        self._checked = False
        self.json_file = None

    @property
    def loop_problem(self):
        if not self._checked:
            self._loop_problem = self.driver.check_loop_available(self.mode)
            self._checked = True
        return self._loop_problem

    def add(self, report):
        self.reports.append(report)
        self.json_file = self.driver.write_json(self.reports)


_SESSION: ConformanceSession | None = None


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "conformance: runs CPython's test_asyncio modules against the loop"
    )


@pytest.fixture(scope="session")
def conformance():
    global _SESSION
    if _SESSION is None:
        _SESSION = ConformanceSession()
    return _SESSION


def pytest_terminal_summary(terminalreporter):
    if _SESSION is None or not _SESSION.reports:
        return
    driver = _SESSION.driver
    terminalreporter.section("conformance (CPython test_asyncio)")
    for line in driver.summary_table(_SESSION.reports).splitlines():
        terminalreporter.write_line(line)
    if _SESSION.json_file:
        terminalreporter.write_line(f"counts written to {_SESSION.json_file}")
