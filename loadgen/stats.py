"""Client-side statistics of one step from k6's per-request records (the steady window only)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from loadgen.results import ClientStats


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def tokens_in_span(record: dict[str, Any], start: float, end: float) -> float:
    """Output tokens a request produced inside [start, end] (epoch s), tokens spread evenly between
    its first token and its end: requests straddling the window edges count for their share."""
    tokens = float(record.get("output_tokens") or 0)
    if tokens <= 0:
        return 0.0
    first = float(record["start_ms"] + record["ttft_ms"]) / 1000
    last = float(record["start_ms"] + record["total_ms"]) / 1000
    if last <= first:
        return tokens if start <= last <= end else 0.0
    overlap = max(0.0, min(end, last) - max(start, first))
    return tokens * overlap / (last - first)


def in_flight_over(records: list[dict[str, Any]], start: float, end: float) -> float:
    """Requests open, averaged over [start, end] (epoch s): each counts for its overlap."""
    return float(sum(max(0.0, min(end, (r["start_ms"] + r["total_ms"]) / 1000) - max(start, r["start_ms"] / 1000))
                     for r in records) / max(end - start, 1e-9))


def client_step_stats(records: list[dict[str, Any]], start: float, end: float, users: float = 1) -> ClientStats:
    """Figures for requests that started in the steady window [start, end) (epoch seconds).

    When requests outlast the window (fewer started in it than there are users), latency comes from
    every request overlapping the window instead, and `population` says so. Throughput counts every
    token produced inside the window, whatever request it belongs to.
    """
    in_window = [r for r in records if start <= r["start_ms"] / 1000 < end]
    population = "started in the steady window"
    if len(in_window) < users:
        in_window = [r for r in records
                     if r["start_ms"] / 1000 < end and (r["start_ms"] + r["total_ms"]) / 1000 > start]
        population = "overlapping the steady window (requests outlast it: lengthen steady_s)"
    ok = [r for r in in_window if not r.get("error")]
    ttfts = [r["ttft_ms"] / 1000 for r in ok]
    totals = [r["total_ms"] / 1000 for r in ok]
    decode_rates = [
        (r["output_tokens"] - 1) / ((r["total_ms"] - r["ttft_ms"]) / 1000)
        for r in ok if r.get("output_tokens", 0) > 1 and r["total_ms"] > r["ttft_ms"]
    ]
    window = max(end - start, 1e-9)
    tokens = sum(tokens_in_span(r, start, end) for r in records if not r.get("error"))
    # Requests the client had open, averaged over the window (each counts for its overlap): the
    # left side of Little's law, to set beside what vLLM holds (running + waiting).
    in_flight = in_flight_over(records, start, end)
    errors = Counter(str(r["error"]) for r in in_window if r.get("error"))
    return {
        "requests": len(in_window),
        "population": population,
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "error_ratio": (sum(errors.values()) / len(in_window)) if in_window else 0.0,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "ttft_p99_s": percentile(ttfts, 99),
        "e2e_p50_s": percentile(totals, 50),
        "e2e_p95_s": percentile(totals, 95),
        "output_tokens_per_request": statistics.median([r["output_tokens"] for r in ok]) if ok else None,
        "prompt_tokens_per_request": statistics.median([r["prompt_tokens"] for r in ok]) if ok else None,
        "output_tok_s": tokens / window,
        "user_tok_s_p50": percentile(decode_rates, 50),
        "user_tok_s_p5": percentile(decode_rates, 5),
        "in_flight_avg": in_flight,
    }


def client_rate_over(records: list[dict[str, Any]], start: float, end: float) -> float:
    """Client output tok/s over an exact span (to set beside vLLM's counter over the same span)."""
    tokens = sum(tokens_in_span(r, start, end) for r in records if not r.get("error"))
    return tokens / max(end - start, 1e-9)
