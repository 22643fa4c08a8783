"""The HTTP client side: one pooled session to the upstream, and which headers cross the proxy."""

from __future__ import annotations

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy sets itself.
_REQUEST_DROP = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "proxy-authorization", "te", "trailer", "upgrade", "expect",
    # The stream is scanned as it passes: keep it uncompressed.
    "accept-encoding",
    # Replaced by the collector's own span context.
    "traceparent", "tracestate",
})
_RESPONSE_DROP = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
    "date", "server",
})


def make_session(connect_timeout: float) -> aiohttp.ClientSession:
    # Idle upstream connections are dropped before vLLM's own 5 s keep-alive timeout closes them.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=4)
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)
    return aiohttp.ClientSession(
        # Not aiohttp's default Accept-Encoding: the upstream compresses only for a client that asked.
        connector=connector, timeout=timeout, auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        # Headers and reads are not limited by the client beyond the stream reader's own flow control.
        read_bufsize=1 << 16,
    )


def request_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in _REQUEST_DROP)


def relay_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """For unmetered paths: as request_headers, but the client's Accept-Encoding passes (the body is
    relayed as is, so it may stay compressed for a client that asked for it)."""
    headers = request_headers(incoming)
    for value in incoming.getall("Accept-Encoding", ()):
        headers.add("Accept-Encoding", value)
    return headers


def response_headers(upstream: MultiMapping[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in upstream.items() if k.lower() not in _RESPONSE_DROP)
