"""A scripted OpenAI-like upstream (an aiohttp app) for the collector's tests: failure paths vLLM cannot
be made to produce on demand, picked by the request's `messages[0].content`. Serve it with
tests.support.collector.serve_app."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

MODEL = "scripted-model"


def sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk(content: str, finish: str | None = None) -> bytes:
    return sse({"id": "c1", "model": MODEL, "choices": [{"index": 0, "delta": {"content": content},
                                                         "finish_reason": finish}]})


ROLE = sse({"id": "c1", "model": MODEL, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                     "finish_reason": None}]})
USAGE = sse({"id": "c1", "model": MODEL, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
DONE = b"data: [DONE]\n\n"


class Scripted:
    """An OpenAI-like upstream whose behaviour is picked by the request's `messages[0].content`."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.cancelled_at: list[float] = []
        self.bytes_sent = 0
        self.first_token_sent_at = 0.0  # time.perf_counter() of the last "Hello" written

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.refuse)
        return app

    async def refuse(self, request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "scripted upstream: chat only", "type": "BadRequestError",
                                            "code": 400}}, status=400)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append({"headers": dict(request.headers), "body": body})
        try:
            script = body["messages"][0]["content"] if "messages" in body else "ok"
            assert isinstance(script, str)
        except (TypeError, KeyError, IndexError, AssertionError):
            return await self.refuse(request)
        if not body.get("stream"):
            return web.json_response({"id": "c1", "model": MODEL, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(ROLE)
            if script == "slow-first":
                await asyncio.sleep(0.6)
            elif script == "error-first":
                await response.write(sse({"error": {"message": "no capacity", "type": "x", "code": 503}}))
                await response.write(DONE)
                return response
            elif script == "die-first":
                assert request.transport is not None
                request.transport.abort()
                return response
            elif script == "empty-deltas":
                for _ in range(10_000):  # 1.5 MB of events without generated text
                    await response.write(ROLE)
                await asyncio.sleep(0.5)
            elif script == "hang":
                await asyncio.sleep(60)
            elif script == "flood":
                big = chunk("x" * 4000)
                for _ in range(50_000):  # 200 MB if nobody pushed back
                    await response.write(big)
                    self.bytes_sent += len(big)
            self.first_token_sent_at = time.perf_counter()
            await response.write(chunk("Hello"))
            if script == "die-mid":
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(chunk(" world", "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(USAGE)
            await response.write(DONE)
        except asyncio.CancelledError:
            self.cancelled_at.append(time.monotonic())
            raise
        return response
