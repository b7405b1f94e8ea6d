"""Checks built ferroloop wheels; the last step of `make wheels`.

    python tools/check_wheels.py --python /path/to/python3.12 [--python ...] dist/*.whl

For every wheel: `auditwheel show` must give it a manylinux tag, and the wheel's file name
must claim no platform tag that auditwheel does not grant, and its extension module must be
named for the wheel's CPython version and architecture, and be an ELF file of that
architecture. For every interpreter given there
must be a wheel of its CPython version for this machine's architecture, and that wheel is
installed into a fresh virtualenv of that interpreter with no Rust toolchain on PATH (PATH is
the virtualenv's bin, /usr/bin and /bin, less any of them that holds cargo or rustc), no
package index, and a near-empty environment; there it runs `python -m ferroloop
examples/demo.py` and a small program on `ferroloop.new_event_loop()`. Wheels for another
architecture are audited only (no interpreter for them here). Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.py"

# Runs on the loop made by ferroloop.new_event_loop(): tasks, timers, a worker thread and a
# TCP echo over loopback (the transports are Rust), then checks it came from the wheel.
SMOKE = r"""
import asyncio, sys, ferroloop, ferroloop._core

async def main():
    loop = asyncio.get_running_loop()
    assert type(loop).__module__.startswith("ferroloop"), type(loop)
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "timer")
    total = await loop.run_in_executor(None, sum, range(1000))

    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"ping\n")
    reply = await reader.readline()
    writer.close()
    server.close()
    await server.wait_closed()
    return await fut, total, reply

loop = ferroloop.new_event_loop()
try:
    result = loop.run_until_complete(main())
finally:
    loop.close()
assert result == ("timer", 499500, b"ping\n"), result
print("smoke ok:", result, "on", sys.version.split()[0], "from", ferroloop._core.__file__)
"""

RUST_TOOLS = ("cargo", "rustc", "rustup")


class CheckFailed(Exception):
    pass


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Runs cmd, capturing its output; raises CheckFailed, with that output, if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise CheckFailed(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
        )
    return proc


def wheel_tags(wheel: Path) -> tuple[str, set[str]]:
    """The wheel's Python tag (cp312) and its platform tags, from its file name."""
    # name-version-pytag-abitag-platformtags.whl; the platform part may join tags with '.'.
    parts = wheel.name[: -len(".whl")].split("-")
    return parts[-3], set(parts[-1].split("."))


def wheel_arch(platform_tags: set[str]) -> str:
    archs = {t.split("_", 3)[-1] if t.startswith("manylinux_") else t.split("_", 1)[-1]
             for t in platform_tags}
    if len(archs) != 1:
        raise CheckFailed(f"platform tags {sorted(platform_tags)} name more than one architecture")
    return archs.pop()


def audit(auditwheel: str, wheel: Path) -> str:
    """Runs `auditwheel show`; returns the manylinux tag it grants, or raises CheckFailed."""
    info = json.loads(run([auditwheel, "show", "--json", str(wheel)]).stdout)
    tag = info["overall_tag"]
    _, claimed = wheel_tags(wheel)
    if not tag.startswith("manylinux_"):
        raise CheckFailed(f"{wheel.name}: auditwheel grants {tag}, not a manylinux tag "
                          f"(external libraries: {info.get('external_libs')})")
    # The file name may also carry the legacy alias (manylinux2014_x86_64 for 2_17); every
    # PEP 600 tag it claims must be no newer than what auditwheel grants.
    granted = tuple(int(x) for x in tag.split("_")[1:3])
    for t in claimed:
        if t.startswith("manylinux_"):
            if tuple(int(x) for x in t.split("_")[1:3]) < granted:
                raise CheckFailed(f"{wheel.name}: claims {t}, but auditwheel grants only {tag}")
        elif not t.startswith("manylinux"):
            raise CheckFailed(f"{wheel.name}: platform tag {t} is not a manylinux tag")
    return tag


# ELF e_machine values of the architectures wheels are built for.
ELF_MACHINES = {"x86_64": 62, "aarch64": 183}


def check_extension(wheel: Path, pytag: str, arch: str) -> str:
    """Checks the wheel's one extension module is for pytag and arch; returns its name."""
    with zipfile.ZipFile(wheel) as zf:
        mods = [n for n in zf.namelist() if n.endswith(".so")]
        if len(mods) != 1:
            raise CheckFailed(f"{wheel.name}: expected one extension module, found {mods}")
        mod = mods[0]
        suffix = f".cpython-{pytag[2:]}-{arch}-linux-gnu.so"
        if not mod.endswith(suffix):
            raise CheckFailed(f"{wheel.name}: {mod} does not end with {suffix}")
        head = zf.open(mod).read(20)
    machine = int.from_bytes(head[18:20], "little")
    if head[:4] != b"\x7fELF" or machine != ELF_MACHINES.get(arch):
        raise CheckFailed(f"{wheel.name}: {mod} is not an {arch} ELF file (e_machine {machine})")
    return mod


def clean_env(venv: Path, home: Path) -> tuple[dict[str, str], list[str]]:
    """The environment the wheel is installed and run in, and notes on what was left out."""
    notes = []
    dirs = []
    for d in (str(venv / "bin"), "/usr/bin", "/bin"):
        found = [t for t in RUST_TOOLS if os.access(os.path.join(d, t), os.X_OK)]
        if found and d != str(venv / "bin"):
            notes.append(f"left {d} off PATH: it holds {', '.join(found)}")
            continue
        dirs.append(d)
    env = {
        "PATH": os.pathsep.join(dirs),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PIP_CONFIG_FILE": os.devnull,  # no pip.conf: no index, no find-links from elsewhere
        "PIP_NO_INDEX": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }
    return env, notes


def check_install(python: str, wheel: Path) -> None:
    """Installs wheel into a fresh virtualenv of python and runs the demo and SMOKE there."""
    with tempfile.TemporaryDirectory(prefix="ferroloop-wheel-") as tmp:
        tmp_path = Path(tmp)
        venv = tmp_path / "venv"
        home = tmp_path / "home"
        home.mkdir()
        env, notes = clean_env(venv, home)
        for note in notes:
            print(f"  note: {note}")
        run([python, "-m", "venv", str(venv)], env=env, cwd=tmp)
        vpy = str(venv / "bin" / "python")
        for tool in RUST_TOOLS:
            where = shutil.which(tool, path=env["PATH"])
            if where:
                raise CheckFailed(f"{tool} is still on the test PATH at {where}")
        run([vpy, "-m", "pip", "install", "--no-index", "--only-binary", ":all:", str(wheel)],
            env=env, cwd=tmp)
        demo = run([vpy, "-m", "ferroloop", str(DEMO)], env=env, cwd=tmp).stdout
        if "running on ferroloop" not in demo:
            raise CheckFailed(f"the demo did not run on ferroloop:\n{demo}")
        print("  demo: " + demo.strip().replace("\n", "\n        "))
        smoke = run([vpy, "-c", SMOKE], env=env, cwd=tmp).stdout.strip()
        if str(venv) not in smoke:
            raise CheckFailed(f"ferroloop was not imported from the fresh virtualenv: {smoke}")
        print(f"  {smoke}")


def python_tag(python: str) -> str:
    out = run([python, "-c", "import sys; print('cp%d%d' % sys.version_info[:2])"]).stdout
    return out.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", action="append", default=[],
                    help="an interpreter whose wheel must be present, installed and run")
    ap.add_argument("--versions", default="",
                    help="the Python versions asked for (e.g. '3.11 3.12'): those without a "
                         "native wheel are named at the end")
    ap.add_argument("--auditwheel", default=shutil.which("auditwheel") or "auditwheel")
    ap.add_argument("wheels", nargs="+", type=lambda p: Path(p).absolute())
    args = ap.parse_args()

    missing = [str(w) for w in args.wheels if not w.is_file()]
    if missing:
        print(f"no such wheel: {', '.join(missing)}")
        return 1
    host_arch = platform.machine()
    failures = []
    native: dict[str, Path] = {}
    for wheel in args.wheels:
        print(f"{wheel.name} ({wheel.stat().st_size / 1024:.0f} KiB)")
        try:
            tag = audit(args.auditwheel, wheel)
            print(f"  auditwheel: consistent with {tag}")
            pytag, plats = wheel_tags(wheel)
            arch = wheel_arch(plats)
            print(f"  extension: {check_extension(wheel, pytag, arch)}")
            if arch == host_arch:
                if pytag in native:
                    raise CheckFailed(f"two {pytag} {arch} wheels: {native[pytag].name}")
                native[pytag] = wheel
            else:
                print(f"  not installed here: {arch} wheel on a {host_arch} machine")
        except CheckFailed as e:
            print(f"  FAILED: {e}")
            failures.append(wheel.name)

    for python in args.python:
        pytag = python_tag(python)
        wheel = native.get(pytag)
        print(f"{python} ({pytag})")
        if wheel is None:
            print(f"  FAILED: no {pytag} {host_arch} wheel among those given")
            failures.append(f"{pytag} (missing)")
            continue
        try:
            check_install(python, wheel)
        except CheckFailed as e:
            print(f"  FAILED: {e}")
            failures.append(f"{wheel.name} on {python}")

    if failures:
        print(f"\n{len(failures)} failed: " + "; ".join(failures))
        return 1
    print(f"\nall {len(args.wheels)} wheels pass auditwheel; "
          f"installed and ran on {len(args.python)} interpreters")
    not_built = [v for v in args.versions.split() if f"cp{v.replace('.', '')}" not in native]
    if not_built:
        print(f"no {host_arch} wheel for Python {', '.join(not_built)}: no interpreter found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
