"""Subprocesses: ``subprocess_exec``, ``subprocess_shell``, and the child watching
behind ``asyncio.create_subprocess_exec``/``_shell``.

``SubprocessMixin`` is a base class of ``ferroloop.Loop``. The process transport is
asyncio's own ``BaseSubprocessTransport`` of the running Python version (its
callbacks, their order, ``close()`` killing a running child, the unclosed
warning), over the loop's pipe transports (``connect_read_pipe`` and
``connect_write_pipe``); the process is made by ``subprocess.Popen`` with every
keyword it takes. ``subprocess_exec``/``subprocess_shell`` are asyncio's own
argument checks and debug logging, taken from ``BaseEventLoop`` of the running
version.

Children are reaped by the loop, without a thread per child and without
asyncio's child watchers (deprecated in 3.12, gone in 3.14): a pidfd
(``os.pidfd_open``) watched for readability where the kernel has it, and where it
has not (ENOSYS, or refused by a seccomp profile) a timer that polls
``waitpid(WNOHANG)`` with a growing interval. A child still running when the loop
closes is left to one reaper thread, so that no zombie outlives its exit.

The child's exit (``process_exited``, then ``connection_lost``) is reported in the
context asyncio's default child watcher reports it in: a copy of the spawner's where
asyncio watches a pidfd (3.12 on, where the kernel has pidfds), and an empty one where
asyncio's watcher is a thread's (``ThreadedChildWatcher``: 3.11, and no pidfds).
"""

from __future__ import annotations

import contextvars
import errno
import os
import subprocess
import sys
import threading
from asyncio import base_events, base_subprocess
from asyncio.log import logger

# The timer fallback's first and longest intervals between waitpid() polls.
_POLL_FIRST = 0.001
_POLL_MAX = 0.1


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """asyncio's process transport, with the child made by ``subprocess.Popen``."""

    def _start(self, args, shell, stdin, stdout, stderr, bufsize, **kwargs):
        self._proc = subprocess.Popen(
            args,
            shell=shell,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            universal_newlines=False,
            bufsize=bufsize,
            **kwargs,
        )


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def _reap_in_background(pids) -> None:
    """Waits for children the loop can no longer watch (it closed), in one thread."""

    def reap():
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    threading.Thread(target=reap, name="ferroloop-reaper", daemon=True).start()


class SubprocessMixin:
    """The loop's subprocess methods (see the module docstring)."""

    subprocess_shell = base_events.BaseEventLoop.subprocess_shell
    subprocess_exec = base_events.BaseEventLoop.subprocess_exec
    _log_subprocess = base_events.BaseEventLoop._log_subprocess

    @property
    def _debug(self) -> bool:
        # asyncio's subprocess_exec/subprocess_shell read the debug flag as an attribute.
        return self.get_debug()

    @property
    def _children(self) -> dict:
        """pid -> (transport, pidfd or None, timer handle or None) of watched children."""
        children = getattr(self, "_child_map", None)
        if children is None:
            # (An attribute, not self.__dict__: see Loop.__init__.)
            children = self._child_map = {}
        return children

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        waiter = self.create_future()
        transp = SubprocessTransport(
            self,
            protocol,
            args,
            shell,
            stdin,
            stdout,
            stderr,
            bufsize,
            waiter=waiter,
            extra=extra,
            **kwargs,
        )
        self._watch_child(transp.get_pid(), transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    # ---- reaping ----

    def _watch_child(self, pid: int, transp) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                raise
            pidfd = None
        except AttributeError:  # pragma: no cover - Linux has os.pidfd_open
            pidfd = None
        # Where asyncio's watcher is a thread, the exit is reported in the thread's
        # context (empty); elsewhere in a copy of the current one.
        context = None
        if pidfd is None or sys.version_info < (3, 12):
            context = contextvars.Context()
        if pidfd is not None:
            self._children[pid] = (transp, pidfd, None)
            if context is None:
                self._add_reader(pidfd, self._child_readable, pid)
            else:
                context.run(self._add_reader, pidfd, self._child_readable, pid)
        else:
            self._children[pid] = (transp, None, None)
            context.run(self._poll_child, pid, _POLL_FIRST)

    def _child_readable(self, pid: int) -> None:
        # A pidfd is readable once the child has exited: waitpid does not block.
        self._reap(pid, os.WNOHANG)

    def _poll_child(self, pid: int, interval: float) -> None:
        if self._reap(pid, os.WNOHANG):
            return
        entry = self._children.get(pid)
        if entry is None:
            return
        nxt = min(interval * 2, _POLL_MAX)
        timer = self.call_later(interval, self._poll_child, pid, nxt)
        self._children[pid] = (entry[0], None, timer)

    def _reap(self, pid: int, flags: int) -> bool:
        """Tries to reap ``pid``; True once it is gone (and its transport told)."""
        try:
            wpid, status = os.waitpid(pid, flags)
        except ChildProcessError:
            # Reaped by someone else (a waitpid() elsewhere in the program).
            logger.warning("Unknown child process pid %d, will report returncode 255", pid)
            returncode = 255
        else:
            if wpid == 0:
                return False
            returncode = _exit_code(status)
        transp, pidfd, timer = self._children.pop(pid, (None, None, None))
        if pidfd is not None:
            self.remove_reader(pidfd)
            os.close(pidfd)
        if timer is not None:
            timer.cancel()
        if self.get_debug():
            logger.debug("process %s exited with returncode %s", pid, returncode)
        if transp is not None:
            transp._process_exited(returncode)
        return True

    def _close_children(self) -> None:
        """After close() (the loop's watches are gone with it): the pidfds are closed,
        and the children still running go to a reaper thread."""
        children = getattr(self, "_child_map", None)
        if not children:
            return
        self._child_map = None
        left = []
        for pid, (_transp, pidfd, timer) in children.items():
            if timer is not None:
                timer.cancel()
            if pidfd is not None:
                os.close(pidfd)
            try:
                wpid, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if wpid == 0:
                left.append(pid)
        if left:
            _reap_in_background(left)

