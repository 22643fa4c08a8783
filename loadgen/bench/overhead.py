"""Collector overhead against direct access to vLLM, interleaved: the same streaming requests straight to
vLLM and through the collector, round after round, at each concurrency. Reports output tok/s (the
collector's as a share of direct) and p50 TTFT (the collector's minus direct) with each round's figures.

    python scripts/bench_overhead.py --direct http://127.0.0.1:8000 --collector http://127.0.0.1:8001 \\
        --model NAME [--concurrency 64 128 256] [--rounds 3] [--max-tokens 256] [--requests-per-stream 2] \\
        [--client-processes 4]

Traffic goes only to the two URLs given (the stack's own services on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from loadgen.bench.client import StreamResult, run_round  # the proxy benchmark's load client: one for both
from loadgen.bench.tables import markdown_table


@dataclass(frozen=True)
class Round:
    target: str
    concurrency: int
    tok_s: float
    ttft_p50_s: float
    errors: int
    client_cpu_cores: float = 0.0  # the busiest client process's CPU over the round (1.0 = one core)


def client_part(url: str, model: str, streams: int, max_tokens: int, per_stream: int,
                start_at: float) -> tuple[float, float, list[StreamResult], float]:
    """One client process's share of a round: waits for the common start, then runs its streams.
    Returns (start, end, results, this process's CPU seconds)."""
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.time()
    _, results = asyncio.run(run_round(url + "/v1/chat/completions", streams, per_stream, model, max_tokens))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return started, time.time(), results, cpu


def one_round(url: str, model: str, concurrency: int, max_tokens: int, per_stream: int, target: str,
              processes: int = 1) -> Round:
    """A round's streams split over `processes` client processes started together, so that at
    ~10k+ tokens a second one Python event loop is not what limits the figure (its CPU is reported)."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    if processes == 1:
        parts = [client_part(url, model, concurrency, max_tokens, per_stream, 0.0)]
    else:
        start_at = time.time() + 1.0  # every process imported and waiting before the first request
        with ProcessPoolExecutor(processes) as pool:
            parts = list(pool.map(client_part, *zip(*[(url, model, n, max_tokens, per_stream, start_at)
                                                      for n in shares], strict=True)))
    wall = max(end for _, end, _, _ in parts) - min(start for start, _, _, _ in parts)
    results = [r for _, _, found, _ in parts for r in found]
    ttfts = [r.ttft for r in results if r.ttft is not None]
    return Round(target, concurrency, sum(r.tokens for r in results) / wall,
                 statistics.median(ttfts) if ttfts else float("nan"), sum(not r.ok for r in results),
                 max(cpu for _, _, _, cpu in parts) / wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--direct", required=True)
    parser.add_argument("--collector", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--client-processes", type=int, default=1,
                        help="split each round's streams over this many client processes")
    parser.add_argument("--json", help="also write every round here")
    args = parser.parse_args(argv)
    rounds: list[Round] = []
    for concurrency in args.concurrency:
        for number in range(args.rounds):
            # alternate which goes first, so drift of the server does not favour one side
            order = [("direct", args.direct), ("collector", args.collector)]
            for target, url in order if number % 2 == 0 else order[::-1]:
                r = one_round(url, args.model, concurrency, args.max_tokens, args.requests_per_stream, target,
                              args.client_processes)
                rounds.append(r)
                print(f"{concurrency:>4} streams round {number + 1} {target:<9} {r.tok_s:9,.0f} tok/s  "
                      f"p50 TTFT {r.ttft_p50_s * 1000:7.1f} ms  errors {r.errors}  "
                      f"busiest client process {r.client_cpu_cores:.2f} cores", flush=True)
    rows: list[list[str]] = []
    for concurrency in args.concurrency:
        direct = [r for r in rounds if r.concurrency == concurrency and r.target == "direct"]
        proxied = [r for r in rounds if r.concurrency == concurrency and r.target == "collector"]
        ratios = [p.tok_s / d.tok_s for d, p in zip(direct, proxied, strict=True)]
        deltas = [(p.ttft_p50_s - d.ttft_p50_s) * 1000 for d, p in zip(direct, proxied, strict=True)]
        direct_ttft_ms = statistics.median(r.ttft_p50_s for r in direct) * 1000
        rows.append([str(concurrency), f"{statistics.median(r.tok_s for r in direct):,.0f}",
                     f"{statistics.median(r.tok_s for r in proxied):,.0f}",
                     f"{statistics.median(ratios):.3f} ({', '.join(f'{x:.3f}' for x in ratios)})",
                     f"{direct_ttft_ms:.1f}",
                     f"{statistics.median(deltas):+.1f} ({', '.join(f'{x:+.1f}' for x in deltas)})"])
    print()
    print(markdown_table(["streams", "direct tok/s", "collector tok/s", "collector / direct (rounds)",
                          "p50 TTFT direct ms", "p50 TTFT collector - direct ms (rounds)"], rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([r.__dict__ for r in rounds], handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
