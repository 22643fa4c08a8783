"""The adaptive knee search and the step statistics, on recorded step results (no live stack)."""

from __future__ import annotations

import pytest

from loadgen import knee, stats
from loadgen.plan import Plan, parse_plan

# Client p95 TTFT (s) per concurrency, recorded by `python -m loadgen sweep --plan bend-native` on the native
# stack (tiny model, 900-token answers, 96 KV blocks, max-num-seqs 16): the KV cache fills past 12 streams,
# preemptions and a queue follow, and TTFT leaves the 2 s SLO between 15 and 18 streams.
RECORDED_P95_TTFT = {1: 0.321, 4: 0.252, 12: 0.287, 15: 1.652, 18: 17.181, 24: 29.397}
SLO_TTFT_P95_S = 2.0


def plan(**overrides: object) -> Plan:
    data: dict[str, object] = {"steps": [1, 4], "search": {"growth": 2.0, "max_concurrency": 64, "resolution": 0.15,
                                                             "max_steps": 12},
                               "stop": {"slo_broken_steps": 1}}
    data.update(overrides)
    return parse_plan(data, "test plan")


def run_search(p: Plan, ok: dict[int, bool] | None = None,
               hard_stop_at: int | None = None) -> tuple[list[float], knee.Knee]:
    """Drive the search with the recorded results (linear interpolation between recorded points)."""
    def measured_ok(c: int) -> bool:
        if ok is not None:
            return ok[c]
        points = sorted(RECORDED_P95_TTFT)
        c = min(c, points[-1])  # beyond the last recorded step it only gets worse; the last value will do
        low = max(x for x in points if x <= c)
        high = min(x for x in points if x >= c)
        value = RECORDED_P95_TTFT[low] if low == high else RECORDED_P95_TTFT[low] + (
            RECORDED_P95_TTFT[high] - RECORDED_P95_TTFT[low]) * (c - low) / (high - low)
        return value <= SLO_TTFT_P95_S

    outcomes: list[knee.Outcome] = []
    while (c := knee.next_concurrency(p, outcomes)) is not None:
        stop = "host memory under the floor" if hard_stop_at is not None and c >= hard_stop_at else None
        outcomes.append(knee.Outcome(c, measured_ok(c) and stop is None, stop))
    return [o.concurrency for o in outcomes], knee.find_knee(p, outcomes)


def test_coarse_then_bisect_finds_the_recorded_knee_in_few_steps() -> None:
    order, found = run_search(plan(steps=[1, 4, 12], search={"growth": 2.0, "max_concurrency": 32,
                                                             "resolution": 0.1, "max_steps": 10}))
    # the seeds, doubling until the SLO breaks (24), then bisection between 12 and 24
    assert order == [1, 4, 12, 24, 18, 15, 16]
    assert found == knee.Knee(concurrency=15, first_bad=16, refined=True)


def test_two_broken_steps_before_climbing_stops() -> None:
    ok = {1: True, 4: True, 8: False, 16: True, 32: False, 64: False, 6: True, 7: True}
    order, found = run_search(plan(stop={"slo_broken_steps": 2}), ok=ok)
    # 8 broke but 16 held (noise), so climbing went on until two steps in a row broke
    assert order[:6] == [1, 4, 8, 16, 32, 64]
    # the knee stays conservative: the highest good step below the lowest bad one
    assert found.first_bad == 8 and found.concurrency == 7
    assert order[6:] == [6, 7]


def test_hard_stop_stops_climbing_at_once() -> None:
    order, found = run_search(plan(stop={"slo_broken_steps": 3}), hard_stop_at=8)
    assert 16 not in order, "a memory-floor stop must never be followed by a higher step"
    assert found.first_bad == 8 and found.concurrency is not None and found.concurrency < 8


def test_first_step_broken_means_no_knee() -> None:
    order, found = run_search(plan(steps=[1, 5, 20]), ok={1: False, 5: False, 20: False})
    assert order == [1]
    assert found == knee.Knee(concurrency=None, first_bad=1, refined=True)


def test_search_disabled_runs_only_the_seed_steps() -> None:
    order, found = run_search(plan(steps=[1, 5, 20], search={"enabled": False}, stop={"slo_broken_steps": 3}))
    assert order == [1, 5, 20]
    assert found.concurrency == 5 and found.first_bad == 20 and not found.refined


def test_never_broken_climbs_to_the_cap_and_says_so() -> None:
    order, found = run_search(plan(), ok=dict.fromkeys([1, 4, 8, 16, 32, 64], True))
    assert order == [1, 4, 8, 16, 32, 64]
    assert found == knee.Knee(concurrency=64, first_bad=None, refined=False)


@pytest.mark.parametrize("true_knee", [3, 9, 17, 40, 63])
def test_search_brackets_any_knee_within_resolution(true_knee: int) -> None:
    p = plan(search={"growth": 2.0, "max_concurrency": 128, "resolution": 0.1, "max_steps": 14})
    order, found = run_search(p, ok={c: c <= true_knee for c in range(1, 129)})
    assert found.concurrency == true_knee or (found.first_bad is not None and found.concurrency is not None
                                              and found.first_bad - found.concurrency <= max(1, 0.1 * found.concurrency)
                                              and found.concurrency <= true_knee < found.first_bad)
    assert len(order) <= 12


def test_tokens_in_span_splits_a_request_across_the_window() -> None:
    # 100 tokens streamed between t=10.5 s (first token) and t=20.5 s
    record = {"start_ms": 10_000, "ttft_ms": 500, "total_ms": 10_500, "output_tokens": 100}
    assert stats.tokens_in_span(record, 0, 100) == pytest.approx(100)
    assert stats.tokens_in_span(record, 15.5, 100) == pytest.approx(50)
    assert stats.tokens_in_span(record, 0, 10.5) == 0


def test_client_step_stats_uses_only_requests_started_in_the_window() -> None:
    records = [
        {"start_ms": 0, "ttft_ms": 9000, "total_ms": 10_000, "output_tokens": 10, "prompt_tokens": 5, "error": ""},
        {"start_ms": 11_000, "ttft_ms": 100, "total_ms": 1100, "output_tokens": 11, "prompt_tokens": 5, "error": ""},
        {"start_ms": 12_000, "ttft_ms": 300, "total_ms": 300, "output_tokens": 0, "prompt_tokens": 0,
         "error": "http_5xx"},
    ]
    figures = stats.client_step_stats(records, 10.0, 20.0)
    assert figures["requests"] == 2 and figures["ok"] == 1 and figures["errors"] == 1
    assert figures["error_kinds"] == {"http_5xx": 1}
    assert figures["ttft_p50_s"] == pytest.approx(0.1)  # the warm-up request's 9 s TTFT is excluded
    assert figures["user_tok_s_p50"] == pytest.approx(10 / 1.0)
    assert figures["output_tok_s"] == pytest.approx((10 * 0 + 11) / 10)


# Aggregate tok/s per concurrency of the H200 fixture's default sweep (tests/data/h200-qwen3-8b-default): the
# SLO held to 368 users while throughput peaked there and fell 27% at 512.
H200_TOK_S = {1: 192, 5: 906, 20: 3501, 40: 6564, 80: 11352, 160: 14912, 320: 18147, 368: 18767, 416: 18155,
              512: 13757}


def test_a_throughput_collapse_ends_the_climb_even_while_the_slo_holds() -> None:
    p = plan(steps=[1, 5, 20], search={"growth": 2.0, "resolution": 0.25, "max_steps": 14})
    outcomes: list[knee.Outcome] = []
    while (c := knee.next_concurrency(p, outcomes, server_limit=10_000)) is not None:
        tok_s = H200_TOK_S.get(c, H200_TOK_S[512] * 0.8 if c > 512 else None)
        outcomes.append(knee.Outcome(c, True, None, tok_s))  # an SLO that never breaks
    order = [o.concurrency for o in outcomes]
    # 640 (not in the fixture: taken as 80% of 512's) falls well under 320's 18k tok/s: the climb stops there
    assert order == [1, 5, 20, 40, 80, 160, 320, 640] and knee.throughput_fell(outcomes)


def test_the_climb_is_bounded_by_the_servers_kv_capacity_without_a_plan_cap() -> None:
    # 12,288 KV tokens at 910 tokens per request fill at 13.5 users: the climb stops at twice that
    limit = knee.capacity_limit(12_288, 910)
    assert limit == 28
    p = plan(steps=[1, 4], search={"growth": 2.0, "resolution": 0.1, "max_steps": 20})
    outcomes: list[knee.Outcome] = []
    while (c := knee.next_concurrency(p, outcomes, server_limit=limit)) is not None:
        outcomes.append(knee.Outcome(c, True, None, 100.0 * c))
    assert [o.concurrency for o in outcomes] == [1, 4, 8, 16, 28]
    assert knee.capacity_limit(None, 910) == knee.FALLBACK_LIMIT
