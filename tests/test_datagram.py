"""Datagrams: create_datagram_endpoint and its transport, sock_recvfrom,
sock_recvfrom_into and sock_sendto.

Every test runs against ferroloop and against asyncio's selector loop (the oracle).
Where the outcome depends on the kernel or on the Python version, the test runs the
same scenario on both loops and compares.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import gc
import logging
import os
import socket
import sys
import uuid
import warnings
import weakref

import pytest
from net_helpers import fd_count, needs_ipv6, run, settle, subclass_getaddrinfo
from transport_helpers import both, capture_exceptions, fds, repr_body

PY313 = sys.version_info >= (3, 13)
PY312 = sys.version_info >= (3, 12)
# What asyncio counts per queued datagram besides its data.
HEADER = 8 if PY313 else 0
# asyncio 3.13 before gh-135444 (3.13.6) took only the data off its count when a
# queued datagram went out, leaving the 8 header bytes counted.
ASYNCIO_LEAKS_HEADERS = PY313 and sys.version_info < (3, 13, 6)

UNIX = socket.AF_UNIX
V4 = ("127.0.0.1", 0)


@pytest.fixture
def sock_dir(tmp_path_factory):
    # Short paths: sun_path holds 108 bytes.
    return tmp_path_factory.mktemp("dg")


def abstract_name() -> str:
    return "\0ferroloop-dg-" + uuid.uuid4().hex


class LogRecords(logging.Handler):
    """Collects the asyncio logger's records while installed."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self.logger = logging.getLogger("asyncio")
        self.old_level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.old_level)

    def summary(self, level=logging.DEBUG):
        return [(r.levelname, r.getMessage()) for r in self.records if r.levelno >= level]


class DProto(asyncio.DatagramProtocol):
    """A datagram protocol that records every call, in order."""

    def __init__(self, loop):
        self.loop = loop
        self.transport = None
        self.events = []
        self.received = []
        self.errors = []
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self._waiter = None

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def datagram_received(self, data, addr):
        self.events.append("datagram")
        self.received.append((data, addr))
        self._wake()

    def error_received(self, exc):
        self.events.append("error")
        self.errors.append(exc)
        self._wake()

    def pause_writing(self):
        self.events.append(("pause", self.transport.get_write_buffer_size()))
        self._wake()

    def resume_writing(self):
        self.events.append(("resume", self.transport.get_write_buffer_size()))
        self._wake()

    def connection_lost(self, exc):
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()

    def _wake(self):
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, predicate):
        while not predicate():
            self._waiter = self.loop.create_future()
            await self._waiter

    async def wait_received(self, n):
        await self.wait(lambda: len(self.received) >= n or self.lost.done())
        return self.received[:n]


class Echo(DProto):
    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        if addr is not None:  # an unnamed Unix sender cannot be answered
            self.transport.sendto(data, addr)


async def endpoint(loop, cls=DProto, *args, **kwargs):
    return await loop.create_datagram_endpoint(lambda: cls(loop), *args, **kwargs)


async def close(t, p):
    t.close()
    return await p.lost


def exc_summary(exc):
    return None if exc is None else (type(exc), getattr(exc, "errno", None), str(exc))


def recv_now(sock):
    """A datagram the plain socket can read right now, or None."""
    try:
        return sock.recvfrom(1 << 18)
    except BlockingIOError:
        return None


# ---------------------------------------------------------------- echo


async def _echo(loop, family, server_addr, connected):
    server_t, server_p = await endpoint(loop, Echo, local_addr=server_addr, family=family)
    sname = server_t.get_extra_info("sockname")
    if family == UNIX:
        client_kwargs = dict(family=UNIX)
        if connected:
            client_kwargs["remote_addr"] = sname if isinstance(sname, str) else sname.decode()
    else:
        client_kwargs = dict(remote_addr=sname[:2]) if connected else dict(family=family)
    client_t, client_p = await endpoint(loop, **client_kwargs)
    messages = [b"one", b"two" * 100, bytes(range(256)) * 200]
    for m in messages:
        if connected:
            client_t.sendto(m)
        else:
            client_t.sendto(m, sname)
    got = await client_p.wait_received(len(messages))
    assert [d for d, _ in got] == messages
    # The server saw the client's address in the socket module's form (an unbound
    # client got its port with its first send, after the sockname was taken).
    client_name = client_t.get_extra_info("sockname")
    live = client_t.get_extra_info("socket").getsockname()
    seen = [a for _, a in server_p.received]
    assert seen == [seen[0]] * 3
    assert seen[0][1] == live[1] and seen[0][0] == sname[0]
    assert len(seen[0]) == len(sname)
    assert [a for _, a in got] == [sname] * 3
    peer = client_t.get_extra_info("peername")
    assert server_t.get_extra_info("peername") is None
    assert await close(client_t, client_p) is None
    assert await close(server_t, server_p) is None
    return peer, client_name, sname


@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
def test_echo_ipv4(loop, connected):
    peer, client_name, sname = run(loop, _echo(loop, socket.AF_INET, V4, connected))
    assert sname[0] == "127.0.0.1" and len(sname) == 2
    assert client_name[0] == ("127.0.0.1" if connected else "0.0.0.0")
    assert peer == (sname if connected else None)


@needs_ipv6
@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
def test_echo_ipv6(loop, connected):
    peer, client_name, sname = run(loop, _echo(loop, socket.AF_INET6, ("::1", 0), connected))
    assert sname[0] == "::1" and len(sname) == 4
    assert peer == (sname if connected else None)


@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
@pytest.mark.parametrize("name", ["path", "abstract"])
def test_echo_unix(loop, sock_dir, connected, name):
    """A Unix client without a name: the server sees None as its address (and cannot
    answer it); so the client binds a name of its own to get echoes."""
    path = str(sock_dir / "srv") if name == "path" else abstract_name()

    async def main():
        server_t, server_p = await endpoint(loop, Echo, local_addr=path, family=UNIX)
        sname = server_t.get_extra_info("sockname")
        assert sname == (path if name == "path" else path.encode())
        # An unnamed sender: its address is None.
        anon = socket.socket(UNIX, socket.SOCK_DGRAM)
        anon.sendto(b"anon", path)
        anon.close()
        await server_p.wait_received(1)
        assert server_p.received == [(b"anon", None)]
        # A named client, connected or not.
        cpath = str(sock_dir / "cli") if name == "path" else abstract_name()
        kwargs = dict(local_addr=cpath, family=UNIX)
        if connected:
            kwargs["remote_addr"] = path
        client_t, client_p = await endpoint(loop, **kwargs)
        assert client_t.get_extra_info("peername") == (sname if connected else None)
        for m in (b"a", b"b" * 1000, b"c" * 100_000):
            if connected:
                client_t.sendto(m)
            else:
                client_t.sendto(m, path)
        got = await client_p.wait_received(3)
        assert [len(d) for d, _ in got] == [1, 1000, 100_000]
        assert {a for _, a in got} == {sname}
        cname = cpath if name == "path" else cpath.encode()
        assert [a for _, a in server_p.received[1:]] == [cname] * 3
        await close(client_t, client_p)
        await close(server_t, server_p)

    run(loop, main())


def test_unix_endpoint_removes_a_stale_socket_file(loop, sock_dir):
    path = str(sock_dir / "stale")
    s = socket.socket(UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.close()
    assert os.path.exists(path)

    async def main():
        t, p = await endpoint(loop, local_addr=path, family=UNIX)
        assert t.get_extra_info("sockname") == path
        await close(t, p)

    run(loop, main())


def test_unix_endpoint_keeps_a_file_that_is_not_a_socket(loop, sock_dir):
    path = str(sock_dir / "regular")
    with open(path, "w") as f:
        f.write("keep me")
    before = fds()

    async def main():
        with pytest.raises(OSError) as info:
            await endpoint(loop, local_addr=path, family=UNIX)
        return info.value.errno

    assert run(loop, main()) == errno.EADDRINUSE
    assert open(path).read() == "keep me"
    assert fds() == before


def test_family_only_makes_an_unbound_socket(loop):
    async def main():
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(V4)
        receiver.setblocking(False)
        t, p = await endpoint(loop, family=socket.AF_INET)
        assert t.get_extra_info("sockname") == ("0.0.0.0", 0)
        assert t.get_extra_info("peername") is None
        t.sendto(b"hi", receiver.getsockname())
        data, addr = await loop.sock_recvfrom(receiver, 100)
        assert data == b"hi"
        assert t.get_extra_info("socket").getsockname()[1] == addr[1]
        receiver.close()
        await close(t, p)

    run(loop, main())


def test_sendto_resolves_a_host_name(loop):
    """An address that is not numeric goes through the socket module's resolution."""

    async def main():
        server_t, server_p = await endpoint(loop, local_addr=V4)
        port = server_t.get_extra_info("sockname")[1]
        t, p = await endpoint(loop, family=socket.AF_INET)
        t.sendto(b"by name", ("localhost", port))
        got = await server_p.wait_received(1)
        assert got[0][0] == b"by name"
        await close(t, p)
        await close(server_t, server_p)

    run(loop, main())


def test_local_addr_resolution_goes_through_the_loop(loop):
    """Numeric hosts are used as they are; names through the loop's getaddrinfo."""
    calls = []
    real = loop.getaddrinfo

    async def spy(host, port, *, family=0, type=0, proto=0, flags=0):
        calls.append((host, port, family, type, proto, flags))
        return await real(host, port, family=family, type=type, proto=proto, flags=flags)

    loop.getaddrinfo = spy

    async def main():
        t, p = await endpoint(loop, local_addr=("127.0.0.1", 0))
        await close(t, p)
        assert calls == []
        t, p = await endpoint(loop, local_addr=("localhost", 0), family=socket.AF_INET, flags=0)
        assert t.get_extra_info("sockname")[0] == "127.0.0.1"
        await close(t, p)
        assert calls == [("localhost", 0, socket.AF_INET, socket.SOCK_DGRAM, 0, 0)]

    run(loop, main())


# ---------------------------------------------------------------- the transport object


def test_transport_is_an_asyncio_datagram_transport(loop, impl):
    async def main():
        t, p = await endpoint(loop, local_addr=V4)
        assert await p.made is t
        assert isinstance(t, asyncio.BaseTransport)
        # asyncio's own datagram transport is an asyncio.Transport (and, from 3.12, an
        # asyncio.DatagramTransport); ferroloop's is both on every version.
        assert isinstance(t, asyncio.Transport)
        if impl == "ferroloop" or PY312:
            assert isinstance(t, asyncio.DatagramTransport)
        assert t.get_protocol() is p
        with pytest.raises(NotImplementedError):
            t.write(b"x")
        with pytest.raises(NotImplementedError):
            t.can_write_eof()
        assert t.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        t.set_write_buffer_limits(high=100)
        assert t.get_write_buffer_limits() == (25, 100)
        with pytest.raises(ValueError, match=r"high \(1\) must be >= low \(2\) must be >= 0"):
            t.set_write_buffer_limits(high=1, low=2)
        other = DProto(loop)
        t.set_protocol(other)
        assert t.get_protocol() is other
        t.set_protocol(p)
        await close(t, p)

    run(loop, main())


def test_extra_info(loop):
    async def main():
        server_t, server_p = await endpoint(loop, local_addr=V4)
        sname = server_t.get_extra_info("sockname")
        t, p = await endpoint(loop, remote_addr=sname)
        sock = t.get_extra_info("socket")
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert sock.type == socket.SOCK_DGRAM
        assert t.get_extra_info("peername") == sname
        assert t.get_extra_info("sockname") == sock.getsockname()
        assert t.get_extra_info("nothing", "default") == "default"
        assert server_t.get_extra_info("peername") is None
        await close(t, p)
        await close(server_t, server_p)
        return repr_body(t)

    # After the connection is lost, the repr says "closed".
    assert run(loop, main()).startswith("closed fd=")


def test_repr(loop, oracle_loop):
    async def scenario(loop):
        t, p = await endpoint(loop, local_addr=V4)
        open_repr = repr_body(t).split(" ", 1)[1]  # without fd=N
        t.close()
        closing_repr = repr_body(t).split(" ")[0]
        await p.lost
        return open_repr, closing_repr

    got, expected = both(loop, oracle_loop, scenario)
    assert expected == ("read=polling write=<idle, bufsize=0>", "closing")
    assert got == expected


def test_connection_made_comes_first_and_the_waiter_after_it(loop):
    async def main():
        order = []

        class P(DProto):
            def connection_made(self, transport):
                order.append("made")
                super().connection_made(transport)

        t, p = await loop.create_datagram_endpoint(lambda: P(loop), local_addr=V4)
        order.append("returned")
        assert order == ["made", "returned"]
        await close(t, p)
        assert p.events == ["made", "lost"]

    run(loop, main())


# ---------------------------------------------------------------- options


def test_allow_broadcast(loop):
    async def main():
        receiver_t, receiver_p = await endpoint(loop, local_addr=V4)
        rname = receiver_t.get_extra_info("sockname")
        t, p = await endpoint(loop, remote_addr=rname, allow_broadcast=True)
        sock = t.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
        # With allow_broadcast the remote address is the default destination, but the
        # socket is not connected.
        assert t.get_extra_info("peername") is None
        t.sendto(b"to the default")
        got = await receiver_p.wait_received(1)
        assert got[0][0] == b"to the default"
        with pytest.raises(
            ValueError, match=r"^Invalid address: must be None or \('127\.0\.0\.1', \d+\)$"
        ):
            t.sendto(b"x", ("127.0.0.1", 1))
        # Without it, broadcasting is refused by the kernel.
        plain_t, plain_p = await endpoint(loop, local_addr=V4)
        assert (
            plain_t.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 0
        )
        for tp in ((t, p), (plain_t, plain_p), (receiver_t, receiver_p)):
            await close(*tp)

    run(loop, main())


def test_reuse_port(loop):
    async def main():
        t1, p1 = await endpoint(loop, local_addr=V4, reuse_port=True)
        port = t1.get_extra_info("sockname")[1]
        assert t1.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        t2, p2 = await endpoint(loop, local_addr=("127.0.0.1", port), reuse_port=True)
        assert t2.get_extra_info("sockname")[1] == port
        # Without reuse_port the port is taken.
        with pytest.raises(OSError) as info:
            await endpoint(loop, local_addr=("127.0.0.1", port))
        assert info.value.errno == errno.EADDRINUSE
        await close(t1, p1)
        await close(t2, p2)

    before = fds()
    run(loop, main())
    assert fds() == before


def test_reuse_address_is_refused(loop):
    """reuse_address was removed in Python 3.11: asyncio refuses it as an unknown
    keyword argument, at the call."""
    with pytest.raises(
        TypeError,
        match=r"create_datagram_endpoint\(\) got an unexpected keyword argument 'reuse_address'",
    ):
        loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=V4, reuse_address=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'reuse_address'"):
        loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=V4, reuse_address=False)


# ---------------------------------------------------------------- sock=


@pytest.mark.parametrize("family", ["inet", "unix"])
def test_sock(loop, sock_dir, family):
    async def main():
        if family == "inet":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(V4)
        else:
            sock = socket.socket(UNIX, socket.SOCK_DGRAM)
            sock.bind(str(sock_dir / "given"))
        assert sock.gettimeout() is None  # blocking: the loop makes it non-blocking
        t, p = await loop.create_datagram_endpoint(lambda: DProto(loop), sock=sock)
        assert sock.gettimeout() == 0
        assert t.get_extra_info("socket").fileno() == sock.fileno()
        peer = socket.socket(sock.family, socket.SOCK_DGRAM)
        peer.sendto(b"to the given socket", sock.getsockname())
        got = await p.wait_received(1)
        assert got[0][0] == b"to the given socket"
        peer.close()
        await close(t, p)
        # The transport owned the socket: it is closed.
        assert sock.fileno() == -1

    before = fds()
    run(loop, main())
    assert fds() == before


def test_connected_sock_sends_with_send(loop):
    """A given socket that is already connected: its peer is the destination, and an
    address given to sendto() is not looked at."""

    async def main():
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(V4)
        receiver.setblocking(False)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(receiver.getsockname())
        t, p = await loop.create_datagram_endpoint(lambda: DProto(loop), sock=sock)
        assert t.get_extra_info("peername") == receiver.getsockname()
        t.sendto(b"a")
        t.sendto(b"b", ("127.0.0.1", 9))
        assert (await loop.sock_recvfrom(receiver, 10))[0] == b"a"
        assert (await loop.sock_recvfrom(receiver, 10))[0] == b"b"
        receiver.close()
        await close(t, p)

    run(loop, main())


@pytest.mark.parametrize(
    "kwargs, problems",
    [
        (dict(local_addr=V4), "local_addr=('127.0.0.1', 0)"),
        (dict(remote_addr=("127.0.0.1", 9)), "remote_addr=('127.0.0.1', 9)"),
        (dict(family=socket.AF_INET), f"family={socket.AF_INET}"),
        (dict(proto=17, flags=1), "proto=17, flags=1"),
        (dict(reuse_port=True, allow_broadcast=True), "reuse_port=True, allow_broadcast=True"),
        (dict(family=0, proto=0, reuse_port=False, local_addr=None), None),
    ],
)
def test_sock_with_other_arguments(loop, kwargs, problems):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def main():
        return await loop.create_datagram_endpoint(lambda: DProto(loop), sock=sock, **kwargs)

    try:
        if problems is None:
            # Falsy values are not "given".
            t, p = run(loop, main())
            run(loop, close(t, p))
            return
        with pytest.raises(ValueError) as info:
            run(loop, main())
        assert str(info.value) == (
            "socket modifier keyword arguments can not be used when sock is specified. "
            f"({problems})"
        )
        assert sock.fileno() != -1  # left to the caller
    finally:
        sock.close()


@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_sock_of_the_wrong_type(loop, oracle_loop, kind):
    """Before 3.13 anything but SOCK_DGRAM is refused ('A UDP Socket was expected');
    from 3.13 only SOCK_STREAM is ('A datagram socket was expected')."""

    async def scenario(loop):
        if kind == "stream":
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        else:
            sock = socket.socket(UNIX, socket.SOCK_SEQPACKET)
        try:
            t, p = await loop.create_datagram_endpoint(lambda: DProto(loop), sock=sock)
        except ValueError as exc:
            return str(exc).replace(repr(sock), "<sock>")
        finally:
            pass
        await close(t, p)
        return "accepted"

    got, expected = both(loop, oracle_loop, scenario)
    if kind == "stream":
        what = "A datagram socket" if PY313 else "A UDP Socket"
        assert expected == f"{what} was expected, got <sock>"
    else:
        assert expected == ("accepted" if PY313 else "A UDP Socket was expected, got <sock>")
    assert got == expected


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, exc_type, message",
    [
        (dict(), ValueError, "unexpected address family"),
        (dict(family=0, proto=17), ValueError, "unexpected address family"),
        (dict(local_addr=b"/tmp/x", family=UNIX), TypeError, "string is expected"),
        (dict(remote_addr=("a", 1), family=UNIX), TypeError, "string is expected"),
        (dict(local_addr=["127.0.0.1", 0]), TypeError, "2-tuple is expected"),
        (dict(remote_addr=("127.0.0.1", 0, 0)), TypeError, "2-tuple is expected"),
        (dict(local_addr="127.0.0.1:0"), TypeError, "2-tuple is expected"),
        (
            dict(local_addr=("127.0.0.1", 0), remote_addr=("::1", 1)),
            ValueError,
            "can not get address information",
        ),
        (
            dict(local_addr=("127.0.0.1", 0), family=socket.AF_INET6),
            OSError,
            None,  # from getaddrinfo: the family does not fit the address
        ),
    ],
)
def test_bad_arguments(loop, oracle_loop, kwargs, exc_type, message):
    async def scenario(loop):
        with pytest.raises(exc_type) as info:
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, **kwargs)
        return type(info.value), str(info.value)

    before = fds()
    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected
    if message is not None:
        assert expected == (exc_type, message)
    assert fds() == before


def test_getaddrinfo_returning_nothing(loop):
    subclass_getaddrinfo(loop, [])

    async def main():
        with pytest.raises(OSError, match=r"^getaddrinfo\(\) returned empty list$"):
            await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("somewhere", 0)
            )

    run(loop, main())


def test_each_address_family_is_tried_and_the_first_error_raised(loop):
    """Every (family, proto) pair is tried in turn; if none works, the first error."""
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(V4)
    infos = [
        # No such protocol for datagrams: socket() fails.
        (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_TCP, "", taken.getsockname()),
        # The port is taken: bind() fails.
        (socket.AF_INET, socket.SOCK_DGRAM, 0, "", taken.getsockname()),
    ]
    subclass_getaddrinfo(loop, infos)
    before = fds()

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("name", 1))
        return info.value

    try:
        exc = run(loop, main())
    finally:
        taken.close()
    assert exc.errno == errno.EPROTONOSUPPORT
    assert fds() == before - 1

    # The second pair works when the port is free.
    subclass_getaddrinfo(loop, [infos[0], (socket.AF_INET, socket.SOCK_DGRAM, 0, "", V4)])

    async def works():
        t, p = await endpoint(loop, local_addr=("name", 1))
        assert t.get_extra_info("sockname")[0] == "127.0.0.1"
        await close(t, p)

    run(loop, works())


def test_protocol_factory_raising_closes_the_socket_it_made(loop, impl):
    before = fds()

    def factory():
        raise ZeroDivisionError

    async def main():
        with pytest.raises(ZeroDivisionError):
            await loop.create_datagram_endpoint(factory, local_addr=V4)

    with warnings.catch_warnings():
        # asyncio leaves the socket to the garbage collector, which warns.
        warnings.simplefilter("ignore", ResourceWarning)
        run(loop, main())
        if impl == "ferroloop":
            assert fd_count() == before
        assert fds() == before


def test_sendto_argument_errors(loop):
    async def main():
        server_t, server_p = await endpoint(loop, local_addr=V4)
        sname = server_t.get_extra_info("sockname")
        t, p = await endpoint(loop, remote_addr=sname)
        for bad, name in (("text", "str"), (1, "int"), (None, "NoneType"), ([b"x"], "list")):
            with pytest.raises(TypeError) as info:
                t.sendto(bad)
            assert str(info.value) == f"data argument must be a bytes-like object, not '{name}'"
        with pytest.raises(ValueError) as info:
            t.sendto(b"x", ("127.0.0.1", 1))
        assert str(info.value) == f"Invalid address: must be None or {sname}"
        # The remote address itself, equal but not the same object, is fine.
        t.sendto(b"same", tuple(list(sname)))
        t.sendto(bytearray(b"ba"))
        t.sendto(memoryview(b"xmvx")[1:3])
        got = await server_p.wait_received(3)
        assert [d for d, _ in got] == [b"same", b"ba", b"mv"]
        assert not t.is_closing()
        await close(t, p)
        await close(server_t, server_p)

    run(loop, main())


def test_sendto_without_an_address_on_an_unconnected_endpoint(loop, oracle_loop):
    """The socket refuses it (TypeError): a fatal error, which closes the transport."""

    async def scenario(loop):
        contexts = capture_exceptions(loop)
        t, p = await endpoint(loop, local_addr=V4)
        t.sendto(b"where to?")
        assert t.is_closing()
        exc = await p.lost
        (ctx,) = contexts
        assert ctx["transport"] is t
        assert ctx["protocol"] is p
        assert ctx["exception"] is exc
        return ctx["message"], exc_summary(exc), p.events

    got, expected = both(loop, oracle_loop, scenario)
    assert expected == (
        "Fatal write error on datagram transport",
        (TypeError, None, "sendto(): AF_INET address must be tuple, not NoneType"),
        ["made", "lost"],
    )
    assert got == expected


def test_sendto_an_empty_datagram(loop, oracle_loop):
    """Before 3.13 sendto(b'') does nothing; from 3.13 an empty datagram is sent."""

    async def scenario(loop):
        server_t, server_p = await endpoint(loop, local_addr=V4)
        t, p = await endpoint(loop, remote_addr=server_t.get_extra_info("sockname"))
        t.sendto(b"")
        t.sendto(b"end")
        await server_p.wait(lambda: server_p.received and server_p.received[-1][0] == b"end")
        await close(t, p)
        await close(server_t, server_p)
        return [d for d, _ in server_p.received]

    got, expected = both(loop, oracle_loop, scenario)
    assert expected == ([b"", b"end"] if PY313 else [b"end"])
    assert got == expected


# ---------------------------------------------------------------- errors from the network


def test_error_received_on_connection_refused(loop, oracle_loop):
    """A connected endpoint whose peer port is closed: the ICMP error comes back to the
    protocol's error_received (from a receive, or from the next send), and the
    transport stays open."""

    async def scenario(loop):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(V4)
        closed_port = s.getsockname()
        s.close()
        t, p = await endpoint(loop, remote_addr=closed_port)
        t.sendto(b"anyone?")
        await p.wait(lambda: p.errors)
        assert not t.is_closing()
        (exc,) = p.errors
        await close(t, p)
        return exc_summary(exc), p.events

    got, expected = both(loop, oracle_loop, scenario)
    assert expected == (
        (ConnectionRefusedError, errno.ECONNREFUSED, "[Errno 111] Connection refused"),
        ["made", "error", "lost"],
    )
    assert got == expected


def test_error_received_raising_goes_to_the_exception_handler(loop, impl):
    async def main():
        contexts = capture_exceptions(loop)

        class P(DProto):
            def error_received(self, exc):
                super().error_received(exc)
                raise RuntimeError("from error_received")

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(V4)
        closed_port = s.getsockname()
        s.close()
        t, p = await loop.create_datagram_endpoint(lambda: P(loop), remote_addr=closed_port)
        t.sendto(b"anyone?")
        await p.wait(lambda: p.errors)
        await settle()
        (ctx,) = contexts
        assert str(ctx["exception"]) == "from error_received"
        assert ctx["message"].startswith("Exception in callback ")
        assert ctx["message"].endswith("._read_ready()")
        assert not t.is_closing()
        await close(t, p)

    run(loop, main())


# ---------------------------------------------------------------- callbacks that raise


def test_datagram_received_raising_goes_to_the_exception_handler(loop):
    """The transport goes on: the next datagrams are delivered."""

    async def main():
        contexts = capture_exceptions(loop)

        class P(DProto):
            def datagram_received(self, data, addr):
                super().datagram_received(data, addr)
                if data == b"raise":
                    raise ZeroDivisionError("bad datagram")

        t, p = await loop.create_datagram_endpoint(lambda: P(loop), local_addr=V4)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        name = t.get_extra_info("sockname")
        for m in (b"ok", b"raise", b"after", b"raise"):
            peer.sendto(m, name)
        await p.wait_received(4)
        await settle()
        assert [d for d, _ in p.received] == [b"ok", b"raise", b"after", b"raise"]
        assert len(contexts) == 2
        for ctx in contexts:
            assert isinstance(ctx["exception"], ZeroDivisionError)
            assert ctx["message"].startswith("Exception in callback ")
            assert ctx["message"].endswith("._read_ready()")
            # Handle._run's keys, as for asyncio's reader handle.
            assert set(ctx) == {"message", "exception", "handle"}
            assert not ctx["handle"].cancelled()
        assert not t.is_closing()
        peer.close()
        await close(t, p)

    run(loop, main())


def test_datagram_received_raising_is_logged_by_the_default_handler(loop, caplog):
    async def main():
        class P(DProto):
            def datagram_received(self, data, addr):
                super().datagram_received(data, addr)
                raise ZeroDivisionError("logged")

        t, p = await loop.create_datagram_endpoint(lambda: P(loop), local_addr=V4)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.sendto(b"x", t.get_extra_info("sockname"))
        await p.wait_received(1)
        await settle()
        peer.close()
        await close(t, p)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run(loop, main())
    (record,) = [r for r in caplog.records if r.name == "asyncio"]
    assert record.getMessage().startswith("Exception in callback ")
    assert record.exc_info[0] is ZeroDivisionError


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_datagram_received_raising_an_interrupt_leaves_the_loop(loop, exc_type):
    async def main():
        class P(DProto):
            def datagram_received(self, data, addr):
                raise exc_type("stop")

        t, p = await loop.create_datagram_endpoint(lambda: P(loop), local_addr=V4)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.sendto(b"x", t.get_extra_info("sockname"))
        peer.close()
        try:
            await asyncio.sleep(5)
        finally:
            t.close()

    task = loop.create_task(main())
    with pytest.raises(exc_type):
        loop.run_until_complete(task)
    # The interrupt came from the transport's callback, not from the task: end it.
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))


def test_pause_writing_raising_goes_to_the_exception_handler(loop, sock_dir):
    async def main():
        contexts = capture_exceptions(loop)
        sink, sink_path = unix_sink(sock_dir)

        class P(DProto):
            def pause_writing(self):
                super().pause_writing()
                raise RuntimeError("pause failed")

        t, p = await loop.create_datagram_endpoint(
            lambda: P(loop), remote_addr=sink_path, family=UNIX
        )
        t.set_write_buffer_limits(high=0)
        for _ in range(100):
            t.sendto(b"x" * 100)
            if t.get_write_buffer_size():
                break
        (ctx,) = contexts
        assert ctx["message"] == "protocol.pause_writing() failed"
        assert str(ctx["exception"]) == "pause failed"
        assert ctx["transport"] is t and ctx["protocol"] is p
        t.abort()
        await p.lost
        sink.close()

    run(loop, main())


# ---------------------------------------------------------------- contexts

var = contextvars.ContextVar("var", default="unset")


def test_protocol_callbacks_run_in_the_context_of_the_creation(loop):
    async def main():
        seen = []

        class P(DProto):
            def connection_made(self, transport):
                seen.append(("made", var.get()))
                super().connection_made(transport)

            def datagram_received(self, data, addr):
                seen.append((data, var.get()))
                var.set(data)  # stays in the transport's context for the next one
                super().datagram_received(data, addr)

            def error_received(self, exc):
                seen.append(("error", var.get()))
                super().error_received(exc)

        async def create():
            var.set("creator")
            return await loop.create_datagram_endpoint(lambda: P(loop), local_addr=V4)

        t, p = await asyncio.create_task(create())
        assert var.get() == "unset"
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.sendto(b"first", t.get_extra_info("sockname"))
        await p.wait_received(1)
        peer.sendto(b"second", t.get_extra_info("sockname"))
        await p.wait_received(2)
        assert seen == [("made", "creator"), (b"first", "creator"), (b"second", b"first")]
        assert var.get() == "unset"
        peer.close()
        await close(t, p)

    run(loop, main())


# ---------------------------------------------------------------- flow control


def unix_sink(sock_dir):
    """A Unix datagram socket nobody reads: a connected sender to it soon gets EAGAIN
    (its queue holds net.unix.max_dgram_qlen datagrams)."""
    path = str(sock_dir / ("sink-" + uuid.uuid4().hex[:8]))
    sink = socket.socket(UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.setblocking(False)
    return sink, path


def drain(sink):
    got = []
    while (d := recv_now(sink)) is not None:
        got.append(d[0])
    return got


async def _flow_control(loop, sock_dir, connected):
    sink, path = unix_sink(sock_dir)
    kwargs = dict(remote_addr=path) if connected else dict(local_addr=None)
    t, p = await endpoint(loop, family=UNIX, **kwargs)
    t.set_write_buffer_limits(high=4000, low=1000)
    size = 500
    sent = []
    sizes = []
    i = 0
    while not any(isinstance(e, tuple) and e[0] == "pause" for e in p.events):
        msg = b"%04d" % i + b"." * (size - 4)
        sent.append(msg)
        if connected:
            t.sendto(msg)
        else:
            t.sendto(msg, path)
        sizes.append(t.get_write_buffer_size())
        i += 1
        assert i < 10_000, "the socket never filled"
    queued = [s for s in sizes if s]
    # Each queued datagram counts its data, plus 8 bytes from 3.13.
    assert queued == [(size + HEADER) * n for n in range(1, len(queued) + 1)]
    pause_at = p.events[-1][1]
    assert pause_at == queued[-1] > 4000
    # More is queued while paused; nothing is sent without the loop.
    sent.append(sent[-1])
    if connected:
        t.sendto(sent[-1])
    else:
        t.sendto(sent[-1], path)
    assert t.get_write_buffer_size() == pause_at + size + HEADER
    # The reader drains the sink while the loop flushes the queue.
    received = []
    while len(received) < len(sent):
        received += drain(sink)
        await asyncio.sleep(0.001)
    assert received == sent
    await p.wait(lambda: "resume" in [e[0] for e in p.events if isinstance(e, tuple)])
    resume_at = [e for e in p.events if isinstance(e, tuple) and e[0] == "resume"][0][1]
    final = t.get_write_buffer_size()
    await close(t, p)
    sink.close()
    return len(queued), resume_at, final, [e if isinstance(e, str) else e[0] for e in p.events]


@pytest.mark.parametrize("connected", [True, False], ids=["connected", "unconnected"])
def test_flow_control_with_a_full_socket_buffer(loop, impl, sock_dir, connected):
    nqueued, resume_at, final, events = run(loop, _flow_control(loop, sock_dir, connected))
    assert events == ["made", "pause", "resume", "lost"]
    assert resume_at <= 1000
    if impl == "asyncio" and ASYNCIO_LEAKS_HEADERS:
        assert final == HEADER * (nqueued + 1)
    else:
        assert final == 0


def test_close_flushes_the_queue_then_connection_lost(loop, impl, sock_dir):
    async def main():
        sink, path = unix_sink(sock_dir)
        t, p = await endpoint(loop, family=UNIX, remote_addr=path)
        sent = []
        for i in range(1000):
            sent.append(b"%d" % i)
            t.sendto(sent[-1])
            if t.get_write_buffer_size():
                break
        t.close()
        assert t.is_closing()
        # Sent after close() while the queue is flushed: still queued, still sent.
        t.sendto(b"late")
        sent.append(b"late")
        received = []
        while not p.lost.done():
            received += drain(sink)
            await asyncio.sleep(0.001)
        received += drain(sink)
        assert received == sent
        assert await p.lost is None
        if not (impl == "asyncio" and ASYNCIO_LEAKS_HEADERS):
            assert t.get_write_buffer_size() == 0
        sink.close()

    run(loop, main())


def test_abort_drops_the_queue(loop, impl, sock_dir):
    async def main():
        sink, path = unix_sink(sock_dir)
        t, p = await endpoint(loop, family=UNIX, remote_addr=path)
        n = 0
        while not t.get_write_buffer_size():
            t.sendto(b"%d" % n)
            n += 1
        t.sendto(b"dropped")
        queued = t.get_write_buffer_size()
        t.abort()
        assert t.is_closing()
        # asyncio forgets to take the dropped datagrams off its count.
        assert t.get_write_buffer_size() == (queued if impl == "asyncio" else 0)
        assert await p.lost is None
        received = drain(sink)
        assert b"dropped" not in received
        assert len(received) == n - 1
        sink.close()
        return p.events

    assert run(loop, main()) == ["made", "lost"]


# ---------------------------------------------------------------- after close


async def _sends_after_close(loop, connected, wait_lost):
    server_t, server_p = await endpoint(loop, local_addr=V4)
    sname = server_t.get_extra_info("sockname")
    if connected:
        t, p = await endpoint(loop, remote_addr=sname)
    else:
        t, p = await endpoint(loop, local_addr=V4)
    t.close()
    if wait_lost:
        await p.lost
    with LogRecords() as logs:
        for i in range(7):
            if connected:
                t.sendto(b"after close")
            else:
                t.sendto(b"after close", sname)
            mark = {"msg": f"send {i + 1}", "levelname": "MARK", "levelno": 99}
            logs.records.append(logging.makeLogRecord(mark))
    await p.lost
    # Whatever went out has arrived by then (asyncio reads one datagram per iteration).
    await asyncio.sleep(0.05)
    got = [d for d, _ in server_p.received]
    await close(server_t, server_p)
    return logs.summary(), got


@pytest.mark.parametrize("wait_lost", [False, True], ids=["closing", "closed"])
def test_sends_after_close_on_a_connected_endpoint(loop, oracle_loop, wait_lost):
    """Dropped and counted: close() counts as the first; from the 5th on, each warns."""
    got, expected = both(loop, oracle_loop, _sends_after_close, True, wait_lost)
    warning = ("WARNING", "socket.send() raised exception.")
    marks = [("MARK", f"send {i}") for i in range(1, 8)]
    assert expected == (marks[:4] + [x for i in range(4, 7) for x in (warning, marks[i])], [])
    assert got == expected


def test_sends_while_an_unconnected_endpoint_is_closing(loop, oracle_loop):
    """Until connection_lost(), an unconnected endpoint's socket is open and asyncio
    still sends on it."""
    got, expected = both(loop, oracle_loop, _sends_after_close, False, False)
    assert expected == ([("MARK", f"send {i}") for i in range(1, 8)], [b"after close"] * 7)
    assert got == expected


def test_sends_after_an_unconnected_endpoint_is_closed(loop, impl):
    """After connection_lost() the socket is closed: a send is dropped and counted as
    on a connected endpoint, and never reaches the fd (whose number may be reused)."""
    if impl == "asyncio":
        pytest.xfail(
            "asyncio's sendto() here calls sendto() on its socket, which is None by then, "
            "and raises AttributeError"
        )
    logs, got = run(loop, _sends_after_close(loop, False, True))
    warning = ("WARNING", "socket.send() raised exception.")
    marks = [("MARK", f"send {i}") for i in range(1, 8)]
    assert logs == marks[:4] + [x for i in range(4, 7) for x in (warning, marks[i])]
    assert got == []


# ---------------------------------------------------------------- reading


def test_pause_and_resume_reading(loop):
    async def main():
        t, p = await endpoint(loop, local_addr=V4)
        name = t.get_extra_info("sockname")
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        assert t.is_reading()
        t.pause_reading()
        assert not t.is_reading()
        for m in (b"1", b"2", b"3"):
            peer.sendto(m, name)
        await asyncio.sleep(0.05)
        assert p.received == []
        t.resume_reading()
        await p.wait_received(3)
        assert [d for d, _ in p.received] == [b"1", b"2", b"3"]
        peer.close()
        await close(t, p)
        assert not t.is_reading()

    run(loop, main())


@pytest.mark.parametrize("action", ["pause_reading", "close", "abort"])
def test_no_datagram_after_the_protocol_stops_reading(loop, action):
    """Several datagrams waiting: once the protocol pauses reading or closes the
    transport, no more are delivered (the rest stay in the socket, or go with it)."""

    async def main():
        class P(DProto):
            def datagram_received(self, data, addr):
                super().datagram_received(data, addr)
                getattr(self.transport, action)()

        t, p = await loop.create_datagram_endpoint(lambda: P(loop), local_addr=V4)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(10):
            peer.sendto(b"%d" % i, t.get_extra_info("sockname"))
        await p.wait_received(1)
        await asyncio.sleep(0.05)
        assert [d for d, _ in p.received] == [b"0"]
        if action == "pause_reading":
            assert not t.is_closing()
            t.close()
        await p.lost
        peer.close()

    run(loop, main())


def test_a_burst_is_delivered_whole_and_in_order(loop):
    n = 500

    async def main():
        t, p = await endpoint(loop, local_addr=V4)
        t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(n):
            peer.sendto(b"%d" % i, t.get_extra_info("sockname"))
        got = await p.wait_received(n)
        assert [d for d, _ in got] == [b"%d" % i for i in range(n)]
        peer.close()
        await close(t, p)

    run(loop, main())


def test_other_callbacks_run_during_a_flood(loop):
    """A socket that is always readable does not starve the loop's other callbacks."""

    async def main():
        t, p = await endpoint(loop, local_addr=V4)
        name = t.get_extra_info("sockname")
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.setblocking(False)
        ticks = []

        async def ticker():
            for i in range(20):
                ticks.append(len(p.received))
                await asyncio.sleep(0)

        def flood():
            for _ in range(64):
                try:
                    peer.sendto(b"x", name)
                except BlockingIOError:
                    break
            if len(ticks) < 20:
                loop.call_soon(flood)

        loop.call_soon(flood)
        await ticker()
        assert len(ticks) == 20
        peer.close()
        await close(t, p)

    run(loop, main())


def test_large_unix_datagrams_arrive_whole(loop, sock_dir):
    """Up to asyncio's read size (256 KiB); the socket's buffers are raised to hold them."""

    async def main():
        path = str(sock_dir / "big")
        t, p = await endpoint(loop, local_addr=path, family=UNIX)
        t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        peer = socket.socket(UNIX, socket.SOCK_DGRAM)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        size = min(200_000, peer.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2 - 1000)
        peer.sendto(b"z" * size, path)
        got = await p.wait_received(1)
        assert len(got[0][0]) == size
        peer.close()
        await close(t, p)

    run(loop, main())


# ---------------------------------------------------------------- the fd


def test_fd_of_a_transport_is_refused_to_add_reader(loop, oracle_loop):
    async def scenario(loop):
        t, p = await endpoint(loop, local_addr=V4)
        fd = t.get_extra_info("socket").fileno()
        with pytest.raises(RuntimeError) as info:
            loop.add_reader(fd, lambda: None)
        msg = str(info.value)
        with pytest.raises(RuntimeError):
            loop.remove_writer(fd)
        # Nothing to read: sock_recvfrom() on the transport's fd is refused too.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=fd)
        try:
            with pytest.raises(RuntimeError):
                await loop.sock_recvfrom(sock, 10)
        finally:
            sock.detach()
        await close(t, p)
        # Closed: the fd is free again (its number may be another socket's by now).
        return msg.startswith(f"File descriptor {fd} is used by transport <")

    got, expected = both(loop, oracle_loop, scenario)
    assert expected is True
    assert got == expected


def test_endpoints_leave_no_fds(loop, sock_dir):
    async def main():
        for i in range(100):
            t, p = await endpoint(loop, local_addr=V4)
            c, cp = await endpoint(loop, remote_addr=t.get_extra_info("sockname"))
            c.sendto(b"x")
            await p.wait_received(1)
            c.abort()
            await close(t, p)
            await cp.lost
        path = str(sock_dir / "u")
        for i in range(20):
            t, p = await endpoint(loop, local_addr=path, family=UNIX)
            await close(t, p)

    before = fds()
    run(loop, main(), timeout=60)
    assert fds() == before


# ---------------------------------------------------------------- garbage collection


class Cyclic(DProto):
    """Holds its transport (and the transport holds it): a reference cycle."""


def test_transport_protocol_cycle_is_collected_after_close(loop):
    before = fds()

    async def main():
        t, p = await endpoint(loop, Cyclic, local_addr=V4)
        p.me = p
        refs = weakref.ref(t), weakref.ref(p)
        t.close()
        await p.lost
        return refs

    refs = run(loop, main())
    gc.collect()
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert fds() == before


def test_closed_transport_is_freed_without_the_collector(loop, impl):
    """ferroloop's transport drops its facade (and so its cycle) once its connection
    is lost."""
    if impl == "asyncio":
        pytest.skip("asyncio's transport keeps a bound method of itself: a cycle")

    async def main():
        t, p = await endpoint(loop, local_addr=V4)
        t.close()
        await p.lost
        return weakref.ref(t), weakref.ref(p)

    gc.disable()
    try:
        refs = run(loop, main())
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_open_transport_is_kept_alive_by_the_loop(loop):
    async def main():
        t, p = await endpoint(loop, Cyclic, local_addr=V4)
        name = t.get_extra_info("sockname")
        ref = weakref.ref(p)
        del t, p
        gc.collect()
        assert ref() is not None  # reading: the loop holds it
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.sendto(b"alive", name)
        peer.close()
        await ref().wait_received(1)
        ref().transport.close()
        await ref().lost

    run(loop, main())


def test_cycle_through_the_context_is_collected(loop):
    """The transport keeps a copy of its creator's context; a value in it that refers
    back to the transport is a cycle the collector breaks once the endpoint is closed."""
    holder = contextvars.ContextVar("holder")

    async def main():
        box = []
        holder.set(box)
        t, p = await endpoint(loop, Cyclic, local_addr=V4)
        box.append(t)
        box.append(p)
        t.close()
        await p.lost
        return weakref.ref(t), weakref.ref(p)

    async def outer():
        return await asyncio.create_task(main())

    refs = run(loop, outer())
    gc.collect()
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_unclosed_transport_warns_when_collected(loop):
    before = fds()

    async def main():
        t, p = await endpoint(loop, Cyclic, local_addr=V4)
        t.pause_reading()  # nothing in the loop refers to it any more
        fd = t.get_extra_info("socket").fileno()
        expected = f"unclosed transport <{type(t).__name__} {repr_body(t)}>"
        ref = weakref.ref(t)
        del t, p
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
            gc.collect()
        assert ref() is None
        messages = [
            str(w.message)
            for w in caught
            if issubclass(w.category, ResourceWarning)
            and str(w.message).startswith("unclosed transport")
        ]
        assert messages == [expected]
        assert f"fd={fd} read=idle" in expected

    run(loop, main())
    assert fds() == before


# ---------------------------------------------------------------- debug mode


def test_debug_log_of_a_new_endpoint(loop, caplog):
    loop.set_debug(True)
    caplog.set_level(logging.DEBUG, logger="asyncio")

    async def main():
        t, p = await endpoint(loop, local_addr=V4)
        c, cp = await endpoint(loop, remote_addr=t.get_extra_info("sockname"))
        await close(c, cp)
        await close(t, p)

    run(loop, main())
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(
        m.startswith("Datagram endpoint local_addr=('127.0.0.1', 0) remote_addr=None created: (<")
        for m in messages
    )
    assert any(m.startswith("Datagram endpoint remote_addr=('127.0.0.1', ") for m in messages)


# ---------------------------------------------------------------- sock_recvfrom and friends


@pytest.fixture
def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(V4)
        s.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_sock_sendto_and_recvfrom(loop, udp_pair):
    a, b = udp_pair

    async def main():
        # Nothing there yet: sock_recvfrom waits.
        pending = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0.01)
        assert not pending.done()
        assert await loop.sock_sendto(a, b"hello", b.getsockname()) == 5
        assert await pending == (b"hello", a.getsockname())
        # Already there: returned at once. bufsize truncates.
        await loop.sock_sendto(a, b"truncated", b.getsockname())
        await asyncio.sleep(0.01)
        assert await loop.sock_recvfrom(b, 5) == (b"trunc", a.getsockname())

    run(loop, main())


def test_sock_recvfrom_into(loop, udp_pair):
    a, b = udp_pair

    async def main():
        buf = bytearray(10)
        pending = asyncio.ensure_future(loop.sock_recvfrom_into(b, buf))
        await asyncio.sleep(0.01)
        await loop.sock_sendto(a, b"0123456789abc", b.getsockname())
        assert await pending == (10, a.getsockname())
        assert buf == b"0123456789"
        buf = bytearray(10)
        await loop.sock_sendto(a, b"xyz", b.getsockname())
        pending = asyncio.ensure_future(loop.sock_recvfrom_into(b, buf, 2))
        assert await pending == (2, a.getsockname())
        assert buf == b"xy" + bytes(8)
        with pytest.raises(ValueError):
            await loop.sock_recvfrom_into(b, bytearray(2), 5)

    run(loop, main())


def test_sock_recvfrom_cancelled(loop, udp_pair):
    """A cancelled sock_recvfrom removes its reader: the datagram stays for the next."""
    a, b = udp_pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert loop.remove_reader(b) is False
        a.sendto(b"kept", b.getsockname())
        await asyncio.sleep(0.01)
        assert await loop.sock_recvfrom(b, 100) == (b"kept", a.getsockname())

    run(loop, main())


def test_sock_sendto_waits_while_the_socket_is_full(loop, sock_dir):
    async def main():
        sink, path = unix_sink(sock_dir)
        s = socket.socket(UNIX, socket.SOCK_DGRAM)
        s.setblocking(False)
        n = 0
        while True:
            try:
                s.sendto(b"%d" % n, path)
                n += 1
            except BlockingIOError:
                break
        pending = asyncio.ensure_future(loop.sock_sendto(s, b"waited", path))
        await asyncio.sleep(0.02)
        assert not pending.done()
        first = drain(sink)
        assert await pending == 6
        await asyncio.sleep(0.01)
        rest = drain(sink)
        assert first + rest == [b"%d" % i for i in range(n)] + [b"waited"]
        # Cancelled while waiting: the writer goes and nothing is sent.
        while True:
            try:
                s.sendto(b"fill", path)
            except BlockingIOError:
                break
        pending = asyncio.ensure_future(loop.sock_sendto(s, b"never", path))
        await asyncio.sleep(0.01)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert loop.remove_writer(s) is False
        assert b"never" not in drain(sink)
        s.close()
        sink.close()

    run(loop, main())


def test_sock_sendto_errors(loop, udp_pair):
    a, _ = udp_pair

    async def main():
        with pytest.raises(TypeError):
            await loop.sock_sendto(a, b"x", None)
        with pytest.raises(OverflowError):
            await loop.sock_sendto(a, b"x", ("127.0.0.1", 70000))
        with pytest.raises(TypeError):
            await loop.sock_sendto(a, "text", ("127.0.0.1", 9))

    run(loop, main())


@pytest.mark.parametrize("name", ["sock_recvfrom", "sock_recvfrom_into", "sock_sendto"])
def test_sock_blocking_socket_in_debug_mode(loop, name):
    loop.set_debug(True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    args = {
        "sock_recvfrom": (sock, 10),
        "sock_recvfrom_into": (sock, bytearray(10)),
        "sock_sendto": (sock, b"x", ("127.0.0.1", 9)),
    }[name]
    try:
        with pytest.raises(ValueError, match="^the socket must be non-blocking$"):
            run(loop, getattr(loop, name)(*args))
    finally:
        sock.close()


@needs_ipv6
def test_sock_recvfrom_ipv6_address(loop):
    async def main():
        a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        for s in (a, b):
            s.bind(("::1", 0))
            s.setblocking(False)
        await loop.sock_sendto(a, b"six", b.getsockname()[:2])
        data, addr = await loop.sock_recvfrom(b, 10)
        assert data == b"six" and addr == a.getsockname()
        a.close()
        b.close()

    run(loop, main())


# ---------------------------------------------------------------- address forms of sendto()

ADDRESS_FORMS = {
    "numeric": lambda port: ("127.0.0.1", port),
    "bytes-host": lambda port: (b"127.0.0.1", port),
    "any-host": lambda port: ("", port),
    "broadcast-host": lambda port: ("<broadcast>", port),
    "port-too-large": lambda port: ("127.0.0.1", 70000),
    "negative-port": lambda port: ("127.0.0.1", -1),
    "port-as-str": lambda port: ("127.0.0.1", str(port)),
    "bool-port": lambda port: ("127.0.0.1", True),
    "three-tuple": lambda port: ("127.0.0.1", port, 0),
    "list": lambda port: ["127.0.0.1", port],
    "ipv6-host": lambda port: ("::1", port),
    "nul-in-host": lambda port: ("127.0.0.1\0", port),
    "non-ascii-host": lambda port: ("höst", port),
}


async def _sendto_address_form(loop, form):
    contexts = capture_exceptions(loop)
    server_t, server_p = await endpoint(loop, local_addr=V4)
    port = server_t.get_extra_info("sockname")[1]
    t, p = await endpoint(loop, family=socket.AF_INET)
    addr = ADDRESS_FORMS[form](port)
    try:
        t.sendto(b"payload", addr)
        raised = None
    except Exception as exc:
        raised = exc_summary(exc)
    await asyncio.sleep(0.02)
    outcome = (
        raised,
        [d for d, _ in server_p.received],
        [exc_summary(e) for e in p.errors],
        [(c["message"], exc_summary(c["exception"])) for c in contexts],
        t.is_closing(),
    )
    t.abort()
    await p.lost
    await close(server_t, server_p)
    return outcome


@pytest.mark.parametrize("form", sorted(ADDRESS_FORMS))
def test_sendto_address_forms(loop, oracle_loop, form):
    """Addresses are converted (or refused) exactly as the socket module does it."""
    got, expected = both(loop, oracle_loop, _sendto_address_form, form)
    assert got == expected


IPV6_FORMS = {
    "pair": lambda port: ("::1", port),
    "flowinfo": lambda port: ("::1", port, 5),
    "flowinfo-too-large": lambda port: ("::1", port, 0x100000),
    "scope-id": lambda port: ("::1", port, 0, 0),
    "ipv4-host": lambda port: ("127.0.0.1", port),
    "five-tuple": lambda port: ("::1", port, 0, 0, 0),
    "bad-host": lambda port: ("::g", port),
}


async def _sendto_ipv6_form(loop, form):
    contexts = capture_exceptions(loop)
    server_t, server_p = await endpoint(loop, local_addr=("::1", 0))
    port = server_t.get_extra_info("sockname")[1]
    t, p = await endpoint(loop, family=socket.AF_INET6)
    try:
        t.sendto(b"six", IPV6_FORMS[form](port))
        raised = None
    except Exception as exc:
        raised = exc_summary(exc)
    await asyncio.sleep(0.02)
    outcome = (
        raised,
        [d for d, _ in server_p.received],
        [exc_summary(e) for e in p.errors],
        [(c["message"], exc_summary(c["exception"])) for c in contexts],
    )
    t.abort()
    await p.lost
    await close(server_t, server_p)
    return outcome


@needs_ipv6
@pytest.mark.parametrize("form", sorted(IPV6_FORMS))
def test_sendto_ipv6_address_forms(loop, oracle_loop, form):
    got, expected = both(loop, oracle_loop, _sendto_ipv6_form, form)
    assert got == expected


@pytest.mark.parametrize("form", ["str", "bytes", "too-long", "abstract", "int"])
def test_sendto_unix_address_forms(loop, oracle_loop, sock_dir, form):
    async def scenario(loop):
        contexts = capture_exceptions(loop)
        path = str(sock_dir / ("u" + uuid.uuid4().hex[:6]))
        abstract = abstract_name()
        server_t, server_p = await endpoint(loop, local_addr=path, family=UNIX)
        abstract_t, abstract_p = await endpoint(loop, local_addr=abstract, family=UNIX)
        t, p = await endpoint(loop, family=UNIX)
        addr = {
            "str": path,
            "bytes": os.fsencode(path),
            "too-long": "/" + "x" * 200,
            "abstract": abstract,
            "int": 5,
        }[form]
        try:
            t.sendto(b"unix", addr)
            raised = None
        except Exception as exc:
            raised = exc_summary(exc)
        await asyncio.sleep(0.02)
        outcome = (
            raised,
            [d for d, _ in server_p.received + abstract_p.received],
            [exc_summary(e) for e in p.errors],
            [(c["message"], exc_summary(c["exception"])) for c in contexts],
        )
        t.abort()
        await p.lost
        await close(server_t, server_p)
        await close(abstract_t, abstract_p)
        return outcome

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected


def test_socketpair_endpoint(loop, oracle_loop):
    """A connected Unix datagram pair: its peer has no name (peername ''), which asyncio
    takes for "not connected", so sendto() needs an address the socket then refuses."""

    async def scenario(loop):
        contexts = capture_exceptions(loop)
        ours, theirs = socket.socketpair(UNIX, socket.SOCK_DGRAM)
        theirs.setblocking(False)
        t, p = await loop.create_datagram_endpoint(lambda: DProto(loop), sock=ours)
        theirs.send(b"from the pair")
        got = await p.wait_received(1)
        peername = t.get_extra_info("peername")
        t.sendto(b"back")
        await asyncio.sleep(0.01)
        outcome = (
            got,
            peername,
            recv_now(theirs),
            [(c["message"], exc_summary(c["exception"])) for c in contexts],
            t.is_closing(),
        )
        t.abort()
        await p.lost
        theirs.close()
        return outcome

    got, expected = both(loop, oracle_loop, scenario)
    assert got == expected


def test_a_queued_bytearray_is_copied(loop, sock_dir):
    async def main():
        sink, path = unix_sink(sock_dir)
        t, p = await endpoint(loop, family=UNIX, remote_addr=path)
        n = 0
        while not t.get_write_buffer_size():
            t.sendto(b"%d" % n)
            n += 1
        data = bytearray(b"original")
        t.sendto(data)
        data[:] = b"changed!"
        received = []
        while b"original" not in received and b"changed!" not in received:
            received += drain(sink)
            await asyncio.sleep(0.001)
        assert received[-1] == b"original"
        await close(t, p)
        sink.close()

    run(loop, main())


def test_unclosed_transport_of_a_closed_loop_warns_when_collected(untracked_loop_factory):
    before = fds()
    loop = untracked_loop_factory()

    async def main(loop):
        t, p = await endpoint(loop, Cyclic, local_addr=V4)
        return weakref.ref(t), t.get_extra_info("socket").fileno(), type(t).__name__

    ref, fd, name = run(loop, main(loop))
    loop.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del loop
        gc.collect()
        gc.collect()
    assert ref() is None
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    # The loop is closed: the repr has no read/write state.
    assert f"unclosed transport <{name} fd={fd}>" in messages
    assert fds() == before


@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
def test_sock_recvfrom_unix(loop, sock_dir, named):
    async def main():
        path = str(sock_dir / "r")
        r = socket.socket(UNIX, socket.SOCK_DGRAM)
        r.bind(path)
        r.setblocking(False)
        s = socket.socket(UNIX, socket.SOCK_DGRAM)
        s.setblocking(False)
        if named:
            s.bind(str(sock_dir / "s"))
        pending = asyncio.ensure_future(loop.sock_recvfrom(r, 100))
        await asyncio.sleep(0.01)
        assert await loop.sock_sendto(s, b"unix", path) == 4
        assert await pending == (b"unix", str(sock_dir / "s") if named else None)
        r.close()
        s.close()

    run(loop, main())
