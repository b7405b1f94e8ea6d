"""What differs between the CPython versions the tests run on, named once.

Each flag says which asyncio behaviour the running interpreter has, so that a
test written against one version's asyncio states the other's too.
"""

from __future__ import annotations

import sys

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)

# 3.13 shows a callback's arguments in handle reprs (and so in "Exception in
# callback ..." messages) only in debug mode.
ARGS_IN_REPR = not PY313


def repr_args(text: str, debug: bool = False) -> str:
    """The argument list as a non-debug handle repr shows it: ``text`` before
    3.13, nothing from 3.13 on."""
    return text if (ARGS_IN_REPR or debug) else ""
