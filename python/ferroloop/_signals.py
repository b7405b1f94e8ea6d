"""Unix signal handlers: ``add_signal_handler`` and ``remove_signal_handler``.

The checks, the errors and their messages, and what a removed handler leaves behind
follow asyncio's ``_UnixSelectorEventLoop``. Signals reach the loop through
``signal.set_wakeup_fd``: the wakeup fd is one end of a socket pair that the Rust
``SignalWakeup`` owns, made on the first ``add_signal_handler``; its other end is
watched by the loop, and the ``SignalWakeup`` reads the signal numbers from it and
schedules their handles, with no Python code of ours per signal (see
``src/signals.rs``). This module is the cold path: adding, removing, closing.
"""

from __future__ import annotations

import errno
import inspect
import os
import signal
import sys
import warnings
from asyncio import coroutines
from asyncio.log import logger

from ferroloop._core import SignalWakeup, _sighandler_noop

# The write ends of the open SignalWakeups of this process, which may be the wakeup fd.
_live_wakeup_fds: set[int] = set()


def _iscoroutinefunction(func) -> bool:
    """asyncio's own test (``coroutines._iscoroutinefunction`` on 3.14; what
    ``asyncio.iscoroutinefunction`` does before), without the DeprecationWarning that
    ``asyncio.iscoroutinefunction`` gives from 3.14 on."""
    if inspect.iscoroutinefunction(func):
        return True
    marker = getattr(coroutines, "_is_coroutine", None)
    return marker is not None and getattr(func, "_is_coroutine", None) is marker


def _check_signal(sig) -> None:
    """asyncio's ``_check_signal``."""
    if not isinstance(sig, int):
        raise TypeError(f"sig must be an int, not {sig!r}")
    if sig not in signal.valid_signals():
        raise ValueError(f"invalid signal number {sig}")


def _release_wakeup_fd(wakeup: SignalWakeup) -> None:
    """The last handler is gone: unless the wakeup fd has since been set to another,
    put back the one that was there before ours (asyncio sets -1 here, whoever's the
    wakeup fd is: another loop's handlers would stop getting signals)."""
    ours = wakeup.write_fd
    try:
        current = signal.set_wakeup_fd(-1)
    except (ValueError, OSError) as exc:
        logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return
    if current != ours:
        restore = current
    else:
        restore, was_ferroloop = wakeup.previous
        # A loop's socket pair closed since may have left its number to anything.
        if was_ferroloop and restore not in _live_wakeup_fds:
            restore = -1
    if restore != -1:
        try:
            signal.set_wakeup_fd(restore)
        except (ValueError, OSError):
            pass  # closed since (or made blocking): leave none


class SignalMixin:
    """The signal methods of ``ferroloop.Loop``."""

    # The loop's SignalWakeup, made by the first add_signal_handler.
    _signal_wakeup = None

    def add_signal_handler(self, sig, callback, *args):
        """Add a handler for a signal.  UNIX only.

        Raise ValueError if the signal number is invalid or uncatchable.
        Raise RuntimeError if there is a problem setting up the handler.
        """
        if coroutines.iscoroutine(callback) or _iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        _check_signal(sig)
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        wakeup = self._signal_wakeup
        new = wakeup is None
        if new:
            wakeup = SignalWakeup()
        try:
            # set_wakeup_fd() raises ValueError outside the main thread: a loop running
            # in another thread cannot add a signal handler.
            previous = signal.set_wakeup_fd(wakeup.write_fd)
        except (ValueError, OSError) as exc:
            if new:
                wakeup.close()
            raise RuntimeError(str(exc)) from None
        if new:
            try:
                self._add_reader(wakeup.read_fd, wakeup, self)
            except BaseException:
                signal.set_wakeup_fd(previous)
                wakeup.close()
                raise
            self._signal_wakeup = wakeup
            _live_wakeup_fds.add(wakeup.write_fd)
        if previous != wakeup.write_fd:
            wakeup.previous = (previous, previous in _live_wakeup_fds)

        wakeup.set(self, sig, callback, args)
        try:
            # A Python-level handler makes CPython write the signal's number to the
            # wakeup fd, which is how the loop learns of it.
            signal.signal(sig, _sighandler_noop)
            # Set SA_RESTART to limit EINTR occurrences.
            signal.siginterrupt(sig, False)
        except OSError as exc:
            wakeup.remove(sig)
            if not len(wakeup):
                _release_wakeup_fd(wakeup)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise

    def remove_signal_handler(self, sig):
        """Remove a handler for a signal.  UNIX only.

        Return True if a signal handler was removed, False if not.
        """
        _check_signal(sig)
        wakeup = self._signal_wakeup
        if wakeup is None or not wakeup.remove(sig):
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise
        if not len(wakeup):
            _release_wakeup_fd(wakeup)
        return True

    def _close_signals(self) -> None:
        """Part of close(): every handler is removed (the signals get asyncio's
        dispositions back), the wakeup fd released and the socket pair closed."""
        wakeup = self._signal_wakeup
        if wakeup is None:
            return
        try:
            if not sys.is_finalizing():
                for sig in wakeup.signals():
                    self.remove_signal_handler(sig)
            elif len(wakeup):
                warnings.warn(
                    f"Closing the loop {self!r} on interpreter shutdown stage, "
                    f"skipping signal handlers removal",
                    ResourceWarning,
                    source=self,
                )
                wakeup.clear()
                _release_wakeup_fd(wakeup)
        finally:
            if not len(wakeup):
                _live_wakeup_fds.discard(wakeup.write_fd)
                wakeup.close()
                del self._signal_wakeup


def _after_fork_in_child() -> None:
    # A forked child shares its parent's socket pairs: its signals must not wake the
    # parent's loop (asyncio resets the wakeup fd in the child from 3.12 on).
    try:
        fd = signal.set_wakeup_fd(-1)
        if fd != -1 and fd not in _live_wakeup_fds:
            signal.set_wakeup_fd(fd)
    except (ValueError, OSError):
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
