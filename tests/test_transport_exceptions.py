"""What escapes a transport's read or write path goes to the exception handler.

asyncio runs a transport's reader and writer as handles, so an exception that escapes
them (not one the transport itself handles, as a failing ``data_received``) reaches
``call_exception_handler`` with ``Handle._run``'s context (``message``, ``exception``,
``handle``) and the loop goes on; SystemExit and KeyboardInterrupt leave it. When the
path removed its own watch before it failed, asyncio's handle was cancelled by then, and
the report says ``Exception in callback None()``.

Each scenario runs on the loop under test and on asyncio's, and the reports are compared
with the transport's class name left out.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import re
import socket
import struct
import sys
import uuid

import pytest
from net_helpers import run, settle
from transport_helpers import (
    KINDS,
    MIB,
    Proto,
    both,
    kinds,
    make_transport,
    pattern,
    pipe_files,
    read_fd_while,
    tls_contexts,
    wait_until,
)

var = contextvars.ContextVar("var", default="outer")


class Boom(Exception):
    pass


def normalized(text: str) -> str:
    """A message or handle repr without the transport's class name."""
    return re.sub(r"(callback |<Handle )\w+\.", r"\1Transport.", text)


def shown_args(args: str) -> str:
    """The arguments of a callback as a handle's repr shows them outside debug mode:
    from Python 3.13 on, not at all."""
    return args if sys.version_info < (3, 13) else ""


def summary(ctx) -> tuple:
    """What a report says, comparable across the two loops."""
    handle = ctx.get("handle")
    return (
        normalized(ctx["message"]),
        type(ctx["exception"]).__name__,
        str(ctx["exception"]),
        sorted(ctx),
        None if handle is None else normalized(repr(handle)),
        None if handle is None else handle.cancelled(),
    )


def recording_handler(loop, seen_in_handler=None, summarize=summary):
    """An exception handler that records a summary of each report when it is made (and
    the value of ``var`` it sees)."""
    contexts = []

    def handler(lp, ctx):
        contexts.append(summarize(ctx))
        if seen_in_handler is not None:
            seen_in_handler.append(var.get())

    loop.set_exception_handler(handler)
    return contexts


async def drain(peer, until=lambda: False):
    """Read from the peer without the loop (a callback may close it meanwhile), to the
    end of the stream or until ``until()``: the number of bytes read."""
    got = 0
    while not until():
        try:
            chunk = peer.recv(MIB)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        except OSError:
            break
        if not chunk:
            break
        got += len(chunk)
    return got


# ---------------------------------------------------------------- streams


async def _connection_lost_raising_after_close(loop, kind):
    in_handler = []
    contexts = recording_handler(loop, in_handler)

    class Raising(Proto):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise Boom("lost")

    t, p, peer = await make_transport(loop, lambda: Raising(loop), kind, sndbuf=4096)
    var.set("writer")
    data = pattern(MIB)
    t.write(data)
    assert t.get_write_buffer_size() > 0
    var.set("closer")
    t.close()
    got = await drain(peer)
    await p.lost
    await settle()
    peer.close()
    # The loop went on: this coroutine still runs.
    return contexts, in_handler, got, p.kinds()


@pytest.mark.parametrize("kind", [*KINDS, "write pipe"])
def test_connection_lost_raising_after_a_close_that_had_data_queued(loop, oracle_loop, kind):
    if kind == "write pipe":
        scenario, args = _write_pipe_connection_lost_raising_after_close, ()
    else:
        scenario, args = _connection_lost_raising_after_close, (kind,)
    got, expected = both(loop, oracle_loop, scenario, *args)
    ((message, exc_type, _, keys, handle, cancelled),) = expected[0]
    # The writer removed itself before it called connection_lost.
    assert (message, exc_type, keys, handle, cancelled) == (
        "Exception in callback None()",
        "Boom",
        ["exception", "handle", "message"],
        "<Handle cancelled>",
        True,
    )
    # Python 3.12 runs a custom handler in the context of the handle: the writer's.
    assert expected[1] == ["writer" if sys.version_info >= (3, 12) else "outer"]
    assert got == expected


async def _shutdown_failing_after_write_eof(loop):
    contexts = recording_handler(loop)
    holder = {}

    class ResetsPeer(Proto):
        def resume_writing(self):
            super().resume_writing()
            # The peer resets the connection between the last send and the
            # shutdown(SHUT_WR) that write_eof() left to the write path.
            peer = holder["peer"]
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()

    t, p, peer = await make_transport(loop, lambda: ResetsPeer(loop), "tcp", sndbuf=4096)
    holder["peer"] = peer
    t.set_write_buffer_limits(high=1, low=0)  # resumed once nothing is queued
    t.write(pattern(MIB))
    t.write_eof()
    await drain(peer, lambda: "resume" in p.kinds())
    await wait_until(lambda: p.lost.done())
    await settle()
    return contexts, type(p.lost.result()).__name__, t.is_closing()


def test_shutdown_failing_after_write_eof_with_data_queued(loop, oracle_loop):
    got, expected = both(loop, oracle_loop, _shutdown_failing_after_write_eof)
    (report,) = expected[0]
    assert report[:2] == ("Exception in callback None()", "OSError")
    assert report[2] == str(OSError(errno.ENOTCONN, "Transport endpoint is not connected"))
    # The reset then reaches the read path, which closes the transport.
    assert expected[1:] == ("ConnectionResetError", True)
    assert got == expected


class Untestable:
    def __bool__(self):
        raise Boom("no truth")


async def _eof_received_result_untestable(loop, kind):
    contexts = []

    class P(Proto):
        def eof_received(self):
            super().eof_received()
            return Untestable()

    t, p, peer = await make_transport(loop, lambda: P(loop), kind)

    def handler(lp, ctx):
        contexts.append(summary(ctx))
        t.abort()  # or the end of file is read, and reported, on every step

    loop.set_exception_handler(handler)
    peer.shutdown(socket.SHUT_WR)
    await p.lost
    await settle()
    peer.close()
    return contexts, p.kinds()


@kinds
def test_eof_received_result_without_truth_is_an_error_of_the_read_path(loop, oracle_loop, kind):
    got, expected = both(loop, oracle_loop, _eof_received_result_untestable, kind)
    assert expected[0] == [
        (
            "Exception in callback Transport._read_ready()",
            "Boom",
            "no truth",
            ["exception", "handle", "message"],
            "<Handle Transport._read_ready()>",
            False,
        )
    ]
    assert got == expected


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_an_interrupt_from_the_write_path_leaves_the_loop(loop, exc_type):
    class Raising(Proto):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise exc_type("out")

    async def main():
        contexts = recording_handler(loop)
        t, p, peer = await make_transport(loop, lambda: Raising(loop), sndbuf=4096)
        t.write(pattern(MIB))
        t.close()
        try:
            await drain(peer, lambda: p.lost.done())
            await asyncio.sleep(1)
        finally:
            peer.close()
            assert contexts == []

    with pytest.raises(exc_type, match="out"):
        loop.run_until_complete(main())
    # The transport let go of its socket all the same.
    loop.run_until_complete(asyncio.sleep(0))


def test_errors_of_transport_paths_do_not_stop_other_connections(loop):
    """Each report leaves the loop running: another connection still echoes."""

    class Raising(Proto):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise Boom("lost")

    async def main():
        contexts = recording_handler(loop)
        other, q, other_peer = await make_transport(loop, lambda: Proto(loop))
        for _ in range(3):
            t, p, peer = await make_transport(loop, lambda: Raising(loop), sndbuf=4096)
            t.write(pattern(MIB))
            t.close()
            await drain(peer)
            await p.lost
            peer.close()
        await settle()
        await loop.sock_sendall(other_peer, b"still here")
        assert await q.wait_data(10) == b"still here"
        other.close()
        other_peer.close()
        return len(contexts)

    assert run(loop, main()) == 3


# ---------------------------------------------------------------- datagrams


class DProto(asyncio.DatagramProtocol):
    def __init__(self):
        self.transport = None
        self.errors = []
        self.lost = False

    def connection_made(self, transport):
        self.transport = transport

    def error_received(self, exc):
        self.errors.append(type(exc).__name__)
        if len(self.errors) == 1:
            raise Boom("error_received")

    def connection_lost(self, exc):
        self.lost = True


async def _error_received_raising_in_the_write_path(loop, directory):
    contexts = recording_handler(loop)
    path = str(directory / f"sink-{uuid.uuid4().hex[:8]}")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    t, p = await loop.create_datagram_endpoint(DProto, remote_addr=path, family=socket.AF_UNIX)
    while not t.get_write_buffer_size():
        t.sendto(b"x" * 100)
    # The peer goes: the queued datagram fails, and error_received raises. (Python 3.13.0
    # to 3.13.5 leave a sent datagram's header counted in the buffer size: it is not
    # waited for to drop to 0.)
    sink.close()
    await wait_until(lambda: p.errors)
    await settle()
    t.close()
    await wait_until(lambda: p.lost)
    return contexts, p.errors[0]


def test_error_received_raising_in_the_write_path(loop, oracle_loop, tmp_path):
    got, expected = both(loop, oracle_loop, _error_received_raising_in_the_write_path, tmp_path)
    assert expected == (
        [
            (
                "Exception in callback Transport._sendto_ready()",
                "Boom",
                "error_received",
                ["exception", "handle", "message"],
                "<Handle Transport._sendto_ready()>",
                False,
            )
        ],
        "ConnectionRefusedError",
    )
    assert got == expected


# ---------------------------------------------------------------- accepting


class RefusesOnce(socket.socket):
    """A listening socket whose first accept() fails with an error that is not for want
    of resources (the loop's accept gives up on it, and lets the handler know)."""

    refusals = 1

    def accept(self):
        if self.refusals:
            self.refusals -= 1
            raise PermissionError(errno.EPERM, "refused once")
        return super().accept()


def accept_report(ctx):
    return (
        ctx["message"].startswith("Exception in callback "),
        sorted(ctx),
        type(ctx["exception"]).__name__,
        str(ctx["exception"]),
        ctx["handle"].cancelled(),
    )


async def _accept_failing(loop):
    contexts = recording_handler(loop, summarize=accept_report)
    listener = RefusesOnce(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    protocols = []

    def factory():
        protocols.append(Proto(loop))
        return protocols[-1]

    server = await loop.create_server(factory, sock=listener)
    peer = socket.socket()
    peer.setblocking(False)
    await loop.sock_connect(peer, listener.getsockname())
    # The connection is accepted on a later step all the same.
    await wait_until(lambda: protocols)
    await protocols[0].made
    peer.close()
    await protocols[0].lost
    server.close()
    await server.wait_closed()
    (report,) = contexts
    return report


def test_an_accept_error_goes_to_the_exception_handler_and_serving_goes_on(loop, oracle_loop):
    got, expected = both(loop, oracle_loop, _accept_failing)
    assert expected == (
        True,
        ["exception", "handle", "message"],
        "PermissionError",
        "[Errno 1] refused once",
        False,
    )
    assert got == expected


# ---------------------------------------------------------------- debug mode


async def _connection_lost_raising_in_debug_mode(loop):
    loop.set_debug(True)
    loop.slow_callback_duration = 60  # no slow-callback warnings

    def report(ctx):
        tb = ctx.get("source_traceback")
        return sorted(ctx), normalized(ctx["message"]), bool(tb) and tb[-1].name

    contexts = recording_handler(loop, summarize=report)

    class Raising(Proto):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise Boom("lost")

    t, p, peer = await make_transport(loop, lambda: Raising(loop), sndbuf=4096)
    t.write(pattern(MIB))
    t.close()
    await drain(peer)
    await p.lost
    await settle()
    peer.close()
    loop.set_debug(False)
    return contexts


def test_a_report_in_debug_mode_says_where_the_watch_was_added(loop, oracle_loop, impl):
    got, expected = both(loop, oracle_loop, _connection_lost_raising_in_debug_mode)
    ((keys, message, last_frame),) = expected
    assert keys == ["exception", "handle", "message", "source_traceback"]
    assert message == "Exception in callback None()"
    assert last_frame == "_add_writer"
    assert got[0][:2] == expected[0][:2]
    # asyncio's writer handle is made in its _add_writer, ferroloop's watch where the
    # write() that queued was called.
    where = "_connection_lost_raising_in_debug_mode" if impl == "ferroloop" else "_add_writer"
    assert got[0][2] == where


# ---------------------------------------------------------------- pipes


async def _write_pipe_connection_lost_raising_after_close(loop):
    in_handler = []
    contexts = recording_handler(loop, in_handler)

    class Raising(Proto):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise Boom("lost")

    r, w = pipe_files()
    t, p = await loop.connect_write_pipe(lambda: Raising(loop), w)
    var.set("writer")
    data = pattern(MIB)
    t.write(data)
    assert t.get_write_buffer_size() > 0
    var.set("closer")
    t.close()
    got = await read_fd_while(r.fileno(), lambda: p.lost.done())
    got += await read_fd_while(r.fileno())
    await settle()
    r.close()
    return contexts, in_handler, len(got), p.kinds()


async def _read_pipe_data_received_raising(loop):
    in_handler = []
    contexts = recording_handler(loop, in_handler)

    class Raising(Proto):
        def data_received(self, data):
            super().data_received(data)
            if data.startswith(b"raise"):
                raise Boom("data")

    r, w = pipe_files()
    var.set("connector")
    t, p = await loop.connect_read_pipe(lambda: Raising(loop), r)
    var.set("main")
    w.write(b"raise")
    await p.wait_data(5)
    await settle()
    # The transport reads on.
    w.write(b"after")
    await p.wait_data(10)
    closing = t.is_closing()
    w.close()
    await p.lost
    return contexts, in_handler, closing, p.kinds()


def test_read_pipe_data_received_raising_is_an_error_of_the_read_path(loop, oracle_loop):
    got, expected = both(loop, oracle_loop, _read_pipe_data_received_raising)
    assert expected[0] == [
        (
            "Exception in callback Transport._read_ready()",
            "Boom",
            "data",
            ["exception", "handle", "message"],
            "<Handle Transport._read_ready()>",
            False,
        )
    ]
    assert expected[1] == ["connector" if sys.version_info >= (3, 12) else "outer"]
    assert expected[2] is False
    assert got == expected


@pytest.mark.parametrize("queued", [False, True])
def test_write_pipe_connection_lost_raising_once_the_reader_is_gone(loop, oracle_loop, queued):
    async def scenario(loop):
        contexts = recording_handler(loop)

        class Raising(Proto):
            def connection_lost(self, exc):
                super().connection_lost(exc)
                raise Boom("lost")

        r, w = pipe_files()
        t, p = await loop.connect_write_pipe(lambda: Raising(loop), w)
        if queued:
            t.write(pattern(MIB))
        r.close()
        await p.lost
        await settle()
        return contexts, type(p.lost.result()).__name__, p.kinds()

    got, expected = both(loop, oracle_loop, scenario)
    ((message, exc_type, _, keys, _, cancelled),) = expected[0]
    arg = "BrokenPipeError()" if queued else "None"
    arg = shown_args(arg)
    assert (message, exc_type, keys, cancelled) == (
        f"Exception in callback Transport._call_connection_lost({arg})",
        "Boom",
        ["exception", "handle", "message"],
        False,
    )
    assert got == expected


# ---------------------------------------------------------------- TLS


@pytest.mark.parametrize("method", ["data_received", "connection_lost"])
def test_tls_application_callbacks_raising(loop, oracle_loop, method):
    """Over TLS, what the application protocol's data_received raises is the SSL
    protocol's fatal error; its connection_lost runs in a handle of its own."""
    server_ctx, client_ctx = tls_contexts()

    def tls_summary(ctx):
        return (
            normalized(ctx["message"]),
            type(ctx["exception"]).__name__,
            str(ctx["exception"]),
            sorted(ctx),
        )

    async def scenario(loop):
        contexts = recording_handler(loop, summarize=tls_summary)
        protocols = []

        class Raising(Proto):
            def __init__(self):
                super().__init__(loop)
                protocols.append(self)

            def data_received(self, data):
                super().data_received(data)
                if method == "data_received":
                    raise Boom(method)

            def connection_lost(self, exc):
                super().connection_lost(exc)
                if method == "connection_lost":
                    raise Boom(method)

        server = await loop.create_server(Raising, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        t, p = await loop.create_connection(
            lambda: Proto(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        await wait_until(lambda: protocols)
        await protocols[0].made
        t.write(b"hello")
        await protocols[0].wait_data(5)
        if method == "connection_lost":
            t.close()
        await protocols[0].lost
        await p.lost
        await settle()
        server.close()
        await server.wait_closed()
        return contexts, protocols[0].kinds()

    got, expected = both(loop, oracle_loop, scenario)
    if method == "data_received":
        assert expected[0] == [
            (
                "Fatal error on SSL protocol",
                "Boom",
                method,
                ["exception", "message", "protocol", "transport"],
            )
        ]
    else:
        ((message, *rest),) = expected[0]
        assert message.startswith("Exception in callback ")
        assert message.endswith(f".Raising.connection_lost({shown_args('None')})")
        assert rest == ["Boom", method, ["exception", "handle", "message"]]
    assert got == expected
