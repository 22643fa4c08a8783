"""The listening side: aiohttp's HTTP/1.1 server with a gateway's manners.

- Requests aiohttp's parser rejects (a header line over 8190 bytes, more than 128 headers, an unknown
  method, a NUL or other forbidden byte in a header) get an OpenAI-style JSON error, logged at debug
  level (a stream of garbage must not become a stream of tracebacks). What cannot change: the
  parser never read a valid request line, so the answer's status line says HTTP/1.0, and the
  connection is closed after it.
- A request head must arrive within `client_header_timeout` seconds, from the connection's start
  or from the head's first byte on a kept-alive connection: a slow-header client (slowloris) gets a
  408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from collector import errors
from collector.settings import Settings

log = logging.getLogger(__name__)

# aiohttp's default for kept-alive client connections.
KEEPALIVE_SECONDS = 75.0
SHUTDOWN_SECONDS = 10.0


class GatewayProtocol(RequestHandler):
    """One client connection (aiohttp's RequestHandler), with a head timeout and JSON parse errors."""

    __slots__ = ("_head_timeout", "_head_timer")

    def __init__(self, manager: web.Server, *, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._current_request is None and not self._messages:
            # Bytes of a request head that is not complete yet (no request in progress).
            if self._head_timer is None:
                self._arm_head_timer()
        elif self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if self._current_request is not None or self._messages or transport is None or transport.is_closing():
            return  # a request arrived meanwhile
        body = errors.error_body(f"request head not received within {self._head_timeout:g} s",
                                 errors.CLIENT_TIMEOUT, 408)
        transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.force_close()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.debug("rejected a malformed request from %s: %s", request.remote, message)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started, cannot send an error")
        error_type = errors.INVALID_REQUEST
        if status >= 500:
            text, error_type = "internal error in the collector", errors.INTERNAL
        elif isinstance(exc, LineTooLong):
            status, text = 431, "request line or header field over 8190 bytes"
        elif "Too many headers" in (message or ""):
            status, text = 431, "more than 128 header fields"
        elif isinstance(exc, BadHttpMethod):
            text = "malformed request: unknown or invalid method"
        else:
            text = f"malformed request: {message or 'bad request'}"[:300]
        response = errors.error_response(status, text, error_type)
        response.force_close()
        return response


async def serve(app: web.Application, settings: Settings) -> None:
    """Serve `app` on settings.host:port until SIGINT or SIGTERM (what web.run_app does, with
    GatewayProtocol as the connection handler)."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True,
                           shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    server = runner.server
    assert server is not None
    loop = asyncio.get_running_loop()

    def connection() -> GatewayProtocol:
        return GatewayProtocol(server, loop=loop, access_log=None, keepalive_timeout=KEEPALIVE_SECONDS,
                               head_timeout=settings.client_header_timeout)

    # Several workers (settings.workers) share the port: the kernel spreads new connections over them.
    listener = await loop.create_server(connection, settings.host, settings.port, reuse_address=True,
                                        reuse_port=settings.workers > 1, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        listener.close()
        await runner.cleanup()
