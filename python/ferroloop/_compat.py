"""What differs between the CPython versions ferroloop runs on, named once.

asyncio's messages and semantics changed between 3.11, 3.12 and 3.13; the loop
follows the running interpreter's, and this module says which that is.
"""

from __future__ import annotations

import sys

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)
PY314 = sys.version_info >= (3, 14)


def bind_error_text(exc: OSError) -> str:
    """The tail of asyncio's "error while attempting to bind" message: the
    error's strerror before 3.13, its whole str() from 3.13 on, lower-cased."""
    return str(exc).lower() if PY313 else exc.strerror.lower()
