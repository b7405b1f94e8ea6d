"""``python -m ferroloop script.py [args...]``: run any asyncio program on ferroloop.

The event loop policy is set before the script runs, so ``asyncio.run()``,
``asyncio.new_event_loop()`` and ``asyncio.get_event_loop()`` in the script give
ferroloop loops. The script runs as ``__main__`` with ``sys.argv`` as given.
``python -m ferroloop -m module [args...]`` runs a module the same way.
"""

import asyncio
import os
import runpy
import sys

import ferroloop

USAGE = "usage: python -m ferroloop script.py [args...]\n       python -m ferroloop -m module [args...]"


def install_policy(policy) -> None:
    """Make ``asyncio.run()`` and ``asyncio.new_event_loop()`` give ferroloop loops.

    From Python 3.14, where ``asyncio.set_event_loop_policy`` is deprecated, through
    the setter asyncio itself uses, so that running a script this way warns about
    nothing the script did not do.
    """
    if sys.version_info >= (3, 14) and hasattr(asyncio.events, "_set_event_loop_policy"):
        asyncio.events._set_event_loop_policy(policy)
    else:
        asyncio.set_event_loop_policy(policy)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    install_policy(ferroloop.EventLoopPolicy())
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = argv[0]
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
