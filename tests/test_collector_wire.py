"""The collector's lean upstream client (collector/wire.py): response heads and bodies (chunked, sized,
up to the connection's end) parsed the same however the bytes are split across reads, a flowing
stream handed to a sink with back-pressure, malformed responses refused, kept-alive connections reused."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import wire

EVENTS = [b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n',
          b'data: {"choices":[{"delta":{"content":"\\r\\n0\\r\\n\\r\\n \\"usage\\":{"}}]}\n\n',  # framing look-alikes
          b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n',
          b"data: [DONE]\n\n"]
BODY = b"".join(EVENTS)
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(pieces: list[bytes], extensions: bool = False, trailers: bool = False) -> bytes:
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), b";ext=1" if extensions else b"", p) for p in pieces)
    return out + b"0\r\n" + (b"X-Trailer: 1\r\n" if trailers else b"") + b"\r\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def run(test: Callable[[wire.Pool], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        return await test(wire.Pool("http://127.0.0.1:9", 1.0))
    return asyncio.run(main())


def connection(pool: wire.Pool) -> tuple[wire.Connection, FakeTransport]:
    conn, transport = wire.Connection(pool), FakeTransport()
    conn.connection_made(transport)
    return conn, transport


async def feed_all(conn: wire.Connection, pieces: list[bytes]) -> None:
    for piece in pieces:
        conn.data_received(piece)
        await asyncio.sleep(0)


async def read_response(pool: wire.Pool, pieces: list[bytes], lost: bool = False) -> tuple[wire.Connection, bytes]:
    conn, _ = connection(pool)
    feeder = asyncio.ensure_future(feed_all(conn, pieces))
    await conn.head(5)
    body = await conn.read()
    await feeder
    if lost:
        conn.connection_lost(None)
    return conn, body


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=16), extensions=st.booleans(),
       trailers=st.booleans())
def test_a_chunked_response_split_anywhere_reads_the_same(cuts: list[int], extensions: bool, trailers: bool) -> None:
    data = HEAD + chunked(EVENTS, extensions, trailers)

    async def check(pool: wire.Pool) -> None:
        conn, body = await read_response(pool, split(data, cuts))
        assert conn.status == 200 and conn.content_type == "text/event-stream"
        assert body == BODY and conn.reusable

    run(check)


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=16))
def test_a_relayed_stream_split_anywhere_reaches_the_sink_whole(cuts: list[int]) -> None:
    """A usage event split across reads (and everything else) reaches the sink in order, once."""
    data = HEAD + chunked(EVENTS)
    pieces = split(data, cuts)

    async def check(pool: wire.Pool) -> None:
        conn, _ = connection(pool)
        received: list[bytes] = []
        head_end = next(i for i in range(len(pieces) + 1) if len(b"".join(pieces[:i])) >= len(HEAD))
        await feed_all(conn, pieces[:head_end])
        await conn.head(5)
        def sink(data: bytes, now: float) -> bool:
            received.append(data)
            return False
        conn.relay(sink)
        await feed_all(conn, pieces[head_end:])
        assert await conn.relayed() is False
        assert b"".join(received) == BODY and conn.reusable

    run(check)


def test_sized_and_close_delimited_bodies() -> None:
    async def check(pool: wire.Pool) -> None:
        sized = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\nContent-Type: application/json\r\n\r\n{\"error\":1}"
        conn, body = await read_response(pool, [sized[:30], sized[30:]])
        assert (conn.status, conn.reason, body, conn.reusable) == (400, "Bad Request", b'{"error":1}', True)
        until_close = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":"
        conn, _ = connection(pool)
        conn.data_received(until_close)
        await conn.head(5)
        reader = asyncio.ensure_future(conn.read())
        await asyncio.sleep(0)
        conn.data_received(b"1}")
        conn.connection_lost(None)
        assert await reader == b'{"a":1}' and not conn.reusable
        interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n"
        conn, body = await read_response(pool, [interim])
        assert (conn.status, body, conn.headers["X-A"], conn.reusable) == (204, b"", "b", True)

    run(check)


@pytest.mark.parametrize("data, error", [
    (HEAD + b"zz\r\nxx\r\n", aiohttp.ClientPayloadError),   # not a hex chunk size
    (HEAD + b"3\r\nabcX\r\n", aiohttp.ClientPayloadError),  # chunk not followed by CRLF
    (HEAD + b"5\r\nab", aiohttp.ClientPayloadError),        # cut mid-chunk (connection lost)
    (b"HTTP/1.1 OK\r\n\r\n", wire.Disconnected),             # no status code
    (b"SSH-2.0-OpenSSH\r\n\r\n", wire.Disconnected),          # not HTTP
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", wire.Disconnected),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", wire.Disconnected),
    (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * wire.MAX_HEAD_BYTES, wire.Disconnected),
])
def test_malformed_responses_are_refused(data: bytes, error: type[Exception]) -> None:
    async def check(pool: wire.Pool) -> None:
        conn, _ = connection(pool)
        conn.data_received(data)
        if error is wire.Disconnected:
            with pytest.raises(wire.Disconnected):
                await conn.head(5)
            return
        await conn.head(5)
        conn.connection_lost(None)
        with pytest.raises(error):
            await conn.read()
        assert not conn.reusable

    run(check)


def test_sink_asking_for_a_pause_stops_reading_until_resumed() -> None:
    async def check(pool: wire.Pool) -> None:
        conn, transport = connection(pool)
        conn.data_received(HEAD)
        await conn.head(5)
        conn.relay(lambda data, now: True)  # the client's socket buffer is full after every write
        conn.data_received(chunked(EVENTS[:1])[:-5])
        assert transport.paused and await conn.relayed() is True
        conn.resume_reading()
        assert not transport.paused
        conn.data_received(b"0\r\n\r\n")
        assert await conn.relayed() is False

    run(check)


def test_a_sink_error_and_a_read_timeout_end_the_relay() -> None:
    async def check(pool: wire.Pool) -> None:
        conn, _ = connection(pool)
        conn.data_received(HEAD)
        await conn.head(5)

        def gone(data: bytes, now: float) -> bool:
            raise ConnectionResetError("client connection closed")
        conn.relay(gone)
        conn.data_received(chunked(EVENTS[:1])[:-5])
        with pytest.raises(ConnectionResetError):
            await conn.relayed()
        conn, _ = connection(pool)
        conn.data_received(HEAD)
        await conn.head(5)
        conn.read_timeout(0.05)
        with pytest.raises(aiohttp.ServerTimeoutError):
            await conn.readany()
        conn, _ = connection(pool)
        with pytest.raises(wire.HeadTimeout):
            await conn.head(0.05)

    run(check)


def test_request_head_and_kept_alive_connection_reuse() -> None:
    async def check(pool: wire.Pool) -> None:
        head = pool.head_bytes("POST", "/v1/chat/completions", [("Content-Type", "application/json"),
                                                                ("X-Ü", "ä")], 2)
        assert head == (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"
                        b"Content-Type: application/json\r\nX-\xc3\x9c: \xc3\xa4\r\nContent-Length: 2\r\n\r\n")
        conn, body = await read_response(pool, [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
        assert body == b"ok"
        async with conn:
            pass
        assert pool._take_idle() is conn and conn.status == 0  # back in the pool with a fresh state
        conn, _ = await read_response(pool, [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"])
        async with conn:
            pass
        assert pool._take_idle() is None

    run(check)


def test_whole_events_in_chunks() -> None:
    assert wire.whole_events_in_chunks(chunked(EVENTS[:2])[:-5])  # two chunks, without the last one
    assert not wire.whole_events_in_chunks(chunked(EVENTS[:1]))  # ends with the last (0-size) chunk
    assert not wire.whole_events_in_chunks(chunked(EVENTS[:1], extensions=True)[:-5])
    assert not wire.whole_events_in_chunks(chunked([EVENTS[0][:-1]])[:-5])  # a chunk that ends mid-event
    one = chunked(EVENTS[:1])[:-5]
    for cut in range(1, len(one)):
        assert not wire.whole_events_in_chunks(one[:cut])
    assert not wire.whole_events_in_chunks(b"-5\r\n\n\n\r\n")  # int() would take a sign


def dechunk(data: bytes) -> bytes:
    out, pos = [], 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end], 16)
        out.append(data[end + 2:end + 2 + size])
        pos = end + 2 + size + 2
    return b"".join(out)


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8), refuse=st.booleans(),
       per_chunk=st.booleans())
def test_whole_chunks_pass_framed_and_the_rest_decoded(cuts: list[int], refuse: bool, per_chunk: bool) -> None:
    """Reads that are whole chunks of whole events reach the framed sink in their framing (unless it
    refuses them); every other read, and the end, the de-chunked sink; together: the whole body once."""
    data = chunked(EVENTS)
    pieces = [chunked([e])[:-5] for e in EVENTS] + [b"0\r\n\r\n"] if per_chunk else split(data, cuts)

    async def check(pool: wire.Pool) -> None:
        conn, _ = connection(pool)
        conn.data_received(HEAD)
        await conn.head(5)
        received: list[bytes] = []
        framed_reads = 0

        def sink(data: bytes, now: float) -> bool:
            received.append(data)
            return False

        def framed(data: bytes, now: float) -> bool | None:
            nonlocal framed_reads
            if refuse:
                return None
            assert wire.whole_events_in_chunks(data)
            framed_reads += 1
            received.append(dechunk(data))
            return False

        conn.relay(sink, framed)
        await feed_all(conn, pieces)
        assert await conn.relayed() is False
        assert b"".join(received) == BODY and conn.reusable
        if per_chunk:
            assert framed_reads == (0 if refuse else len(EVENTS))

    run(check)
