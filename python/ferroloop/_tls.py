"""TLS: the protocol that runs the user's ``ssl.SSLContext`` over a stream transport.

``SSLProtocol`` is the Rust ``SSLProtocolCore`` (``src/transports/tls.rs``, asyncio's
sslproto in Rust) made an ``asyncio.BufferedProtocol`` as well, so that the stream
transport underneath receives ciphertext straight into its buffer. Its ``__init__``
makes the application transport at once, as asyncio's does (``start_tls`` returns
``ssl_protocol._app_transport``).

``TLSServerFactory`` (Rust) is the protocol factory a TLS server's acceptor calls: the
user's protocol under a server-side ``SSLProtocol``, whose failed handshake closes the
connection as asyncio's ``_accept_connection2`` does.
"""

from __future__ import annotations

import asyncio
import ssl

from ferroloop._core import SSLProtocolCore, TLSServerFactory

__all__ = ["SSLProtocol", "TLSServerFactory"]


class SSLProtocol(SSLProtocolCore, asyncio.BufferedProtocol):
    """asyncio's ``sslproto.SSLProtocol``, with the same constructor."""

    __slots__ = ()

    def __init__(self, *args, **kwargs):
        self._get_app_transport()
