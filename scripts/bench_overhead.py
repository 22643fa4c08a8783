#!/usr/bin/env python3
"""Collector overhead against direct access to vLLM, interleaved: the same streaming requests straight to
vLLM and through the collector, round after round, at each concurrency. Reports output tok/s (the
collector's as a share of direct) and p50 TTFT (the collector's minus direct) with each round's figures.

    python scripts/bench_overhead.py --direct http://127.0.0.1:8000 --collector http://127.0.0.1:8001 \\
        --model NAME [--concurrency 64 128 256] [--rounds 3] [--max-tokens 256] [--requests-per-stream 2]

Traffic goes only to the two URLs given (the stack's own services on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Round:
    target: str
    concurrency: int
    tok_s: float
    ttft_p50_s: float
    errors: int


async def _stream(session: aiohttp.ClientSession, url: str, model: str, max_tokens: int) -> tuple[float, int]:
    body = {"model": model, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]}
    start = time.perf_counter()
    first = 0.0
    chunks = 0
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.startswith(b"data: {") and b'"content"' in line:
                chunks += 1
                if not first:
                    first = time.perf_counter() - start
    return first, chunks


async def one_round(url: str, model: str, concurrency: int, max_tokens: int, per_stream: int, target: str) -> Round:
    ttfts: list[float] = []
    tokens = 0
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def user() -> None:
            nonlocal tokens, errors
            for _ in range(per_stream):
                try:
                    first, chunks = await _stream(session, url, model, max_tokens)
                except (TimeoutError, aiohttp.ClientError):
                    errors += 1
                    continue
                ttfts.append(first)
                tokens += chunks
        start = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return Round(target, concurrency, tokens / wall, statistics.median(ttfts) if ttfts else float("nan"), errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--direct", required=True)
    parser.add_argument("--collector", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--json", help="also write every round here")
    args = parser.parse_args(argv)
    rounds: list[Round] = []
    for concurrency in args.concurrency:
        for number in range(args.rounds):
            # alternate which goes first, so drift of the server does not favour one side
            order = [("direct", args.direct), ("collector", args.collector)]
            for target, url in order if number % 2 == 0 else order[::-1]:
                r = asyncio.run(one_round(url, args.model, concurrency, args.max_tokens, args.requests_per_stream,
                                          target))
                rounds.append(r)
                print(f"{concurrency:>4} streams round {number + 1} {target:<9} {r.tok_s:9,.0f} tok/s  "
                      f"p50 TTFT {r.ttft_p50_s * 1000:7.1f} ms  errors {r.errors}", flush=True)
    print("\n| streams | direct tok/s | collector tok/s | collector / direct (rounds) | p50 TTFT direct ms | "
          "p50 TTFT collector - direct ms (rounds) |\n|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        direct = [r for r in rounds if r.concurrency == concurrency and r.target == "direct"]
        proxied = [r for r in rounds if r.concurrency == concurrency and r.target == "collector"]
        ratios = [p.tok_s / d.tok_s for d, p in zip(direct, proxied, strict=True)]
        deltas = [(p.ttft_p50_s - d.ttft_p50_s) * 1000 for d, p in zip(direct, proxied, strict=True)]
        direct_ttft_ms = statistics.median(r.ttft_p50_s for r in direct) * 1000
        print(f"| {concurrency} | {statistics.median(r.tok_s for r in direct):,.0f} | "
              f"{statistics.median(r.tok_s for r in proxied):,.0f} | {statistics.median(ratios):.3f} "
              f"({', '.join(f'{x:.3f}' for x in ratios)}) | {direct_ttft_ms:.1f} "
              f"| {statistics.median(deltas):+.1f} ({', '.join(f'{x:+.1f}' for x in deltas)}) |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([r.__dict__ for r in rounds], handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
