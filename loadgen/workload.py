"""A step's request mix, for either loop: what the plan asks for, what k6 is told, what vLLM saw.

The plan's `mix` (loadgen/arrivals.py: length distributions, natural ends, a shared system prompt,
multi-turn conversations, retries), else its profile as a fixed-length mix. Open loop
(loadgen/rate_mode.py) draws one row per arrival; a closed loop (`mode: concurrency`) draws
CLOSED_ROWS rows that its users take in turn (loadgen/k6/chat-stream.js), so each user's next request
is the next draw. Either way the k6 scripts send a row through chat-request.js's `converse`, and the
report reads the lengths vLLM itself saw from its histograms.
"""

from __future__ import annotations

import math
from typing import Any

from loadgen import arrivals
from loadgen.k6_runner import PROMPT_TEXT, prompt_text
from loadgen.plan import Plan, plan_from_dict
from loadgen.prom import Prometheus, PrometheusDown, bucket_of, render, step_queries
from loadgen.results import Step

# Draws a closed loop cycles through: enough to follow the distributions, small enough that every
# k6 user parses them (the step's config file) without weight.
CLOSED_ROWS = 1024


def mix_of(plan: Plan) -> arrivals.Mix:
    """The plan's mix, else its profile as a fixed-length mix."""
    if plan.mix is not None:
        return plan.mix
    return arrivals.Mix(prompt_words=arrivals.Length(value=plan.profile.prompt_words),
                        output_tokens=arrivals.Length(value=plan.profile.max_tokens),
                        ignore_eos=plan.profile.ignore_eos)


def converse_settings(mix: arrivals.Mix, run_id: str) -> dict[str, Any]:
    """What chat-request.js's `converse` reads from the step's config: the words, the system prompt,
    the thinking between turns and the retries."""
    return {"run_id": run_id, "vocabulary": PROMPT_TEXT, "system_prompt": prompt_text(mix.system_prompt_words) or None,
            "think_time_s": mix.think_time_s, "retry_max": mix.retries.max, "retry_on": list(mix.retries.errors),
            "retry_backoff_s": mix.retries.backoff_s}


def closed_loop_settings(plan: Plan, run_id: str) -> tuple[dict[str, Any], int]:
    """A closed-loop step's mix settings for chat-stream.js (its `mix_rows`: [prompt_words, max_tokens,
    turns]) and the largest max_tokens drawn."""
    mix = mix_of(plan)
    drawn = arrivals.requests_for([0.0] * CLOSED_ROWS, mix, plan.arrival.seed)
    rows = [[int(r[1]), int(r[2]), int(r[3])] for r in drawn]
    return {**converse_settings(mix, run_id), "mix_rows": rows}, max(r[1] for r in rows)


def lengths(prometheus: Prometheus | None, model: str, start: float, end: float) -> dict[str, Any] | None:
    """vLLM's prompt and output token histograms over [start, end]: what it actually got."""
    if prometheus is None:
        return None
    seconds = max(10, math.ceil(end - start))
    out: dict[str, Any] = {}
    try:
        for name, expr in step_queries()["lengths"].items():
            result = prometheus.vector(render(expr, model=model, window=f"{seconds}s"), at=end)
            if name.endswith("_buckets"):
                out[name] = sorted([float(r["metric"]["le"]), float(r["value"][1])] for r in result)
            else:
                out[name] = float(result[0]["value"][1]) if result else None
    except PrometheusDown:
        return None
    return out


# ------------------------------------------------------------------------------------------ report
def histogram_summary(buckets: list[list[float]] | None, total: float | None, count: float | None) -> dict[str, Any]:
    """Requests, mean (exact, from _sum/_count) and the buckets holding p10/p50/p90 of one histogram."""
    pairs = [(le, c) for le, c in buckets or []]
    out: dict[str, Any] = {"requests": count, "mean": (total / count) if total is not None and count else None}
    for name, q in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9)):
        out[name] = bucket_of(pairs, q) if pairs else None
    return out


def _bucket_text(bounds: tuple[float, float] | None) -> str:
    if bounds is None:
        return "n/a"
    low, high = bounds
    return f"≤ {high:g}" if low == 0 else f"{low:g}-{high:g}"


def number(value: float | None, digits: int = 1) -> str:
    """A figure for a report table, "n/a" where it is missing."""
    return "n/a" if value is None else f"{value:,.{digits}f}"


_n = number


def describe(mix: arrivals.Mix, open_loop: bool) -> str:
    """The mix in words, as the report states it."""
    unit = "an arrival is a conversation" if open_loop else "a user's next request is a whole conversation"
    return (f"prompts {arrivals.describe_length(mix.prompt_words, 'words')}, outputs "
            f"{arrivals.describe_length(mix.output_tokens, 'tokens')} "
            + ("(ignore_eos: exact lengths)" if mix.ignore_eos else "(natural ends: max_tokens is only a cap)")
            + (f", a shared system prompt of {mix.system_prompt_words} words" if mix.system_prompt_words else "")
            + ("" if mix.turns == arrivals.Length(value=1) else
               f"; conversations of {arrivals.describe_length(mix.turns, 'turns')}, each turn resending the "
               f"history, {mix.think_time_s:g} s of thinking between turns ({unit}; completed requests count "
               "every turn)")
            + (f"; failed requests ({', '.join(mix.retries.errors)}) retried up to {mix.retries.max} times after "
               f"{mix.retries.backoff_s:g} s, doubling" if mix.retries.max else "")
            + (f"; {mix.slow_readers.share:.0%} of the arrivals are slow readers (reading at "
               f"{mix.slow_readers.read_bytes_per_s:g} bytes/s through a {mix.slow_readers.recv_buffer_bytes} "
               "byte socket buffer, sent by loadgen's own client and kept out of the client figures)"
               if mix.slow_readers.share else ""))


def length_table(steps: list[Step], step_header: str) -> dict[str, Any]:
    """Per step, the prompt and output lengths vLLM saw (means exact, percentiles as their buckets)."""
    rows = []
    for s in steps:
        lengths_ = s.get("lengths") or {}
        prompt = histogram_summary(lengths_.get("prompt_buckets"), lengths_.get("prompt_sum"),
                                   lengths_.get("prompt_count"))
        output = histogram_summary(lengths_.get("generation_buckets"), lengths_.get("generation_sum"),
                                   lengths_.get("generation_count"))
        rows.append([f"{s['concurrency']:g}", _n(prompt["requests"], 0), _n(prompt["mean"]),
                     _bucket_text(prompt["p10"]), _bucket_text(prompt["p50"]), _bucket_text(prompt["p90"]),
                     _n(output["mean"]), _bucket_text(output["p10"]), _bucket_text(output["p50"]),
                     _bucket_text(output["p90"]),
                     _n(((s.get("server") or {}).get("vllm") or {}).get("prefix_cache_hit_ratio"), 2)])
    return {"headers": [step_header, "requests (vLLM)", "prompt tokens mean", "prompt p10 bucket",
                        "prompt p50 bucket", "prompt p90 bucket", "output tokens mean", "output p10 bucket",
                        "output p50 bucket", "output p90 bucket", "prefix cache hit ratio"], "rows": rows}


def closed_loop_context(plan_data: dict[str, Any], steps: list[Step]) -> dict[str, Any] | None:
    """The report's request-mix section for a closed-loop run with a mix (a rate run has its own)."""
    if plan_data.get("mode") == "rate" or not plan_data.get("mix"):
        return None
    return {"mix": describe(mix_of(plan_from_dict(plan_data)), open_loop=False),
            "length_table": length_table(steps, "concurrency")}
