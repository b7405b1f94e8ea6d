"""ferroloop's own entry points: the package API, the policy, ferroloop.run on a
ferroloop loop, and ``python -m ferroloop``. These have no asyncio counterpart,
so they run only against ferroloop (``-k asyncio`` deselects them all)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest


@pytest.fixture
def ferroloop(ferroloop_module):
    return ferroloop_module


@pytest.fixture
def restore_policy():
    saved = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(saved)


def test_ferroloop_new_event_loop_returns_a_ferroloop_loop(ferroloop):
    loop = ferroloop.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert not loop.is_running() and not loop.is_closed()
    finally:
        loop.close()
    assert loop.is_closed()


def test_ferroloop_loops_are_independent(ferroloop):
    a, b = ferroloop.new_event_loop(), ferroloop.new_event_loop()
    try:
        assert a is not b
        ran = []
        a.call_soon(ran.append, "a")
        b.call_soon(ran.append, "b")
        b.call_soon(b.stop)
        b.run_forever()
        assert ran == ["b"]
    finally:
        a.close()
        b.close()


def test_ferroloop_policy(ferroloop, restore_policy):
    policy = ferroloop.EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
    finally:
        loop.close()

    asyncio.set_event_loop_policy(policy)
    assert asyncio.get_event_loop_policy() is policy
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, ferroloop.Loop)
    finally:
        loop.close()

    async def main():
        return type(asyncio.get_running_loop())

    assert issubclass(asyncio.run(main()), ferroloop.Loop)


def test_ferroloop_run_runs_on_a_ferroloop_loop(ferroloop):
    async def main():
        loop = asyncio.get_running_loop()
        return isinstance(loop, ferroloop.Loop), loop.get_debug()

    assert ferroloop.run(main(), debug=False) == (True, False)
    assert ferroloop.run(main(), debug=True) == (True, True)


def test_ferroloop_run_leaves_the_policy_alone(ferroloop, restore_policy):
    before = asyncio.get_event_loop_policy()

    async def main():
        return 1

    ferroloop.run(main())
    assert asyncio.get_event_loop_policy() is before


@pytest.mark.parametrize("outer_is_ferroloop", [True, False], ids=["ferro-outer", "stdlib-outer"])
def test_ferroloop_and_stdlib_loops_cannot_nest(ferroloop, outer_is_ferroloop):
    stdlib = asyncio.DefaultEventLoopPolicy().new_event_loop()
    ferro = ferroloop.new_event_loop()
    outer, inner = (ferro, stdlib) if outer_is_ferroloop else (stdlib, ferro)
    errors = []

    def reenter():
        try:
            inner.run_until_complete(inner.create_future())
        except RuntimeError as exc:
            errors.append(str(exc))
        outer.stop()

    try:
        outer.call_soon(reenter)
        outer.run_forever()
    finally:
        stdlib.close()
        ferro.close()
    assert errors == ["Cannot run the event loop while another loop is running"]


# ------------------------------------------------------ python -m ferroloop


SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys

    import ferroloop

    async def main():
        return type(asyncio.get_running_loop())

    loop_type = asyncio.run(main())
    print(json.dumps({
        "name": __name__,
        "argv": sys.argv,
        "policy_is_ferroloop": isinstance(
            asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy
        ),
        "run_uses_ferroloop": issubclass(loop_type, ferroloop.Loop),
        "new_event_loop_is_ferroloop": isinstance(asyncio.new_event_loop(), ferroloop.Loop),
    }))
    """
)


def run_module(args, cwd, ferroloop):
    env = dict(os.environ)
    # Find ferroloop where this interpreter found it, whatever the cwd.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(ferroloop.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_parent, env.get("PYTHONPATH")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "ferroloop", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_python_m_ferroloop_runs_a_script(ferroloop, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = run_module([str(script), "a", "b"], tmp_path, ferroloop)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "name": "__main__",
        "argv": [str(script), "a", "b"],
        "policy_is_ferroloop": True,
        "run_uses_ferroloop": True,
        "new_event_loop_is_ferroloop": True,
    }


def test_python_m_ferroloop_with_a_relative_script_path(ferroloop, tmp_path):
    (tmp_path / "rel.py").write_text(SCRIPT)
    proc = run_module(["rel.py", "--flag", "x y"], tmp_path, ferroloop)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["argv"] == ["rel.py", "--flag", "x y"]
    assert out["name"] == "__main__"


def test_python_m_ferroloop_script_can_import_its_siblings(ferroloop, tmp_path):
    # As with `python script.py`, the script's directory comes first on sys.path.
    project = tmp_path / "project"
    project.mkdir()
    (project / "sibling_helper.py").write_text("VALUE = 'sibling'\n")
    (project / "main.py").write_text("import sibling_helper\nprint(sibling_helper.VALUE)\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_module([str(project / "main.py")], elsewhere, ferroloop)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "sibling"


def test_python_m_ferroloop_propagates_the_exit_status(ferroloop, tmp_path):
    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(3)\n")
    proc = run_module([str(script)], tmp_path, ferroloop)
    assert proc.returncode == 3


def test_python_m_ferroloop_reports_an_uncaught_exception(ferroloop, tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(
        "import asyncio\n"
        "async def main():\n"
        "    raise LookupError('from the script')\n"
        "asyncio.run(main())\n"
    )
    proc = run_module([str(script)], tmp_path, ferroloop)
    assert proc.returncode == 1
    assert "LookupError: from the script" in proc.stderr
