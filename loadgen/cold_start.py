"""A cold start, read back from Prometheus: how long vLLM took from its process start to answering, to
its first token, and how its first minute of requests fared, beside the sweep's own figures.

Evidence, all recorded by the stack anyway: vLLM's `process_start_time_seconds`, the scrape job's `up`
series (vLLM serves /metrics only once its engine is ready), and its TTFT histogram's count and sum.
Times are known to within one scrape interval. Shown only when vLLM started shortly before the run.
"""

from __future__ import annotations

import math
from typing import Any

from loadgen.prom import Prometheus, PrometheusDown

HORIZON_S = 3600.0  # a vLLM started longer before the run had no cold start in it worth reporting
FIRST_WINDOW_S = 60.0


def _first(samples: list[list[tuple[float, float]]], after: float, test: Any) -> float | None:
    times = [t for series in samples for t, v in series if t >= after and test(v)]
    return min(times) if times else None


def measure(prom: Prometheus, model: str, before: float, horizon_s: float = HORIZON_S) -> dict[str, Any] | None:
    """The cold start of the vLLM serving `model` before `before` (epoch s), or None when vLLM started
    longer ago, or its process start is not exported (vLLM with several API servers exports none)."""
    try:
        started = prom.scalar('min(process_start_time_seconds{job="vllm"})', at=before)
        if started is None or not 0 <= before - started <= horizon_s:
            return None
        prometheus_started = prom.scalar('min(process_start_time_seconds{job="prometheus"})', at=before)
        up = prom.raw_samples('up{job="vllm"}', started, before)
        count = prom.raw_samples(f'vllm:time_to_first_token_seconds_count{{model_name="{model}"}}', started, before)
    except PrometheusDown:
        return None
    ready = _first(up, started, lambda v: v >= 1)
    first_token = _first(count, started, lambda v: v > 0)
    out: dict[str, Any] = {"started": started, "ready_after_s": None, "first_token_after_s": None,
                           "first_minute_requests": None, "first_minute_ttft_mean_s": None, "notes": []}
    if prometheus_started is not None and ready is not None:
        first_scrape = _first(up, started, lambda v: True)
        if prometheus_started > started and first_scrape == ready:
            out["notes"].append("Prometheus started after vLLM and its first scrape already found vLLM ready: the "
                                "time to ready is an upper bound")
    if ready is not None:
        out["ready_after_s"] = ready - started
    if first_token is not None:
        out["first_token_after_s"] = first_token - started
        at = first_token + FIRST_WINDOW_S
        selector = f'{{model_name="{model}"}}'
        try:
            requests = prom.scalar(f"sum(increase(vllm:time_to_first_token_seconds_count{selector}"
                                   f"[{FIRST_WINDOW_S:.0f}s]))", at=at)
            total = prom.scalar(f"sum(increase(vllm:time_to_first_token_seconds_sum{selector}"
                                f"[{FIRST_WINDOW_S:.0f}s]))", at=at)
        except PrometheusDown:
            requests = total = None
        if requests and total is not None and not math.isnan(total):
            out["first_minute_requests"] = requests
            out["first_minute_ttft_mean_s"] = total / requests
    return out


def sentence(cold: dict[str, Any], least_loaded_ttft_s: float | None) -> str:
    """The report's paragraph, from what was measured (and saying what was not)."""
    parts = []
    if cold.get("ready_after_s") is not None:
        parts.append(f"vLLM answered its first metrics scrape {cold['ready_after_s']:.0f} s after its process started "
                     "(model loaded, engine ready)")
    else:
        parts.append("when vLLM became ready is not in Prometheus")
    if cold.get("first_token_after_s") is not None:
        parts.append(f"its first token was served {cold['first_token_after_s']:.0f} s after the start")
    mean = cold.get("first_minute_ttft_mean_s")
    if mean is not None:
        text = (f"the {cold['first_minute_requests']:.0f} requests of the minute after that waited "
                f"{mean * 1000:,.0f} ms for their first token on average (vLLM's own clock)")
        if least_loaded_ttft_s:
            text += f", against {least_loaded_ttft_s * 1000:,.0f} ms on average at the sweep's least loaded step"
        parts.append(text)
    notes = "; ".join(cold.get("notes") or [])
    return ("; ".join(parts) + ". Times are to within one scrape interval" + (f" ({notes})" if notes else "") + ".")
