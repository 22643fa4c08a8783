"""A lean HTTP/1.1 client for the metered requests: one asyncio protocol per upstream connection, kept
alive in a small pool, with no per-read future or task switch once a stream flows.

aiohttp's client costs, per upstream read, its protocol's `data_received`, the C parser's callback into
a StreamReader, a future resolved and the handler task resumed through its whole await chain; and per
request, ClientSession's set-up (request object, cookie jar, connector key, timers). Here a request is
one `transport.write` of a pre-built head, the response head is parsed once, the body is de-chunked in
`data_received`, and a flowing stream is handed to a *sink* that runs right there (scan, frame, write
to the client): the handler task sleeps until the stream ends or the client's socket is full.

Errors keep aiohttp's types where the proxy already catches them: a read that waited too long raises
aiohttp.ServerTimeoutError, a body cut short aiohttp.ClientPayloadError. Before a response head:
ConnectTimeout, ConnectFailed, HeadTimeout, Disconnected (the pool retries a reused connection once).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import cast

import aiohttp
from multidict import CIMultiDict
from yarl import URL

# A response head larger than this is refused (aiohttp: 8190 bytes a line, 128 fields).
MAX_HEAD_BYTES = 1 << 16
# A chunk-size line (hex size and extensions) longer than this is not HTTP.
MAX_CHUNK_LINE = 4096
# Idle connections are dropped before vLLM's own 5 s keep-alive timeout closes them.
KEEPALIVE_SECONDS = 4.0

_HEAD, _BODY, _DONE = 0, 1, 2
_NO_BODY_STATUS = frozenset({204, 304})


class ConnectTimeout(Exception):
    """The upstream did not accept the connection in time."""


class ConnectFailed(Exception):
    """The upstream refused the connection (or the address does not resolve)."""


class HeadTimeout(Exception):
    """Connected and sent, but no response head in time."""


class Disconnected(Exception):
    """The connection closed, or the upstream sent something that is not an HTTP/1.1 response head."""


# A sink takes decoded body bytes and the time they were read; True asks for a pause (the client's
# socket buffer is full) until resume_reading().
Sink = Callable[[bytes, float], bool]
# A framed sink takes a read that is whole chunks, each ending an SSE event, still in their chunked
# framing (valid framing for the client too): None when it cannot pass them as they are (they then go
# to the sink de-chunked), else what a sink returns.
FramedSink = Callable[[bytes, float], bool | None]


class Connection(asyncio.Protocol):
    """One upstream connection and the response being read on it (one request at a time)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timeout: float | None = None
        self._reset()

    def _reset(self) -> None:
        """The state of one response (a kept-alive connection starts the next one afresh)."""
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self._state = _HEAD
        self._buf = b""
        self._got_bytes = False
        self._head_waiter: asyncio.Future[None] | None = None
        self._head_error: Exception | None = None
        self._keep_alive = True
        self._chunked = False
        self._length = -1  # content-length left; -1: until the connection closes (or chunked)
        self._chunk_left = 0
        self._chunk_crlf = False
        self._trailers = False
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._exception: BaseException | None = None
        self._sink: Sink | None = None
        self._framed: FramedSink | None = None
        self._pause_asked = False

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if self._state == _HEAD:
            self._fail_head(Disconnected("upstream closed the connection before a response head"))
        elif self._state == _BODY:
            if self._length < 0 and not self._chunked:
                self._finish()  # a body delimited by the connection's end
            else:
                self.set_exception(aiohttp.ClientPayloadError("upstream closed the connection mid-body"))

    def data_received(self, data: bytes) -> None:
        now = self.last_read = time.perf_counter()
        framed = self._framed
        if framed is not None and not self._buf and not self._chunk_left and not self._chunk_crlf \
                and not self._trailers and self._state == _BODY and whole_events_in_chunks(data):
            # The common read of a flowing stream: passed on in its own framing, no copy.
            try:
                pause = framed(data, now)
            except Exception as error:  # the client's side failed (ConnectionResetError): the relay ends
                self.set_exception(error)
                return
            if pause is not None:
                if pause:
                    self._pause()
                return
        if self._state == _BODY:
            self._body_bytes(data, now)
        elif self._state == _HEAD:
            self._got_bytes = True
            self._head_bytes(data, now)
        else:  # bytes nobody asked for: this connection cannot be trusted for another request
            self._keep_alive = False
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost decides what the end means

    # --- the request -----------------------------------------------------------------------------

    def send(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self.transport.write(body)

    async def head(self, timeout: float) -> None:
        """Wait for the response head (status, reason, headers set)."""
        if self._head_error is not None:
            raise self._head_error
        if self._state != _HEAD:
            return
        if self.closed:
            raise Disconnected("upstream closed the connection before a response head")
        self._head_waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._head_waiter
        except TimeoutError:
            if self._state == _HEAD:
                raise HeadTimeout from None
        finally:
            self._head_waiter = None

    def _fail_head(self, error: Exception) -> None:
        if self._head_error is None:
            self._head_error = error
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_exception(error)

    def _head_bytes(self, data: bytes, now: float) -> None:
        buf = self._buf + data if self._buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    self._bad_head(f"response head over {MAX_HEAD_BYTES} bytes")
                else:
                    self._buf = buf
                return
            try:
                self._parse_head(buf[:end])
            except ValueError as error:
                self._bad_head(f"malformed response head: {error}")
                return
            buf = buf[end + 4:]
            if not 100 <= self.status < 200:
                break
            self.headers = CIMultiDict()  # an interim response (100 Continue): the real one follows
        self._buf = b""
        self._state = _BODY
        if self._head_waiter is not None and not self._head_waiter.done():
            self._head_waiter.set_result(None)
        if self._length == 0 or self.status in _NO_BODY_STATUS:
            self._finish()
        elif buf:
            self._body_bytes(buf, now)

    def _bad_head(self, message: str) -> None:
        self._keep_alive = False
        self._fail_head(Disconnected(message))
        self.close()

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("utf-8", "surrogateescape").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ValueError(repr(lines[0][:100]))
        self.status, self.reason = int(code), reason
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ValueError(repr(line[:100]))
            headers.add(name, value.strip(" \t"))
        self.headers = headers
        connection = headers.get("Connection", "").lower()
        self._keep_alive = not ((version == "HTTP/1.0" and "keep-alive" not in connection) or "close" in connection)
        self._chunked, self._length = False, -1
        if 100 <= self.status < 200 or self.status in _NO_BODY_STATUS:
            return  # no body, whatever the headers say
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            self._chunked = True
        elif "Content-Length" in headers:
            length = headers["Content-Length"].strip()
            if not length.isdigit():
                raise ValueError(f"Content-Length {length[:50]!r}")
            self._length = int(length)
        else:
            self._keep_alive = False  # the body ends when the connection does

    # --- the body --------------------------------------------------------------------------------

    def _body_bytes(self, data: bytes, now: float) -> None:
        if self._chunked:
            self._dechunk(data, now)
            return
        if self._length >= 0:
            if len(data) >= self._length:
                extra = len(data) > self._length
                data, self._length = data[:self._length], 0
                self._deliver(data, now)
                if extra:
                    self._keep_alive = False
                self._finish()
                return
            self._length -= len(data)
        self._deliver(data, now)

    def _dechunk(self, data: bytes, now: float) -> None:
        if self._trailers:  # the last chunk came; its trailers did not (all of them)
            self._buf += data
            self._end_of_chunks()
            return
        buf = self._buf + data if self._buf else data
        pos, size = 0, len(buf)
        out: list[bytes] = []
        while pos < size:
            if self._chunk_left:
                take = min(self._chunk_left, size - pos)
                out.append(buf[pos:pos + take] if take < size or pos else buf)
                pos += take
                self._chunk_left -= take
                if self._chunk_left:
                    break
                self._chunk_crlf = True
            if self._chunk_crlf:
                if size - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    self._payload_error("chunk not followed by CRLF")
                    return
                pos += 2
                self._chunk_crlf = False
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if size - pos > MAX_CHUNK_LINE:
                    self._payload_error("chunk-size line too long")
                    return
                break
            line = buf[pos:end].split(b";", 1)[0].strip()
            try:
                chunk = int(line, 16)
            except ValueError:
                self._payload_error(f"bad chunk size {line[:20]!r}")
                return
            if chunk < 0:
                self._payload_error("negative chunk size")
                return
            pos = end + 2
            if chunk == 0:
                self._trailers = True
                break
            self._chunk_left = chunk
        self._buf = buf[pos:] if pos < size else b""
        if out:
            self._deliver(out[0] if len(out) == 1 else b"".join(out), now)
        if self._trailers:
            self._end_of_chunks()

    def _end_of_chunks(self) -> None:
        """After the last (0-size) chunk: trailer lines up to an empty line, then the response ends."""
        buf = self._buf
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    self._payload_error("trailers too long")
                    return
                self._buf = buf
                return
            line, buf = buf[:end], buf[end + 2:]
            if not line:
                break
        self._buf = b""
        if buf:
            self._keep_alive = False
        self._finish()

    def _payload_error(self, message: str) -> None:
        self._keep_alive = False
        self.set_exception(aiohttp.ClientPayloadError(f"malformed chunked body from upstream: {message}"))
        self.close()

    def _deliver(self, data: bytes, now: float) -> None:
        sink = self._sink
        if sink is None:
            self._body.append(data)
            self._wake()
            return
        try:
            pause = sink(data, now)
        except Exception as error:  # the client's side failed (ConnectionResetError): the relay ends
            self.set_exception(error)
            return
        if pause:
            self._pause()

    def _pause(self) -> None:
        if not self._pause_asked and self.transport is not None:
            self._pause_asked = True
            self.transport.pause_reading()
            self._wake()

    def _finish(self) -> None:
        if self._state == _DONE:
            return
        self._state = _DONE
        self._cancel_timer()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def set_exception(self, error: BaseException) -> None:
        """End the body with an error (a read timeout, a cut connection, a client gone)."""
        if self._exception is None:
            self._exception = error
        self._keep_alive = False
        self._cancel_timer()
        self._wake()

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "application/octet-stream").partition(";")[0].strip().lower()

    async def readany(self) -> bytes:
        """The next decoded body bytes; b"" at the end. Raises what ended the body early."""
        while not self._body:
            if self._exception is not None:
                raise self._exception
            if self._state == _DONE:
                return b""
            self._waiter = self._loop.create_future()
            await self._waiter
        data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        return data

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body (at most `limit` bytes; past it the connection is dropped)."""
        parts: list[bytes] = []
        size = 0
        while data := await self.readany():
            parts.append(data)
            size += len(data)
            if limit is not None and size >= limit:
                self.close()
                return b"".join(parts)[:limit]
        return b"".join(parts)

    def relay(self, sink: Sink, framed: FramedSink | None = None) -> None:
        """From now on decoded body bytes go to `sink` as they are read (what was buffered, first); a
        read that is whole chunks of whole SSE events goes to `framed` first, when given (and only when
        this response is chunked)."""
        self._sink = sink
        self._framed = framed if self._chunked else None
        if self._body:
            data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._body.clear()
            self._deliver(data, time.perf_counter())

    async def relayed(self) -> bool:
        """Wait until the relay ends (False; raises what ended it early) or the sink asked for a pause
        (True: resume_reading() once the client has taken its bytes)."""
        while True:
            if self._pause_asked:
                return True
            if self._exception is not None:
                raise self._exception
            if self._state == _DONE:
                return False
            self._waiter = self._loop.create_future()
            await self._waiter

    def resume_reading(self) -> None:
        if self._pause_asked:
            self._pause_asked = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # --- read timeout ----------------------------------------------------------------------------

    def read_timeout(self, seconds: float | None) -> None:
        """Each further read waits at most `seconds` (from now; None: unbounded). One timer that re-arms
        itself for the rest of the window when reads came meanwhile: no timer work per read."""
        self._cancel_timer()
        self._timeout = seconds
        if seconds is not None and self._state != _DONE:
            self.last_read = time.perf_counter()
            self._timer = self._loop.call_later(seconds, self._check_timeout)

    def _check_timeout(self) -> None:
        seconds = self._timeout
        assert seconds is not None
        silent = time.perf_counter() - self.last_read
        if silent < seconds:
            self._timer = self._loop.call_later(seconds - silent, self._check_timeout)
            return
        self._timer = None
        self.set_exception(aiohttp.ServerTimeoutError(f"no data for {seconds:g} s"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        self._keep_alive = False
        self._cancel_timer()
        if self.transport is not None and not self.closed:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        return self._state == _DONE and self._keep_alive and self._exception is None and not self.closed

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self._pool.release(self)


def whole_events_in_chunks(data: bytes) -> bool:
    """Whether `data` is one or more complete HTTP chunks (not the last, 0-size one), each ending with
    an SSE event's end (a blank line), with plain hex sizes (no extensions)."""
    pos, size = 0, len(data)
    while pos < size:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return False
        digits = data[pos:end]
        if not digits.isalnum():
            return False
        try:
            length = int(digits, 16)
        except ValueError:
            return False
        if length <= 0:
            return False
        pos = end + 2 + length
        if data[pos - 2:pos + 2] != b"\n\n\r\n":
            return False
        pos += 2
    return pos == size


class Pool:
    """Keep-alive connections to one upstream origin (the most recently used is reused first)."""

    def __init__(self, base_url: str, connect_timeout: float) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.loop = asyncio.get_running_loop()
        self._host, self._port = url.host, url.port or (443 if url.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if url.scheme == "https" else None
        authority = url.raw_host or ""
        if ":" in authority:
            authority = f"[{authority}]"
        self._host_header = (authority if url.explicit_port is None else f"{authority}:{url.explicit_port}").encode()
        self._connect_timeout = connect_timeout
        self._idle: collections.deque[tuple[Connection, float]] = collections.deque()

    def head_bytes(self, method: str, target: str, headers: Iterable[tuple[str, str]], body_length: int) -> bytes:
        """The request head: the client's headers as they are (aiohttp's server parsed them: no CR or LF
        inside), the upstream's Host, the body's Content-Length."""
        lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), target.encode(), self._host_header)]
        lines.extend(b"%s: %s\r\n" % (name.encode("utf-8", "surrogateescape"),
                                      value.encode("utf-8", "surrogateescape")) for name, value in headers)
        lines.append(b"Content-Length: %d\r\n\r\n" % body_length)
        return b"".join(lines)

    async def request(self, head: bytes, body: bytes, head_timeout: float) -> Connection:
        """Send one request; the connection with the response head read. A pooled connection the
        upstream closed as it was reused (nothing answered) is retried once on a new one, as nginx does."""
        for attempt in (1, 2):
            connection = self._take_idle()
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            connection.send(head, body)
            try:
                await connection.head(head_timeout)
            except Disconnected:
                connection.close()
                if reused and attempt == 1 and not connection._got_bytes:
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            return connection
        raise AssertionError("unreachable")

    def _take_idle(self) -> Connection | None:
        idle, now = self._idle, time.monotonic()
        while idle and (idle[0][0].closed or now - idle[0][1] > KEEPALIVE_SECONDS):
            idle.popleft()[0].close()
        while idle:
            connection, since = idle.pop()
            if not connection.closed and now - since <= KEEPALIVE_SECONDS:
                return connection
            connection.close()
        return None

    async def _connect(self) -> Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: Connection(self), self._host, self._port, ssl=self._ssl)
        except TimeoutError:
            raise ConnectTimeout from None
        except OSError as error:
            raise ConnectFailed(error) from error
        return protocol

    def release(self, connection: Connection) -> None:
        if connection.reusable:
            connection._reset()
            self._idle.append((connection, time.monotonic()))
        else:
            connection.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[0].close()

