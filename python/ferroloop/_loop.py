"""The public loop class: the Rust core plus asyncio's abstract interface.

Hot paths (scheduling, the run step, handles, fd watches) are methods of the Rust
base ``LoopCore``. What stays here is cold and coroutine-shaped: shutting down async
generators and the default executor, the async generator hooks, name resolution
through the executor, and the unclosed-loop warning. Signal handlers are in
``_signals.py``, connections and servers in ``_net.py`` (and the modules it joins),
datagrams in ``_datagram.py``, pipes in ``_pipes.py``, ``sendfile`` and
``sock_sendfile`` in ``_sendfile.py``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
import warnings
import weakref

from ferroloop._compat import PY314
from ferroloop._core import LoopCore, make_socket_transport
from ferroloop._datagram import DatagramMixin
from ferroloop._net import NetworkMixin
from ferroloop._pipes import PipeMixin
from ferroloop._sendfile import SendfileMixin
from ferroloop._signals import SignalMixin
from ferroloop._subprocess import SubprocessMixin

logger = logging.getLogger("asyncio")


class Loop(
    LoopCore,
    SignalMixin,
    NetworkMixin,
    DatagramMixin,
    PipeMixin,
    SendfileMixin,
    SubprocessMixin,
    asyncio.AbstractEventLoop,
):
    """An asyncio event loop whose core is written in Rust."""

    def __init__(self) -> None:
        # WeakSet of the async generators being iterated by this loop.
        self._asyncgens = weakref.WeakSet()
        # asyncio's C Task and Future look `call_soon` up as an attribute of the loop
        # for every step and every done callback they schedule, and a lookup on the
        # class makes a new bound method each time. The bound method kept in the
        # instance's __dict__ is found there instead. Only where the class does not
        # override it; close() drops it again, as it holds the loop (a cycle).
        # (Set as an attribute, not through __dict__, which would make the instance's
        # dict a real dict, slower to look in than its attribute values.)
        if type(self).call_soon is LoopCore.call_soon:
            self.call_soon = self.call_soon

    def close(self) -> None:
        LoopCore.close(self)
        kept = self.__dict__.get("call_soon")
        if kept is not None and kept == LoopCore.call_soon.__get__(self):
            del self.__dict__["call_soon"]
        # After the loop's own close, as asyncio's Unix loop removes its handlers.
        self._close_signals()
        self._close_children()

    @property
    def _closed(self) -> bool:
        # asyncio's loop keeps this flag as an attribute, and code outside asyncio reads it.
        return self.is_closed()

    def __repr__(self) -> str:
        return (
            f"<{self.__class__.__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    def __del__(self, _warn=warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # ---- async generators ----

    def _asyncgen_finalizer_hook(self, agen) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    def _asyncgen_firstiter_hook(self, agen) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
            )
        self._asyncgens.add(agen)

    async def shutdown_asyncgens(self) -> None:
        """Shut down all active asynchronous generators."""
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing_agens = list(self._asyncgens)
        self._asyncgens.clear()
        results = await asyncio.gather(
            *[ag.aclose() for ag in closing_agens], return_exceptions=True
        )
        for result, agen in zip(results, closing_agens):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # ---- the default executor ----

    async def shutdown_default_executor(self, timeout=None) -> None:
        """Schedule the shutdown of the default executor.

        ``timeout`` (seconds, or None to wait without limit) bounds the wait for the
        executor's threads; past it a RuntimeWarning is issued and the executor is
        shut down without waiting.
        """
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        future = self.create_future()
        thread = threading.Thread(target=self._do_shutdown, args=(executor, future))
        thread.start()
        try:
            await future
        finally:
            thread.join(timeout)
        if thread.is_alive():
            warnings.warn(
                "The executor did not finishing joining "
                f"its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            executor.shutdown(wait=False)

    def _do_shutdown(self, executor, future) -> None:
        try:
            executor.shutdown(wait=True)
            if not self.is_closed():
                self.call_soon_threadsafe(_set_result_unless_cancelled, future, None)
        except Exception as ex:
            if not self.is_closed() and not future.cancelled():
                self.call_soon_threadsafe(future.set_exception, ex)

    # ---- transports ----

    def _make_stream_transport(self, sock, protocol, waiter=None, extra=None, server=None):
        """Wrap a connected non-blocking stream socket in a transport (Rust data path)."""
        return make_socket_transport(self, sock, protocol, waiter, extra, server)

    # ---- name resolution (through the default executor) ----

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        getaddr_func = self._getaddrinfo_debug if self.get_debug() else socket.getaddrinfo
        return await self.run_in_executor(
            None, getaddr_func, host, port, family, type, proto, flags
        )

    def _getaddrinfo_debug(self, host, port, family, type, proto, flags):
        """socket.getaddrinfo() with asyncio's debug-mode log lines (in the executor)."""
        msg = [f"{host}:{port!r}"]
        if family:
            msg.append(f"family={family!r}")
        if type:
            msg.append(f"type={type!r}")
        if proto:
            msg.append(f"proto={proto!r}")
        if flags:
            msg.append(f"flags={flags!r}")
        msg = ", ".join(msg)
        logger.debug("Get address info %s", msg)

        t0 = self.time()
        addrinfo = socket.getaddrinfo(host, port, family, type, proto, flags)
        dt = self.time() - t0

        msg = f"Getting address info {msg} took {dt * 1e3:.3f}ms: {addrinfo!r}"
        if dt >= self.slow_callback_duration:
            logger.info(msg)
        else:
            logger.debug(msg)
        return addrinfo

    async def getnameinfo(self, sockaddr, flags=0):
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)


def _set_result_unless_cancelled(future, result) -> None:
    if not future.cancelled():
        future.set_result(result)


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


# Event loop policies are deprecated from Python 3.14 (and go in 3.16): there the
# policy builds on asyncio's private base, which touching warns about nothing;
# before, on the platform default policy, as any policy of 3.11-3.13 does.
if PY314:
    _PolicyBase = asyncio.events._BaseDefaultEventLoopPolicy
else:
    _PolicyBase = asyncio.DefaultEventLoopPolicy


class EventLoopPolicy(_PolicyBase):
    """An event loop policy whose loops are ferroloop loops.

    ``asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())`` makes
    ``asyncio.new_event_loop()``, ``asyncio.run()`` and ``asyncio.get_event_loop()``
    use ferroloop.
    """

    def _loop_factory(self) -> Loop:
        return new_event_loop()


def run(main, *, debug=None):
    """Run a coroutine on a new ferroloop loop, with ``asyncio.run``'s semantics.

    Leftover tasks are cancelled, async generators and the default executor are
    shut down, and the loop is closed.
    """
    if asyncio._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)


if sys.version_info < (3, 11):  # pragma: no cover - pyproject requires 3.11
    raise ImportError("ferroloop requires Python 3.11 or newer")
