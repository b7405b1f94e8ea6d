"""Echo server for the benchmarks, on the event loop named by --loop.

Styles (--style):
  protocol  asyncio.Protocol; data_received() writes the data back
  buffered  asyncio.BufferedProtocol; one 256 KiB buffer per connection, written back from it
  streams   asyncio.start_server / start_unix_server; read() then write() and drain()
  sock      loop.sock_accept, then a task per client doing loop.sock_recv / loop.sock_sendall
  datagram  loop.create_datagram_endpoint with a DatagramProtocol whose datagram_received()
            sends each datagram back to where it came from (--udp only)

Listens on --tcp HOST:PORT (port 0 picks a free port) or --unix PATH, or for the datagram style
receives on --udp HOST:PORT. TCP_NODELAY is set on every accepted TCP socket. With --tls-cert
and --tls-key the stream styles serve TLS (ssl= an SSLContext(PROTOCOL_TLS_SERVER) with that
certificate and key, otherwise Python's defaults: TLS 1.2 and 1.3). Once listening it prints one JSON line
{"event": "ready", "address": ...} on stdout; if the loop cannot run this style it prints
{"event": "error", "error": ...} and exits 1. Afterwards stdin carries the harness's
start/stop/exit commands (see bench/common.py, Control): the server reports its own CPU time
(getrusage RUSAGE_SELF, user + sys) for the window between start and stop.

Run by hand:  python bench/servers/echo_server.py --loop uvloop --style protocol --tcp 127.0.0.1:0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import Control, loop_factory  # noqa: E402

READ_SIZE = 256 * 1024
UDP_RCVBUF = 1024 * 1024
STYLES = ("protocol", "buffered", "streams", "sock", "datagram")


def set_nodelay(sock) -> None:
    """TCP_NODELAY on a TCP socket (or a loop's socket-like wrapper); no-op for Unix sockets."""
    if sock is None:
        return
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError, NotImplementedError):
        pass


class EchoProtocol(asyncio.Protocol):
    transport = None

    def connection_made(self, transport):
        self.transport = transport
        set_nodelay(transport.get_extra_info("socket"))

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.transport = None


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = bytearray(READ_SIZE)
        set_nodelay(transport.get_extra_info("socket"))

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        # Slicing copies: the buffer is reused for the next read while the transport may still
        # hold what it could not send yet.
        self.transport.write(self.buffer[:nbytes])

    def connection_lost(self, exc):
        self.transport = None


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)

    def error_received(self, exc):
        pass  # an ICMP error for a client that went away: nothing to do


async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    set_nodelay(writer.get_extra_info("socket"))
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def echo_sock(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    try:
        while True:
            data = await loop.sock_recv(conn, READ_SIZE)
            if not data:
                break
            await loop.sock_sendall(conn, data)
    except ConnectionError:
        pass
    finally:
        conn.close()


async def accept_loop(loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
    tasks: set[asyncio.Task] = set()
    while True:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(False)
        set_nodelay(conn)
        task = loop.create_task(echo_sock(loop, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def make_listener(args) -> tuple[socket.socket, str]:
    if args.udp:
        host, _, port = args.udp.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # With 100 clients, 100 datagrams can wait at once; the kernel charges each about
        # twice its size, which overflows the default receive buffer (about 208 KiB) at 1 KiB
        # and drops datagrams. Ask for more (the kernel caps it at twice net.core.rmem_max).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        sock.bind((host, int(port)))
        sock.setblocking(False)
        bound = sock.getsockname()
        return sock, f"{bound[0]}:{bound[1]}"
    if args.unix:
        try:
            os.unlink(args.unix)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(args.unix)
        address = args.unix
    else:
        host, _, port = args.tcp.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        bound = sock.getsockname()
        address = (
            f"[{bound[0]}]:{bound[1]}" if family == socket.AF_INET6 else f"{bound[0]}:{bound[1]}"
        )
    sock.listen(args.backlog)
    sock.setblocking(False)
    return sock, address


async def start(
    loop: asyncio.AbstractEventLoop,
    style: str,
    sock: socket.socket,
    unix: bool,
    ssl_context: ssl.SSLContext | None = None,
):
    """Start serving; returns what must be kept alive. Raises if the loop cannot do it."""
    if ssl_context is not None and style not in ("protocol", "buffered", "streams"):
        raise ValueError(f"TLS is for the stream styles, not {style!r}")
    if style == "protocol":
        if unix:
            return await loop.create_unix_server(EchoProtocol, sock=sock, ssl=ssl_context)
        return await loop.create_server(EchoProtocol, sock=sock, ssl=ssl_context)
    if style == "buffered":
        if unix:
            return await loop.create_unix_server(EchoBufferedProtocol, sock=sock, ssl=ssl_context)
        return await loop.create_server(EchoBufferedProtocol, sock=sock, ssl=ssl_context)
    if style == "streams":
        if unix:
            return await asyncio.start_unix_server(
                echo_stream, sock=sock, limit=READ_SIZE, ssl=ssl_context
            )
        return await asyncio.start_server(echo_stream, sock=sock, limit=READ_SIZE, ssl=ssl_context)
    if style == "datagram":
        transport, _ = await loop.create_datagram_endpoint(EchoDatagramProtocol, sock=sock)
        return transport
    if style == "sock":
        task = loop.create_task(accept_loop(loop, sock))
        # Let the accept loop reach its first await, so a loop without sock_accept fails here.
        for _ in range(3):
            await asyncio.sleep(0)
        if task.done():
            task.result()
        return task
    raise ValueError(f"unknown style {style!r}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", required=True)
    parser.add_argument("--style", choices=STYLES, required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT")
    where.add_argument("--unix", metavar="PATH")
    where.add_argument("--udp", metavar="HOST:PORT")
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="and this private key")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if (args.style == "datagram") != bool(args.udp):
        parser.error("--udp goes with --style datagram, and only with it")

    control = Control()
    try:
        loop = loop_factory(args.loop)()
        asyncio.set_event_loop(loop)
        ssl_context = None
        if args.tls_cert:
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
        sock, address = make_listener(args)
        keep = loop.run_until_complete(
            start(loop, args.style, sock, bool(args.unix), ssl_context)
        )
    except BaseException as exc:  # anything: the harness shows it as the reason for "n/a"
        control.fail(exc)
    control.ready(address=address, loop=args.loop, style=args.style, keep=type(keep).__name__)
    control.start()
    try:
        loop.run_forever()
    except BaseException as exc:
        control.fail(exc)


if __name__ == "__main__":
    main()
