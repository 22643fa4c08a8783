"""The benchmarks' streaming load client (asyncio + aiohttp): N streams of chat requests against one
URL, each stream checked (status 200, the requested number of tokens from the usage event, no error
event, [DONE] last) and its first content chunk timed. Used by loadgen.bench.proxy and .overhead;
imports nothing of the repo.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import aiohttp


@dataclass
class StreamResult:
    ttft: float | None
    tokens: int
    ok: bool
    problem: str = ""


CONTENT_MARK = b'"content":"'


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes, max_tokens: int) -> StreamResult:
    started = time.perf_counter()
    ttft = None
    tail = b""
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        if response.status != 200:
            return StreamResult(None, 0, False, f"HTTP {response.status}")
        while True:
            data = await response.content.readany()
            if not data:
                break
            if ttft is None:
                at = data.find(CONTENT_MARK)
                # The role chunk carries "content":"" - the first token is the first non-empty one.
                while at >= 0 and data[at + len(CONTENT_MARK):at + len(CONTENT_MARK) + 1] == b'"':
                    at = data.find(CONTENT_MARK, at + 1)
                if at >= 0:
                    ttft = time.perf_counter() - started
            tail = (tail + data)[-4096:]
    if b'"error"' in tail or not tail.endswith(b"data: [DONE]\n\n"):
        return StreamResult(ttft, 0, False, "stream did not end with [DONE] or carried an error")
    usage_at = tail.rfind(b'"usage":')
    event_end = tail.find(b"\n\n", usage_at)
    try:
        usage = json.loads(tail[tail.rfind(b"data: ", 0, usage_at) + 6:event_end])["usage"]
    except (ValueError, KeyError):
        return StreamResult(ttft, 0, False, "no usage event")
    tokens = int(usage["completion_tokens"])
    ok = tokens == max_tokens and ttft is not None
    return StreamResult(ttft, tokens, ok, "" if ok else f"{tokens} tokens, expected {max_tokens}")


def request_body(model: str, max_tokens: int, index: int) -> bytes:
    return json.dumps({
        "model": model, "messages": [{"role": "user", "content": f"Request {index}: tell a long story."}],
        "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True},
    }).encode()


async def run_round(url: str, concurrency: int, requests_per_stream: int, model: str,
                    max_tokens: int) -> tuple[float, list[StreamResult]]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker(stream: int) -> list[StreamResult]:
            out = []
            for i in range(requests_per_stream):
                body = request_body(model, max_tokens, stream * 1000 + i)
                try:
                    out.append(await one_stream(session, url, body, max_tokens))
                except (aiohttp.ClientError, TimeoutError) as error:
                    out.append(StreamResult(None, 0, False, type(error).__name__))
            return out

        started = time.perf_counter()
        per_worker = await asyncio.gather(*(worker(s) for s in range(concurrency)))
        wall = time.perf_counter() - started
    return wall, [r for results in per_worker for r in results]
