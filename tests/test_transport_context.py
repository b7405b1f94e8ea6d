"""The contextvars context each protocol callback of a transport runs in, against asyncio.

asyncio registers a transport's reader and writer as handles, each with a copy of the
context current when it is added, and runs the callbacks made from them in that copy:

- ``connection_made`` runs in a copy of the context the transport was made in (for a
  server's connection, the context its accept handle copies for the connection's task:
  the one current where serving started);
- the reader, added when reading starts (right after ``connection_made``) or resumes,
  runs ``data_received``, ``eof_received``, ``get_buffer``/``buffer_updated`` and
  ``datagram_received`` in one context, so what one of them sets the next one sees;
- the writer, added by the ``write()`` (or ``sendto()``) that begins a queue, runs
  ``resume_writing`` and, when the queue drains after ``close()``, ``connection_lost``;
- ``pause_writing`` runs inside the ``write()`` that crossed the limit, and a
  ``connection_lost`` scheduled by ``close()``/``abort()`` in a copy of the context of
  whoever called them (for a close after end of file, the reader's).

Every callback here records the value of ``var`` it sees and ``trace``: the names of the
callbacks that ran in its context before it, itself last.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import sys
import uuid

import pytest
from net_helpers import run, settle
from transport_helpers import (
    MIB,
    make_transport,
    pattern,
    peer_read_exactly,
    peer_read_to_eof,
    pipe_files,
    read_fd_while,
    tls_contexts,
    wait_until,
)

var = contextvars.ContextVar("var", default="unset")
trace = contextvars.ContextVar("trace", default=())


def seen(name):
    """What a callback sees, once its name is added to the trace of its context."""
    trace.set(trace.get() + (name,))
    return (name, var.get(), trace.get())


class CtxProto(asyncio.Protocol):
    def __init__(self):
        self.log = []
        self.transport = None
        self.eof_result = None

    def connection_made(self, transport):
        self.transport = transport
        self.log.append(seen("made"))

    def data_received(self, data):
        self.log.append(seen("data"))

    def eof_received(self):
        self.log.append(seen("eof"))
        return self.eof_result

    def pause_writing(self):
        self.log.append(seen("pause"))

    def resume_writing(self):
        self.log.append(seen("resume"))

    def connection_lost(self, exc):
        self.log.append(seen("lost"))

    def names(self):
        return [entry[0] for entry in self.log]

    async def wait_for(self, name, count=1):
        await wait_until(lambda: self.names().count(name) >= count)


class CtxBufferedProto(CtxProto, asyncio.BufferedProtocol):
    def __init__(self):
        super().__init__()
        self.buf = bytearray(4096)

    def get_buffer(self, sizehint):
        self.log.append(seen("get_buffer"))
        return self.buf

    def buffer_updated(self, nbytes):
        self.log.append(seen("buffer_updated"))


def read_path(who):
    """The log of a connection that gets two pieces of data, then end of file."""
    return [
        ("made", who, ("made",)),
        # The reader has a context of its own: it does not see what connection_made set.
        ("data", who, ("data",)),
        ("data", who, ("data", "data")),
        ("eof", who, ("data", "data", "eof")),
        # close() after end of file schedules connection_lost in a copy of the reader's.
        ("lost", who, ("data", "data", "eof", "lost")),
    ]


async def drive_read_path(loop, proto, peer, data="data"):
    await proto.wait_for("made")
    await loop.sock_sendall(peer, b"first")
    await proto.wait_for(data)
    await loop.sock_sendall(peer, b"second")
    await proto.wait_for(data, 2)
    peer.shutdown(socket.SHUT_WR)
    await proto.wait_for("lost")


def unix_path(tmp_path):
    return str(tmp_path / f"s-{uuid.uuid4().hex[:8]}.sock")


async def client(loop, how, factory, tmp_path):
    """A client-side transport made by ``how``: (transport, protocol, peer)."""
    if how == "connect_accepted_socket":
        ours, peer = socket.socketpair()
        transport, protocol = await loop.connect_accepted_socket(factory, ours)
    elif how == "create_unix_connection":
        path = unix_path(tmp_path)
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            listener.listen()
            transport, protocol = await loop.create_unix_connection(factory, path)
            peer, _ = listener.accept()
    else:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            if how == "create_connection":
                transport, protocol = await loop.create_connection(factory, *listener.getsockname())
            else:
                sock = socket.create_connection(listener.getsockname())
                transport, protocol = await loop.create_connection(factory, sock=sock)
            peer, _ = listener.accept()
    peer.setblocking(False)
    return transport, protocol, peer


CLIENTS = [
    "create_connection",
    "create_connection_sock",
    "connect_accepted_socket",
    "create_unix_connection",
]


@pytest.mark.parametrize("how", CLIENTS)
def test_client_callbacks_run_in_the_context_of_the_connecting_task(loop, how, tmp_path):
    async def connect():
        var.set("connector")
        return await client(loop, how, CtxProto, tmp_path)

    async def main():
        var.set("main")
        _, p, peer = await asyncio.create_task(connect())
        # Later changes where the transport was made do not reach its callbacks.
        var.set("changed")
        await drive_read_path(loop, p, peer)
        peer.close()
        assert (var.get(), trace.get()) == ("changed", ())
        return p.log

    assert run(loop, main()) == read_path("connector")
    # Nothing ran in the context of the code that runs the loop.
    assert (var.get(), trace.get()) == ("unset", ())


SERVERS = ["create_server", "create_unix_server"]


async def serve(loop, how, factory, tmp_path, **kwargs):
    """A server made by ``how``, and a function that connects a non-blocking peer to it."""
    if how == "create_server":
        server = await loop.create_server(factory, "127.0.0.1", 0, **kwargs)
        family = socket.AF_INET
    else:
        server = await loop.create_unix_server(factory, unix_path(tmp_path), **kwargs)
        family = socket.AF_UNIX
    address = server.sockets[0].getsockname()

    async def connect():
        peer = socket.socket(family)
        peer.setblocking(False)
        await loop.sock_connect(peer, address)
        return peer

    return server, connect


@pytest.mark.parametrize("how", SERVERS)
def test_server_callbacks_run_in_the_context_the_server_was_made_in(loop, how, tmp_path):
    protocols = []

    def factory():
        protocols.append(CtxProto())
        return protocols[-1]

    async def make():
        var.set("server maker")
        return await serve(loop, how, factory, tmp_path)

    async def main():
        server, connect = await asyncio.create_task(make())
        var.set("main")
        logs = []
        for _ in range(2):
            peer = await connect()
            await wait_until(lambda: len(protocols) > len(logs))
            await drive_read_path(loop, protocols[-1], peer)
            peer.close()
            logs.append(protocols[-1].log)
        server.close()
        await server.wait_closed()
        assert (var.get(), trace.get()) == ("main", ())
        return logs

    # Each connection has contexts of its own: the second does not see the first's.
    assert run(loop, main()) == [read_path("server maker")] * 2
    assert (var.get(), trace.get()) == ("unset", ())


@pytest.mark.parametrize("how", SERVERS)
def test_server_started_later_serves_in_the_context_of_start_serving(loop, how, tmp_path):
    protocols = []

    def factory():
        protocols.append(CtxProto())
        return protocols[-1]

    async def start(server):
        var.set("starter")
        await server.start_serving()

    async def main():
        var.set("server maker")
        server, connect = await serve(loop, how, factory, tmp_path, start_serving=False)
        await asyncio.create_task(start(server))
        peer = await connect()
        await wait_until(lambda: protocols)
        await drive_read_path(loop, protocols[0], peer)
        peer.close()
        server.close()
        await server.wait_closed()
        return protocols[0].log

    assert run(loop, main()) == read_path("starter")


def test_what_a_protocol_factory_sets_is_its_connections_alone(loop, tmp_path):
    """asyncio sets each accepted connection up in a task of its own."""
    in_factory = []
    protocols = []

    def factory():
        in_factory.append((var.get(), trace.get()))
        var.set(f"connection {len(protocols)}")
        trace.set(("factory",))
        protocols.append(CtxProto())
        return protocols[-1]

    async def main():
        var.set("server maker")
        server, connect = await serve(loop, "create_server", factory, tmp_path)
        peers = [await connect() for _ in range(3)]
        await wait_until(lambda: len(protocols) == 3)
        for p in protocols:
            await p.wait_for("made")
        for peer in peers:
            await loop.sock_sendall(peer, b"x")
        for p in protocols:
            await p.wait_for("data")
        for peer in peers:
            peer.close()
        for p in protocols:
            await p.wait_for("lost")
        server.close()
        await server.wait_closed()
        return [p.log for p in protocols]

    logs = run(loop, main())
    assert in_factory == [("server maker", ())] * 3
    assert logs == [
        [
            ("made", f"connection {i}", ("factory", "made")),
            ("data", f"connection {i}", ("factory", "data")),
            ("eof", f"connection {i}", ("factory", "data", "eof")),
            ("lost", f"connection {i}", ("factory", "data", "eof", "lost")),
        ]
        for i in range(3)
    ]


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_buffered_protocol_callbacks_share_the_readers_context(loop, kind):
    async def main():
        var.set("connector")
        _, p, peer = await make_transport(loop, CtxBufferedProto, kind)
        await drive_read_path(loop, p, peer, "buffer_updated")
        peer.close()
        return p.log

    assert run(loop, main()) == [
        ("made", "connector", ("made",)),
        ("get_buffer", "connector", ("get_buffer",)),
        ("buffer_updated", "connector", ("get_buffer", "buffer_updated")),
        ("get_buffer", "connector", ("get_buffer", "buffer_updated", "get_buffer")),
        (
            "buffer_updated",
            "connector",
            ("get_buffer", "buffer_updated", "get_buffer", "buffer_updated"),
        ),
        ("get_buffer", "connector", ("get_buffer", "buffer_updated") * 2 + ("get_buffer",)),
        ("eof", "connector", ("get_buffer", "buffer_updated") * 2 + ("get_buffer", "eof")),
        ("lost", "connector", ("get_buffer", "buffer_updated") * 2 + ("get_buffer", "eof", "lost")),
    ]


def test_resume_reading_runs_the_reader_in_the_context_of_its_caller(loop):
    async def main():
        var.set("connector")
        t, p, peer = await make_transport(loop, CtxProto)
        await loop.sock_sendall(peer, b"a")
        await p.wait_for("data")
        t.pause_reading()
        var.set("resumer")
        trace.set(("resumer",))
        t.resume_reading()
        var.set("after resume")
        await loop.sock_sendall(peer, b"b")
        await p.wait_for("data", 2)
        # A resume that changes nothing (reading was not paused) keeps the reader.
        var.set("idle resume")
        t.resume_reading()
        await loop.sock_sendall(peer, b"c")
        await p.wait_for("data", 3)
        t.close()
        await p.wait_for("lost")
        peer.close()
        return p.log

    assert run(loop, main()) == [
        ("made", "connector", ("made",)),
        ("data", "connector", ("data",)),
        ("data", "resumer", ("resumer", "data")),
        ("data", "resumer", ("resumer", "data", "data")),
        ("lost", "idle resume", ("resumer", "lost")),
    ]


def test_eof_received_keeping_the_transport_open(loop):
    """The reader goes; the transport still writes, and close() is the caller's."""

    async def main():
        var.set("connector")
        t, p, peer = await make_transport(loop, CtxProto)
        p.eof_result = True
        await loop.sock_sendall(peer, b"a")
        await p.wait_for("data")
        peer.shutdown(socket.SHUT_WR)
        await p.wait_for("eof")
        t.write(b"reply")
        assert await peer_read_exactly(loop, peer, 5) == b"reply"
        var.set("closer")
        t.close()
        await p.wait_for("lost")
        peer.close()
        return p.log

    assert run(loop, main()) == [
        ("made", "connector", ("made",)),
        ("data", "connector", ("data",)),
        ("eof", "connector", ("data", "eof")),
        ("lost", "closer", ("lost",)),
    ]


@pytest.mark.parametrize("how", ["close", "abort"])
def test_connection_lost_after_close_runs_in_a_copy_of_the_closers_context(loop, how):
    async def main():
        var.set("connector")
        t, p, peer = await make_transport(loop, CtxProto)
        await p.wait_for("made")
        var.set("closer")
        trace.set(("closer",))
        getattr(t, how)()
        await p.wait_for("lost")
        peer.close()
        # A copy: what connection_lost set stays there.
        assert trace.get() == ("closer",)
        return p.log

    assert run(loop, main()) == [
        ("made", "connector", ("made",)),
        ("lost", "closer", ("closer", "lost")),
    ]


# The log of a transport that queues two writes of a MiB, each pausing the protocol, the
# second followed by close(): what the write-path tests of every kind expect.
WRITE_PATH_LOG = [
    ("made", "connector", ("made",)),
    ("pause", "first writer", ("pause",)),
    ("resume", "first writer", ("resume",)),
    ("pause", "second writer", ("pause", "pause")),
    # The writer's context was copied before this pause_writing ran.
    ("resume", "second writer", ("pause", "resume")),
    ("lost", "second writer", ("pause", "resume", "lost")),
]


def test_write_path_callbacks_run_in_the_context_of_the_write_that_queued(loop):
    """pause_writing runs inside write(); resume_writing, and connection_lost after a
    close() with data queued, in a copy of the context of the write() that began the
    queue (asyncio's writer handle), taken anew for each queue."""
    payload = pattern(MIB)

    async def main():
        var.set("connector")
        t, p, peer = await make_transport(loop, CtxProto, sndbuf=4096, peer_rcvbuf=4096)
        await p.wait_for("made")
        # Paused once anything is queued, resumed once nothing is.
        t.set_write_buffer_limits(high=1, low=0)
        var.set("first writer")
        t.write(payload)
        assert t.get_write_buffer_size() > 0
        var.set("after first write")
        assert await peer_read_exactly(loop, peer, len(payload)) == payload
        await p.wait_for("resume")
        var.set("second writer")
        t.write(payload)
        t.write(b"more")
        var.set("closer")
        t.close()
        assert await peer_read_to_eof(loop, peer) == payload + b"more"
        await p.wait_for("lost")
        peer.close()
        # pause_writing ran in this task's context.
        assert trace.get() == ("pause", "pause")
        return p.log

    assert run(loop, main()) == WRITE_PATH_LOG


def test_data_received_failing_closes_in_a_copy_of_the_readers_context(loop):
    class Failing(CtxProto):
        def data_received(self, data):
            super().data_received(data)
            raise ZeroDivisionError("data")

    async def main():
        loop.set_exception_handler(lambda lp, ctx: None)
        var.set("connector")
        _, p, peer = await make_transport(loop, Failing)
        await loop.sock_sendall(peer, b"a")
        await p.wait_for("lost")
        peer.close()
        return p.log

    assert run(loop, main()) == [
        ("made", "connector", ("made",)),
        ("data", "connector", ("data",)),
        ("lost", "connector", ("data", "lost")),
    ]


# ---------------------------------------------------------------- datagrams


class CtxDatagramProto(CtxProto, asyncio.DatagramProtocol):
    def datagram_received(self, data, addr):
        self.log.append(seen("datagram"))


def test_datagram_resume_reading_runs_the_reader_in_the_context_of_its_caller(loop):
    async def main():
        var.set("creator")
        t, p = await loop.create_datagram_endpoint(CtxDatagramProto, local_addr=("127.0.0.1", 0))
        await p.wait_for("made")
        var.set("main")
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        address = t.get_extra_info("sockname")
        sender.sendto(b"a", address)
        await p.wait_for("datagram")
        t.pause_reading()
        var.set("resumer")
        t.resume_reading()
        sender.sendto(b"b", address)
        await p.wait_for("datagram", 2)
        sender.sendto(b"c", address)
        await p.wait_for("datagram", 3)
        sender.close()
        var.set("closer")
        t.close()
        await p.wait_for("lost")
        return p.log

    assert run(loop, main()) == [
        ("made", "creator", ("made",)),
        ("datagram", "creator", ("datagram",)),
        ("datagram", "resumer", ("datagram",)),
        ("datagram", "resumer", ("datagram", "datagram")),
        ("lost", "closer", ("lost",)),
    ]


def test_datagram_write_path_runs_in_the_context_of_the_sendto_that_queued(loop, tmp_path):
    async def main():
        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = unix_path(tmp_path)
        sink.bind(path)
        sink.setblocking(False)
        var.set("creator")
        t, p = await loop.create_datagram_endpoint(
            CtxDatagramProto, remote_addr=path, family=socket.AF_UNIX
        )
        await p.wait_for("made")
        # Resumed once half of what paused it is sent (Python 3.13.0 to 3.13.5 leave a
        # sent datagram's header counted, so the queue never counts as empty there).
        t.set_write_buffer_limits(high=1000, low=500)
        var.set("sender")
        for _ in range(10_000):
            t.sendto(b"x" * 100)
            if "pause" in p.names():
                break
        t.sendto(b"last")
        var.set("closer")
        t.close()
        while "lost" not in p.names():
            try:
                while sink.recv(4096):
                    pass
            except BlockingIOError:
                pass
            await asyncio.sleep(0.001)
        sink.close()
        await settle()
        return p.log

    assert run(loop, main()) == [
        ("made", "creator", ("made",)),
        ("pause", "sender", ("pause",)),
        ("resume", "sender", ("resume",)),
        ("lost", "sender", ("resume", "lost")),
    ]


# ---------------------------------------------------------------- pipes


def test_read_pipe_callbacks_run_in_the_readers_context(loop):
    """The reader is added in a callback scheduled when the transport is made; end of
    file schedules eof_received and connection_lost, each in a copy of the reader's."""

    async def connect(r):
        var.set("connector")
        return await loop.connect_read_pipe(CtxProto, r)

    async def main():
        r, w = pipe_files()
        _, p = await asyncio.create_task(connect(r))
        var.set("main")
        w.write(b"first")
        await p.wait_for("data")
        w.write(b"second")
        await p.wait_for("data", 2)
        w.close()
        await p.wait_for("lost")
        assert (var.get(), trace.get()) == ("main", ())
        return p.log

    assert run(loop, main()) == [
        ("made", "connector", ("made",)),
        ("data", "connector", ("data",)),
        ("data", "connector", ("data", "data")),
        ("eof", "connector", ("data", "data", "eof")),
        ("lost", "connector", ("data", "data", "lost")),
    ]
    assert (var.get(), trace.get()) == ("unset", ())


def test_read_pipe_resume_reading_runs_the_reader_in_the_context_of_its_caller(loop):
    async def main():
        var.set("connector")
        r, w = pipe_files()
        t, p = await loop.connect_read_pipe(CtxProto, r)
        w.write(b"a")
        await p.wait_for("data")
        t.pause_reading()
        var.set("resumer")
        trace.set(("resumer",))
        t.resume_reading()
        var.set("after resume")
        w.write(b"b")
        await p.wait_for("data", 2)
        var.set("closer")
        t.close()
        await p.wait_for("lost")
        w.close()
        return p.log

    assert run(loop, main()) == [
        ("made", "connector", ("made",)),
        ("data", "connector", ("data",)),
        ("data", "resumer", ("resumer", "data")),
        # close() schedules connection_lost in a copy of its caller's context.
        ("lost", "closer", ("resumer", "lost")),
    ]


def test_write_pipe_write_path_runs_in_the_context_of_the_write_that_queued(loop):
    """pause_writing runs inside write(); resume_writing, and connection_lost after a
    close() with data queued, in a copy of the context of the write() that began the
    queue."""
    payload = pattern(MIB)

    async def main():
        var.set("connector")
        r, w = pipe_files()
        t, p = await loop.connect_write_pipe(CtxProto, w)
        await p.wait_for("made")
        t.set_write_buffer_limits(high=1, low=0)
        var.set("first writer")
        t.write(payload)
        assert t.get_write_buffer_size() > 0
        var.set("after first write")
        got = await read_fd_while(r.fileno(), lambda: "resume" in p.names())
        var.set("second writer")
        t.write(payload)
        var.set("closer")
        t.close()
        got += await read_fd_while(r.fileno(), lambda: "lost" in p.names())
        got += await read_fd_while(r.fileno(), lambda: False)
        r.close()
        assert got == payload * 2
        assert trace.get() == ("pause", "pause")
        return p.log

    assert run(loop, main()) == WRITE_PATH_LOG


@pytest.mark.parametrize("queued", [False, True])
def test_write_pipe_reader_gone_runs_in_the_context_of_creation(loop, queued):
    """The watch for the reader's going is added in a callback scheduled when the
    transport is made; it schedules connection_lost in a copy of its context."""

    async def connect(w):
        var.set("connector")
        return await loop.connect_write_pipe(CtxProto, w)

    async def main():
        r, w = pipe_files()
        t, p = await asyncio.create_task(connect(w))
        await p.wait_for("made")
        var.set("writer")
        if queued:
            t.write(b"x" * (MIB))
            assert t.get_write_buffer_size() > 0
        r.close()
        await p.wait_for("lost")
        return p.log

    log = run(loop, main())
    expected = [("made", "connector", ("made",))]
    if queued:
        expected.append(("pause", "writer", ("pause",)))
    expected.append(("lost", "connector", ("lost",)))
    assert log == expected


# ---------------------------------------------------------------- TLS


def test_tls_callbacks_run_in_the_context_of_the_stream_under_them(loop):
    """asyncio's SSLProtocol calls the application protocol from the stream transport's
    callbacks: connection_made once the handshake is done, then data_received,
    eof_received and connection_lost, all in the context of the stream's reader (for a
    server's connection, a copy of the serving context)."""
    server_ctx, client_ctx = tls_contexts()
    protocols = []

    class Server(CtxProto):
        def __init__(self):
            super().__init__()
            protocols.append(self)

        def data_received(self, data):
            super().data_received(data)
            if data.endswith(b"bye"):
                self.transport.close()

    async def make_server():
        var.set("server maker")
        return await loop.create_server(Server, "127.0.0.1", 0, ssl=server_ctx)

    async def connect(port):
        var.set("connector")
        return await loop.create_connection(
            CtxProto, "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )

    async def main():
        server = await asyncio.create_task(make_server())
        port = server.sockets[0].getsockname()[1]
        t, p = await asyncio.create_task(connect(port))
        var.set("main")
        await wait_until(lambda: protocols and "made" in protocols[0].names())
        t.write(b"hello")
        await protocols[0].wait_for("data")
        var.set("client closer")
        t.write(b"bye")
        await protocols[0].wait_for("lost")
        await p.wait_for("lost")
        server.close()
        await server.wait_closed()
        return p.log, protocols[0].log

    client_log, server_log = run(loop, main())
    # Each side's callbacks share its stream reader's context, from connection_made on;
    # the server's close() in data_received ends both sides with close_notify.
    assert client_log == [
        ("made", "connector", ("made",)),
        ("eof", "connector", ("made", "eof")),
        ("lost", "connector", ("made", "eof", "lost")),
    ]
    assert server_log == [
        ("made", "server maker", ("made",)),
        ("data", "server maker", ("made", "data")),
        ("data", "server maker", ("made", "data", "data")),
        ("eof", "server maker", ("made", "data", "data", "eof")),
        ("lost", "server maker", ("made", "data", "data", "eof", "lost")),
    ]
    assert (var.get(), trace.get()) == ("unset", ())


# ---------------------------------------------------------------- subprocesses


class CtxSubprocessProto(asyncio.SubprocessProtocol):
    def __init__(self, loop):
        self.log = []
        self.exited = loop.create_future()

    def connection_made(self, transport):
        self.log.append(seen("made"))

    def pipe_data_received(self, fd, data):
        self.log.append(seen(f"data {fd}"))

    def pipe_connection_lost(self, fd, exc):
        self.log.append(seen(f"pipe lost {fd}"))

    def process_exited(self):
        self.log.append(seen("exited"))

    def connection_lost(self, exc):
        self.log.append(seen("lost"))
        self.exited.set_result(None)


def test_subprocess_pipe_callbacks_run_in_the_context_of_the_spawner(loop):
    """The process transport connects its pipes in a task of its own, made where the
    subprocess was spawned: each pipe's reader runs in a copy of that task's context."""

    async def spawn():
        var.set("spawner")
        return await loop.subprocess_exec(
            lambda: CtxSubprocessProto(loop),
            "/bin/sh",
            "-c",
            "read line; printf out; printf err >&2",
        )

    async def main():
        t, p = await asyncio.create_task(spawn())
        var.set("main")
        # The child exits only once the pipes are connected (asyncio holds back the
        # protocol's calls until then, and makes them in the connecting task).
        stdin = t.get_pipe_transport(0)
        stdin.write(b"go\n")
        stdin.close()
        await p.exited
        t.close()
        return p.log

    log = run(loop, main())
    pipes = [entry for entry in log if entry[0] not in ("exited", "lost")]
    exit_ = [entry for entry in log if entry[0] in ("exited", "lost")]
    # The order of the pipes and the exit varies; what each callback sees does not.
    assert sorted(pipes) == [
        ("data 1", "spawner", ("data 1",)),
        ("data 2", "spawner", ("data 2",)),
        ("made", "spawner", ("made",)),
        # The stdin pipe was closed by main: its connection_lost runs in a copy of main's.
        ("pipe lost 0", "main", ("pipe lost 0",)),
        ("pipe lost 1", "spawner", ("pipe lost 1",)),
        ("pipe lost 2", "spawner", ("pipe lost 2",)),
    ]
    # The exit is reported where asyncio's default child watcher reports it: a thread's
    # empty context on 3.11, a copy of the spawner's where it watches a pidfd.
    who = "unset" if sys.version_info < (3, 12) else "spawner"
    assert exit_[0] == ("exited", who, ("exited",))
    # connection_lost follows the last of the exit and the pipes' ends, in its context.
    assert exit_[1] in [("lost", who, ("lost",)), ("lost", "spawner", ("lost",))]
    assert (var.get(), trace.get()) == ("unset", ())
