"""Smoke test of the benchmark suite (bench/).

Runs `bench/run.py --smoke` once: every benchmark row, every loop, for a fraction of a second
each. It asserts on the results.json it writes: every row is there, asyncio and uvloop give a
number in every row, and ferroloop gives a number or an explicit "n/a" (a feature it lacks).
The loadgen binary is built with cargo if target/release/loadgen is missing (run.py does that).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

for _module in ("uvloop", "uvicorn", "httptools", "matplotlib"):
    pytest.importorskip(
        _module, reason=f"{_module} is not installed (pip install -r bench/requirements.txt)"
    )

MUST_HAVE_NUMBERS = ("asyncio", "uvloop")
NUMERIC_KEYS = ("ops_per_sec", "cpu_us_per_op")
LATENCY_KEYS = ("p50_us", "p99_us")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _load_run_module():
    spec = importlib.util.spec_from_file_location("ferroloop_bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _expected_ids() -> list[str]:
    return [b.id for b in _load_run_module().all_benchmarks()]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if not (ROOT / "target" / "release" / "loadgen").exists() and shutil.which("cargo") is None:
        pytest.skip("no loadgen binary and no cargo to build it")
    out = tmp_path_factory.mktemp("bench-results")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    results = out / "results.json"
    data = json.loads(results.read_text()) if results.exists() else None
    return proc, out, data


def test_smoke_run_passes(smoke):
    proc, _, data = smoke
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert data is not None
    assert data["meta"]["smoke"] is True
    assert data["meta"]["loops"] == ["ferroloop", "uvloop", "asyncio"]


def test_every_benchmark_row_ran(smoke):
    _, _, data = smoke
    assert data is not None, "no results.json"
    ids = [b["id"] for b in data["benchmarks"]]
    assert ids == _expected_ids()
    groups = {b["group"] for b in data["benchmarks"]}
    assert groups == {"callbacks", "process", "echo", "http", "churn", "pipe", "sendfile", "udp", "tls"}


def test_tls_rows_negotiate_tls_1_3(smoke):
    """The TLS rows run TLS 1.3 by default: the load generator reports what it negotiated."""
    _, _, data = smoke
    assert data is not None, "no results.json"
    tls_rows = [b for b in data["benchmarks"] if b["group"] == "tls"]
    assert tls_rows
    for bench in tls_rows:
        for loop, cell in bench["loops"].items():
            for rep in cell.get("reps", []):
                assert rep["tls"].startswith("TLSv1_3 TLS13_"), (bench["id"], loop, rep["tls"])


def test_asyncio_and_uvloop_give_numbers_ferroloop_a_number_or_na(smoke):
    _, _, data = smoke
    assert data is not None, "no results.json"
    for bench in data["benchmarks"]:
        keys = NUMERIC_KEYS + (LATENCY_KEYS if bench["latency"] else ())
        uvloop_ok = bench["loops"]["uvloop"]["status"] == "ok"
        for loop in MUST_HAVE_NUMBERS:
            cell = bench["loops"][loop]
            if loop in bench["optional"] and cell["status"] == "n/a":
                assert cell["reason"], f"{bench['id']} on {loop}: n/a without a reason"
                continue
            assert cell["status"] == "ok", f"{bench['id']} on {loop}: {cell.get('reason')}"
            for key in keys:
                assert _is_number(cell[key]) and cell[key] > 0, (
                    f"{bench['id']} on {loop}: {key}={cell[key]!r}"
                )
            if uvloop_ok:
                assert _is_number(cell["ratio_to_uvloop"])
        if uvloop_ok:
            assert bench["loops"]["uvloop"]["ratio_to_uvloop"] == pytest.approx(1.0)
        cell = bench["loops"]["ferroloop"]
        if cell["status"] == "ok":
            for key in keys:
                assert _is_number(cell[key]), f"{bench['id']} on ferroloop: {key}={cell[key]!r}"
        else:
            assert cell["status"] == "n/a"
            assert cell["ops_per_sec"] == "n/a"
            assert cell["reason"], f"{bench['id']}: n/a without a reason"


def test_uvloop_has_no_sendfile_row(smoke):
    """uvloop lacks loop.sendfile: its cell in the sendfile row is n/a, saying so, and
    the row that writes the same data has its number."""
    _, _, data = smoke
    assert data is not None, "no results.json"
    rows = {b["id"]: b for b in data["benchmarks"]}
    sendfile = rows["sendfile/sendfile/tcp/100MiB"]
    assert sendfile["optional"] == ["uvloop"]
    cell = sendfile["loops"]["uvloop"]
    assert cell["status"] == "n/a"
    assert "NotImplementedError" in cell["reason"]
    assert rows["sendfile/write/tcp/100MiB"]["loops"]["uvloop"]["status"] == "ok"
    for loop in ("ferroloop", "asyncio"):
        assert sendfile["loops"][loop]["status"] == "ok", sendfile["loops"][loop].get("reason")


def test_table_and_chart(smoke):
    proc, out, data = smoke
    assert data is not None, "no results.json"
    assert "vs uvloop" in proc.stdout
    for bench in data["benchmarks"]:
        assert bench["title"] in proc.stdout
    chart = out / "chart.png"
    assert chart.exists()
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_micro_runs_standalone(tmp_path):
    out = tmp_path / "micro.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "micro.py"),
            "--loops",
            "uvloop,asyncio",
            "--reps",
            "1",
            "--duration",
            "0.05",
            "--warmup",
            "0",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    assert [b["id"] for b in data["benchmarks"]] == [
        "callbacks/call_soon",
        "callbacks/call_later_cancel",
        "callbacks/sleep0",
        "callbacks/gather",
        "process/spawn",
        "process/communicate",
    ]
    for bench in data["benchmarks"]:
        for loop in ("uvloop", "asyncio"):
            assert _is_number(bench["loops"][loop]["ops_per_sec"])


def test_concurrent_run(tmp_path):
    """--concurrent: the served benchmarks run every loop at once, with coinciding windows."""
    if not (ROOT / "target" / "release" / "loadgen").exists() and shutil.which("cargo") is None:
        pytest.skip("no loadgen binary and no cargo to build it")
    only = "echo/protocol/unix/1KiB/c100,churn/protocol/tcp/c100,callbacks/call_soon"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--smoke", "--concurrent", "--reps", "2"]
        + ["--only", only, "--duration", "0.5", "--out", str(tmp_path), "--no-chart"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert "Concurrent run" in proc.stdout
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["concurrent"] is True
    assert sorted(b["id"] for b in data["benchmarks"]) == sorted(only.split(","))
    for bench in data["benchmarks"]:
        for loop in ("ferroloop", "uvloop", "asyncio"):
            cell = bench["loops"][loop]
            assert cell["status"] == "ok", f"{bench['id']} on {loop}: {cell.get('reason')}"
            assert len(cell["reps"]) == 2
        if bench["group"] == "callbacks":
            continue
        for rep in range(2):
            starts = [bench["loops"][loop]["reps"][rep]["window_start"] for loop in data["meta"]["loops"]]
            # The windows (0.5 s each) overlap: they start within a fraction of one another.
            assert max(starts) - min(starts) < 0.25, (bench["id"], rep, starts)


def test_concurrent_run_survives_a_failing_loop(monkeypatch):
    """A loop that fails before its window does not leave the others waiting for it: they
    give up at once, their servers stopped, and each failure is reported as that loop's."""
    if not (ROOT / "target" / "release" / "loadgen").exists():
        pytest.skip("no loadgen binary")
    run = _load_run_module()
    bench = next(b for b in run.all_benchmarks() if b.id == "echo/protocol/unix/1KiB/c10")
    runner = run.Runner(str(ROOT / "target" / "release" / "loadgen"), 0.2, 0.05, None, None, 1)
    real = run.Runner.run_served

    def failing_for_uvloop(self, bench, loop, barrier=None):
        if loop == "uvloop":
            raise run.BenchError("the server would not start")
        return real(self, bench, loop, barrier)

    monkeypatch.setattr(run.Runner, "run_served", failing_for_uvloop)
    monkeypatch.setattr(run, "SERVER_START_TIMEOUT", 20.0)
    outcome = runner.run_concurrent(bench, ["ferroloop", "uvloop"])
    assert isinstance(outcome["uvloop"], run.BenchError)
    assert str(outcome["uvloop"]) == "the server would not start"
    assert isinstance(outcome["ferroloop"], run.BenchError)
    assert "another loop of this concurrent run failed" in str(outcome["ferroloop"])


def test_soak_runs_and_checks_growth(tmp_path):
    """bench/soak.py end to end, briefly: rounds run, samples are taken, the verdict and
    the chart are written."""
    if not (ROOT / "target" / "release" / "loadgen").exists() and shutil.which("cargo") is None:
        pytest.skip("no loadgen binary and no cargo to build it")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), "--loops", "ferroloop", "--workloads", "echo"]
        + ["--requests", "3000", "--round-seconds", "0.3", "--interval", "0.05"]
        + ["--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    data = json.loads((tmp_path / "results.json").read_text())
    (result,) = data["results"]
    assert result["requests"] >= 3000 and result["ok"]
    assert result["samples"] and result["fds"]["final"] == result["fds"]["warm"]
    assert (tmp_path / "soak.png").exists()
