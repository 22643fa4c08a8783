"""OpenAI-style error bodies, for HTTP responses and for a terminal SSE event."""

from __future__ import annotations

import json

from aiohttp import web

# error.type values the collector itself produces (bounded: they become metric labels).
INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
UPSTREAM_UNAVAILABLE = "upstream_unavailable"
# Each bounded wait on the upstream has its own (settings: COLLECTOR_*_TIMEOUT).
UPSTREAM_CONNECT_TIMEOUT = "upstream_connect_timeout"
UPSTREAM_FIRST_BYTE_TIMEOUT = "upstream_first_byte_timeout"
UPSTREAM_RESPONSE_TIMEOUT = "upstream_response_timeout"
UPSTREAM_IDLE_TIMEOUT = "upstream_idle_timeout"
UPSTREAM_DISCONNECTED = "upstream_disconnected"
UPSTREAM_STREAM_ERROR = "upstream_stream_error"
CLIENT_DISCONNECTED = "client_disconnected"
INTERNAL = "internal_error"
NOT_FOUND = "not_found_error"
CLIENT_TIMEOUT = "client_timeout"


def error_body(message: str, error_type: str, status: int, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": status}},
        separators=(",", ":"),
    ).encode()


def error_response(status: int, message: str, error_type: str, param: str | None = None) -> web.Response:
    return web.Response(
        status=status, body=error_body(message, error_type, status, param), content_type="application/json",
    )


def sse_error_event(message: str, error_type: str, status: int) -> bytes:
    # vLLM ends a failed stream the same way: an error event, then [DONE].
    return b"data: " + error_body(message, error_type, status) + b"\n\ndata: [DONE]\n\n"
