"""ferroloop: a drop-in replacement for asyncio's event loop, written in Rust.

Use it with one line::

    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # Python 3.12+
    ferroloop.run(main())
    asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())
"""

from ferroloop._core import Handle, LoopCore, TimerHandle
from ferroloop._loop import EventLoopPolicy, Loop, new_event_loop, run

__all__ = [
    "EventLoopPolicy",
    "Handle",
    "Loop",
    "LoopCore",
    "TimerHandle",
    "new_event_loop",
    "run",
]
__version__ = "0.1.0"
