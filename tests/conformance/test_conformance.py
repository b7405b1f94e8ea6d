"""CPython's own test_asyncio modules, run against the loop under test.

One pytest test per CPython module; each runs the module's unittest suite in
child processes (see driver.py) and fails on any unexpected failure, any
unexpected pass, a listed test that no longer exists, or an untriaged entry
of expected_failures.py. FERROLOOP_CONFORMANCE_LOOP=asyncio runs the same
suites against the stdlib loop, where everything must pass.
"""

import importlib.util
import os
import sys

import pytest


def _load_driver():
    # The same module object conftest.py uses (one name, loaded once).
    name = "ferroloop_conformance_driver"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "driver.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


driver = _load_driver()

pytestmark = pytest.mark.conformance


def test_expected_failures_list_is_well_formed():
    problems = driver.validate_expected(driver.load_expected())
    assert not problems, "tests/conformance/expected_failures.py:\n" + "\n".join(problems)


@pytest.mark.parametrize("module", driver.MODULES)
def test_cpython_module(module, conformance):
    if not driver.module_available(module):
        version = "%d.%d" % sys.version_info[:2]
        pytest.skip(f"CPython {version} has no test_asyncio.{module}")
    if conformance.loop_problem:
        pytest.fail(conformance.loop_problem, pytrace=False)
    expected = driver.load_expected() if conformance.mode == "ferroloop" else None
    report = driver.classify(driver.run_module(module, conformance.mode), expected)
    conformance.add(report)
    if not report.ok:
        pytest.fail(driver.format_failure(report), pytrace=False)
