"""TLS (``ssl=`` on connections and servers, ``start_tls``) against both loops.

Certificates are made for the tests by ``trustme``: a CA, a server certificate for
``localhost`` and ``127.0.0.1``, and a client certificate. Each test runs on ferroloop
and on asyncio's selector loop (the oracle), and states what both do.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
import weakref

import pytest
import trustme

from net_helpers import Echo, Factory, Recorder, close_client, close_server, fd_count, run, settle

# ---- certificates ----


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca):
    return ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture
def server_ctx(server_cert):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def client_ctx(ca):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


class Handlers:
    """Records what goes to the loop's exception handler."""

    def __init__(self, loop):
        self.contexts = []
        loop.set_exception_handler(lambda loop, ctx: self.contexts.append(ctx))

    @property
    def messages(self):
        return [c["message"] for c in self.contexts]


async def tls_server(loop, server_ctx, factory, **kwargs):
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx, **kwargs)
    return server, server.sockets[0].getsockname()[1]


async def sleep_until(predicate, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


# ---- echo ----


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_echo(loop, server_ctx, client_ctx, version):
    client_ctx.minimum_version = client_ctx.maximum_version = version

    async def main():
        factory = Factory(loop)
        server, port = await tls_server(loop, server_ctx, factory)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        assert isinstance(t, asyncio.Transport)
        assert p.events == ["made"]
        t.write(b"hello ")
        t.writelines([b"over ", bytearray(b"tls"), memoryview(b"!")])
        assert await p.read_exactly(15) == b"hello over tls!"

        sslobj = t.get_extra_info("ssl_object")
        assert isinstance(sslobj, ssl.SSLObject)
        assert sslobj.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        assert t.get_extra_info("cipher") == sslobj.cipher()
        assert t.get_extra_info("compression") is None
        assert t.get_extra_info("sslcontext") is client_ctx
        assert t.get_extra_info("peercert")["subjectAltName"] == (
            ("DNS", "localhost"),
            ("IP Address", "127.0.0.1"),
        )
        assert t.get_extra_info("peername") == ("127.0.0.1", port)
        assert t.get_extra_info("sockname")[0] == "127.0.0.1"
        assert t.get_extra_info("socket").fileno() >= 0
        assert t.get_extra_info("missing", "default") == "default"
        assert t.get_protocol() is p
        assert not t.can_write_eof()
        with pytest.raises(NotImplementedError):
            t.write_eof()
        with pytest.raises(TypeError, match="data: expecting a bytes-like instance, got str"):
            t.write("text")
        t.write(b"")  # nothing

        sp = factory.protocols[0]
        assert sp.transport.get_extra_info("peercert") is None  # no client certificate asked
        assert sp.transport.get_extra_info("ssl_object").server_side

        await close_client(t, p)
        assert t.is_closing()
        await sleep_until(lambda: sp.lost.done())
        assert sp.events == ["made", "eof", "lost"]
        assert sp.lost.result() is None
        # The peer's close_notify answering ours is an end of file too.
        assert p.events == ["made", "eof", "lost"]
        assert p.lost.result() is None
        await close_server(server)

    run(loop, main())


def test_transport_reprs_and_types(loop, server_ctx, client_ctx):
    async def main():
        server, port = await tls_server(loop, server_ctx, Factory(loop))
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        assert isinstance(t, asyncio.BaseTransport)
        assert t.get_write_buffer_limits() == (128 * 1024, 512 * 1024)
        t.set_write_buffer_limits(high=1000)
        assert t.get_write_buffer_limits() == (250, 1000)
        with pytest.raises(ValueError, match=r"high \(1\) must be >= low \(2\) must be >= 0"):
            t.set_write_buffer_limits(high=1, low=2)
        assert t.get_write_buffer_size() == 0
        assert t.is_reading()
        t.pause_reading()
        assert not t.is_reading()
        t.resume_reading()
        assert t.is_reading()
        await close_client(t, p)
        await close_server(server)

    run(loop, main())


def test_streams_echo_and_unix(loop, server_ctx, client_ctx, tmp_path):
    async def handle(reader, writer):
        while data := await reader.read(1000):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        w.write(b"line\n")
        assert await r.readline() == b"line\n"
        w.close()
        await w.wait_closed()
        await close_server(server)

        path = str(tmp_path / "tls.sock")
        server = await asyncio.start_unix_server(handle, path, ssl=server_ctx)
        r, w = await asyncio.open_unix_connection(path, ssl=client_ctx, server_hostname="localhost")
        w.write(b"unix\n")
        assert await r.readline() == b"unix\n"
        assert w.get_extra_info("peername") == path
        w.close()
        await w.wait_closed()
        await close_server(server)

    run(loop, main())


def test_connect_accepted_socket(loop, server_ctx, client_ctx):
    async def main():
        a, b = socket.socketpair()
        server_task = loop.create_task(loop.connect_accepted_socket(lambda: Echo(loop), a, ssl=server_ctx))
        t, p = await loop.create_connection(lambda: Recorder(loop), sock=b, ssl=client_ctx, server_hostname="localhost")
        st, sp = await server_task
        t.write(b"ping")
        assert await p.read_exactly(4) == b"ping"
        await close_client(t, p)
        await sp.lost

    run(loop, main())


def test_buffered_protocol_on_top(loop, server_ctx, client_ctx):
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(100)
            self.data = bytearray()
            self.sizes = []
            self.lost = loop.create_future()

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            self.sizes.append(sizehint)
            return self.buf

        def buffer_updated(self, nbytes):
            self.data += self.buf[:nbytes]

        def eof_received(self):
            pass

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        server, port = await tls_server(loop, server_ctx, Factory(loop))
        t, p = await loop.create_connection(Buffered, "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        payload = bytes(range(256)) * 40
        t.write(payload)
        await sleep_until(lambda: len(p.data) >= len(payload))
        assert bytes(p.data) == payload
        assert all(isinstance(s, int) for s in p.sizes)
        t.close()
        assert await p.lost is None
        await close_server(server)

    run(loop, main())


# ---- verification ----


def test_verification_failure(loop, server_ctx, caplog):
    untrusting = ssl.create_default_context()  # does not know the test CA
    loop.set_debug(True)  # SSL errors are OSErrors: logged in debug mode only
    caplog.set_level(logging.DEBUG, logger="asyncio")

    async def main():
        handlers = Handlers(loop)
        factory = Factory(loop)
        server, port = await tls_server(loop, server_ctx, factory)
        before = fd_count()
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", port, ssl=untrusting, server_hostname="localhost")
        assert "certificate verify failed" in str(info.value)
        await sleep_until(lambda: factory.protocols)
        await asyncio.sleep(0.1)
        # The server sees the connection reset during its handshake.
        assert handlers.messages == ["Error on transport creation for incoming connection"]
        assert isinstance(handlers.contexts[0]["exception"], ConnectionResetError)
        failures = [r for r in caplog.records if r.getMessage().endswith(": SSL handshake failed on verifying the certificate")]
        assert len(failures) == 1
        assert isinstance(failures[0].exc_info[1], ssl.SSLCertVerificationError)
        # The server's protocol never saw a connection.
        assert factory.protocols[0].events == []
        assert fd_count() <= before
        await close_server(server)

    run(loop, main())


def test_hostname_mismatch(loop, server_ctx, client_ctx):
    async def main():
        Handlers(loop)
        server, port = await tls_server(loop, server_ctx, Factory(loop))
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", port, ssl=client_ctx, server_hostname="other.example"
            )
        await close_server(server)

    run(loop, main())


def test_client_certificates(loop, ca, server_ctx, client_ctx):
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_ctx)
    ca.issue_cert("client@example.com").configure_cert(client_ctx)

    async def main():
        factory = Factory(loop)
        server, port = await tls_server(loop, server_ctx, factory)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        t.write(b"x")
        assert await p.read_exactly(1) == b"x"
        sp = factory.protocols[0]
        cert = sp.transport.get_extra_info("peercert")
        assert cert["subjectAltName"] == (("email", "client@example.com"),)
        await close_client(t, p)
        await close_server(server)

    run(loop, main())


def test_alpn_and_sni(loop, server_ctx, client_ctx):
    names = []

    def sni(sslobj, name, ctx):
        names.append((type(sslobj), name))

    server_ctx.sni_callback = sni
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client_ctx.set_alpn_protocols(["h2"])

    async def main():
        factory = Factory(loop)
        server, port = await tls_server(loop, server_ctx, factory)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        assert t.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        sp = await factory.wait_for(1)
        assert sp.transport.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        assert names == [(ssl.SSLObject, "localhost")]
        await close_client(t, p)
        await close_server(server)

    run(loop, main())


# ---- flow control ----


def test_large_transfer_both_ways_with_flow_control(loop, server_ctx, client_ctx):
    size = 8 * 1024 * 1024

    class Sender(Recorder):
        def __init__(self, loop):
            super().__init__(loop)
            self.pauses = 0
            self.resumes = 0
            self.can_write = loop.create_future()
            self.can_write.set_result(None)

        def pause_writing(self):
            self.pauses += 1
            self.can_write = self.loop.create_future()

        def resume_writing(self):
            self.resumes += 1
            self.can_write.set_result(None)

    async def handle(reader, writer):
        # Echo with the stream's flow control (drain).
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        t, p = await loop.create_connection(
            lambda: Sender(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        t.set_write_buffer_limits(high=64 * 1024)
        chunk = bytes(range(256)) * 256  # 64 KiB
        sent = 0
        while sent < size:
            await p.can_write
            t.write(chunk)
            sent += len(chunk)
            assert t.get_write_buffer_size() >= 0
        got = await p.read_exactly(size)
        assert got == chunk * (size // len(chunk))
        assert p.pauses >= 1
        assert p.resumes >= 1
        await close_client(t, p)
        await close_server(server)

    run(loop, main(), timeout=60)


def test_pause_reading_holds_data(loop, server_ctx, client_ctx):
    async def main():
        factory = Factory(loop)
        server, port = await tls_server(loop, server_ctx, factory)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        t.write(b"a")
        assert await p.read_exactly(1) == b"a"
        t.pause_reading()
        t.write(b"b")
        await asyncio.sleep(0.1)
        assert bytes(p.data) == b"a"
        t.resume_reading()
        assert await p.read_exactly(2) == b"ab"
        await close_client(t, p)
        await close_server(server)

    run(loop, main())


# ---- closing ----


def test_server_closes_with_close_notify(loop, server_ctx, client_ctx):
    class CloseAtOnce(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b"bye")
            transport.close()

    async def main():
        factory = Factory(loop, CloseAtOnce)
        server, port = await tls_server(loop, server_ctx, factory)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        assert await p.lost is None
        assert bytes(p.data) == b"bye"
        assert p.events == ["made", "eof", "lost"]
        sp = factory.protocols[0]
        assert await sp.lost is None
        assert sp.events == ["made", "eof", "lost"]
        await close_server(server)

    run(loop, main())


def test_peer_closes_without_close_notify(loop, server_ctx, client_ctx):
    async def main():
        factory = Factory(loop)
        server, port = await tls_server(loop, server_ctx, factory)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        t.write(b"x")
        assert await p.read_exactly(1) == b"x"
        t.abort()  # TCP close, no close_notify
        assert await p.lost is None
        sp = factory.protocols[0]
        assert await sp.lost is None
        assert sp.events == ["made", "eof", "lost"]
        await close_server(server)

    run(loop, main())


def test_shutdown_timeout(loop, server_ctx, client_ctx):
    class Deaf(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()  # close_notify is never read, never answered

    async def main():
        factory = Factory(loop, Deaf)
        server, port = await tls_server(loop, server_ctx, factory)
        t, p = await loop.create_connection(
            lambda: Recorder(loop),
            "127.0.0.1",
            port,
            ssl=client_ctx,
            server_hostname="localhost",
            ssl_shutdown_timeout=0.2,
        )
        await factory.wait_for(1)
        t.close()
        exc = await p.lost
        assert isinstance(exc, TimeoutError)
        assert str(exc) == "SSL shutdown timed out"
        factory.protocols[0].transport.abort()
        await close_server(server)

    run(loop, main())


def test_writes_after_close_are_dropped(loop, server_ctx, client_ctx, caplog):
    async def main():
        server, port = await tls_server(loop, server_ctx, Factory(loop))
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        t.close()
        for _ in range(7):
            t.write(b"late")
        await p.lost
        await close_server(server)

    run(loop, main())
    assert [r.getMessage() for r in caplog.records].count("SSL connection is closed") == 2


def test_closing_again_detaches_the_transport(loop, server_ctx, ca):
    """A close() of a transport already closing (here: the peer's close_notify began the
    shutdown) detaches it from its SSL protocol, so that a protocol keeping its transport
    keeps no SSL protocol, SSL object or context alive (CPython's
    test_create_connection_memory_leak); the connection still ends as before."""

    class CloseAtOnce(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b"bye")
            transport.close()

    refs = []

    async def main():
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        refs.append(weakref.ref(ctx))
        factory = Factory(loop, CloseAtOnce)
        server, port = await tls_server(loop, server_ctx, factory)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        del ctx
        await sleep_until(lambda: p.eof)
        assert t.is_closing()
        assert t.get_extra_info("sslcontext") is refs[0]()
        t.close()
        assert t.is_closing()
        t.write(b"")
        with pytest.raises(TypeError, match="data: expecting a bytes-like instance, got str"):
            t.write("text")
        with pytest.raises(AttributeError):
            t.write(b"late")
        with pytest.raises(AttributeError):
            t.get_extra_info("sslcontext")
        t.abort()
        t.close()
        assert await p.lost is None
        assert p.events == ["made", "eof", "lost"]
        assert bytes(p.data) == b"bye"
        refs.append(p)
        await close_server(server)

    gc.collect()
    gc.disable()
    try:
        run(loop, main())
        # Freed by reference counting, with the protocol and its transport still alive.
        assert refs[1].transport.is_closing()
        assert refs[0]() is None
    finally:
        gc.enable()


def test_second_close_while_shutting_down(loop, server_ctx, client_ctx):
    async def main():
        factory = Factory(loop, Recorder)
        server, port = await tls_server(loop, server_ctx, factory)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        t.write(b"x")
        t.close()
        t.close()  # detaches; the shutdown under way goes on
        assert t.is_closing()
        assert await p.lost is None
        sp = factory.protocols[0]
        assert await sp.lost is None
        assert bytes(sp.data) == b"x"
        assert sp.events == ["made", "eof", "lost"]
        await close_server(server)

    run(loop, main())


# ---- handshakes that fail or stall ----


def test_client_handshake_timeout(loop, client_ctx):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never speaks
            port = listener.getsockname()[1]
            before = fd_count()
            with pytest.raises(ConnectionAbortedError) as info:
                await loop.create_connection(
                    asyncio.Protocol,
                    "127.0.0.1",
                    port,
                    ssl=client_ctx,
                    server_hostname="localhost",
                    ssl_handshake_timeout=0.2,
                )
            assert str(info.value) == (
                "SSL handshake is taking longer than 0.2 seconds: aborting the connection"
            )
            await settle()
            assert fd_count() == before

    run(loop, main())


def test_server_handshake_timeout_closes_only_that_connection(loop, server_ctx, client_ctx):
    async def main():
        handlers = Handlers(loop)
        factory = Factory(loop)
        server, port = await tls_server(loop, server_ctx, factory, ssl_handshake_timeout=0.2)
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.settimeout(5)
        # The server gives up on it: the connection is closed.
        assert await loop.run_in_executor(None, stalled.recv, 100) == b""
        stalled.close()
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        t.write(b"still serving")
        assert await p.read_exactly(13) == b"still serving"
        await close_client(t, p)
        await close_server(server)
        assert handlers.contexts == []  # ConnectionAbortedError is an OSError: debug log only

    run(loop, main())


def test_garbage_from_client(loop, server_ctx, client_ctx, caplog):
    loop.set_debug(True)
    caplog.set_level(logging.DEBUG, logger="asyncio")

    async def main():
        handlers = Handlers(loop)
        factory = Factory(loop)
        server, port = await tls_server(loop, server_ctx, factory)
        raw = socket.create_connection(("127.0.0.1", port))
        raw.settimeout(5)
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        # The server closes that connection.
        assert await loop.run_in_executor(None, raw.recv, 1000) == b""
        raw.close()
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        t.write(b"ok")
        assert await p.read_exactly(2) == b"ok"
        await close_client(t, p)
        await close_server(server)
        assert factory.protocols[0].events == []
        failures = [r for r in caplog.records if r.getMessage().endswith(": SSL handshake failed")]
        assert len(failures) == 1
        assert isinstance(failures[0].exc_info[1], ssl.SSLError)
        # SSLError is an OSError: nothing for the exception handler; asyncio's
        # task waiting for the handshake reports the failure in debug mode.
        assert handlers.messages == ["Error on transport creation for incoming connection"]
        assert handlers.contexts[0]["exception"] is failures[0].exc_info[1]

    run(loop, main())


def test_handshake_timeout_argument_checks(loop, client_ctx):
    async def main():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            for name in ("ssl_handshake_timeout", "ssl_shutdown_timeout"):
                with pytest.raises(ValueError, match=f"{name} should be a positive number, got 0"):
                    await loop.create_connection(
                        asyncio.Protocol, "127.0.0.1", port, ssl=client_ctx, **{name: 0}
                    )
        with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", 1, server_hostname="x")
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful with ssl"):
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl_handshake_timeout=1)

    run(loop, main())


# ---- start_tls ----


def test_stream_writer_start_tls(loop, server_ctx, client_ctx):
    async def handle(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"GO\n")
        await writer.drain()
        await writer.start_tls(server_ctx)
        assert writer.get_extra_info("ssl_object") is not None
        line = await reader.readline()
        writer.write(line.upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"STARTTLS\n")
        assert await r.readline() == b"GO\n"
        assert w.get_extra_info("ssl_object") is None
        await w.start_tls(client_ctx, server_hostname="localhost")
        assert w.get_extra_info("ssl_object").version() == "TLSv1.3"
        w.write(b"secret\n")
        assert await r.readline() == b"SECRET\n"
        assert await r.read() == b""
        w.close()
        await w.wait_closed()
        await close_server(server)

    run(loop, main())


def test_loop_start_tls_checks(loop, client_ctx):
    async def main():
        a, b = socket.socketpair()
        t, p = await loop.create_connection(lambda: Recorder(loop), sock=a)
        with pytest.raises(TypeError, match="sslcontext is expected to be an instance of ssl.SSLContext"):
            await loop.start_tls(t, p, object())

        class Odd(asyncio.Transport):
            pass

        with pytest.raises(TypeError, match="is not supported by start_tls"):
            await loop.start_tls(Odd(), p, client_ctx)
        # A peer that never answers: the handshake times out and the transport closes.
        with pytest.raises(ConnectionAbortedError):
            await loop.start_tls(t, p, client_ctx, server_hostname="localhost", ssl_handshake_timeout=0.1)
        await settle()
        assert t.is_closing()
        b.close()

    run(loop, main())


# ---- resources ----


def test_fds_are_released(loop, server_ctx, client_ctx):
    async def main():
        before = fd_count()
        factory = Factory(loop)
        server, port = await tls_server(loop, server_ctx, factory)
        for _ in range(5):
            t, p = await loop.create_connection(
                lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
            )
            t.write(b"x")
            await p.read_exactly(1)
            await close_client(t, p)
        await sleep_until(lambda: all(sp.lost.done() for sp in factory.protocols))
        await close_server(server)
        await settle()
        assert fd_count() == before

    run(loop, main())


def test_connection_objects_are_collected(loop, server_ctx, client_ctx):
    refs = []

    async def main():
        factory = Factory(loop)
        server, port = await tls_server(loop, server_ctx, factory)
        t, p = await loop.create_connection(
            lambda: Recorder(loop), "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        t.write(b"x")
        await p.read_exactly(1)
        sp = factory.protocols[0]
        refs.extend(weakref.ref(o) for o in (t, p, sp.transport, sp))
        await close_client(t, p)
        await sleep_until(lambda: sp.lost.done())
        await close_server(server)
        factory.protocols.clear()

    run(loop, main())
    gc.collect()
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
