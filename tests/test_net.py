"""Connection setup over TCP: create_connection, create_server and Server,
connect_accepted_socket, and the sock_* coroutines.

Every test runs against ferroloop and against asyncio's own loop (the oracle):
same results, same exceptions, same messages.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import socket
import ssl
import sys
import time
import warnings
from asyncio import trsock

import pytest
from versions import PY312, PY313

# asyncio 3.12.1 fixed Server.wait_closed() to wait for the connections of a closed
# server.
WAIT_CLOSED_WAITS_FOR_CONNECTIONS = sys.version_info >= (3, 12, 1)

# The tail of asyncio's "error while attempting to bind" message (3.13 puts the
# whole str() of the OSError there, errno included).
BIND_IN_USE = (
    f"[errno {errno.EADDRINUSE}] address already in use" if PY313 else "address already in use"
)

from net_helpers import (
    HAS_IPV6,
    Echo,
    Factory,
    Recorder,
    assert_accept_out_of_resources,
    close_client,
    close_server,
    fd_count,
    free_port,
    needs_ipv6,
    run,
    settle,
    spy_getaddrinfo,
    subclass_getaddrinfo,
)

STREAM = socket.SOCK_STREAM
TCP = socket.IPPROTO_TCP


async def start_echo_server(loop, host="127.0.0.1", **kwargs):
    factory = Factory(loop)
    server = await loop.create_server(factory, host, 0, **kwargs)
    return server, factory, server.sockets[0].getsockname()


async def echo_check(transport, proto, payload=b"ping"):
    proto.data.clear()
    transport.write(payload)
    assert await proto.read_exactly(len(payload)) == payload


def ssl_socket():
    """An (unconnected) ssl.SSLSocket."""
    ctx = ssl.create_default_context()
    return ctx.wrap_socket(socket.socket(), server_hostname="x", do_handshake_on_connect=False)


def refused_addrinfo(host="127.0.0.1", family=socket.AF_INET):
    port = free_port(family, host)
    addr = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
    return (family, STREAM, TCP, "", addr)


# ---------------------------------------------------------------- create_connection


def test_create_connection_numeric_host(loop):
    before = fd_count()

    async def main():
        server, factory, addr = await start_echo_server(loop)
        t, p = await loop.create_connection(lambda: Recorder(loop), *addr)
        assert isinstance(t, asyncio.Transport)
        assert p.events == ["made"] and p.transport is t
        assert t.get_extra_info("peername") == addr
        assert t.get_extra_info("sockname")[0] == "127.0.0.1"
        sock = t.get_extra_info("socket")
        assert isinstance(sock, trsock.TransportSocket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.gettimeout() == 0
        await echo_check(t, p)
        sp = await factory.wait_for(1)
        # The server side knows its peer from accept().
        assert sp.transport.get_extra_info("peername") == t.get_extra_info("sockname")
        await close_client(t, p)
        await sp.lost
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


def test_create_connection_numeric_host_skips_getaddrinfo(loop):
    calls = spy_getaddrinfo(loop)

    async def main():
        server, _, (host, port) = await start_echo_server(loop)
        for h, p in [("127.0.0.1", port), (b"127.0.0.1", port), ("127.0.0.1", str(port))]:
            t, proto = await loop.create_connection(lambda: Recorder(loop), h, p)
            await close_client(t, proto)
        assert calls == []
        # A service name, or a host name, goes through getaddrinfo().
        t, proto = await loop.create_connection(lambda: Recorder(loop), "localhost", port)
        await close_client(t, proto)
        assert calls == [("localhost", port)]
        await close_server(server)

    run(loop, main())


def test_create_connection_localhost(loop):
    before = fd_count()

    async def main():
        server, _, (_, port) = await start_echo_server(loop)
        t, p = await loop.create_connection(lambda: Recorder(loop), "localhost", port)
        assert t.get_extra_info("peername")[1] == port
        await echo_check(t, p, b"x" * 100_000)
        await close_client(t, p)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "localhost", port, family=socket.AF_INET
        )
        assert t.get_extra_info("socket").family == socket.AF_INET
        await close_client(t, p)
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


@needs_ipv6
def test_create_connection_ipv6(loop):
    before = fd_count()

    async def main():
        server, _, addr = await start_echo_server(loop, host="::1")
        assert len(addr) == 4
        t, p = await loop.create_connection(lambda: Recorder(loop), "::1", addr[1])
        assert t.get_extra_info("peername") == addr
        sock = t.get_extra_info("socket")
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        await echo_check(t, p)
        await close_client(t, p)
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


def test_create_connection_sock(loop):
    before = fd_count()

    async def main():
        server, factory, addr = await start_echo_server(loop)
        sock = socket.socket()
        sock.connect(addr)  # blocking connect; the loop makes it non-blocking
        t, p = await loop.create_connection(lambda: Recorder(loop), sock=sock)
        assert sock.gettimeout() == 0
        assert t.get_extra_info("socket").fileno() == sock.fileno()
        assert t.get_extra_info("peername") == addr
        await echo_check(t, p)
        await close_client(t, p)
        assert sock.fileno() == -1  # the transport owned and closed it
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


def test_create_connection_local_addr(loop):
    before = fd_count()

    async def main():
        server, _, addr = await start_echo_server(loop)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), *addr, local_addr=("127.0.0.1", 0)
        )
        assert t.get_extra_info("sockname")[0] == "127.0.0.1"
        await close_client(t, p)
        lport = free_port()
        t, p = await loop.create_connection(
            lambda: Recorder(loop), *addr, local_addr=("127.0.0.1", lport)
        )
        assert t.get_extra_info("sockname") == ("127.0.0.1", lport)
        await echo_check(t, p)
        await close_client(t, p)
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


def test_create_connection_local_addr_in_use(loop):
    before = fd_count()

    async def main():
        server, _, addr = await start_echo_server(loop)
        # The server's own address is taken (no SO_REUSEADDR on the client side).
        with pytest.raises(OSError) as info:
            await loop.create_connection(lambda: Recorder(loop), *addr, local_addr=addr)
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value) == (
            f"[Errno {errno.EADDRINUSE}] error while attempting to bind on address "
            f"{addr!r}: {BIND_IN_USE}"
        )
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


@needs_ipv6
def test_create_connection_local_addr_family_mismatch(loop):
    before = fd_count()

    async def main():
        server, _, addr = await start_echo_server(loop)
        with pytest.raises(OSError) as info:
            await loop.create_connection(lambda: Recorder(loop), *addr, local_addr=("::1", 0))
        assert str(info.value) == (
            f"no matching local address with family={socket.AF_INET!r} found"
        )
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


def test_create_connection_refused(loop):
    before = fd_count()
    port = free_port()

    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.create_connection(lambda: Recorder(loop), "127.0.0.1", port)
        assert info.value.errno == errno.ECONNREFUSED
        assert str(info.value) == (
            f"[Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {port})"
        )

    run(loop, main())
    assert fd_count() == before


def test_create_connection_refused_message_matches_asyncio(loop, oracle_loop):
    port = free_port()

    def attempt(lp):
        async def main():
            try:
                await lp.create_connection(asyncio.Protocol, "localhost", port)
            except OSError as exc:
                return type(exc), exc.errno, str(exc)

        return run(lp, main())

    assert attempt(loop) == attempt(oracle_loop)


def test_create_connection_multiple_exceptions(loop):
    before = fd_count()
    infos = [refused_addrinfo(), refused_addrinfo()]
    subclass_getaddrinfo(loop, infos)

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_connection(lambda: Recorder(loop), "multi.invalid", 80)
        assert type(info.value) is OSError
        assert info.value.errno is None
        assert str(info.value) == "Multiple exceptions: " + ", ".join(
            f"[Errno {errno.ECONNREFUSED}] Connect call failed {i[4]}" for i in infos
        )

    run(loop, main())
    assert fd_count() == before


def test_create_connection_same_errors_raise_one(loop):
    before = fd_count()
    info1 = refused_addrinfo()
    subclass_getaddrinfo(loop, [info1, info1])

    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.create_connection(lambda: Recorder(loop), "same.invalid", 80)
        assert str(info.value) == (
            f"[Errno {errno.ECONNREFUSED}] Connect call failed {info1[4]}"
        )

    run(loop, main())
    assert fd_count() == before


def test_create_connection_getaddrinfo_empty(loop):
    subclass_getaddrinfo(loop, [])

    async def main():
        with pytest.raises(OSError, match=r"^getaddrinfo\(\) returned empty list$"):
            await loop.create_connection(lambda: Recorder(loop), "empty.invalid", 80)

    run(loop, main())


def test_create_connection_all_errors(loop, impl):
    before = fd_count()
    infos = [refused_addrinfo(), refused_addrinfo()]
    subclass_getaddrinfo(loop, infos)

    async def main():
        if impl == "asyncio" and sys.version_info < (3, 12):
            # all_errors is new in Python 3.12; ferroloop has it on 3.11 too.
            with pytest.raises(TypeError, match="all_errors"):
                await loop.create_connection(asyncio.Protocol, "x.invalid", 80, all_errors=True)
            return
        with pytest.raises(ExceptionGroup) as info:
            await loop.create_connection(asyncio.Protocol, "x.invalid", 80, all_errors=True)
        group = info.value
        assert group.message == "create_connection failed"
        assert [type(e) for e in group.exceptions] == [ConnectionRefusedError] * 2
        assert [str(e) for e in group.exceptions] == [
            f"[Errno {errno.ECONNREFUSED}] Connect call failed {i[4]}" for i in infos
        ]
        # A single failure is a group too.
        subclass_getaddrinfo(loop, infos[:1])
        with pytest.raises(ExceptionGroup) as info:
            await loop.create_connection(asyncio.Protocol, "x.invalid", 80, all_errors=True)
        assert len(info.value.exceptions) == 1

    run(loop, main())
    assert fd_count() == before


def record_connect_attempts(loop, hang=()):
    """Record the addresses ``create_connection`` tries; those in ``hang`` never connect."""
    attempts = []
    real = loop.sock_connect

    async def spy(sock, address):
        attempts.append(address)
        if address in hang:
            await asyncio.sleep(3600)
        return await real(sock, address)

    loop.sock_connect = spy
    return attempts


@needs_ipv6
@pytest.mark.parametrize(
    "interleave, expected_order",
    [(None, [0, 2, 1, 3]), (1, [0, 2, 1, 3]), (2, [0, 1, 2, 3]), (3, [0, 1, 2, 3])],
)
def test_happy_eyeballs_interleaves_families(loop, interleave, expected_order):
    before = fd_count()
    v6 = [refused_addrinfo("::1", socket.AF_INET6) for _ in range(2)]
    v4 = [refused_addrinfo() for _ in range(2)]
    infos = v6 + v4
    subclass_getaddrinfo(loop, infos)
    attempts = record_connect_attempts(loop)

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_connection(
                asyncio.Protocol,
                "dual.invalid",
                80,
                happy_eyeballs_delay=0.05,
                interleave=interleave,
            )
        expected = [infos[i][4] for i in expected_order]
        assert attempts == expected
        assert str(info.value) == "Multiple exceptions: " + ", ".join(
            f"[Errno {errno.ECONNREFUSED}] Connect call failed {a}" for a in expected
        )

    run(loop, main())
    assert fd_count() == before


@needs_ipv6
def test_interleave_without_happy_eyeballs(loop):
    v6 = [refused_addrinfo("::1", socket.AF_INET6) for _ in range(2)]
    v4 = [refused_addrinfo() for _ in range(2)]
    infos = v6 + v4
    subclass_getaddrinfo(loop, infos)
    attempts = record_connect_attempts(loop)

    async def main():
        with pytest.raises(OSError):
            await loop.create_connection(asyncio.Protocol, "dual.invalid", 80)
        assert attempts == [i[4] for i in infos]  # no interleaving by default
        attempts.clear()
        with pytest.raises(OSError):
            await loop.create_connection(asyncio.Protocol, "dual.invalid", 80, interleave=1)
        assert attempts == [infos[i][4] for i in (0, 2, 1, 3)]

    run(loop, main())


@needs_ipv6
def test_happy_eyeballs_falls_back_to_the_family_that_listens(loop):
    before = fd_count()

    async def main():
        server, _, (host, port) = await start_echo_server(loop)
        # IPv6 first, where nobody listens on that port.
        infos = [
            (socket.AF_INET6, STREAM, TCP, "", ("::1", port, 0, 0)),
            (socket.AF_INET, STREAM, TCP, "", ("127.0.0.1", port)),
        ]
        subclass_getaddrinfo(loop, infos)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "dual.invalid", port, happy_eyeballs_delay=0.25
        )
        assert t.get_extra_info("peername") == ("127.0.0.1", port)
        await echo_check(t, p)
        await close_client(t, p)
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


def test_happy_eyeballs_staggers_a_slow_attempt(loop):
    before = fd_count()
    delay = 0.2

    async def main():
        server, _, (host, port) = await start_echo_server(loop)
        slow = ("192.0.2.1", 9)  # TEST-NET-1: never actually connected to
        infos = [
            (socket.AF_INET, STREAM, TCP, "", slow),
            (socket.AF_INET, STREAM, TCP, "", ("127.0.0.1", port)),
        ]
        subclass_getaddrinfo(loop, infos)
        attempts = record_connect_attempts(loop, hang=(slow,))
        t0 = time.monotonic()
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "slow.invalid", port, happy_eyeballs_delay=delay
        )
        elapsed = time.monotonic() - t0
        assert attempts == [slow, ("127.0.0.1", port)]
        assert delay * 0.9 <= elapsed < delay + 5
        assert t.get_extra_info("peername") == ("127.0.0.1", port)
        await echo_check(t, p)
        await close_client(t, p)
        await close_server(server)

    run(loop, main())
    # The losing attempt's socket was closed when it was cancelled.
    assert fd_count() == before


def test_create_connection_cancelled_closes_socket(loop):
    before = fd_count()

    async def main():
        slow = ("192.0.2.1", 9)
        subclass_getaddrinfo(loop, [(socket.AF_INET, STREAM, TCP, "", slow)])
        record_connect_attempts(loop, hang=(slow,))
        task = loop.create_task(loop.create_connection(asyncio.Protocol, "slow.invalid", 9))
        await settle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(loop, main())
    assert fd_count() == before


def test_create_connection_cancelled_while_transport_starts(loop):
    """Cancelled once the transport exists: the transport is closed, and the
    protocol still sees connection_made() then connection_lost()."""
    before = fd_count()

    async def main():
        server, sfactory, addr = await start_echo_server(loop)
        protocols = []
        task = None

        def factory():
            p = Recorder(loop)
            protocols.append(p)
            # Runs before the transport's own callbacks (connection_made, then
            # the waiter's result).
            loop.call_soon(task.cancel)
            return p

        task = loop.create_task(loop.create_connection(factory, *addr))
        with pytest.raises(asyncio.CancelledError):
            await task
        (p,) = protocols
        await p.lost
        assert p.events == ["made", "lost"]
        assert p.lost.result() is None
        sp = await sfactory.wait_for(1)
        await sp.lost
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


def test_create_connection_getaddrinfo_error(loop):
    async def failing(host, port, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    loop.getaddrinfo = failing
    before = fd_count()

    async def main():
        with pytest.raises(socket.gaierror) as info:
            await loop.create_connection(asyncio.Protocol, "nowhere.invalid", 80)
        assert info.value.errno == socket.EAI_NONAME
        with pytest.raises(socket.gaierror):
            await loop.create_server(asyncio.Protocol, "nowhere.invalid", 80)
        with pytest.raises(socket.gaierror):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", 80, local_addr=("nowhere.invalid", 0)
            )
        s = socket.socket()
        s.setblocking(False)
        with pytest.raises(socket.gaierror):
            await loop.sock_connect(s, ("nowhere.invalid", 80))
        s.close()

    run(loop, main())
    assert fd_count() == before


def test_create_connection_protocol_factory_error_closes_socket(loop):
    before = fd_count()

    def factory():
        raise ZeroDivisionError

    async def main():
        server, sfactory, addr = await start_echo_server(loop)
        with pytest.raises(ZeroDivisionError):
            await loop.create_connection(factory, *addr)
        sp = await sfactory.wait_for(1)
        await sp.lost  # the server sees the client go away
        await close_server(server)

    with warnings.catch_warnings():
        # asyncio leaves the socket to the garbage collector.
        warnings.simplefilter("ignore", ResourceWarning)
        run(loop, main())
        gc.collect()
    assert fd_count() == before


NO_HOSTNAME = "You must set server_hostname when using ssl without a host"
SSL_ARGUMENT_ERRORS = [
    (dict(server_hostname="example.com"), "server_hostname is only meaningful with ssl"),
    (dict(ssl=False, server_hostname="example.com"), "server_hostname is only meaningful with ssl"),
    (dict(ssl=True, host=None, port=80), NO_HOSTNAME),
    (dict(ssl=True, host="", port=80), NO_HOSTNAME),
    (dict(ssl_handshake_timeout=1.0), "ssl_handshake_timeout is only meaningful with ssl"),
    (dict(ssl_shutdown_timeout=1.0), "ssl_shutdown_timeout is only meaningful with ssl"),
]


@pytest.mark.parametrize("kwargs, message", SSL_ARGUMENT_ERRORS)
def test_create_connection_ssl_argument_errors(loop, kwargs, message):
    kwargs = dict(kwargs)
    host = kwargs.pop("host", "127.0.0.1")
    port = kwargs.pop("port", 80)
    before = fd_count()

    async def main():
        with pytest.raises(ValueError) as info:
            await loop.create_connection(asyncio.Protocol, host, port, **kwargs)
        assert str(info.value) == message

    run(loop, main())
    assert fd_count() == before


def test_create_connection_sock_argument_errors(loop):
    async def main():
        with socket.socket(type=socket.SOCK_DGRAM) as dgram:
            with pytest.raises(ValueError) as info:
                await loop.create_connection(asyncio.Protocol, sock=dgram)
            assert str(info.value) == f"A Stream Socket was expected, got {dgram!r}"
        with socket.socket() as s:
            with pytest.raises(ValueError) as info:
                await loop.create_connection(asyncio.Protocol, "127.0.0.1", 80, sock=s)
            assert str(info.value) == "host/port and sock can not be specified at the same time"
            with pytest.raises(ValueError) as info:
                await loop.create_connection(asyncio.Protocol, port=80, sock=s)
            assert str(info.value) == "host/port and sock can not be specified at the same time"
            assert s.fileno() != -1
        with pytest.raises(ValueError) as info:
            await loop.create_connection(asyncio.Protocol)
        assert str(info.value) == "host and port was not specified and no sock specified"
        with ssl_socket() as s:
            with pytest.raises(TypeError, match="^Socket cannot be of type SSLSocket$"):
                await loop.create_connection(asyncio.Protocol, sock=s)

    run(loop, main())


def test_create_connection_unix_sock_allowed(loop):
    before = fd_count()

    async def main():
        a, b = socket.socketpair()
        t, p = await loop.create_connection(lambda: Recorder(loop), sock=a)
        b.sendall(b"hello")
        assert await p.read_exactly(5) == b"hello"
        await close_client(t, p)
        b.close()

    run(loop, main())
    assert fd_count() == before


def test_create_connection_debug_log(loop, caplog):
    loop.set_debug(True)
    caplog.set_level(logging.DEBUG, logger="asyncio")

    async def main():
        server, _, addr = await start_echo_server(loop)
        t, p = await loop.create_connection(lambda: Recorder(loop), *addr)
        await close_client(t, p)
        await close_server(server)
        return server, t, p

    server, t, p = run(loop, main())
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert f"{server!r} is serving" in messages
    assert any(
        m.endswith(f" connected to 127.0.0.1:{t.get_extra_info('peername')[1]!r}: ({t!r}, {p!r})")
        for m in messages
    ), messages


# ---------------------------------------------------------------- create_server


def passive_families(host):
    infos = socket.getaddrinfo(host, 0, socket.AF_UNSPEC, STREAM, 0, socket.AI_PASSIVE)
    return sorted({i[0] for i in infos})


@pytest.mark.parametrize("host", [None, ""])
def test_create_server_all_interfaces(loop, host):
    before = fd_count()

    async def main():
        server = await loop.create_server(lambda: Echo(loop), host, 0)
        socks = server.sockets
        assert sorted(s.family for s in socks) == passive_families(None)
        for s in socks:
            assert isinstance(s, trsock.TransportSocket)
            assert s.gettimeout() == 0
            assert s.getsockname()[0] in ("0.0.0.0", "::")
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert server.is_serving()
        v4 = [s for s in socks if s.family == socket.AF_INET][0]
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", v4.getsockname()[1]
        )
        await echo_check(t, p)
        await close_client(t, p)
        await close_server(server)
        assert server.sockets == ()
        assert not server.is_serving()

    run(loop, main())
    assert fd_count() == before


def test_create_server_port_none_and_port_zero(loop):
    before = fd_count()

    async def main():
        for port in (None, 0, "0"):
            server = await loop.create_server(lambda: Echo(loop), "127.0.0.1", port)
            (sock,) = server.sockets
            assert sock.getsockname()[0] == "127.0.0.1"
            assert sock.getsockname()[1] != 0
            await close_server(server)
        # Only a port: all interfaces.
        server = await loop.create_server(lambda: Echo(loop), port=0)
        assert sorted(s.family for s in server.sockets) == passive_families(None)
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


def test_create_server_host_sequence(loop):
    before = fd_count()
    hosts = ["127.0.0.1", "::1"] if HAS_IPV6 else ["127.0.0.1"]

    async def main():
        server = await loop.create_server(lambda: Echo(loop), hosts, 0)
        names = sorted(s.getsockname()[0] for s in server.sockets)
        assert names == sorted(hosts)
        for s in server.sockets:
            t, p = await loop.create_connection(lambda: Recorder(loop), *s.getsockname()[:2])
            await echo_check(t, p)
            await close_client(t, p)
        await close_server(server)
        # A host given twice (with port 0: the same addrinfo) is bound once.
        server = await loop.create_server(lambda: Echo(loop), ["127.0.0.1", "127.0.0.1"], 0)
        assert len(server.sockets) == 1
        await close_server(server)
        # A tuple is a sequence too.
        server = await loop.create_server(lambda: Echo(loop), ("127.0.0.1",), 0)
        assert len(server.sockets) == 1
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


def test_create_server_localhost_resolves_through_getaddrinfo(loop):
    calls = spy_getaddrinfo(loop)

    async def main():
        server = await loop.create_server(lambda: Echo(loop), "127.0.0.1", 0)
        await close_server(server)
        assert calls == []
        server = await loop.create_server(lambda: Echo(loop), "localhost", 0)
        assert [c[0] for c in calls] == ["localhost"]
        assert server.sockets
        await close_server(server)

    run(loop, main())


def test_create_server_reuse_address(loop):
    async def main():
        server = await loop.create_server(lambda: Echo(loop), "127.0.0.1", 0, reuse_address=False)
        assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        await close_server(server)

    run(loop, main())


def test_create_server_reuse_port(loop):
    before = fd_count()

    async def main():
        s1 = await loop.create_server(lambda: Echo(loop), "127.0.0.1", 0, reuse_port=True)
        sock = s1.sockets[0]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        port = sock.getsockname()[1]
        s2 = await loop.create_server(lambda: Echo(loop), "127.0.0.1", port, reuse_port=True)
        assert s2.sockets[0].getsockname() == ("127.0.0.1", port)
        await close_server(s1)
        t, p = await loop.create_connection(lambda: Recorder(loop), "127.0.0.1", port)
        await echo_check(t, p)
        await close_client(t, p)
        await close_server(s2)

    run(loop, main())
    assert fd_count() == before


def test_create_server_reuse_port_unsupported(loop, monkeypatch):
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    before = fd_count()

    async def main():
        with pytest.raises(ValueError) as info:
            await loop.create_server(lambda: Echo(loop), "127.0.0.1", 0, reuse_port=True)
        assert str(info.value) == "reuse_port not supported by socket module"

    run(loop, main())
    assert fd_count() == before


def test_create_server_address_in_use(loop):
    before = fd_count()

    async def main():
        s1 = await loop.create_server(lambda: Echo(loop), "127.0.0.1", 0)
        addr = s1.sockets[0].getsockname()
        with pytest.raises(OSError) as info:
            await loop.create_server(lambda: Echo(loop), *addr)
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value) == (
            f"[Errno {errno.EADDRINUSE}] error while attempting to bind on address "
            f"{addr!r}: {BIND_IN_USE}"
        )
        assert info.value.__cause__ is None and info.value.__suppress_context__
        # A failed bind in a multi-host server closes the sockets already made.
        with pytest.raises(OSError):
            await loop.create_server(lambda: Echo(loop), ["127.0.0.1", "127.0.0.2"], addr[1])
        await close_server(s1)

    run(loop, main())
    assert fd_count() == before


def test_create_server_sock(loop):
    before = fd_count()

    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await loop.create_server(lambda: Echo(loop), sock=sock)
        assert sock.gettimeout() == 0
        assert server.sockets[0].fileno() == sock.fileno()
        t, p = await loop.create_connection(lambda: Recorder(loop), *sock.getsockname())
        await echo_check(t, p)
        await close_client(t, p)
        await close_server(server)
        assert sock.fileno() == -1

    run(loop, main())
    assert fd_count() == before


def test_create_server_argument_errors(loop):
    async def main():
        with pytest.raises(ValueError) as info:
            await loop.create_server(asyncio.Protocol)
        assert str(info.value) == "Neither host/port nor sock were specified"
        with socket.socket() as s:
            with pytest.raises(ValueError) as info:
                await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, sock=s)
            assert str(info.value) == "host/port and sock can not be specified at the same time"
        with socket.socket(type=socket.SOCK_DGRAM) as s:
            with pytest.raises(ValueError) as info:
                await loop.create_server(asyncio.Protocol, sock=s)
            assert str(info.value) == f"A Stream Socket was expected, got {s!r}"
        for bad in (True, False):
            with pytest.raises(TypeError) as info:
                await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=bad)
            assert str(info.value) == "ssl argument must be an SSLContext or None"
        with pytest.raises(ValueError) as info:
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl_handshake_timeout=1)
        assert str(info.value) == "ssl_handshake_timeout is only meaningful with ssl"
        with pytest.raises(ValueError) as info:
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl_shutdown_timeout=1)
        assert str(info.value) == "ssl_shutdown_timeout is only meaningful with ssl"
        with ssl_socket() as s:
            with pytest.raises(TypeError, match="^Socket cannot be of type SSLSocket$"):
                await loop.create_server(asyncio.Protocol, sock=s)

    before = fd_count()
    run(loop, main())
    assert fd_count() == before


def test_server_basics(loop):
    async def main():
        server = await loop.create_server(lambda: Echo(loop), "127.0.0.1", 0)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.get_loop() is loop
        assert repr(server) == f"<Server sockets={server.sockets!r}>"
        assert server.sockets is not server.sockets  # a new tuple each time
        assert server.sockets[0].fileno() == server.sockets[0].fileno()
        await close_server(server)
        assert repr(server) == "<Server sockets=()>"
        server.close()  # idempotent
        await server.wait_closed()

    run(loop, main())


def test_start_serving_false(loop):
    before = fd_count()

    async def main():
        server = await loop.create_server(
            lambda: Echo(loop), "127.0.0.1", 0, start_serving=False
        )
        assert not server.is_serving()
        addr = server.sockets[0].getsockname()
        # Not listening yet: connecting is refused.
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, *addr)
        await server.start_serving()
        assert server.is_serving()
        await server.start_serving()  # idempotent
        assert server.is_serving()
        t, p = await loop.create_connection(lambda: Recorder(loop), *addr)
        await echo_check(t, p)
        await close_client(t, p)
        await close_server(server)
        assert not server.is_serving()

    run(loop, main())
    assert fd_count() == before


def test_serve_forever(loop):
    before = fd_count()

    async def main():
        server = await loop.create_server(
            lambda: Echo(loop), "127.0.0.1", 0, start_serving=False
        )
        addr = server.sockets[0].getsockname()
        task = loop.create_task(server.serve_forever())
        await settle()
        assert server.is_serving()  # serve_forever() starts serving
        with pytest.raises(RuntimeError) as info:
            await server.serve_forever()
        assert str(info.value) == f"server {server!r} is already being awaited on serve_forever()"
        t, p = await loop.create_connection(lambda: Recorder(loop), *addr)
        await echo_check(t, p)
        await close_client(t, p)
        # Cancelling serve_forever() closes the server.
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(RuntimeError) as info:
            await server.serve_forever()
        assert str(info.value) == f"server {server!r} is closed"
        assert str(info.value) == "server <Server sockets=()> is closed"

    run(loop, main())
    assert fd_count() == before


def test_serve_forever_ends_when_closed(loop):
    async def main():
        server = await loop.create_server(lambda: Echo(loop), "127.0.0.1", 0)
        task = loop.create_task(server.serve_forever())
        await settle()
        server.close()  # cancels the serve_forever() future
        with pytest.raises(asyncio.CancelledError):
            await task

    run(loop, main())


def test_wait_closed_waits_for_connections(loop):
    before = fd_count()

    async def main():
        server, factory, addr = await start_echo_server(loop)
        t, p = await loop.create_connection(lambda: Recorder(loop), *addr)
        sp = await factory.wait_for(1)
        waiter = loop.create_task(server.wait_closed())
        await settle()
        assert not waiter.done()
        server.close()
        await settle()
        # Closed, but a connection is still attached.
        assert not waiter.done()
        late = loop.create_task(server.wait_closed())
        await settle()
        # asyncio 3.11: wait_closed() called after close() returns at once; from 3.12.1
        # it waits for the connections too.
        assert late.done() is not WAIT_CLOSED_WAITS_FOR_CONNECTIONS
        await echo_check(t, p)  # the connection outlives its server's close()
        await close_client(t, p)
        await sp.lost
        await asyncio.wait_for(waiter, 5)
        assert waiter.result() is None
        await asyncio.wait_for(late, 5)

    run(loop, main())
    assert fd_count() == before


def test_wait_closed_without_connections(loop):
    async def main():
        server = await loop.create_server(lambda: Echo(loop), "127.0.0.1", 0)
        waiter = loop.create_task(server.wait_closed())
        await settle()
        assert not waiter.done()
        server.close()
        await asyncio.wait_for(waiter, 5)

    run(loop, main())


def test_server_async_with(loop):
    before = fd_count()

    async def main():
        async with await loop.create_server(lambda: Echo(loop), "127.0.0.1", 0) as server:
            assert server.is_serving()
            addr = server.sockets[0].getsockname()
            t, p = await loop.create_connection(lambda: Recorder(loop), *addr)
            await echo_check(t, p)
            await close_client(t, p)
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, *addr)

    run(loop, main())
    assert fd_count() == before


def test_server_accepts_many_connections(loop):
    before = fd_count()
    n = 20

    async def main():
        server, factory, addr = await start_echo_server(loop)
        # Connect with plain sockets first, so that many wait in the accept queue.
        clients = []
        for _ in range(n):
            c = socket.socket()
            c.connect(addr)
            clients.append(c)
        await factory.wait_for(n)
        peers = sorted(p.transport.get_extra_info("peername") for p in factory.protocols)
        assert peers == sorted(c.getsockname() for c in clients)
        for c in clients:
            c.close()
        for p in factory.protocols:
            await p.lost
        await close_server(server)

    run(loop, main())
    assert fd_count() == before


def test_server_close_stops_accepting(loop):
    before = fd_count()

    async def main():
        server, factory, addr = await start_echo_server(loop)
        server.close()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, *addr)
        await server.wait_closed()
        assert factory.protocols == []

    run(loop, main())
    assert fd_count() == before


@pytest.mark.parametrize("debug", [False, True])
def test_accept_protocol_factory_error(loop, debug):
    before = fd_count()
    loop.set_debug(debug)
    contexts = []
    # Keep no reference to the exception: asyncio leaves the accepted socket to
    # the garbage collector, and the traceback keeps it alive.
    loop.set_exception_handler(
        lambda lp, ctx: contexts.append((ctx["message"], type(ctx["exception"]), sorted(ctx)))
    )

    def factory():
        raise ZeroDivisionError("no protocol")

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), *server.sockets[0].getsockname()
        )
        # The accepted connection is dropped (by asyncio: when it is collected).
        while not (p.eof or p.lost.done()):
            gc.collect()
            await asyncio.sleep(0.01)
        await close_client(t, p)
        await close_server(server)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        run(loop, main())
        gc.collect()
    assert fd_count() == before
    if debug:
        assert contexts == [
            (
                "Error on transport creation for incoming connection",
                ZeroDivisionError,
                ["exception", "message"],
            )
        ]
    else:
        assert contexts == []


class FlakyListener(socket.socket):
    """A listening socket whose accept() fails with ``error`` while ``failures`` > 0."""

    failures = 0
    error = errno.EMFILE

    def accept(self):
        if self.failures > 0:
            self.failures -= 1
            raise OSError(self.error, "simulated accept() failure")
        return super().accept()


def test_accept_out_of_resources_backs_off(loop):
    """EMFILE in accept(): the exception handler is told, the listening socket is
    left alone for ACCEPT_RETRY_DELAY (1 s), then accepting resumes."""
    before = fd_count()
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp.time(), ctx)))

    async def main():
        listener = FlakyListener()
        listener.bind(("127.0.0.1", 0))
        listener.failures = 1
        factory = Factory(loop)
        # backlog=1: one accept() per readiness event.
        server = await loop.create_server(factory, sock=listener, backlog=1)
        client = socket.socket()
        client.setblocking(False)
        t0 = loop.time()
        await loop.sock_connect(client, listener.getsockname())
        while not contexts:
            await asyncio.sleep(0.01)
        when, ctx = contexts[0]
        assert_accept_out_of_resources(ctx, listener, errno.EMFILE)
        # No busy loop meanwhile, and no accept before the retry delay.
        await asyncio.sleep(0.5)
        assert len(contexts) == 1
        assert factory.protocols == []
        sp = await asyncio.wait_for(factory.wait_for(1), 5)
        assert loop.time() - when >= 0.9
        assert loop.time() - t0 < 5
        assert sp.transport.get_extra_info("peername") == client.getsockname()
        await loop.sock_sendall(client, b"still serving")
        assert await loop.sock_recv(client, 100) == b"still serving"
        client.close()
        await sp.lost
        await close_server(server)

    run(loop, main())
    assert len(contexts) == 1
    assert fd_count() == before


def test_accept_other_error_is_reported_and_serving_goes_on(loop):
    before = fd_count()
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def main():
        listener = FlakyListener()
        listener.bind(("127.0.0.1", 0))
        listener.failures = 1
        listener.error = errno.EPROTO
        factory = Factory(loop)
        server = await loop.create_server(factory, sock=listener, backlog=1)
        client = socket.socket()
        client.setblocking(False)
        await loop.sock_connect(client, listener.getsockname())
        sp = await asyncio.wait_for(factory.wait_for(1), 5)
        client.close()
        await sp.lost
        await close_server(server)

    run(loop, main())
    assert len(contexts) == 1
    assert contexts[0]["message"].startswith("Exception in callback ")
    assert contexts[0]["exception"].errno == errno.EPROTO
    assert fd_count() == before


# ---------------------------------------------------------------- connect_accepted_socket


def test_connect_accepted_socket(loop):
    before = fd_count()

    async def main():
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.socket()
        client.connect(listener.getsockname())
        conn, _ = listener.accept()
        listener.close()
        t, p = await loop.connect_accepted_socket(lambda: Echo(loop), conn)
        assert isinstance(t, asyncio.Transport)
        assert conn.gettimeout() == 0
        assert t.get_extra_info("peername") == client.getsockname()
        client.setblocking(False)
        await loop.sock_sendall(client, b"accepted")
        assert await loop.sock_recv(client, 100) == b"accepted"
        client.close()
        await p.lost

    run(loop, main())
    assert fd_count() == before


def test_connect_accepted_socket_errors(loop):
    async def main():
        with socket.socket(type=socket.SOCK_DGRAM) as s:
            with pytest.raises(ValueError) as info:
                await loop.connect_accepted_socket(asyncio.Protocol, s)
            assert str(info.value) == f"A Stream Socket was expected, got {s!r}"
        with socket.socket() as s:
            with pytest.raises(ValueError) as info:
                await loop.connect_accepted_socket(asyncio.Protocol, s, ssl_handshake_timeout=1)
            assert str(info.value) == "ssl_handshake_timeout is only meaningful with ssl"
            with pytest.raises(ValueError) as info:
                await loop.connect_accepted_socket(asyncio.Protocol, s, ssl_shutdown_timeout=1)
            assert str(info.value) == "ssl_shutdown_timeout is only meaningful with ssl"
        with ssl_socket() as s:
            with pytest.raises(TypeError, match="^Socket cannot be of type SSLSocket$"):
                await loop.connect_accepted_socket(asyncio.Protocol, s)

    run(loop, main())


# ---------------------------------------------------------------- sock_*


def nb_socket(family=socket.AF_INET):
    s = socket.socket(family, STREAM)
    s.setblocking(False)
    return s


def nb_listener():
    s = nb_socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


async def connected_pair(loop):
    """(client, server-side conn) over TCP, both non-blocking, made with sock_*."""
    listener = nb_listener()
    client = nb_socket()
    accept = loop.create_task(loop.sock_accept(listener))
    await loop.sock_connect(client, listener.getsockname())
    conn, addr = await accept
    assert addr == client.getsockname()
    listener.close()
    return client, conn


def test_sock_roundtrip(loop):
    before = fd_count()
    payload = bytes(range(256)) * 16384  # 4 MiB: more than the socket buffers hold

    async def main():
        client, conn = await connected_pair(loop)
        assert conn.gettimeout() == 0

        async def reader():
            buf = bytearray(65536)
            got = bytearray()
            while len(got) < len(payload):
                n = await loop.sock_recv_into(conn, buf)
                assert n > 0
                got += buf[:n]
            return bytes(got)

        task = loop.create_task(reader())
        await loop.sock_sendall(client, payload)
        assert await task == payload
        # A writer and a reader were registered and have been removed again.
        assert loop.remove_writer(client) is False
        assert loop.remove_reader(conn) is False

        await loop.sock_sendall(conn, b"reply")
        assert await loop.sock_recv(client, 5) == b"reply"
        await loop.sock_sendall(client, b"")  # nothing to send
        await loop.sock_sendall(client, memoryview(b"view") )
        assert await loop.sock_recv(conn, 4) == b"view"
        client.close()
        assert await loop.sock_recv(conn, 10) == b""
        conn.close()

    run(loop, main())
    assert fd_count() == before


def test_sock_recv_waits_for_data(loop):
    async def main():
        client, conn = await connected_pair(loop)
        task = loop.create_task(loop.sock_recv(conn, 100))
        task2 = loop.create_task(loop.sock_recv_into(client, bytearray(10)))
        await settle()
        assert not task.done() and not task2.done()
        client.send(b"late")
        conn.send(b"0123456789abc")
        assert await task == b"late"
        assert await task2 == 10
        assert loop.remove_reader(conn) is False
        assert loop.remove_reader(client) is False
        client.close()
        conn.close()

    run(loop, main())


def test_sock_connect_resolves_names(loop):
    calls = spy_getaddrinfo(loop)
    before = fd_count()

    async def main():
        listener = nb_listener()
        port = listener.getsockname()[1]
        for address in [("127.0.0.1", port), ("localhost", port)]:
            client = nb_socket()
            await loop.sock_connect(client, address)
            assert client.getpeername() == ("127.0.0.1", port)
            client.close()
            conn, _ = await loop.sock_accept(listener)
            conn.close()
        assert calls == [("localhost", port)]
        listener.close()

    run(loop, main())
    assert fd_count() == before


@needs_ipv6
def test_sock_connect_ipv6(loop):
    async def main():
        listener = nb_socket(socket.AF_INET6)
        listener.bind(("::1", 0))
        listener.listen()
        client = nb_socket(socket.AF_INET6)
        await loop.sock_connect(client, ("::1", listener.getsockname()[1]))
        conn, addr = await loop.sock_accept(listener)
        assert addr == client.getsockname()
        for s in (client, conn, listener):
            s.close()

    run(loop, main())


def test_sock_connect_refused(loop):
    before = fd_count()
    port = free_port()

    async def main():
        client = nb_socket()
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.sock_connect(client, ("127.0.0.1", port))
        assert str(info.value) == (
            f"[Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {port})"
        )
        assert loop.remove_writer(client) is False
        client.close()

    run(loop, main())
    assert fd_count() == before


def test_sock_accept_waits(loop):
    async def main():
        listener = nb_listener()
        task = loop.create_task(loop.sock_accept(listener))
        await settle()
        assert not task.done()
        client = socket.socket()
        client.connect(listener.getsockname())
        conn, addr = await task
        assert addr == client.getsockname()
        assert loop.remove_reader(listener) is False
        for s in (client, conn, listener):
            s.close()

    run(loop, main())


SOCK_METHODS = ["sock_recv", "sock_recv_into", "sock_sendall", "sock_connect", "sock_accept"]


def sock_call(loop, name, sock):
    if name == "sock_recv":
        return loop.sock_recv(sock, 10)
    if name == "sock_recv_into":
        return loop.sock_recv_into(sock, bytearray(10))
    if name == "sock_sendall":
        return loop.sock_sendall(sock, b"data")
    if name == "sock_connect":
        return loop.sock_connect(sock, ("127.0.0.1", 1))
    return loop.sock_accept(sock)


@pytest.mark.parametrize("name", SOCK_METHODS)
def test_sock_blocking_socket_in_debug_mode(loop, name):
    loop.set_debug(True)

    async def main():
        with socket.socket() as s:
            with pytest.raises(ValueError) as info:
                await sock_call(loop, name, s)
            assert str(info.value) == "the socket must be non-blocking"
            s.settimeout(1.0)
            with pytest.raises(ValueError):
                await sock_call(loop, name, s)

    run(loop, main())


@pytest.mark.parametrize("name", SOCK_METHODS)
def test_sock_ssl_socket_refused(loop, name):
    async def main():
        with ssl_socket() as s:
            with pytest.raises(TypeError) as info:
                await sock_call(loop, name, s)
            assert str(info.value) == "Socket cannot be of type SSLSocket"

    run(loop, main())


@pytest.mark.parametrize("name", ["sock_recv", "sock_recv_into", "sock_accept", "sock_sendall"])
def test_sock_cancel_removes_watch(loop, name):
    before = fd_count()

    async def main():
        client, conn = await connected_pair(loop)
        listener = nb_listener()
        big = b"x" * (32 * 1024 * 1024)  # more than fits: sock_sendall waits
        coro = {
            "sock_recv": lambda: loop.sock_recv(conn, 10),
            "sock_recv_into": lambda: loop.sock_recv_into(conn, bytearray(10)),
            "sock_accept": lambda: loop.sock_accept(listener),
            "sock_sendall": lambda: loop.sock_sendall(client, big),
        }[name]
        task = loop.create_task(coro())
        await settle()
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if name == "sock_sendall":
            assert loop.remove_writer(client) is False
        else:
            sock = listener if name == "sock_accept" else conn
            assert loop.remove_reader(sock) is False
        # The socket is usable again.
        if name != "sock_sendall":
            client.send(b"again")
            assert await loop.sock_recv(conn, 5) == b"again"
        for s in (client, conn, listener):
            s.close()

    run(loop, main())
    assert fd_count() == before


def test_sock_recv_cancel_keeps_the_newer_reader(loop):
    """A second sock_recv() on the same socket replaces the first one's reader:
    cancelling the first must not remove the second's."""

    async def main():
        client, conn = await connected_pair(loop)
        first = loop.create_task(loop.sock_recv(conn, 10))
        await settle()
        second = loop.create_task(loop.sock_recv(conn, 10))
        await settle()
        first.cancel()
        await settle()
        assert first.cancelled()
        client.send(b"second")
        assert await asyncio.wait_for(second, 5) == b"second"
        assert loop.remove_reader(conn) is False
        client.close()
        conn.close()

    run(loop, main())


def test_sock_recv_on_transport_socket(loop):
    async def main():
        server, factory, addr = await start_echo_server(loop)
        t, p = await loop.create_connection(lambda: Recorder(loop), *addr)
        tsock = t.get_extra_info("socket")
        fd = tsock.fileno()
        alias = socket.socket(tsock.family, tsock.type, tsock.proto, fileno=fd)
        try:
            with pytest.raises(RuntimeError) as info:
                await loop.sock_recv(alias, 10)
            assert str(info.value) == f"File descriptor {fd!r} is used by transport {t!r}"
        finally:
            alias.detach()
        await close_client(t, p)
        await close_server(server)

    run(loop, main())
