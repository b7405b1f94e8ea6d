"""Connection setup over Unix sockets: create_unix_server, create_unix_connection,
the stale socket file, abstract names, and the sock_* coroutines on AF_UNIX.

Every test runs against ferroloop and against asyncio's own loop (the oracle).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pathlib
import socket
import uuid

import pytest
from net_helpers import Echo, Factory, Recorder, close_client, fd_count, run

UNIX = socket.AF_UNIX


@pytest.fixture
def sock_dir(tmp_path_factory):
    # Short paths: sun_path holds 108 bytes.
    return tmp_path_factory.mktemp("sk")


def path_variants(sock_dir):
    base = str(sock_dir / "s.sock")
    abstract = "\0ferroloop-test-" + uuid.uuid4().hex
    return {
        "str": base,
        "bytes": os.fsencode(base),
        "pathlib": pathlib.Path(base),
        "abstract-str": abstract,
        "abstract-bytes": os.fsencode(abstract + "-b"),
    }


@pytest.mark.parametrize("kind", ["str", "bytes", "pathlib", "abstract-str", "abstract-bytes"])
def test_unix_server_and_connection(loop, sock_dir, kind):
    path = path_variants(sock_dir)[kind]
    before = fd_count()

    async def main():
        factory = Factory(loop)
        server = await loop.create_unix_server(factory, path)
        (lsock,) = server.sockets
        assert lsock.family == UNIX
        assert lsock.gettimeout() == 0
        name = lsock.getsockname()
        fspath = os.fspath(path)
        if kind.startswith("abstract"):
            assert name == os.fsencode(fspath)  # Linux returns abstract names as bytes
        else:
            assert name == os.fsdecode(fspath)
            assert os.path.exists(fspath)
        assert server.is_serving()

        t, p = await loop.create_unix_connection(lambda: Recorder(loop), path)
        assert isinstance(t, asyncio.Transport)
        assert t.get_extra_info("socket").family == UNIX
        assert t.get_extra_info("peername") == name
        t.write(b"over unix")
        assert await p.read_exactly(9) == b"over unix"
        sp = await factory.wait_for(1)
        assert sp.transport.get_extra_info("sockname") == name
        await close_client(t, p)
        await sp.lost
        server.close()
        await server.wait_closed()
        assert server.sockets == ()

    run(loop, main())
    assert fd_count() == before


def test_unix_stale_socket_file_is_removed(loop, sock_dir):
    path = str(sock_dir / "stale.sock")
    # A socket file with nobody behind it, as a crashed server leaves it.
    s = socket.socket(UNIX)
    s.bind(path)
    s.close()
    assert os.path.exists(path)
    before = fd_count()

    async def main():
        server = await loop.create_unix_server(lambda: Echo(loop), path)
        t, p = await loop.create_unix_connection(lambda: Recorder(loop), path)
        t.write(b"x")
        assert await p.read_exactly(1) == b"x"
        await close_client(t, p)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert fd_count() == before


def test_unix_server_does_not_remove_other_files(loop, sock_dir):
    path = str(sock_dir / "regular")
    with open(path, "w") as f:
        f.write("keep me")
    before = fd_count()

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_unix_server(lambda: Echo(loop), path)
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value) == f"[Errno {errno.EADDRINUSE}] Address {path!r} is already in use"
        assert info.value.__suppress_context__

    run(loop, main())
    with open(path) as f:
        assert f.read() == "keep me"
    assert fd_count() == before


def test_unix_server_address_in_use_by_a_live_server(loop, sock_dir):
    path = str(sock_dir / "live.sock")
    before = fd_count()

    async def main():
        s1 = await loop.create_unix_server(lambda: Echo(loop), path)
        # The stale-file check removes the live server's file (as asyncio does),
        # so the second bind succeeds and the first server is unreachable by name.
        s2 = await loop.create_unix_server(lambda: Echo(loop), path)
        t, p = await loop.create_unix_connection(lambda: Recorder(loop), path)
        await close_client(t, p)
        for s in (s1, s2):
            s.close()
            await s.wait_closed()

    run(loop, main())
    assert fd_count() == before


def test_unix_server_stale_check_error_is_logged(loop, sock_dir, caplog):
    blocker = sock_dir / "file"
    blocker.write_text("")
    path = str(blocker / "s.sock")  # a path through a regular file: ENOTDIR
    before = fd_count()

    async def main():
        with pytest.raises(NotADirectoryError):
            await loop.create_unix_server(lambda: Echo(loop), path)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run(loop, main())
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert records[0].getMessage() == (
        f"Unable to check or remove stale UNIX socket {path!r}: "
        f"NotADirectoryError({errno.ENOTDIR}, 'Not a directory')"
    )
    assert fd_count() == before


def test_unix_abstract_name_is_never_unlinked(loop, monkeypatch):
    removed = []
    monkeypatch.setattr(os, "remove", lambda p: removed.append(p))
    name = "\0ferroloop-test-" + uuid.uuid4().hex

    async def main():
        server = await loop.create_unix_server(lambda: Echo(loop), name)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert removed == []


def test_unix_server_sock(loop, sock_dir):
    path = str(sock_dir / "given.sock")
    before = fd_count()

    async def main():
        sock = socket.socket(UNIX)
        sock.bind(path)
        server = await loop.create_unix_server(lambda: Echo(loop), sock=sock)
        assert sock.gettimeout() == 0
        t, p = await loop.create_unix_connection(lambda: Recorder(loop), path)
        t.write(b"abc")
        assert await p.read_exactly(3) == b"abc"
        await close_client(t, p)
        server.close()
        await server.wait_closed()
        assert sock.fileno() == -1

    run(loop, main())
    assert fd_count() == before


def test_unix_server_start_serving_false(loop, sock_dir):
    path = str(sock_dir / "later.sock")

    async def main():
        server = await loop.create_unix_server(lambda: Echo(loop), path, start_serving=False)
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(asyncio.Protocol, path)
        await server.start_serving()
        await server.start_serving()
        t, p = await loop.create_unix_connection(lambda: Recorder(loop), path)
        t.write(b"ok")
        assert await p.read_exactly(2) == b"ok"
        await close_client(t, p)
        async with server:
            pass
        assert not server.is_serving()

    run(loop, main())


def test_unix_connection_sock(loop):
    before = fd_count()

    async def main():
        a, b = socket.socketpair()
        t, p = await loop.create_unix_connection(lambda: Recorder(loop), sock=a)
        assert a.gettimeout() == 0
        b.sendall(b"pair")
        assert await p.read_exactly(4) == b"pair"
        await close_client(t, p)
        b.close()

    run(loop, main())
    assert fd_count() == before


def test_unix_connection_errors(loop, sock_dir):
    missing = str(sock_dir / "missing.sock")
    refused = str(sock_dir / "refused.sock")
    s = socket.socket(UNIX)
    s.bind(refused)  # bound, never listening
    before = fd_count()

    async def main():
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(asyncio.Protocol, missing)
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(asyncio.Protocol, refused)
        with socket.socket(UNIX) as u:
            with pytest.raises(ValueError) as info:
                await loop.create_unix_connection(asyncio.Protocol, missing, sock=u)
            assert str(info.value) == "path and sock can not be specified at the same time"
        with pytest.raises(ValueError) as info:
            await loop.create_unix_connection(asyncio.Protocol)
        assert str(info.value) == "no path and sock were specified"
        for bad in (socket.socket(), socket.socket(UNIX, socket.SOCK_DGRAM)):
            with bad:
                with pytest.raises(ValueError) as info:
                    await loop.create_unix_connection(asyncio.Protocol, sock=bad)
                assert str(info.value) == (
                    f"A UNIX Domain Stream Socket was expected, got {bad!r}"
                )
        with pytest.raises(ValueError) as info:
            await loop.create_unix_connection(asyncio.Protocol, missing, server_hostname="x")
        assert str(info.value) == "server_hostname is only meaningful with ssl"
        with pytest.raises(ValueError) as info:
            await loop.create_unix_connection(asyncio.Protocol, missing, ssl_handshake_timeout=1)
        assert str(info.value) == "ssl_handshake_timeout is only meaningful with ssl"
        with pytest.raises(ValueError) as info:
            await loop.create_unix_connection(asyncio.Protocol, missing, ssl_shutdown_timeout=1)
        assert str(info.value) == "ssl_shutdown_timeout is only meaningful with ssl"
        with pytest.raises(ValueError) as info:
            await loop.create_unix_connection(asyncio.Protocol, missing, ssl=True)
        assert str(info.value) == "you have to pass server_hostname when using ssl"

    run(loop, main())
    s.close()
    assert fd_count() == before - 1


def test_unix_server_errors(loop, sock_dir):
    path = str(sock_dir / "e.sock")
    before = fd_count()

    async def main():
        with socket.socket(UNIX) as u:
            with pytest.raises(ValueError) as info:
                await loop.create_unix_server(asyncio.Protocol, path, sock=u)
            assert str(info.value) == "path and sock can not be specified at the same time"
        with pytest.raises(ValueError) as info:
            await loop.create_unix_server(asyncio.Protocol)
        assert str(info.value) == "path was not specified, and no sock specified"
        for bad in (socket.socket(), socket.socket(UNIX, socket.SOCK_DGRAM)):
            with bad:
                with pytest.raises(ValueError) as info:
                    await loop.create_unix_server(asyncio.Protocol, sock=bad)
                assert str(info.value) == (
                    f"A UNIX Domain Stream Socket was expected, got {bad!r}"
                )
        with pytest.raises(TypeError) as info:
            await loop.create_unix_server(asyncio.Protocol, path, ssl=True)
        assert str(info.value) == "ssl argument must be an SSLContext or None"
        with pytest.raises(ValueError) as info:
            await loop.create_unix_server(asyncio.Protocol, path, ssl_handshake_timeout=1)
        assert str(info.value) == "ssl_handshake_timeout is only meaningful with ssl"
        with pytest.raises(ValueError) as info:
            await loop.create_unix_server(asyncio.Protocol, path, ssl_shutdown_timeout=1)
        assert str(info.value) == "ssl_shutdown_timeout is only meaningful with ssl"
        assert not os.path.exists(path)

    run(loop, main())
    assert fd_count() == before


def test_unix_connect_accepted_socket(loop):
    before = fd_count()

    async def main():
        a, b = socket.socketpair()
        t, p = await loop.connect_accepted_socket(lambda: Echo(loop), a)
        b.setblocking(False)
        await loop.sock_sendall(b, b"echo me")
        got = b""
        while len(got) < 7:
            got += await loop.sock_recv(b, 100)
        assert got == b"echo me"
        b.close()
        await p.lost

    run(loop, main())
    assert fd_count() == before


def test_unix_sock_connect_and_accept(loop, sock_dir):
    path = str(sock_dir / "raw.sock")
    before = fd_count()

    async def main():
        listener = socket.socket(UNIX)
        listener.bind(path)
        listener.listen()
        listener.setblocking(False)
        calls = []
        real = loop.getaddrinfo

        async def spy(*args, **kwargs):  # a Unix path is never resolved
            calls.append(args)
            return await real(*args, **kwargs)

        loop.getaddrinfo = spy
        client = socket.socket(UNIX)
        client.setblocking(False)
        accept = loop.create_task(loop.sock_accept(listener))
        await loop.sock_connect(client, path)
        conn, addr = await accept
        assert conn.gettimeout() == 0
        assert calls == []
        await loop.sock_sendall(conn, b"raw")
        assert await loop.sock_recv(client, 3) == b"raw"
        for s in (client, conn, listener):
            s.close()

    run(loop, main())
    assert fd_count() == before
