"""TLS: the protocol that runs the user's ``ssl.SSLContext`` over a stream transport.

``SSLProtocol`` is the Rust ``SSLProtocolCore`` (``src/transports/tls.rs``, asyncio's
sslproto in Rust) made an ``asyncio.BufferedProtocol`` as well, so that the stream
transport underneath receives ciphertext straight into its buffer. Its ``__init__``
makes the application transport at once, as asyncio's does (``start_tls`` returns
``ssl_protocol._app_transport``).
"""

from __future__ import annotations

import asyncio

from ferroloop._core import SSLProtocolCore

__all__ = ["SSLProtocol"]


class SSLProtocol(SSLProtocolCore, asyncio.BufferedProtocol):
    """asyncio's ``sslproto.SSLProtocol``, with the same constructor."""

    __slots__ = ()

    def __init__(self, *args, **kwargs):
        self._get_app_transport()
