"""The ferroloop benchmark suite: ferroloop, uvloop and asyncio side by side.

  python bench/run.py                      # everything, 3 repetitions (about 20-30 minutes)
  python bench/run.py --smoke              # everything, once, for a fraction of a second each
  python bench/run.py --only echo/protocol --reps 5 --duration 3
  python bench/run.py --loops uvloop,asyncio --out /tmp/results
  python bench/run.py --only echo/ --concurrent   # the loops of a repetition at the same time
  python bench/run.py --list               # the benchmark ids

Benchmarks (bench/README.md says more):
  callbacks/*  in-process micro-benchmarks from bench/micro.py, a fresh process per run
  process/*    subprocesses (spawn and wait, communicate through cat), run as callbacks/* are
  echo/*       bench/servers/echo_server.py (Protocol, BufferedProtocol, streams, sock_*
               styles; TCP and Unix; 1/10/100 KiB messages; 10/100 connections), driven by
               the loadgen binary in echo mode
  http/*       uvicorn + httptools hello world (bench/servers/http_server.py), loadgen http mode
  churn/*      connect, one 100-byte echo, close (Protocol server), loadgen churn mode
  pipe/*       connect_read_pipe / connect_write_pipe over a FIFO, 64 KiB chunks
               (bench/servers/bulk_server.py), loadgen source / sink mode, in MiB/s
  sendfile/*   a 100 MiB file sent again and again over one loopback TCP connection, with
               loop.sendfile or with transport.write of its contents (bulk_server.py),
               loadgen sink mode, in MiB/s; uvloop has no loop.sendfile (n/a)
  udp/*        datagram echo (create_datagram_endpoint, DatagramProtocol) with 64 B and 1 KiB
               datagrams, 10/100 client sockets each with one datagram in flight, loadgen udp
               mode
  tls/*        TLS 1.3 (the harness makes an ECDSA P-256 certificate; loadgen speaks rustls):
               Protocol echo server with ssl= at 1/100 KiB x 10/100 connections (tls-echo
               mode), new connections per second with a full handshake, one 1 KiB message and
               close (tls-churn), and uvicorn over HTTPS (https mode)

For each benchmark the loops run interleaved: for each repetition, every loop once (the
starting loop rotates). The table shows medians over the repetitions: throughput, the server's
CPU time per operation (getrusage of the server process over the measured window, user + sys),
p50/p99 latency seen by the client, and ratios to uvloop. The results go to
OUT/results.json and a chart to OUT/chart.png. A cell is "n/a" when the loop cannot be
imported or cannot run that benchmark; the reason is listed under the table.

With --concurrent, the served benchmarks (all but callbacks) run the loops of a repetition at
the same time instead of one after the other: every loop's server on the server CPU, every
loop's load generator on the client CPUs, their measured windows aligned. A slow moment of the
machine then hits all loops alike, and as the servers share one core fairly, the throughput
ratio becomes the ratio of CPU cost per operation. Absolute figures are not comparable with
those of a sequential run. The callback benchmarks run one loop at a time in either mode.

With --smoke the exit status is 1 unless asyncio and uvloop produced a number in every row
(ferroloop may be "n/a" while it lacks a feature).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import micro  # noqa: E402
from common import (  # noqa: E402
    BASELINE,
    LOOPS,
    NA,
    BenchError,
    LineReader,
    Progress,
    Unsupported,
    add_ratios,
    child_env,
    format_table,
    is_number,
    na_cell,
    parse_loops,
    summarize,
    tail,
)

DEFAULT_LOADGEN = os.path.join(ROOT, "target", "release", "loadgen")
ECHO_STYLES = ("protocol", "buffered", "streams", "sock")
TRANSPORTS = ("tcp", "unix")
ECHO_SIZES_KIB = (1, 10, 100)
CONNECTIONS = (10, 100)
CHURN_MESSAGE = 100  # bytes
PIPE_CHUNK = 64 * 1024  # bytes written per write() in the pipe rows
SENDFILE_SIZE = 100 * 1024 * 1024  # the file of the sendfile rows
SINK_READ = 256 * 1024  # the load generator's reads in the bulk rows
BULK_MIN_WARMUP = 0.5  # seconds: a smoke run's window still moves whole MiBs
BULK_MIN_DURATION = 0.5
UDP_SIZES = ((64, "64B"), (1024, "1KiB"))
TLS_ECHO_SIZES_KIB = (1, 100)
TLS_CHURN_MESSAGE = 1024  # bytes
TLS_MIN_WARMUP = 0.5  # seconds: every connection's handshake, before the window
TLS_MIN_DURATION = 0.5  # seconds: a handshake costs about 1 ms of server CPU

# Longest waits for a child, on top of the run's own warmup/duration.
SERVER_START_TIMEOUT = 60.0
STEP_TIMEOUT = 30.0


# The groups bench/micro.py runs in a process of their own (no server, no load generator).
IN_PROCESS_GROUPS = ("callbacks", "process")


@dataclass
class Bench:
    id: str
    group: str
    title: str
    unit: str
    latency: bool
    params: dict = field(default_factory=dict)
    # Shortest warmup and window this benchmark runs with, whatever --warmup and --duration
    # say (a smoke run's short warmup does not get 100 TLS handshakes done).
    min_warmup: float = 0.0
    min_duration: float = 0.0
    # Loops that lack the feature this benchmark measures: n/a there is expected (the smoke
    # check accepts it), though they are still tried.
    optional: tuple = ()


def all_benchmarks() -> list[Bench]:
    benches = []
    for name, (_, unit, title) in micro.BENCHMARKS.items():
        benches.append(Bench(f"callbacks/{name}", "callbacks", title, unit, False, {"name": name}))
    for name, (_, unit, title) in micro.PROCESS_BENCHMARKS.items():
        benches.append(Bench(f"process/{name}", "process", title, unit, False, {"name": name}))
    for style in ECHO_STYLES:
        for transport in TRANSPORTS:
            for kib in ECHO_SIZES_KIB:
                for conns in CONNECTIONS:
                    benches.append(
                        Bench(
                            f"echo/{style}/{transport}/{kib}KiB/c{conns}",
                            "echo",
                            f"echo {style} {transport} {kib}KiB x{conns}",
                            "msg/s",
                            True,
                            {
                                "style": style,
                                "transport": transport,
                                "size": kib * 1024,
                                "conns": conns,
                            },
                        )
                    )
    for conns in CONNECTIONS:
        benches.append(
            Bench(
                f"http/uvicorn-httptools/c{conns}",
                "http",
                f"http uvicorn+httptools x{conns}",
                "req/s",
                True,
                {"conns": conns},
            )
        )
    for conns in CONNECTIONS:
        benches.append(
            Bench(
                f"churn/protocol/tcp/c{conns}",
                "churn",
                f"churn protocol tcp x{conns}",
                "conn/s",
                True,
                {"style": "protocol", "transport": "tcp", "size": CHURN_MESSAGE, "conns": conns},
            )
        )
    for way in ("read", "write"):
        benches.append(
            Bench(
                f"pipe/{way}/64KiB",
                "pipe",
                f"pipe {way} 64KiB chunks",
                "MiB/s",
                False,
                {
                    "mode": f"pipe-{way}",
                    "size": PIPE_CHUNK,
                    # The load generator writes what the loop reads, reads what it writes.
                    "client": "source" if way == "read" else "sink",
                    "client_size": PIPE_CHUNK if way == "read" else SINK_READ,
                },
                min_warmup=BULK_MIN_WARMUP,
                min_duration=BULK_MIN_DURATION,
            )
        )
    for how, title in (("sendfile", "loop.sendfile"), ("write", "transport.write")):
        benches.append(
            Bench(
                f"sendfile/{how}/tcp/100MiB",
                "sendfile",
                f"{title} 100MiB file tcp",
                "MiB/s",
                False,
                {
                    "mode": how,
                    "size": SENDFILE_SIZE,
                    "client": "sink",
                    "client_size": SINK_READ,
                },
                # The server makes and reads a 100 MiB file before the first byte goes out.
                min_warmup=BULK_MIN_WARMUP,
                min_duration=BULK_MIN_DURATION,
                optional=("uvloop",) if how == "sendfile" else (),
            )
        )
    for size, label in UDP_SIZES:
        for conns in CONNECTIONS:
            benches.append(
                Bench(
                    f"udp/datagram/{label}/c{conns}",
                    "udp",
                    f"udp echo datagram {label} x{conns}",
                    "dgram/s",
                    True,
                    {"style": "datagram", "transport": "udp", "size": size, "conns": conns},
                )
            )
    tls = {"transport": "tcp", "tls": True}
    for kib in TLS_ECHO_SIZES_KIB:
        for conns in CONNECTIONS:
            benches.append(
                Bench(
                    f"tls/protocol/{kib}KiB/c{conns}",
                    "tls",
                    f"tls echo protocol {kib}KiB x{conns}",
                    "msg/s",
                    True,
                    {"style": "protocol", "mode": "tls-echo", "size": kib * 1024, "conns": conns}
                    | tls,
                    TLS_MIN_WARMUP,
                    TLS_MIN_DURATION,
                )
            )
    for conns in CONNECTIONS:
        benches.append(
            Bench(
                f"tls/churn/protocol/c{conns}",
                "tls",
                f"tls churn protocol x{conns}",
                "conn/s",
                True,
                {"style": "protocol", "mode": "tls-churn", "size": TLS_CHURN_MESSAGE}
                | {"conns": conns}
                | tls,
                TLS_MIN_WARMUP,
                TLS_MIN_DURATION,
            )
        )
    for conns in CONNECTIONS:
        benches.append(
            Bench(
                f"tls/https/uvicorn-httptools/c{conns}",
                "tls",
                f"https uvicorn+httptools x{conns}",
                "req/s",
                True,
                {"server": "http", "mode": "https", "conns": conns} | tls,
                TLS_MIN_WARMUP,
                TLS_MIN_DURATION,
            )
        )
    return benches


# --------------------------------------------------------------------------------------------
# Preparation.


def ensure_loadgen(path: str) -> str:
    """The loadgen binary, built with cargo when it is missing or older than its sources."""
    src = os.path.join(HERE, "loadgen")
    newest = max(
        os.path.getmtime(os.path.join(d, f))
        for d, _, files in os.walk(src)
        for f in files
        if f.endswith((".rs", ".toml"))
    )
    if os.path.exists(path) and (path != DEFAULT_LOADGEN or os.path.getmtime(path) >= newest):
        return path
    if path != DEFAULT_LOADGEN:
        raise SystemExit(f"loadgen binary not found: {path}")
    print("building loadgen: cargo build --release -q -p loadgen", file=sys.stderr)
    try:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "loadgen"], cwd=ROOT, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"could not build loadgen: {exc}") from None
    return path


PROBE = r"""
import sys
sys.path.insert(0, sys.argv[1])
from common import loop_factory
name = sys.argv[2]
loop = loop_factory(name)()
loop.close()
if name == "asyncio":
    print(sys.version.split()[0])
else:
    try:
        import importlib.metadata
        print(importlib.metadata.version(name))
    except Exception:
        print(getattr(sys.modules[name], "__version__", "unknown"))
"""


def probe_loop(name: str) -> tuple[bool, str]:
    """(True, version) if a loop of this kind can be made here, else (False, reason)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, HERE, name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=child_env(),
        )
    except subprocess.TimeoutExpired:
        return False, "timed out creating a loop"
    if proc.returncode == 0:
        return True, proc.stdout.strip()
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return False, (lines[-1].strip() if lines else f"exit status {proc.returncode}")


def package_version(name: str) -> str | None:
    try:
        import importlib.metadata

        return importlib.metadata.version(name)
    except Exception:
        return None


def pick_cpus(pin: bool, client_threads: int | None):
    """(server CPUs, client CPUs, client threads). The server gets one CPU, the load generator
    the others (one thread per CPU, at most 4, unless told). Without pinning, or with fewer
    than two CPUs, the scheduler decides and the client runs one thread."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or len(cpus) < 2:
        return None, None, client_threads or 1
    client = cpus[1:]
    return {cpus[0]}, set(client), client_threads or min(4, len(client))


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1, and its key, written
    to `directory` (with the openssl command, or trustme when there is no openssl)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    openssl = shutil.which("openssl")
    if openssl:
        cmd = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        cmd += ["-nodes", "-keyout", key, "-out", cert, "-days", "7", "-subj", "/CN=localhost"]
        cmd += ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise BenchError(f"openssl req failed: {proc.stderr.strip()[-300:]}")
        return cert, key
    try:
        import trustme
    except ImportError:
        raise BenchError("no openssl command and no trustme to make a certificate") from None
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    issued = ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.ECDSA)
    issued.private_key_pem.write_to_path(key)
    issued.cert_chain_pems[0].write_to_path(cert)
    return cert, key


# --------------------------------------------------------------------------------------------
# Running one benchmark for one loop.


def busy_share(result: dict) -> float | None:
    """CPU the load generator used in the window, as a share of the cores its threads had."""
    seconds = result.get("seconds") or 0.0
    if seconds <= 0 or not is_number(result.get("cpu_s")):
        return None
    return result["cpu_s"] / seconds / max(1, result.get("threads", 1))


class Runner:
    def __init__(self, loadgen, duration, warmup, server_cpus, client_cpus, client_threads) -> None:
        self.loadgen = loadgen
        self.duration = duration
        self.warmup = warmup
        self.server_cpus = server_cpus
        self.client_cpus = client_cpus
        self.client_threads = client_threads
        self._tls_lock = threading.Lock()
        self._tls_dir: str | None = None
        self._tls_files: tuple[str, str] | None = None

    def tls_files(self) -> tuple[str, str]:
        """(certificate, key) for the TLS servers, made once per run."""
        with self._tls_lock:
            if self._tls_files is None:
                self._tls_dir = tempfile.mkdtemp(prefix="ferroloop-bench-tls-")
                self._tls_files = make_certificate(self._tls_dir)
            return self._tls_files

    def cleanup(self) -> None:
        if self._tls_dir:
            shutil.rmtree(self._tls_dir, ignore_errors=True)

    def run(self, bench: Bench, loop: str) -> dict:
        if bench.group in IN_PROCESS_GROUPS:
            return micro.run_child(
                bench.params["name"], loop, self.duration, self.warmup, cpus=self.server_cpus
            )
        return self.run_served(bench, loop)

    @staticmethod
    def _pin(cpus):
        return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None

    def run_concurrent(self, bench: Bench, loops: list[str]) -> dict[str, dict | BenchError]:
        """Runs `bench` for all `loops` at the same time (see --concurrent): each loop's
        result, or the BenchError that stopped it."""
        barrier = threading.Barrier(len(loops))
        outcome: dict[str, dict | BenchError] = {}

        def one(name: str) -> None:
            try:
                outcome[name] = self.run_served(bench, name, barrier)
                return
            except BenchError as exc:
                outcome[name] = exc
            except BaseException as exc:  # noqa: BLE001 - reported as this loop's failure
                outcome[name] = BenchError(f"{type(exc).__name__}: {exc}")
            barrier.abort()  # the others must not wait for a server that will not come

        threads = [threading.Thread(target=one, args=(name,), daemon=True) for name in loops]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcome

    def run_served(self, bench: Bench, loop: str, barrier: threading.Barrier | None = None) -> dict:
        """Runs `bench` for `loop`. With a `barrier`, the load generator starts only once
        every party's server is ready, so that concurrent runs measure the same window."""
        p = bench.params
        tmp = tempfile.mkdtemp(prefix="ferroloop-bench-")
        errlog_path = os.path.join(tmp, "server.log")
        if bench.group == "http" or p.get("server") == "http":
            cmd = [sys.executable, os.path.join(HERE, "servers", "http_server.py"), "--loop", loop]
            mode = p.get("mode", "http")
        elif bench.group in ("pipe", "sendfile"):
            cmd = [sys.executable, os.path.join(HERE, "servers", "bulk_server.py"), "--loop", loop]
            cmd += ["--mode", p["mode"], "--size", str(p["size"])]
            if bench.group == "pipe":
                cmd += ["--fifo", os.path.join(tmp, "bulk.fifo")]
            else:
                cmd += ["--tcp", "127.0.0.1:0", "--file", os.path.join(tmp, "bulk.file")]
            mode = p["client"]
        else:
            cmd = [sys.executable, os.path.join(HERE, "servers", "echo_server.py"), "--loop", loop]
            cmd += ["--style", p["style"]]
            if p["transport"] == "unix":
                cmd += ["--unix", os.path.join(tmp, "echo.sock")]
            elif p["transport"] == "udp":
                cmd += ["--udp", "127.0.0.1:0"]
            else:
                cmd += ["--tcp", "127.0.0.1:0"]
            mode = p.get("mode") or {"churn": "churn", "udp": "udp"}.get(bench.group, "echo")
        if p.get("tls"):
            cert, key = self.tls_files()
            cmd += ["--tls-cert", cert, "--tls-key", key]
        server = client = None
        try:
            with open(errlog_path, "w") as errlog:
                server = subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=errlog,
                    text=True,
                    bufsize=1,
                    cwd=ROOT,
                    env=child_env(),
                    preexec_fn=self._pin(self.server_cpus),
                )
            control = LineReader(server.stdout, "the server")
            try:
                ready = control.wait_json("ready", SERVER_START_TIMEOUT)
            except Unsupported:
                raise
            except BenchError as exc:
                raise BenchError(tail(errlog_path) or str(exc)) from None
            if bench.group == "pipe":
                target = ["--fifo", ready["address"]]
            else:
                flag = {"unix": "--unix", "udp": "--udp"}.get(p.get("transport"), "--tcp")
                target = [flag, ready["address"]]
            if barrier is not None:
                try:
                    barrier.wait(SERVER_START_TIMEOUT)
                except threading.BrokenBarrierError:
                    raise BenchError("another loop of this concurrent run failed") from None
            lg_cmd = [self.loadgen, mode, *target, "--conns", str(p.get("conns", 1)), "--hold"]
            lg_cmd += ["--threads", str(self.client_threads)]
            warmup = max(self.warmup, bench.min_warmup)
            duration = max(self.duration, bench.min_duration)
            lg_cmd += ["--duration", str(duration), "--warmup", str(warmup)]
            if mode not in ("http", "https"):
                lg_cmd += ["--size", str(p.get("client_size", p["size"]))]
            client = subprocess.Popen(
                lg_cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                preexec_fn=self._pin(self.client_cpus),
            )
            lg_out = LineReader(client.stdout, "loadgen")
            lg_err = LineReader(client.stderr, "loadgen")
            try:
                lg_err.wait_for(lambda line: line == "window-start", warmup + STEP_TIMEOUT)
                window_start = time.time()
                self._send(server, "start")
                control.wait_json("started", STEP_TIMEOUT)
                lg_err.wait_for(lambda line: line == "window-end", duration + STEP_TIMEOUT)
                self._send(server, "stop")
                usage = control.wait_json("stopped", STEP_TIMEOUT)
                result = json.loads(
                    lg_out.wait_for(lambda line: line.startswith("{"), STEP_TIMEOUT)
                )
            except BenchError as exc:
                if server.poll() is not None:
                    raise BenchError(
                        tail(errlog_path) or f"server exited with status {server.returncode}"
                    ) from None
                if lg_err.seen and client.poll() not in (None, 0):
                    raise BenchError(f"loadgen: {lg_err.seen[-1]}") from None
                raise BenchError(f"{exc}; server log: {tail(errlog_path)}") from None
        finally:
            self._stop(client, server)
            shutil.rmtree(tmp, ignore_errors=True)
        ops, errors = result["ops"], result["errors"]
        if ops <= 0:
            raise BenchError(f"no operation completed ({errors} errors)")
        if errors > max(1, ops // 100):
            raise BenchError(f"{errors} errors in {ops} operations")
        return {
            "ops": ops,
            "seconds": result["seconds"],
            "ops_per_sec": result["ops_per_sec"],
            "cpu_us_per_op": usage["cpu_s"] * 1e6 / ops,
            "p50_us": result["p50_us"],
            "p99_us": result["p99_us"],
            "errors": errors,
            "server_cpu_s": usage["cpu_s"],
            "server_window_s": usage["wall_s"],
            "window_start": window_start,  # wall clock: concurrent runs' windows coincide
            # Share of its cores the load generator used: near 1.0 makes it the bottleneck.
            "client_busy": busy_share(result),
            # TLS rows: the version, cipher suite and key exchange the client negotiated.
            "tls": result.get("tls"),
        }

    @staticmethod
    def _send(proc, line: str) -> None:
        try:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise BenchError("the server is gone") from None

    @staticmethod
    def _stop(client, server) -> None:
        for proc in (client, server):
            if proc is None:
                continue
            try:
                proc.stdin.close()  # the client stops holding; the server leaves
            except (OSError, ValueError):
                pass
        for proc in (client, server):
            if proc is None:
                continue
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass


# --------------------------------------------------------------------------------------------
# Report.


def draw_chart(benchmarks: list[dict], loops: list[str], path: str, title: str) -> bool:
    """Horizontal bars of each loop's ratio to uvloop: throughput, and server CPU per op."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as exc:
        print(f"no chart: {exc}", file=sys.stderr)
        return False
    shown = [name for name in loops if name != BASELINE] or list(loops)
    palette = {"ferroloop": "#d9531e", "asyncio": "#4c72b0", "uvloop": "#55a868"}
    colors = {name: palette.get(name, f"C{i}") for i, name in enumerate(shown)}
    n = len(benchmarks)
    height = 0.8 / len(shown)
    fig, axes = plt.subplots(1, 2, figsize=(14, 2.2 + n * (0.16 * len(shown) + 0.08)), sharey=True)
    panels = (
        ("ratio_to_uvloop", "throughput / uvloop's throughput (higher is better)"),
        ("cpu_ratio_to_uvloop", "server CPU per op / uvloop's (lower is better)"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        for j, name in enumerate(shown):
            for i, bench in enumerate(benchmarks):
                y = i + (j - (len(shown) - 1) / 2) * height
                value = bench["loops"].get(name, {}).get(key)
                if is_number(value):
                    ax.barh(y, value, height=height * 0.95, color=colors[name])
                else:
                    ax.text(
                        0.01,
                        y,
                        f"{name}: {NA}",
                        va="center",
                        ha="left",
                        fontsize=6,
                        color="gray",
                        transform=ax.get_yaxis_transform(),
                    )
        # A thin line between groups (callbacks, echo styles, http, churn).
        for i in range(1, n):
            if benchmarks[i]["id"].split("/")[:2] != benchmarks[i - 1]["id"].split("/")[:2]:
                ax.axhline(i - 0.5, color="gray", linewidth=0.5, alpha=0.6)
        ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(left=0)
        ax.xaxis.set_ticks_position("both")
        ax.tick_params(axis="x", labeltop=True)
    axes[0].set_yticks(range(n))
    axes[0].set_yticklabels([b["title"] for b in benchmarks], fontsize=7)
    axes[0].set_ylim(n - 0.5, -0.5)
    handles = [Patch(color=colors[name], label=name) for name in shown]
    handles.append(plt.Line2D([], [], color="black", linestyle="--", label=f"{BASELINE} = 1"))
    fig.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def smoke_problems(benchmarks: list[dict], loops: list[str]) -> list[str]:
    """What makes a smoke run fail: a row without a number for asyncio or uvloop (unless
    the row says that loop lacks the feature), or a ferroloop cell that is neither a number
    nor an explicit n/a."""
    problems = []
    for bench in benchmarks:
        for name in loops:
            cell = bench["loops"].get(name)
            if cell is None:
                problems.append(f"{bench['id']}: no cell for {name}")
                continue
            keys = ["ops_per_sec", "cpu_us_per_op"] + (
                ["p50_us", "p99_us"] if bench["latency"] else []
            )
            numeric = cell.get("status") == "ok" and all(is_number(cell.get(k)) for k in keys)
            if numeric:
                continue
            if name in bench.get("optional", ()) and cell.get("status") == NA:
                continue  # the loop lacks the feature
            if name == "ferroloop" and cell.get("status") == NA and cell.get("ops_per_sec") == NA:
                continue
            problems.append(f"{bench['id']} on {name}: {cell.get('reason', 'no number')}")
    return problems


def client_bound(benchmarks: list[dict]) -> list[str]:
    """Cells where the load generator was nearly saturated, so the server may not have been."""
    lines = []
    for bench in benchmarks:
        for name, cell in bench["loops"].items():
            busy = [r.get("client_busy") for r in cell.get("reps", [])]
            busy = [b for b in busy if is_number(b)]
            if busy and max(busy) > 0.9:
                lines.append(f"  {bench['id']} on {name}: {max(busy):.0%}")
    return lines


def write_results(path: str, meta: dict, benchmarks: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "benchmarks": benchmarks}, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def na_summary(benchmarks: list[dict], loops: list[str]) -> list[str]:
    """One line per (loop, reason) for the n/a cells."""
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for bench in benchmarks:
        for name in loops:
            cell = bench["loops"].get(name, {})
            if cell.get("status") != "ok":
                grouped[name, cell.get("reason", "")].append(bench["id"])
    lines = []
    for (name, reason), ids in grouped.items():
        which = ids[0] if len(ids) == 1 else f"{len(ids)} rows ({ids[0]} ...)"
        lines.append(f"  {name}: n/a in {which}: {reason}")
    return lines


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark ferroloop against uvloop and asyncio.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See bench/README.md for what each benchmark does and how to read the figures.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="every benchmark, once, very briefly; check numbers"
    )
    parser.add_argument(
        "--reps", type=int, help="repetitions per benchmark and loop (default 3; smoke 1)"
    )
    parser.add_argument(
        "--duration", type=float, help="measured seconds per run (default 2; smoke 0.2)"
    )
    parser.add_argument(
        "--warmup", type=float, help="unmeasured seconds before each (default 0.5; smoke 0.2)"
    )
    parser.add_argument(
        "--only", default="", help="run benchmarks whose id contains this (comma: any of several)"
    )
    parser.add_argument(
        "--loops", default=",".join(LOOPS), help="comma-separated loops (default: all three)"
    )
    parser.add_argument(
        "--out", default=os.path.join(HERE, "results"), help="directory for results.json, chart.png"
    )
    parser.add_argument("--loadgen", default=DEFAULT_LOADGEN, help="path of the loadgen binary")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the server and the client to CPUs"
    )
    parser.add_argument("--no-chart", action="store_true", help="skip chart.png")
    parser.add_argument(
        "--client-threads",
        type=int,
        help="load generator threads (default: one per CPU left to it, at most 4)",
    )
    parser.add_argument(
        "--concurrent",
        action="store_true",
        help="run the loops of each repetition of a served benchmark at the same time",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmark ids and exit")
    args = parser.parse_args(argv)

    reps = args.reps if args.reps is not None else (1 if args.smoke else 3)
    duration = args.duration if args.duration is not None else (0.2 if args.smoke else 2.0)
    # A smoke run's warmup lets 100 connections get going on a busy machine too.
    warmup = args.warmup if args.warmup is not None else (0.2 if args.smoke else 0.5)
    if reps < 1 or duration <= 0 or warmup < 0:
        parser.error("--reps must be >= 1, --duration > 0, --warmup >= 0")
    loops = parse_loops(args.loops)
    filters = [f for f in args.only.split(",") if f]
    benches = [b for b in all_benchmarks() if not filters or any(f in b.id for f in filters)]
    if args.list:
        for b in benches:
            print(f"{b.id:40} {b.unit}")
        return 0
    if not benches:
        parser.error(f"no benchmark id contains {args.only!r} (see --list)")

    if any(b.group not in IN_PROCESS_GROUPS for b in benches):
        loadgen = ensure_loadgen(os.path.abspath(args.loadgen))
    else:
        loadgen = args.loadgen
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.json")
    chart_path = os.path.join(args.out, "chart.png")

    available: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    for name in loops:
        ok, info = probe_loop(name)
        (available if ok else unavailable)[name] = info
    server_cpus, client_cpus, client_threads = pick_cpus(not args.no_pin, args.client_threads)
    started = datetime.datetime.now(datetime.UTC)
    meta = {
        "started": started.isoformat(timespec="seconds"),
        "finished": None,
        "smoke": args.smoke,
        "reps": reps,
        "duration_s": duration,
        "warmup_s": warmup,
        "loops": loops,
        "baseline": BASELINE,
        "loop_versions": {name: available.get(name) for name in loops},
        "unavailable": unavailable,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "server_cpus": sorted(server_cpus) if server_cpus else None,
        "client_cpus": sorted(client_cpus) if client_cpus else None,
        "client_threads": client_threads,
        "packages": {
            name: package_version(name) for name in ("uvicorn", "httptools", "matplotlib")
        },
        "only": args.only,
        "concurrent": args.concurrent,
    }
    for name, reason in unavailable.items():
        print(f"{name}: not available ({reason}); its cells are n/a", file=sys.stderr)
    print(
        f"{len(benches)} benchmarks x {len(loops)} loops x {reps} reps, "
        f"{duration:g} s measured (+{warmup:g} s warmup) per run",
        file=sys.stderr,
    )

    runner = Runner(loadgen, duration, warmup, server_cpus, client_cpus, client_threads)
    progress = Progress(len(benches) * reps * len(loops))
    results: list[dict] = []
    interrupted = False
    try:
        for bench in benches:
            samples: dict[str, list[dict]] = {name: [] for name in loops}
            failures: dict[str, str] = {}
            dead: set[str] = set(unavailable)
            for rep in range(reps):
                if args.concurrent and bench.group not in IN_PROCESS_GROUPS:
                    live = [name for name in loops if name not in dead]
                    progress.step(f"{bench.id} | {', '.join(live)} | rep {rep + 1}/{reps}", len(loops))
                    outcome = runner.run_concurrent(bench, live) if live else {}
                    refused = [n for n, got in outcome.items() if isinstance(got, Unsupported)]
                    if refused:
                        # A loop that lacks the feature stopped the others before their
                        # window: this repetition runs again without it.
                        dead.update(refused)
                        again = [name for name in live if name not in dead]
                        outcome = {n: outcome[n] for n in refused}
                        if again:
                            outcome.update(runner.run_concurrent(bench, again))
                    for name, got in outcome.items():
                        if not isinstance(got, BenchError):
                            samples[name].append(got)
                            continue
                        failures[name] = str(got)
                        if isinstance(got, Unsupported):
                            dead.add(name)
                    continue
                shift = rep % len(loops)
                for name in loops[shift:] + loops[:shift]:
                    progress.step(f"{bench.id} | {name} | rep {rep + 1}/{reps}")
                    if name in dead:
                        continue
                    try:
                        samples[name].append(runner.run(bench, name))
                    except Unsupported as exc:
                        failures[name] = str(exc)
                        dead.add(name)
                    except BenchError as exc:
                        failures[name] = str(exc)
            cells = {}
            for name in loops:
                if samples[name]:
                    cells[name] = summarize(samples[name])
                    if name in failures:
                        cells[name]["failed_reps"] = reps - len(samples[name])
                        cells[name]["last_failure"] = failures[name]
                elif name in unavailable:
                    cells[name] = na_cell(f"not available: {unavailable[name]}")
                else:
                    cells[name] = na_cell(failures.get(name, "no result"))
            results.append(
                {
                    "id": bench.id,
                    "group": bench.group,
                    "title": bench.title,
                    "unit": bench.unit,
                    "latency": bench.latency,
                    "params": bench.params,
                    "optional": list(bench.optional),
                    "loops": cells,
                }
            )
            add_ratios(results)
            write_results(results_path, meta, results)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        runner.cleanup()
    progress.finish()

    meta["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    meta["interrupted"] = interrupted
    add_ratios(results)
    write_results(results_path, meta, results)
    print(format_table(results, loops))
    notes = na_summary(results, loops)
    if notes:
        print("\nn/a:")
        print("\n".join(notes))
    negotiated = sorted(
        {
            rep["tls"]
            for bench in results
            for cell in bench["loops"].values()
            for rep in cell.get("reps", [])
            if rep.get("tls")
        }
    )
    if negotiated:
        print(f"\nTLS negotiated: {'; '.join(negotiated)}")
    busy = client_bound(results)
    if busy:
        print("\nthe load generator used over 90% of its CPU (figures may be client-bound) in:")
        print("\n".join(busy))
    print(
        f"\n{len(results)} benchmarks; medians of {reps} rep(s) of {duration:g} s. "
        "Compare ratios within this run, not figures across runs or machines."
    )
    if args.concurrent:
        print(
            "Concurrent run: the loops of a served benchmark ran at the same time, their "
            "servers sharing one CPU; throughput ratios are ratios of CPU cost per operation."
        )
    print(f"results: {os.path.relpath(results_path)}")
    if not args.no_chart and results:
        title = (
            f"ferroloop benchmarks, ratio to uvloop "
            f"({started:%Y-%m-%d %H:%M} UTC, {reps} rep(s) x {duration:g} s"
            f"{', loops concurrent' if args.concurrent else ''})"
        )
        if draw_chart(results, loops, chart_path, title):
            print(f"chart:   {os.path.relpath(chart_path)}")
    if interrupted:
        return 130
    if args.smoke:
        problems = smoke_problems(results, loops)
        if problems:
            print("\nsmoke check FAILED:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            return 1
        print("smoke check passed: asyncio and uvloop gave a number in every row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
