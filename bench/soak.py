"""Soak: a long run of requests through a server, watching its memory and fds.

For each loop (--loops) and each workload (--workloads), a benchmark server runs
(bench/servers/echo_server.py, Protocol style over TCP, or uvicorn through
bench/servers/http_server.py) while the load generator drives requests at it in
rounds until at least --requests have been served: echo rounds keep their
connections for the round, churn rounds (echo only) open and close a connection
per request, and every round opens fresh connections and closes them at its end,
so connections come and go throughout. A sampler reads the server's resident
memory (VmRSS) and open fd count from /proc every --interval seconds.

After the warm-up (the first --warmup-share of the requests) the server must not
grow: at the end, idle between rounds, its RSS may exceed the idle RSS at the end
of the warm-up by at most max(5 %, 1 MiB) (--rss-pct, --rss-mib), and its fd count
must be exactly what it was then. The run writes results.json (figures and every
sample) and soak.png (RSS and fds over time, per workload) into --out, prints a
table, and exits 1 if a loop in --require (default ferroloop) failed the check.

  python bench/soak.py [--loops ferroloop,uvloop] [--requests 1000000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import LineReader, child_env, parse_loops, tail  # noqa: E402
from run import DEFAULT_LOADGEN, ROOT, ensure_loadgen  # noqa: E402

SERVER_START_TIMEOUT = 30.0


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return None


class Sampler:
    """Samples a process's RSS and fd count in a thread: (seconds, rss KiB, fds, phase)."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int, str]] = []
        self.phase = "warm-up"
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._thread.start()

    def sample(self) -> tuple[int, int] | None:
        rss, fds = rss_kib(self.pid), fd_count(self.pid)
        if rss is None or fds is None:
            return None
        self.samples.append((time.monotonic() - self._t0, rss, fds, self.phase))
        return rss, fds

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def start_server(workload: str, loop: str, tmp: str):
    if workload == "http":
        cmd = [sys.executable, os.path.join(HERE, "servers", "http_server.py"), "--loop", loop]
    else:
        cmd = [sys.executable, os.path.join(HERE, "servers", "echo_server.py"), "--loop", loop]
        cmd += ["--style", "protocol", "--tcp", "127.0.0.1:0"]
    errlog = os.path.join(tmp, f"{workload}-{loop}.log")
    with open(errlog, "w") as err:
        server = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            bufsize=1,
            cwd=ROOT,
            env=child_env(),
        )
    control = LineReader(server.stdout, "the server")
    try:
        ready = control.wait_json("ready", SERVER_START_TIMEOUT)
    except Exception as exc:
        server.kill()
        raise SystemExit(f"{workload} server on {loop} did not start: {tail(errlog) or exc}")
    return server, ready["address"], errlog


def load_round(loadgen: str, mode: str, address: str, conns: int, seconds: float) -> int:
    """One load generator run (fresh connections, closed at its end); requests served."""
    cmd = [loadgen, mode, "--tcp", address, "--conns", str(conns)]
    cmd += ["--duration", str(seconds), "--warmup", "0"]
    if mode != "http":
        cmd += ["--size", "1024"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen {mode} failed: {proc.stderr.strip()[-300:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result.get("errors"):
        raise RuntimeError(f"loadgen {mode}: {result['errors']} errors")
    return int(result["ops"])


def idle_sample(sampler: Sampler, settle: float = 0.3) -> tuple[int, int]:
    """RSS and fds once the server has had a moment with no connections."""
    time.sleep(settle)
    got = sampler.sample()
    if got is None:
        raise RuntimeError("the server exited")
    return got


def soak(workload: str, loop: str, args, loadgen: str, tmp: str) -> dict:
    server, address, errlog = start_server(workload, loop, tmp)
    sampler = Sampler(server.pid, args.interval)
    rounds = ["echo", "churn"] if workload == "echo" else ["http"]
    served = 0
    warm = int(args.requests * args.warmup_share)
    base = None
    t0 = time.monotonic()
    try:
        i = 0
        while served < args.requests:
            mode = rounds[i % len(rounds)]
            conns = 10 if mode == "churn" else args.conns
            served += load_round(loadgen, mode, address, conns, args.round_seconds)
            i += 1
            if base is None and served >= warm:
                base = idle_sample(sampler)
                sampler.phase = "measured"
            print(f"  {workload} on {loop}: {served:,} requests", file=sys.stderr, flush=True)
        end = idle_sample(sampler)
    finally:
        sampler.stop()
        try:
            server.stdin.write("exit\n")
            server.stdin.flush()
        except OSError:
            pass
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    elapsed = time.monotonic() - t0
    measured = [s for s in sampler.samples if s[3] == "measured"]
    peak_rss = max(s[1] for s in measured) if measured else end[0]
    peak_fds = max(s[2] for s in measured) if measured else end[1]
    allowed = max(base[0] * args.rss_pct / 100, args.rss_mib * 1024)
    problems = []
    if end[0] - base[0] > allowed:
        problems.append(
            f"RSS grew {end[0] - base[0]:,} KiB past warm-up (allowed {allowed:,.0f} KiB)"
        )
    if end[1] != base[1]:
        problems.append(f"fds went from {base[1]} to {end[1]} after warm-up")
    return {
        "workload": workload,
        "loop": loop,
        "requests": served,
        "seconds": elapsed,
        "rss_kib": {"warm": base[0], "peak": peak_rss, "final": end[0]},
        "fds": {"warm": base[1], "peak": peak_fds, "final": end[1]},
        "ok": not problems,
        "problems": problems,
        "samples": sampler.samples,
        "server_log": tail(errlog),
    }


def draw(results: list[dict], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    workloads = sorted({r["workload"] for r in results})
    fig, axes = plt.subplots(2, len(workloads), figsize=(6 * len(workloads), 7), squeeze=False)
    for col, workload in enumerate(workloads):
        for r in (r for r in results if r["workload"] == workload):
            xs = [s[0] for s in r["samples"]]
            axes[0][col].plot(xs, [s[1] / 1024 for s in r["samples"]], label=r["loop"])
            axes[1][col].plot(xs, [s[2] for s in r["samples"]], label=r["loop"])
        axes[0][col].set_title(f"{workload}: server RSS (MiB)")
        axes[1][col].set_title(f"{workload}: server open fds")
        axes[1][col].set_xlabel("seconds")
        for ax in (axes[0][col], axes[1][col]):
            ax.legend()
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", default="ferroloop,uvloop")
    parser.add_argument("--workloads", default="echo,http")
    parser.add_argument("--requests", type=int, default=1_000_000, help="per loop and workload")
    parser.add_argument("--round-seconds", type=float, default=2.0)
    parser.add_argument("--conns", type=int, default=50, help="connections of an echo/http round")
    parser.add_argument("--warmup-share", type=float, default=0.2)
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("--rss-pct", type=float, default=5.0)
    parser.add_argument("--rss-mib", type=float, default=1.0)
    parser.add_argument("--require", default="ferroloop", help="loops that must pass")
    parser.add_argument("--loadgen", default=DEFAULT_LOADGEN)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "soak"))
    args = parser.parse_args(argv)

    loadgen = ensure_loadgen(os.path.abspath(args.loadgen))
    loops = parse_loops(args.loops)
    workloads = [w for w in args.workloads.split(",") if w]
    os.makedirs(args.out, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="ferroloop-soak-") as tmp:
        for workload in workloads:
            for loop in loops:
                results.append(soak(workload, loop, args, loadgen, tmp))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": vars(args), "results": results}, f, indent=1)
    png = os.path.join(args.out, "soak.png")
    drew = draw(results, png)
    print(f"{'workload':8} {'loop':10} {'requests':>10} {'s':>6} "
          f"{'RSS warm/peak/final KiB':>26} {'fds warm/peak/final':>20}  verdict")
    for r in results:
        rss, fds = r["rss_kib"], r["fds"]
        print(
            f"{r['workload']:8} {r['loop']:10} {r['requests']:>10,} {r['seconds']:>6.0f} "
            f"{rss['warm']:>8,}/{rss['peak']:>8,}/{rss['final']:>8,} "
            f"{fds['warm']:>6}/{fds['peak']:>6}/{fds['final']:>6}  "
            + ("ok" if r["ok"] else "GREW: " + "; ".join(r["problems"]))
        )
    print(f"results: {os.path.join(args.out, 'results.json')}" + (f"; chart: {png}" if drew else ""))
    required = set(parse_loops(args.require)) if args.require else set()
    failed = [r for r in results if not r["ok"] and r["loop"] in required]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
