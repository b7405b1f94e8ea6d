#!/usr/bin/env python3
"""Runs tests under valgrind memcheck and reports the errors in ferroloop's code.

    python tools/memcheck.py [pytest arguments...]

The interpreter is this one (sys.executable), with PYTHONMALLOC=malloc so that every
Python allocation is a malloc valgrind can follow. valgrind writes XML; an error
counts as ferroloop's when any frame of its stack is in ferroloop's extension
module (`_core*.so`). CPython's own reports (its allocator tricks, uninitialised
padding it reads on purpose) are listed by kind only. Leaks count only when
definite (memory nothing points to at exit). Exits 1 when ferroloop has
any error, or when valgrind or the tests failed.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

DEFAULT_TESTS = [
    "tests/test_handles.py",
    "tests/test_scheduling.py",
    "tests/test_context.py",
    "tests/test_gc.py",
    "tests/test_threads.py",
    "tests/test_transport.py",
    "tests/test_datagram.py",
    "tests/test_pipes.py",
    "tests/test_tls.py",
    "-k",
    "ferroloop",
]


def ours(frame) -> bool:
    obj = frame.findtext("obj") or ""
    return "ferroloop" in obj and "_core" in os.path.basename(obj)


def describe(error) -> str:
    kind = error.findtext("kind")
    what = error.findtext("what") or error.findtext("xwhat/text") or ""
    lines = [f"{kind}: {what}"]
    for frame in error.find("stack").findall("frame"):
        fn = frame.findtext("fn") or "?"
        where = frame.findtext("file")
        line = frame.findtext("line")
        obj = os.path.basename(frame.findtext("obj") or "")
        lines.append(f"    {fn}  ({where}:{line})" if where else f"    {fn}  [{obj}]")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    tests = argv or DEFAULT_TESTS
    with tempfile.TemporaryDirectory(prefix="ferroloop-memcheck-") as tmp:
        xml_path = os.path.join(tmp, "memcheck.xml")
        env = dict(os.environ, PYTHONMALLOC="malloc", FERROLOOP_TEST_HANG_TIMEOUT="3000")
        cmd = [
            "valgrind",
            "--tool=memcheck",
            "--xml=yes",
            f"--xml-file={xml_path}",
            "--num-callers=40",
            # Leaks: only memory no pointer reaches at exit. What a process keeps to its
            # end (type objects, interned names, caches) is not a leak of ferroloop's.
            "--leak-check=full",
            "--show-leak-kinds=definite",
            "--errors-for-leak-kinds=definite",
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            *tests,
        ]
        print("running:", " ".join(cmd), flush=True)
        tests_rc = subprocess.run(cmd, env=env, check=False).returncode
        root = ET.parse(xml_path).getroot()
    errors = [
        e for e in root.findall("error")
        if e.findtext("kind") not in ("Leak_PossiblyLost", "Leak_StillReachable")
    ]
    def once_per_class(e) -> bool:
        # PyO3 builds each class's type object once per process at module init and
        # keeps parts of its spec for the type's lifetime (the process's): a definite
        # "leak" of a few bytes per class, not one per object.
        fns = [f.findtext("fn") or "" for f in e.find("stack").findall("frame")]
        return e.findtext("kind") == "Leak_DefinitelyLost" and any(
            "create_type_object" in fn for fn in fns
        )

    setup = [e for e in errors if once_per_class(e)]
    errors = [e for e in errors if not once_per_class(e)]
    mine = [e for e in errors if any(ours(f) for f in e.find("stack").findall("frame"))]
    others = collections.Counter(e.findtext("kind") for e in errors if e not in mine)
    print(f"\nmemcheck: {len(errors)} errors in all; {len(mine)} with a frame in ferroloop's code")
    if setup:
        size = sum(int(e.findtext("xwhat/leakedbytes") or 0) for e in setup)
        print(f"  PyO3's type objects, made once per class at import: {len(setup)} blocks, {size} bytes")
    for kind, n in sorted(others.items()):
        print(f"  not ferroloop's: {n} x {kind}")
    for e in mine:
        print(describe(e))
    if tests_rc != 0:
        print(f"the tests failed under valgrind (exit status {tests_rc})")
    return 1 if mine or tests_rc != 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
