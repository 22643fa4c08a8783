"""A scripted upstream: vLLM's streaming chat API without a model, so that a proxy benchmark measures the
proxies' own cost. `python -m loadgen.bench.scripted --port PORT [--tick-ms MS]` serves it. Imports nothing
of the repo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json

SCRIPTED_MODEL = "scripted"
TOKEN_CHOICE = b'"choices":[{"index":0,"delta":{"content":" tok"},"logprobs":null,"finish_reason":null}]}\n\n'
USAGE_EVENT = b'"choices":[],"usage":{"prompt_tokens":12,"total_tokens":%d,"completion_tokens":%d}}\n\n'


class ScriptedUpstream:
    """An OpenAI-style SSE server that costs almost nothing: like vLLM's decode loop, one timer tick
    sends the next token to every running stream (one chunk per token), so proxies are compared at
    a token rate the upstream itself does not limit. HTTP/1.1 keep-alive, chunked responses."""

    def __init__(self, tick: float, prefill: float) -> None:
        self.tick, self.prefill = tick, prefill
        self.streams: list[list[object]] = []  # [transport, tokens left, total, request id]
        self.loop = asyncio.get_running_loop()
        self.loop.call_later(tick, self._step)

    def _step(self) -> None:
        self.loop.call_later(self.tick, self._step)
        running = []
        for stream in self.streams:
            transport, left, total, rid = stream
            assert isinstance(transport, asyncio.Transport) and isinstance(left, int) and isinstance(total, int)
            if transport.is_closing():
                continue
            head = b'data: {"id":"chatcmpl-%s","object":"chat.completion.chunk","created":1,"model":"scripted",' % rid
            if left > 1:
                event = head + TOKEN_CHOICE
                transport.write(b"%x\r\n%s\r\n" % (len(event), event))
                stream[1] = left - 1
                running.append(stream)
                continue
            events = (head + b'"choices":[{"index":0,"delta":{"content":" end"},"logprobs":null,'
                      b'"finish_reason":"length","stop_reason":null}]}\n\n'
                      + head + USAGE_EVENT % (12 + total, total) + b"data: [DONE]\n\n")
            transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(events), events))
        self.streams = running

    def start(self, transport: asyncio.Transport, body: bytes) -> None:
        request = json.loads(body)
        total = int(request.get("max_tokens") or 16)
        rid = b"%d" % id(transport)
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                        b"transfer-encoding: chunked\r\n\r\n")
        role = (b'data: {"id":"chatcmpl-%s","object":"chat.completion.chunk","created":1,"model":"scripted",'
                b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
                b'"finish_reason":null}]}\n\n' % rid)
        transport.write(b"%x\r\n%s\r\n" % (len(role), role))
        self.loop.call_later(self.prefill, self._admit, [transport, total, total, rid])

    def _admit(self, stream: list[object]) -> None:
        self.streams.append(stream)  # self.streams, not the list it was when the request came


class ScriptedConnection(asyncio.Protocol):
    def __init__(self, upstream: ScriptedUpstream) -> None:
        self.upstream, self.buffer = upstream, b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
            method, path = head[0].split(" ")[:2]
            if method == "POST" and path.rstrip("/") == "/v1/chat/completions":
                self.upstream.start(self.transport, body)
                continue
            if path.startswith("/v1/models"):
                answer = b'{"object":"list","data":[{"id":"scripted","object":"model"}]}'
            else:
                answer = b"{}"
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(answer), answer))


async def serve_scripted(port: int, tick: float, prefill: float) -> None:
    upstream = ScriptedUpstream(tick, prefill)
    server = await asyncio.get_running_loop().create_server(
        lambda: ScriptedConnection(upstream), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a model-free OpenAI-style SSE server (one token per stream per tick)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tick-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_scripted(args.port, args.tick_ms / 1000, 0.002))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
