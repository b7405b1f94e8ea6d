"""Callback micro-benchmarks: the event loop's own overhead, no I/O.

  call_soon          rounds of 10,000 loop.call_soon(cb) (cb increments a counter), then the
                     loop runs until all have run                          -> callbacks/s
  call_later_cancel  rounds of 10,000 loop.call_later(10.0, cb), each handle cancelled, then
                     one loop iteration                      -> timers scheduled+cancelled/s
  sleep0             100 tasks each doing 100 `await asyncio.sleep(0)` per round
                                                                        -> task switches/s
  gather             asyncio.gather() of 1,000 trivial coroutines per round    -> tasks/s
  spawn              (process group) 50 `/bin/true` children started at once with
                     asyncio.create_subprocess_exec, then all awaited        -> processes/s
  communicate        (process group) 10 MiB written through `cat` with
                     Process.communicate() and read back                       -> MiB/s

Each benchmark repeats rounds for --warmup seconds (not measured), then for --duration
seconds, and reports ops/s and the process's CPU time per op (getrusage RUSAGE_SELF,
user + sys). Every (benchmark, loop, repetition) runs in a fresh subprocess, and the loops are
interleaved within each repetition.

  python bench/micro.py --loops ferroloop,uvloop,asyncio [--reps 3] [--duration 1] [--only NAME]

bench/run.py runs these same benchmarks as part of the whole suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    LOOPS,
    BenchError,
    Progress,
    Unsupported,
    add_ratios,
    child_env,
    cpu_seconds,
    describe_error,
    format_table,
    is_number,
    loop_factory,
    na_cell,
    parse_loops,
    summarize,
)

HERE = os.path.dirname(os.path.abspath(__file__))

CALLBACKS_PER_ROUND = 10_000
TIMERS_PER_ROUND = 10_000
SWITCH_TASKS = 100
SWITCHES_PER_TASK = 100
GATHER_TASKS = 1_000


def call_soon_round(loop) -> int:
    counter = 0

    def cb():
        nonlocal counter
        counter += 1

    call_soon = loop.call_soon
    for _ in range(CALLBACKS_PER_ROUND):
        call_soon(cb)
    call_soon(loop.stop)
    loop.run_forever()
    if counter != CALLBACKS_PER_ROUND:
        raise RuntimeError(f"{counter} of {CALLBACKS_PER_ROUND} callbacks ran")
    return CALLBACKS_PER_ROUND


def _never():
    raise RuntimeError("a cancelled timer ran")


def call_later_cancel_round(loop) -> int:
    call_later = loop.call_later
    handles = [call_later(10.0, _never) for _ in range(TIMERS_PER_ROUND)]
    for handle in handles:
        handle.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    return TIMERS_PER_ROUND


async def _switcher(n: int) -> None:
    sleep = asyncio.sleep
    for _ in range(n):
        await sleep(0)


async def _switch_main() -> None:
    await asyncio.gather(*[_switcher(SWITCHES_PER_TASK) for _ in range(SWITCH_TASKS)])


def sleep0_round(loop) -> int:
    loop.run_until_complete(_switch_main())
    return SWITCH_TASKS * SWITCHES_PER_TASK


async def _trivial() -> int:
    return 1


async def _gather_main() -> None:
    results = await asyncio.gather(*[_trivial() for _ in range(GATHER_TASKS)])
    if len(results) != GATHER_TASKS:
        raise RuntimeError("gather lost results")


def gather_round(loop) -> int:
    loop.run_until_complete(_gather_main())
    return GATHER_TASKS


SPAWN_PER_ROUND = 50
COMMUNICATE_MIB = 10


async def _spawn_main() -> None:
    procs = [await asyncio.create_subprocess_exec("/bin/true") for _ in range(SPAWN_PER_ROUND)]
    codes = await asyncio.gather(*(p.wait() for p in procs))
    if any(codes):
        raise RuntimeError(f"/bin/true exited with {codes}")


def spawn_round(loop) -> int:
    loop.run_until_complete(_spawn_main())
    return SPAWN_PER_ROUND


_COMMUNICATE_DATA = b"\x5a" * (COMMUNICATE_MIB << 20)


async def _communicate_main() -> None:
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec("cat", stdin=pipe, stdout=pipe)
    out, _ = await proc.communicate(_COMMUNICATE_DATA)
    if len(out) != len(_COMMUNICATE_DATA):
        raise RuntimeError(f"cat gave back {len(out)} bytes")


def communicate_round(loop) -> int:
    loop.run_until_complete(_communicate_main())
    return COMMUNICATE_MIB


# name -> (round function, unit, title)
BENCHMARKS = {
    "call_soon": (call_soon_round, "callbacks/s", "call_soon"),
    "call_later_cancel": (call_later_cancel_round, "timers/s", "call_later + cancel"),
    "sleep0": (sleep0_round, "switches/s", f"sleep(0) switching, {SWITCH_TASKS} tasks"),
    "gather": (gather_round, "tasks/s", f"gather of {GATHER_TASKS:,} coroutines"),
}


# Subprocess benchmarks, run the same way (a fresh process per run; the CPU time is
# the loop process's own, not its children's): name -> (round function, unit, title)
PROCESS_BENCHMARKS = {
    "spawn": (spawn_round, "processes/s", f"spawn and wait /bin/true, {SPAWN_PER_ROUND} at once"),
    "communicate": (
        communicate_round,
        "MiB/s",
        f"communicate {COMMUNICATE_MIB} MiB through cat",
    ),
}

# Every benchmark this module runs, by name: the group is the id's prefix.
GROUPS = {"callbacks": BENCHMARKS, "process": PROCESS_BENCHMARKS}


def _lookup(name: str):
    for benches in GROUPS.values():
        if name in benches:
            return benches[name]
    raise KeyError(name)


def _group_of(name: str) -> str:
    return next(group for group, benches in GROUPS.items() if name in benches)


def measure(name: str, loop_name: str, duration: float, warmup: float) -> dict:
    """Run one benchmark in this process on a fresh loop; return its figures."""
    round_fn = _lookup(name)[0]
    loop = loop_factory(loop_name)()
    asyncio.set_event_loop(loop)
    try:
        end = time.perf_counter() + warmup
        round_fn(loop)  # at least one round, to warm caches even with --warmup 0
        while time.perf_counter() < end:
            round_fn(loop)
        ops = 0
        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        end = t0 + duration
        while True:
            ops += round_fn(loop)
            now = time.perf_counter()
            if now >= end:
                break
        cpu = cpu_seconds() - cpu0
        seconds = now - t0
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return {
        "ops": ops,
        "seconds": seconds,
        "ops_per_sec": ops / seconds,
        "cpu_us_per_op": cpu * 1e6 / ops,
        "p50_us": None,
        "p99_us": None,
        "errors": 0,
    }


def run_child(
    name: str, loop_name: str, duration: float, warmup: float, cpus: set[int] | None = None
) -> dict:
    """Run one benchmark for one loop in a fresh interpreter; BenchError if it cannot."""
    cmd = [
        sys.executable,
        os.path.join(HERE, "micro.py"),
        "--child",
        name,
        "--loop",
        loop_name,
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
    ]
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    timeout = duration + warmup + 60
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=preexec,
            env=child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout:.0f} s") from None
    for line in reversed(proc.stdout.splitlines()):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("event") == "error":
            raise Unsupported(message["error"])
        if proc.returncode == 0 and is_number(message.get("ops_per_sec")):
            return message
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    raise BenchError(err[-1][:300] if err else f"exit status {proc.returncode}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Event loop callback micro-benchmarks.")
    parser.add_argument("--loops", default=",".join(LOOPS), help="comma-separated (default: all)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=1.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=0.2)
    parser.add_argument("--only", default="", help="run the benchmarks whose name contains this")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        try:
            result = measure(args.child, args.loop, args.duration, args.warmup)
        except BaseException as exc:
            print(json.dumps({"event": "error", "error": describe_error(exc)}), flush=True)
            return 1
        print(json.dumps(result), flush=True)
        return 0

    loops = parse_loops(args.loops)
    known = [name for benches in GROUPS.values() for name in benches]
    names = [name for name in known if args.only in name]
    if not names:
        raise SystemExit(f"no benchmark matches {args.only!r} (known: {', '.join(known)})")
    samples = {(n, lp): [] for n in names for lp in loops}
    failures: dict[tuple[str, str], str] = {}
    progress = Progress(len(names) * len(loops) * args.reps)
    for name in names:
        for rep in range(args.reps):
            for loop_name in loops[rep % len(loops) :] + loops[: rep % len(loops)]:
                progress.step(f"{name} on {loop_name}, rep {rep + 1}/{args.reps}")
                if (name, loop_name) in failures:
                    continue
                try:
                    samples[name, loop_name].append(
                        run_child(name, loop_name, args.duration, args.warmup)
                    )
                except BenchError as exc:
                    failures[name, loop_name] = str(exc)
    progress.finish()
    benchmarks = []
    for name in names:
        cells = {}
        for loop_name in loops:
            got = samples[name, loop_name]
            cells[loop_name] = (
                summarize(got) if got else na_cell(failures.get((name, loop_name), "no result"))
            )
        _, unit, title = _lookup(name)
        benchmarks.append(
            {
                "id": f"{_group_of(name)}/{name}",
                "title": title,
                "unit": unit,
                "latency": False,
                "loops": cells,
            }
        )
    add_ratios(benchmarks)
    print(format_table(benchmarks, loops))
    for bench in benchmarks:
        for loop_name, cell in bench["loops"].items():
            if cell["status"] != "ok":
                print(f"  {bench['id']} on {loop_name}: n/a ({cell['reason']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmarks": benchmarks}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
