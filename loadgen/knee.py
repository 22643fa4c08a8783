"""Adaptive knee search: which concurrency to try next, given the steps measured so far.

Coarse phase: the plan's seed steps in order, then concurrency x growth, until the SLO breaks
(for `slo_broken_steps` steps in a row, or at once on a hard stop: error ratio over the stop
limit, host memory under its floor), throughput falls clearly below its peak (more users then
only add waiting), or the climb reaches its limit: the plan's max_concurrency where set, else
what the server says it can hold (see `capacity_limit`). Refine phase: bisect between the last good step and the
first bad one until they are within the resolution. The knee is the highest concurrency that
met the SLO below the first bad step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loadgen.plan import Plan


@dataclass(frozen=True)
class Outcome:
    concurrency: float  # users; in a rate sweep, requests/s (loadgen/rate_mode.py)
    slo_ok: bool
    hard_stop: str | None = None  # a reason that forbids climbing higher
    tok_s: float | None = None  # aggregate output throughput of the step


# A climbing step whose throughput is this far under the best lower step ends the climb.
THROUGHPUT_FALL_STOP = 0.10
# Without a plan cap: climb to this multiple of the concurrency at which the KV cache fills (past
# it everything queues), or to FALLBACK_LIMIT when the server does not say its KV capacity.
KV_FILL_MULTIPLE = 2.0
FALLBACK_LIMIT = 1024


def capacity_limit(kv_cache_tokens: float | None, tokens_per_request: float | None) -> int:
    """The climb's upper bound from the server's own capacity (vLLM's cache_config_info)."""
    if kv_cache_tokens and tokens_per_request:
        return max(2, math.ceil(KV_FILL_MULTIPLE * kv_cache_tokens / tokens_per_request))
    return FALLBACK_LIMIT


@dataclass(frozen=True)
class Knee:
    concurrency: float | None  # None: even the lowest step broke the SLO
    first_bad: float | None  # None: the SLO never broke (the knee is at least `concurrency`)
    refined: bool  # first_bad - knee is within the plan's resolution


def _bounds(outcomes: list[Outcome]) -> tuple[float, float | None]:
    bad = [o.concurrency for o in outcomes if not o.slo_ok]
    first_bad = min(bad) if bad else None
    good = [o.concurrency for o in outcomes if o.slo_ok and (first_bad is None or o.concurrency < first_bad)]
    return (max(good) if good else 0), first_bad


def throughput_fell(outcomes: list[Outcome]) -> bool:
    """The highest step's throughput lies clearly under the best of the steps below it."""
    measured = sorted((o.concurrency, o.tok_s) for o in outcomes if o.tok_s is not None)
    if len(measured) < 2:
        return False
    top, top_tok_s = measured[-1]
    best_below = max(t for c, t in measured if c < top)
    return top_tok_s < (1 - THROUGHPUT_FALL_STOP) * best_below


def _climbing_stopped(plan: Plan, outcomes: list[Outcome]) -> bool:
    if any(o.hard_stop for o in outcomes) or throughput_fell(outcomes):
        return True
    trailing_bad, highest = 0, 0.0
    for outcome in outcomes:  # in the order they ran; only steps above all earlier ones are climbing
        if outcome.concurrency > highest:
            highest = outcome.concurrency
            trailing_bad = 0 if outcome.slo_ok else trailing_bad + 1
    return trailing_bad >= plan.stop.slo_broken_steps


def _resolved(plan: Plan, last_good: float, first_bad: float) -> bool:
    return first_bad - last_good <= max(1, math.floor(plan.search.resolution * last_good))


def next_concurrency(plan: Plan, outcomes: list[Outcome], server_limit: int = FALLBACK_LIMIT) -> int | None:
    """The next step's concurrency, or None when the sweep is done. server_limit bounds the climb
    where the plan sets no max_concurrency."""
    budget = plan.search.max_steps if plan.search.enabled else len(plan.steps)
    if len(outcomes) >= budget:
        return None
    tested = {o.concurrency for o in outcomes}
    if not _climbing_stopped(plan, outcomes):
        for step in plan.steps:
            if step not in tested:
                return step
        if plan.search.enabled:
            highest = max(tested)
            limit = plan.search.max_concurrency or server_limit
            candidate = min(limit, math.ceil(highest * plan.search.growth))
            if candidate > highest:
                return candidate
    last_good, first_bad = _bounds(outcomes)
    if not plan.search.enabled or first_bad is None or _resolved(plan, last_good, first_bad):
        return None
    middle = int((last_good + first_bad) // 2)
    if middle <= last_good or middle in tested:
        return None
    return middle


def find_knee(plan: Plan, outcomes: list[Outcome]) -> Knee:
    last_good, first_bad = _bounds(outcomes)
    refined = first_bad is not None and _resolved(plan, last_good, first_bad)
    return Knee(concurrency=last_good or None, first_bad=first_bad, refined=refined)
