"""Bulk transfer server for the benchmarks, on the event loop named by --loop.

Modes (--mode):
  pipe-read   makes the FIFO --fifo and reads it with loop.connect_read_pipe; the protocol
              counts what arrives (the load generator writes --size chunks into it)
  pipe-write  makes the FIFO --fifo and writes --size chunks into it through
              loop.connect_write_pipe, as fast as flow control lets it (the load
              generator reads)
  sendfile    serves --file (made with --size bytes if missing) on --tcp: each
              connection gets the file with loop.sendfile(transport, file), again and again
  write       the same, with transport.write(data) of the file's contents (read into
              memory once), waiting for flow control to resume before the next copy

Once ready it prints one JSON line {"event": "ready", "address": ...} on stdout (the FIFO's
path or HOST:PORT); if the loop cannot run this mode it prints {"event": "error", ...} and
exits 1 (uvloop has no loop.sendfile: a sendfile of a few bytes is tried at startup).
Afterwards stdin carries the harness's start/stop/exit commands (see bench/common.py,
Control): the server reports its own CPU time for the window between start and stop.

Run by hand:  python bench/servers/bulk_server.py --loop ferroloop --mode sendfile \\
                  --tcp 127.0.0.1:0 --file /tmp/big --size 104857600
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import Control, loop_factory  # noqa: E402

MODES = ("pipe-read", "pipe-write", "sendfile", "write")


class Counter(asyncio.Protocol):
    """Counts what a read pipe delivers."""

    received = 0

    def data_received(self, data):
        self.received += len(data)

    def eof_received(self):
        return None


class FlowControlled(asyncio.Protocol):
    """A writer's protocol: ``writable()`` waits while the transport asks it to pause."""

    def __init__(self):
        self.transport = None
        self.resumed = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def pause_writing(self):
        self.resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self):
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)
        self.resumed = None

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)
        self.resume_writing()

    async def writable(self):
        if self.resumed is not None:
            await self.resumed


async def write_pipe_forever(loop, path: str, size: int) -> None:
    # A reader of our own keeps the FIFO open for writing before the load generator's
    # reader comes, and after it goes.
    keep = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    w = open(os.open(path, os.O_WRONLY | os.O_NONBLOCK), "wb", 0)
    transport, protocol = await loop.connect_write_pipe(FlowControlled, w)
    chunk = b"w" * size
    try:
        while not transport.is_closing():
            await protocol.writable()
            transport.write(chunk)
    finally:
        os.close(keep)


async def start_pipe_read(loop, path: str):
    r = open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", 0)
    # A writer of our own: no end of file when the load generator's writer goes.
    keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    transport, protocol = await loop.connect_read_pipe(Counter, r)
    return transport, protocol, keep


def make_file(path: str, size: int) -> None:
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    block = bytes(range(256)) * 4096  # 1 MiB
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


class FileSender(FlowControlled):
    """Sends the file (or its contents) to the connection, over and over."""

    def __init__(self, mode, file, size, data):
        super().__init__()
        self.mode = mode
        self.file = file
        self.size = size
        self.data = data

    def connection_made(self, transport):
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.task = asyncio.get_running_loop().create_task(self.send_forever())

    async def send_forever(self):
        loop = asyncio.get_running_loop()
        try:
            while not self.transport.is_closing():
                if self.mode == "sendfile":
                    await loop.sendfile(self.transport, self.file, 0, self.size)
                else:
                    await self.writable()
                    self.transport.write(self.data)
        except (ConnectionError, RuntimeError):
            pass  # the load generator went away
        finally:
            self.transport.close()


async def probe_sendfile(loop, file) -> None:
    """Raises what loop.sendfile raises on this loop (NotImplementedError on uvloop)."""
    a, b = socket.socketpair()
    b.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
    try:
        await loop.sendfile(transport, file, 0, 16)
    finally:
        transport.close()
        b.close()


async def start_file_server(loop, mode, host, port, path, size):
    make_file(path, size)
    file = open(path, "rb")
    data = None
    if mode == "write":
        with open(path, "rb") as f:
            data = f.read()
    else:
        await probe_sendfile(loop, file)
    server = await loop.create_server(lambda: FileSender(mode, file, size, data), host, port)
    return server, file


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--fifo", metavar="PATH", help="the FIFO (pipe-read, pipe-write)")
    parser.add_argument("--tcp", metavar="HOST:PORT", help="where to listen (sendfile, write)")
    parser.add_argument("--file", metavar="PATH", help="the file to send (sendfile, write)")
    parser.add_argument("--size", type=int, default=64 * 1024, help="chunk or file size")
    args = parser.parse_args(argv)

    control = Control()
    try:
        loop = loop_factory(args.loop)()
        asyncio.set_event_loop(loop)
        if args.mode in ("pipe-read", "pipe-write"):
            if not args.fifo:
                parser.error("--fifo is needed")
            os.mkfifo(args.fifo)
            address = args.fifo
            if args.mode == "pipe-read":
                keep = loop.run_until_complete(start_pipe_read(loop, args.fifo))
            else:
                keep = loop.create_task(write_pipe_forever(loop, args.fifo, args.size))
                loop.run_until_complete(asyncio.sleep(0.01))
                if keep.done():
                    keep.result()
        else:
            if not args.tcp:
                parser.error("--tcp is needed")
            path = args.file or os.path.join(tempfile.mkdtemp(prefix="bulk-"), "file")
            host, _, port = args.tcp.rpartition(":")
            keep = loop.run_until_complete(
                start_file_server(loop, args.mode, host, int(port), path, args.size)
            )
            bound = keep[0].sockets[0].getsockname()
            address = f"{bound[0]}:{bound[1]}"
    except BaseException as exc:  # anything: the harness shows it as the reason for "n/a"
        control.fail(exc)
    control.ready(address=address, loop=args.loop, mode=args.mode)
    control.start()
    try:
        loop.run_forever()
    except BaseException as exc:
        control.fail(exc)


if __name__ == "__main__":
    main()
