"""Open-loop workloads without a server: the arrival schedule's statistics (fixed seeds), request mixes,
rate plans refused with the field named, the knee search on rates, and dropped arrivals judged."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

import numpy as np
import pytest

from loadgen import arrivals, knee, rate_mode
from loadgen.plan import PlanError, load_plan, parse_plan, plan_from_dict


def gaps(instants: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(instants)]


def cv(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.fmean(values)


def test_poisson_schedule_has_the_rate_and_exponential_gaps() -> None:
    instants = arrivals.schedule(5.0, 2000.0, arrivals.Arrival(process="poisson", seed=7))
    assert abs(len(instants) - 10_000) < 3 * 100  # Poisson count: sd = sqrt(10,000)
    assert all(0 <= t < 2000 for t in instants) and instants == sorted(instants)
    g = gaps(instants)
    assert statistics.fmean(g) == pytest.approx(0.2, rel=0.03)
    assert cv(g) == pytest.approx(1.0, abs=0.04)  # exponential: sd = mean
    assert float(np.mean(np.array(g) < 0.2)) == pytest.approx(1 - np.exp(-1), abs=0.02)  # P(gap < mean)


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 2.0])
def test_gamma_schedule_keeps_the_rate_and_sets_the_burstiness(burstiness: float) -> None:
    instants = arrivals.schedule(4.0, 3000.0, arrivals.Arrival(process="gamma", burstiness=burstiness, seed=11))
    g = gaps(instants)
    assert statistics.fmean(g) == pytest.approx(0.25, rel=0.05)
    assert cv(g) == pytest.approx(1 / burstiness**0.5, rel=0.06)  # vllm bench's convention


def test_constant_schedule_is_evenly_spaced() -> None:
    instants = arrivals.schedule(2.0, 10.0, arrivals.Arrival(process="constant"))
    assert instants == pytest.approx([0.25 + 0.5 * i for i in range(20)])


def test_the_seed_fixes_the_schedule() -> None:
    a = arrivals.schedule(3.0, 60.0, arrivals.Arrival(seed=5))
    assert a == arrivals.schedule(3.0, 60.0, arrivals.Arrival(seed=5))
    assert a != arrivals.schedule(3.0, 60.0, arrivals.Arrival(seed=6))


def test_a_burst_multiplies_the_rate_for_its_duration_only() -> None:
    burst = arrivals.Burst(at_s=1000.0, duration_s=500.0, factor=5.0)
    instants = arrivals.schedule(2.0, 3000.0, arrivals.Arrival(seed=3, bursts=(burst,)))
    before = sum(1 for t in instants if t < 1000)
    during = sum(1 for t in instants if 1000 <= t < 1500)
    after = sum(1 for t in instants if t >= 1500)
    assert before == pytest.approx(2000, abs=3 * 45)
    assert during == pytest.approx(5000, abs=3 * 71)
    assert after == pytest.approx(3000, abs=3 * 55)


def test_lognormal_lengths_have_the_mean_and_spread_asked() -> None:
    rng = np.random.default_rng(0)
    values = arrivals.sample_lengths(arrivals.Length(dist="lognormal", mean=200, cv=0.5), 50_000, rng)
    assert statistics.fmean(values) == pytest.approx(200, rel=0.02)
    assert cv([float(v) for v in values]) == pytest.approx(0.5, rel=0.05)
    clipped = arrivals.sample_lengths(arrivals.Length(dist="lognormal", mean=200, cv=2, min=10, max=300), 5000, rng)
    assert min(clipped) >= 10 and max(clipped) <= 300


def test_histogram_lengths_follow_the_weights_and_the_shipped_file_parses() -> None:
    length = arrivals.parse_length({"dist": "histogram", "bins": [[1, 10, 1], [100, 110, 3]]}, "mix.output_tokens")
    values = arrivals.sample_lengths(length, 20_000, np.random.default_rng(1))
    assert set(values) <= set(range(1, 11)) | set(range(100, 111))
    assert sum(v >= 100 for v in values) / len(values) == pytest.approx(0.75, abs=0.02)
    shipped = arrivals.parse_length({"dist": "histogram", "bins": "length-histograms/chat-output.yaml"}, "x")
    assert shipped.bins[0][0] >= 1 and sum(w for _, _, w in shipped.bins) > 0


def test_request_rows_carry_each_arrivals_lengths_and_turns() -> None:
    mix = arrivals.Mix(prompt_words=arrivals.Length(value=7), output_tokens=arrivals.Length(value=33))
    rows = arrivals.requests_for([0.1, 0.25], mix, seed=0)
    assert rows == [[100.0, 7, 33, 1, 0], [250.0, 7, 33, 1, 0]]
    chats = arrivals.parse_mix({"prompt_words": 7, "output_tokens": 33, "think_time_s": 2,
                                "turns": {"dist": "histogram", "bins": [[2, 4, 1]]}})
    assert chats.think_time_s == 2.0
    assert {row[3] for row in arrivals.requests_for([0.1 * i for i in range(200)], chats, seed=0)} == {2, 3, 4}


RATE = {"mode": "rate", "rates": [1, 2]}


@pytest.mark.parametrize(("plan", "message"), [
    ({"mode": "open"}, "mode: must be concurrency or rate"),
    ({"mode": "rate"}, "rates: mode rate needs a non-empty list"),
    ({"mode": "rate", "rates": [2, 1]}, "rates: must rise strictly"),
    ({"mode": "rate", "rates": [1, "fast"]}, "rates[1]: must be a number"),
    ({"mode": "rate", "rates": [0, 1]}, "rates[0]: must be >= 0.001"),
    ({"rates": [1, 2]}, "rates: only with mode: rate"),
    ({"arrival": {"process": "gamma"}}, "arrival: only with mode: rate"),
    ({"mix": {"prompt_words": 10, "output_tokens": 5, "slow_readers": {"share": 0.1}}},
     "mix.slow_readers: only with mode: rate"),
    ({**RATE, "arrival": {"process": "weibull"}}, "arrival.process: must be one of poisson, gamma, constant"),
    ({**RATE, "arrival": {"burstiness": 0.5}}, "arrival.burstiness: only for process gamma"),
    ({**RATE, "arrival": {"process": "gamma", "burstiness": 0}}, "arrival.burstiness: must be > 0"),
    ({**RATE, "arrival": {"max_in_flight": 0}}, "arrival.max_in_flight: must be >= 1"),
    ({**RATE, "arrival": {"rate": 3}}, "arrival.rate: unknown field"),
    ({**RATE, "arrival": {"bursts": [{"at_s": 5, "duration_s": 2}]}}, "arrival.bursts[0].factor: required"),
    ({**RATE, "arrival": {"bursts": [{"at_s": 5, "duration_s": 4, "factor": 2},
                                     {"at_s": 7, "duration_s": 1, "factor": 2}]}}, "arrival.bursts: bursts overlap"),
    ({**RATE, "mix": {"prompt_words": 10}}, "mix.output_tokens: required"),
    ({**RATE, "mix": {"prompt_words": 10, "output_tokens": {"dist": "normal"}}}, "mix.output_tokens.dist: must be"),
    ({**RATE, "mix": {"prompt_words": 10, "output_tokens": {"dist": "lognormal", "mean": 50}}},
     "mix.output_tokens.cv: required"),
    ({**RATE, "mix": {"prompt_words": {"dist": "histogram", "bins": [[5, 2, 1]]}, "output_tokens": 5}},
     "mix.prompt_words.bins[0] high: must be >= 5"),
    ({**RATE, "mix": {"prompt_words": {"dist": "histogram", "bins": "nope.yaml"}, "output_tokens": 5}},
     "mix.prompt_words.bins: histogram file 'nope.yaml' not found"),
    ({**RATE, "mix": {"prompt_words": 10, "output_tokens": 5, "ignore_eos": "no"}}, "mix.ignore_eos: must be true"),
    ({**RATE, "mix": {"prompt_words": 10, "output_tokens": 5, "turns": 0}}, "mix.turns: must be >= 1"),
    ({**RATE, "mix": {"prompt_words": 10, "output_tokens": 5, "think_time_s": -1}}, "mix.think_time_s: must be >= 0"),
    ({**RATE, "search": {"max_rate": -1}}, "search.max_rate: must be >= 0.001"),
    ({**RATE, "mix": {"prompt_words": 1, "output_tokens": 1, "retries": {"errors": ["teapot"]}}},
     "mix.retries.errors: must be a non-empty list of timeout"),
    ({**RATE, "mix": {"prompt_words": 1, "output_tokens": 1, "retries": {"max": -1}}}, "mix.retries.max: must be >= 0"),
])
def test_a_bad_rate_plan_names_the_field_in_one_line(plan: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError) as error:
        parse_plan(plan, "plan.yaml")
    assert str(error.value).startswith("plan.yaml: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bundled_rate_plans_parse_and_survive_results_json() -> None:
    for name in ("rate-native", "mix-native", "burst-native"):
        plan = load_plan(name)
        assert plan.mode == "rate" and plan.rates
        assert plan_from_dict(plan.to_dict()) == plan
        assert parse_plan({**plan.to_dict(), "steps": list(plan.steps)}, name) == plan  # as --rates & co re-read it
    assert load_plan("mix-native").mix is not None and load_plan("burst-native").arrival.bursts
    users = load_plan("mix-users-native")  # a request mix in the closed loop
    assert users.mode == "concurrency" and users.mix is not None and plan_from_dict(users.to_dict()) == users


def outcome(rate: float, ok: bool, tok_s: float | None = None) -> knee.Outcome:
    return knee.Outcome(rate, ok, None, tok_s)


def test_the_rate_search_climbs_then_bisects_on_rates() -> None:
    plan = parse_plan({"mode": "rate", "rates": [0.5, 1], "search": {"max_rate": 100, "resolution": 0.1},
                       "stop": {"slo_broken_steps": 1}})
    seen: list[knee.Outcome] = []
    breaks_above = 5.3  # the SLO holds up to 5.3 requests/s
    while (rate := rate_mode.next_rate(plan, seen)) is not None:
        seen.append(outcome(rate, rate <= breaks_above))
    rates = [o.concurrency for o in seen]
    assert rates[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    found = rate_mode.find_knee(plan, seen)
    assert found.concurrency is not None and found.first_bad is not None
    assert found.concurrency <= breaks_above < found.first_bad
    assert found.refined and found.first_bad - found.concurrency <= 0.1 * found.concurrency + 1e-9


def test_the_rate_search_stops_at_max_rate() -> None:
    plan = parse_plan({"mode": "rate", "rates": [1], "search": {"max_rate": 3}})
    seen: list[knee.Outcome] = []
    while (rate := rate_mode.next_rate(plan, seen)) is not None:
        seen.append(outcome(rate, True))
    assert [o.concurrency for o in seen] == [1.0, 2.0, 3.0]


def record(scheduled_s: float, *, dropped: bool = False, late_ms: float = 1.0) -> dict[str, Any]:
    return {"zero_ms": 0.0, "scheduled_ms": scheduled_s * 1000, "start_ms": scheduled_s * 1000 + late_ms,
            "late_ms": late_ms, "ttft_ms": 10, "total_ms": 100, "output_tokens": 5, "error": "dropped" if dropped
            else "", "dropped": dropped}


def test_dropped_arrivals_are_counted_and_break_the_slo_over_the_stop_ratio() -> None:
    plan = parse_plan({"mode": "rate", "rates": [10], "arrival": {"max_in_flight": 4}, "stop": {"error_ratio": 0.05}})
    sent = [record(t / 10) for t in range(20, 100)]  # 80 sent in [2, 10)
    dropped = [record(5.0 + t / 100, dropped=True) for t in range(20)]  # 20 dropped
    figures = rate_mode.rate_figures(plan, 10.0, sent, dropped, 2.0, 12.0)
    assert figures["scheduled"] == 100 and figures["dropped"] == 20 and figures["dropped_ratio"] == 0.2
    assert figures["sent_req_s"] == pytest.approx(8.0) and figures["scheduled_req_s"] == pytest.approx(10.0)
    step: dict[str, Any] = {"rate": figures, "slo": {"ok": True, "broken": []}}
    rate_mode.judge_drops(step, plan)
    assert step["slo"]["ok"] is False and "dropped 20 of 100" in step["slo"]["broken"][0]
    retried = [{**record(3.0 + t), "attempt": 1, "start_ms": (3.5 + t) * 1000, "error": "timeout" if t else ""}
               for t in range(3)]
    storm = rate_mode.rate_figures(plan, 10.0, sent + retried, dropped, 2.0, 12.0)
    assert storm["sent"] == 80 and storm["retries"] == 3 and storm["retried_ok"] == 1  # retries are not arrivals
    few = rate_mode.rate_figures(plan, 10.0, sent, dropped[:2], 2.0, 12.0)
    step = {"rate": few, "slo": {"ok": True, "broken": []}}
    rate_mode.judge_drops(step, plan)
    assert step["slo"]["ok"] is True  # 2 of 82: under the stop ratio, reported but not a breach


def test_slow_reader_rows_follow_the_share_and_their_chunked_streams_parse() -> None:
    from loadgen import slow_readers

    mix = arrivals.parse_mix({"prompt_words": 5, "output_tokens": 5, "slow_readers": {"share": 0.25}})
    rows = arrivals.requests_for([0.01 * i for i in range(4000)], mix, seed=3)
    assert sum(r[4] for r in rows) / len(rows) == pytest.approx(0.25, abs=0.03)
    events = (b'data: {"choices": []}\n\n'
              b'data: {"usage": {"completion_tokens": 5, "prompt_tokens": 9}}\n\ndata: [DONE]\n\n')
    framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (events[:30], events[30:])) + b"0\r\n\r\n"
    assert slow_readers._dechunk(framed) == events
    assert slow_readers._usage(events) == ({"completion_tokens": 5, "prompt_tokens": 9}, "")
    with pytest.raises(PlanError, match=r"mix.slow_readers.share: must be <= 1"):
        parse_plan({"mode": "rate", "rates": [1], "mix": {"prompt_words": 5, "output_tokens": 5,
                                                          "slow_readers": {"share": 2}}}, "plan.yaml")


def test_queue_drain_after_a_burst() -> None:
    plan = parse_plan({"mode": "rate", "rates": [2], "arrival": {"bursts": [{"at_s": 5, "duration_s": 2,
                                                                              "factor": 8}]}})
    sampler = rate_mode.QueueSampler(None, "m")
    waiting = {4: 0, 5: 0, 6: 3, 7: 9, 8: 6, 9: 2, 10: 0, 11: 0}
    sampler.samples = [(100.0 + t, float(w), 4.0) for t, w in waiting.items()]
    figures = rate_mode.queue_figures(sampler, plan, zero=100.0)
    burst = figures["bursts"][0]
    assert burst["waiting_peak"] == 9 and burst["drain_s"] == pytest.approx(3.0)  # ends at 107, 0 again at 110


@pytest.mark.parametrize(("argv", "message"), [
    (["--plan", "default", "--rates", "1,2"], "error: command line: rates: only with mode: rate"),
    (["--plan", "rate-native", "--rates", "1,x"], "error: --rates: must be comma-separated requests/s, got '1,x'"),
    (["--plan", "rate-native", "--rates", "2,1"], "error: command line: rates: must rise strictly"),
])
def test_rates_from_the_command_line_are_checked_before_any_load(argv: list[str], message: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from loadgen.__main__ import EXIT_BAD_INPUT, main

    assert main(["sweep", *argv, "--target", "http://127.0.0.1:1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
