"""HTTP hello-world server for the benchmarks: uvicorn with httptools, on the loop named by --loop.

The ASGI app answers every request with 200 and a 13-byte plain-text body with a
Content-Length header. uvicorn runs one process (no workers, no reload), with access logs and
lifespan off. The loop is chosen the way a uvicorn user chooses it:

  asyncio    --loop asyncio      (uvicorn's own name)
  uvloop     --loop uvloop       (uvicorn's own name)
  ferroloop  --loop ferroloop:new_event_loop
             uvicorn imports a "module:attribute" value and calls it with no argument to make
             the loop (uvicorn.config.Config.get_loop_factory; asyncio.Runner(loop_factory=...)).

With --tls-cert and --tls-key uvicorn serves HTTPS: its own ssl_certfile/ssl_keyfile settings,
so the SSLContext is the one uvicorn makes (PROTOCOL_TLS_SERVER, TLS 1.2 and 1.3).

The listening socket is bound here (port 0 picks a free port) and handed to uvicorn. Once
uvicorn has started, one JSON line {"event": "ready", "address": "HOST:PORT"} goes to stdout;
if it fails, {"event": "error", ...} and exit 1. Then stdin carries the harness's
start/stop/exit commands (bench/common.py, Control) and the server reports its own CPU time
(getrusage RUSAGE_SELF, user + sys) between start and stop.

Run by hand:  python bench/servers/http_server.py --loop uvloop --tcp 127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import Control  # noqa: E402

UVICORN_LOOP = {
    "asyncio": "asyncio",
    "uvloop": "uvloop",
    "ferroloop": "ferroloop:new_event_loop",
}

BODY = b"Hello, world!"
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", required=True, choices=sorted(UVICORN_LOOP))
    parser.add_argument("--tcp", metavar="HOST:PORT", default="127.0.0.1:0")
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="and this private key")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")

    control = Control()
    try:
        import uvicorn

        host, _, port = args.tcp.rpartition(":")
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(args.backlog)
        bound_host, bound_port = sock.getsockname()[:2]
        address = f"{bound_host}:{bound_port}"
        config = uvicorn.Config(
            app,
            loop=UVICORN_LOOP[args.loop],
            http="httptools",
            ws="none",
            lifespan="off",
            interface="asgi3",
            access_log=False,
            log_level="warning",
            backlog=args.backlog,
            ssl_certfile=args.tls_cert,
            ssl_keyfile=args.tls_key,
        )
        server = uvicorn.Server(config)
    except BaseException as exc:
        control.fail(exc)

    def announce() -> None:
        # uvicorn sets `started` once it listens; the main thread is inside server.run().
        while not server.started:
            time.sleep(0.005)
        control.ready(address=address, loop=args.loop, server=f"uvicorn {uvicorn.__version__}")
        control.start()

    threading.Thread(target=announce, name="announce", daemon=True).start()
    try:
        server.run(sockets=[sock])
    except BaseException as exc:
        control.fail(exc)
    # uvicorn returned (startup failure, or a signal): nothing more to serve.
    control.fail(RuntimeError("uvicorn exited" + ("" if server.started else " before it started")))


if __name__ == "__main__":
    main()
