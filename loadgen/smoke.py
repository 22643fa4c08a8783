"""The seed checklist: one request, then 5 concurrent, then 20 concurrent streaming chat requests.

Times every request at the client (TTFT at the first chunk carrying generated text, total latency)
and reads output tokens from the stream's usage chunk. Prints a small table and writes smoke.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

SEED_STEPS = (1, 5, 20)


@dataclass
class RequestRecord:
    step: int
    ok: bool
    status: int
    ttft_s: float | None
    total_s: float
    output_tokens: int | None
    error: str | None = None


async def stream_chat(
    session: aiohttp.ClientSession, url: str, model: str, max_tokens: int, step: int
) -> RequestRecord:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about the sea and the ships on it."}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,  # vLLM extension: fixed output length makes steps comparable
    }
    start = time.perf_counter()
    ttft: float | None = None
    tokens: int | None = None
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            if response.status != 200:
                text = (await response.text())[:200]
                return RequestRecord(step, False, response.status, None, time.perf_counter() - start, None, text)
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if ttft is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    ttft = time.perf_counter() - start
                if chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens")
    except (TimeoutError, aiohttp.ClientError) as error:
        return RequestRecord(step, False, 0, ttft, time.perf_counter() - start, tokens, type(error).__name__)
    return RequestRecord(step, ttft is not None, 200, ttft, time.perf_counter() - start, tokens)


async def run_smoke(url: str, model: str, max_tokens: int = 64, steps: tuple[int, ...] = SEED_STEPS,
                    timeout_s: float = 300.0) -> list[RequestRecord]:
    records: list[RequestRecord] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for concurrency in steps:
            batch = [stream_chat(session, url, model, max_tokens, concurrency) for _ in range(concurrency)]
            records += await asyncio.gather(*batch)
    return records


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def summary_table(records: list[RequestRecord]) -> str:
    lines = [
        f"{'concurrent':>10} {'ok':>4} {'errors':>6} {'p50 TTFT ms':>12} {'max TTFT ms':>12} "
        f"{'p50 total ms':>13} {'out tokens':>11} {'tok/s':>8}"
    ]
    for step in sorted({r.step for r in records}):
        rows = [r for r in records if r.step == step]
        ok = [r for r in rows if r.ok]
        ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
        totals = [r.total_s for r in ok]
        tokens = sum(r.output_tokens or 0 for r in ok)
        wall = max(totals) if totals else 0.0
        lines.append(
            f"{step:>10} {len(ok):>4} {len(rows) - len(ok):>6} "
            f"{_ms(statistics.median(ttfts) if ttfts else None):>12} {_ms(max(ttfts) if ttfts else None):>12} "
            f"{_ms(statistics.median(totals) if totals else None):>13} {tokens:>11} "
            f"{(tokens / wall if wall else 0):>8,.0f}"
        )
    return "\n".join(lines)


def write_results(records: list[RequestRecord], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "smoke.json"
    path.write_text(json.dumps([asdict(r) for r in records], indent=2) + "\n")
    return path
