"""Helpers shared by the benchmark harness, the micro-benchmarks and the benchmark servers.

- ``loop_factory(name)``: how each loop under test is created.
- ``cpu_seconds()``: user + system CPU time of this process, from ``getrusage(RUSAGE_SELF)``.
- ``Control``: the control channel of a benchmark server. The harness writes ``start``,
  ``stop`` and ``exit`` lines on the server's stdin; a thread of the server answers on stdout
  with JSON lines, and on ``stop`` reports the CPU time the whole server process used since
  ``start``. The thread only reads and calls ``getrusage``, so it works with any event loop
  and costs nothing while it waits.
- ``LineReader``: reads a child's output lines in a thread so the harness can wait with a
  timeout.
- ``format_table``/``fmt_*``: the text table printed by ``run.py`` and ``micro.py``.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import statistics
import sys
import threading
import time
import traceback

LOOPS = ("ferroloop", "uvloop", "asyncio")
"""Every loop the suite knows, in the order the reports show them."""

BASELINE = "uvloop"
"""Ratios are given relative to this loop."""

NA = "n/a"


def loop_factory(name: str):
    """Return a zero-argument callable that makes a new event loop of kind ``name``."""
    if name == "asyncio":
        import asyncio

        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop
    raise ValueError(f"unknown loop {name!r} (known: {', '.join(LOOPS)})")


def parse_loops(text: str) -> list[str]:
    loops = [name.strip() for name in text.split(",") if name.strip()]
    for name in loops:
        if name not in LOOPS:
            raise SystemExit(f"unknown loop {name!r} (known: {', '.join(LOOPS)})")
    if not loops:
        raise SystemExit("--loops: no loop given")
    return loops


def child_env() -> dict:
    """The environment for benchmark processes: this one without asyncio's debug switches,
    which would slow every loop down and measure the debug checks instead."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")}


def cpu_seconds() -> float:
    """User + system CPU seconds used so far by this process (all its threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def describe_error(exc: BaseException) -> str:
    """One line naming the exception, and where it came from when it has no message
    (a bare NotImplementedError says nothing without the method that raised it)."""
    message = str(exc).strip()
    if message:
        return f"{type(exc).__name__}: {message.splitlines()[0]}"[:300]
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" in {frames[-1].name}()" if frames else ""
    return f"{type(exc).__name__}{where}"


# --------------------------------------------------------------------------------------------
# Server side of the control channel.


class Control:
    """The benchmark server's end of the control channel (stdin commands, stdout JSON lines)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cpu0 = 0.0
        self._wall0 = 0.0

    def send(self, **message) -> None:
        line = json.dumps(message)
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def ready(self, **info) -> None:
        self.send(event="ready", pid=os.getpid(), **info)

    def fail(self, exc: BaseException) -> None:
        """Report a startup failure and leave at once."""
        self.send(event="error", error=describe_error(exc))
        os._exit(1)

    def start(self) -> None:
        """Serve the commands from a daemon thread."""
        threading.Thread(target=self._serve, name="bench-control", daemon=True).start()

    def _serve(self) -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "start":
                self._wall0 = time.monotonic()
                self._cpu0 = cpu_seconds()
                self.send(event="started")
            elif command == "stop":
                cpu1 = cpu_seconds()
                wall1 = time.monotonic()
                self.send(event="stopped", cpu_s=cpu1 - self._cpu0, wall_s=wall1 - self._wall0)
            elif command == "exit":
                break
        # stdin closed or "exit": the harness is done with this server.
        sys.stdout.flush()
        os._exit(0)


# --------------------------------------------------------------------------------------------
# Harness side.


class BenchError(Exception):
    """A benchmark could not produce a number for a loop; the message says why."""


class Unsupported(BenchError):
    """The loop itself refused: the server or child reported an exception (for example
    NotImplementedError from a loop that lacks sockets). Further repetitions would fail the same
    way, so they are skipped."""


class LineReader:
    """Collects the lines of a text stream in a daemon thread."""

    def __init__(self, stream, name: str) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.name = name
        self.seen: list[str] = []
        threading.Thread(
            target=self._pump, args=(stream,), name=f"read-{name}", daemon=True
        ).start()

    def _pump(self, stream) -> None:
        try:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
        except (OSError, ValueError):
            pass
        self._queue.put(None)

    def get(self, timeout: float) -> str:
        """The next line; BenchError on timeout or end of stream."""
        try:
            line = self._queue.get(timeout=max(timeout, 0.01))
        except queue.Empty:
            raise BenchError(f"timed out waiting for {self.name}") from None
        if line is None:
            self._queue.put(None)  # stay at end of stream for later calls
            raise BenchError(f"{self.name} ended early")
        self.seen.append(line)
        return line

    def wait_for(self, predicate, timeout: float) -> str:
        """Skip lines until one satisfies ``predicate``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.get(deadline - time.monotonic())
            if predicate(line):
                return line

    def wait_json(self, event: str | None, timeout: float) -> dict:
        """Skip lines until a JSON object (with ``event`` if given) arrives; error events raise."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.get(deadline - time.monotonic())
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("event") == "error":
                raise Unsupported(message.get("error", "server error"))
            if event is None or message.get("event") == event:
                return message


def tail(path: str, limit: int = 400) -> str:
    """The last meaningful line of a log file, to explain a failure."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.read()[-20000:].splitlines() if line.strip()]
    except OSError:
        return ""
    # A traceback ends with the exception line, which is the most useful one.
    return lines[-1][:limit] if lines else ""


# --------------------------------------------------------------------------------------------
# Results.


def summarize(samples: list[dict]) -> dict:
    """Medians over the repetitions that produced a number."""
    cell = {"status": "ok", "reps": samples}
    for key in ("ops_per_sec", "cpu_us_per_op", "p50_us", "p99_us"):
        values = [s[key] for s in samples if is_number(s.get(key))]
        cell[key] = statistics.median(values) if values else None
    cell["errors"] = sum(s.get("errors", 0) for s in samples)
    return cell


def add_ratios(benchmarks: list[dict]) -> None:
    """ratio_to_uvloop (throughput) and cpu_ratio_to_uvloop (CPU per op) for every cell."""
    for bench in benchmarks:
        base = bench["loops"].get(BASELINE, {})
        for cell in bench["loops"].values():
            for key, ratio_key in (
                ("ops_per_sec", "ratio_to_uvloop"),
                ("cpu_us_per_op", "cpu_ratio_to_uvloop"),
            ):
                if cell.get("status") != "ok":
                    cell[ratio_key] = NA
                elif base.get("status") == "ok" and is_number(base.get(key)) and base[key] > 0:
                    cell[ratio_key] = cell[key] / base[key] if is_number(cell.get(key)) else NA
                else:
                    cell[ratio_key] = None


def na_cell(reason: str) -> dict:
    return {
        "status": NA,
        "reason": reason,
        "ops_per_sec": NA,
        "cpu_us_per_op": NA,
        "p50_us": NA,
        "p99_us": NA,
    }


# --------------------------------------------------------------------------------------------
# Formatting.


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt_rate(value) -> str:
    if not is_number(value):
        return NA
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def fmt_us(value) -> str:
    if value is None:
        return "-"
    if not is_number(value):
        return NA
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_ratio(value) -> str:
    if value is None:
        return "-"
    if not is_number(value):
        return NA
    return f"{value:.2f}x"


TABLE_COLUMNS = (
    ("ops/s", 13, "ops_per_sec", fmt_rate),
    ("CPU us/op", 10, "cpu_us_per_op", fmt_us),
    ("p50 us", 10, "p50_us", fmt_us),
    ("p99 us", 10, "p99_us", fmt_us),
    ("vs uvloop", 10, "ratio_to_uvloop", fmt_ratio),
    ("CPU vs uv", 10, "cpu_ratio_to_uvloop", fmt_ratio),
)


def format_table(benchmarks: list[dict], loops: list[str]) -> str:
    """The text table: one block per benchmark, one line per loop."""
    name_width = max([len("benchmark")] + [len(b["title"]) for b in benchmarks]) + 2
    loop_width = max(len(name) for name in loops) + 2
    header = "benchmark".ljust(name_width) + "loop".ljust(loop_width)
    header += "".join(title.rjust(width) for title, width, _, _ in TABLE_COLUMNS) + "  unit"
    lines = [header, "-" * len(header)]
    for bench in benchmarks:
        for i, name in enumerate(loops):
            cell = bench["loops"].get(name, {"status": NA})
            row = (bench["title"] if i == 0 else "").ljust(name_width) + name.ljust(loop_width)
            for _, width, key, fmt in TABLE_COLUMNS:
                value = cell.get(key, NA) if cell.get("status") == "ok" else NA
                if key in ("p50_us", "p99_us") and not bench.get("latency", True):
                    value = None
                row += fmt(value).rjust(width)
            note = bench["unit"] if i == 0 else ""
            if cell.get("status") == "ok" and cell.get("errors"):
                note = (note + f"  ({cell['errors']} errors)").strip()
            lines.append((row + "  " + note).rstrip())
    return "\n".join(lines)


class Progress:
    """One status line on stderr: redrawn in place on a terminal, one line per step otherwise."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self._width = 0

    def step(self, text: str, count: int = 1) -> None:
        """`count` more steps are under way, described by `text`."""
        if not self.enabled:
            return
        self.done += count
        elapsed = time.monotonic() - self.started
        left = ""
        if self.done > count:
            remaining = elapsed / (self.done - count) * (self.total - self.done + count)
            left = f", ~{_duration(remaining)} left"
        line = f"[{self.done}/{self.total}] {text} ({_duration(elapsed)} elapsed{left})"
        if self.tty:
            pad = max(0, self._width - len(line))
            sys.stderr.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self.tty and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
