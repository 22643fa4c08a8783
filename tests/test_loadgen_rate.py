"""A rate sweep end to end on the live native stack: open-loop Poisson arrivals from k6 at two offered
rates, a request mix (lognormal lengths, a shared system prompt, conversations of one or two turns) and a
burst in each step; the report shows the mode, offered vs achieved rate, dropped arrivals, the lengths vLLM
saw and the queue's drain."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.stack


def test_a_short_rate_sweep_reports_offered_vs_achieved_lengths_and_drain(stack: Stack, tmp_path: Path) -> None:
    plan = {
        "name": "rate-test", "mode": "rate", "rates": [1, 3], "search": {"enabled": False},
        "warmup_s": 2, "steady_s": 8, "max_steady_s": 8, "request_timeout_s": 60,
        "stop": {"error_ratio": 0.5, "slo_broken_steps": 2, "min_host_mem_available_gib": 1},
        "arrival": {"process": "poisson", "seed": 4, "max_in_flight": 48,
                    "bursts": [{"at_s": 4, "duration_s": 2, "factor": 4}]},
        # Sized for the native model's 1,024-token context (~3.4 tokens a word) with a second turn's history.
        "mix": {"prompt_words": {"dist": "lognormal", "mean": 25, "cv": 0.5, "max": 55},
                "output_tokens": {"dist": "lognormal", "mean": 48, "cv": 0.5, "min": 8, "max": 120},
                "system_prompt_words": 40, "turns": {"dist": "histogram", "bins": [[1, 2, 1]]},
                "think_time_s": 0.3, "slow_readers": {"share": 0.2, "read_bytes_per_s": 4000}},
    }
    run_dir = stack.sweep(plan, tmp_path)
    results: dict[str, Any] = json.loads((run_dir / "results.json").read_text())
    assert results["plan"]["mode"] == "rate" and results["status"] == "complete"
    steps = {s["concurrency"]: s for s in results["steps"]}
    assert sorted(steps) == [1.0, 3.0]
    for rate, step in steps.items():
        figures = step["rate"]
        assert step["mode"] == "rate" and step["status"] == "done"
        assert figures["scheduled"] == figures["sent"] + figures["dropped"] >= 3, figures  # arrivals: first turns
        assert figures["dropped"] == 0, figures  # 48 users are plenty at these rates
        # Sent at their instants: a shared 2-core box can stall k6 now and then (the record says how late).
        assert figures["late_p50_ms"] < 100 and figures["sent_late"] <= figures["sent"] // 2, figures
        # Offered by the schedule (Poisson count in an 8 s window, plus the burst) vs sent: the same requests.
        assert 0.3 * rate <= figures["sent_req_s"] <= 4 * rate, figures
        assert step["client"]["errors"] == 0 and step["client"]["ok"] >= 3
        # Lengths vLLM saw: its own histograms over the step (other traffic on the shared stack may add).
        lengths = step["lengths"]
        assert lengths["prompt_count"] >= figures["sent"] - 1 and lengths["generation_count"] >= 1, lengths
        assert lengths["prompt_buckets"] and lengths["generation_buckets"]
        # The queue sampler read vLLM's waiting gauge about once a second, and judged the burst's drain.
        queue = step["queue"]
        assert len(queue["samples"]) >= 5 and queue["bursts"][0]["factor"] == 4
    # ignore_eos: every answer as long as its drawn max_tokens, and the draws follow the mix.
    records = [json.loads(line) for raw in (run_dir / "raw").glob("step-*-requests.jsonl")
               for line in raw.read_text().splitlines() if line.startswith("{")]
    sent = [r for r in records if not r.get("dropped")]
    assert all(r["output_tokens"] == r["max_tokens"] for r in sent if not r["error"])
    # Second turns resent the history: the same conversation's prompt grew by the first question and answer.
    first = {(r["step"], r["index"]): r for r in sent if r["turn"] == 0}
    seconds = [r for r in sent if r["turn"] == 1 and not r["error"]]
    assert seconds, "no conversation had a second turn"
    for r in seconds:
        opening = first[(r["step"], r["index"])]
        assert r["prompt_tokens"] > opening["prompt_tokens"] + opening["output_tokens"], (opening, r)
        # It carried the whole first answer, so it left after that answer; and the user thought 0.3 s first. (k6's
        # timings can add up to more than the wall time on a busy machine, so total_ms is no bound here.)
        assert r["start_ms"] >= opening["start_ms"] + 290, (opening, r)
    assert min(r["max_tokens"] for r in sent) >= 8 and max(r["max_tokens"] for r in sent) <= 160
    assert len({r["max_tokens"] for r in sent}) > 3  # drawn, not fixed
    # Slow readers: sent by loadgen's own client at their instants, read at 4,000 bytes/s, kept apart.
    slow = [json.loads(line) for raw in (run_dir / "raw").glob("step-*-slow-readers.jsonl")
            for line in raw.read_text().splitlines()]
    assert slow and all(r["slow_reader"] and r["late_ms"] < 1000 for r in slow)
    assert not {(r["step"], r["index"]) for r in slow} & {(r["step"], r["index"]) for r in records}  # not k6's
    done = [r for r in slow if not r["error"]]
    assert done and all(r["output_tokens"] == r["max_tokens"] for r in done)
    assert all(r["bytes"] / (r["total_ms"] / 1000) < 4000 * 1.3 for r in done)
    assert steps[3.0]["slow_readers"]["ok"] >= 1
    # The slow readers are this run's traffic: their tokens join k6's beside vLLM's counter, and the requests
    # they kept open are allowed for in Little's law (diagnosis: Wait.slow_readers).
    for step in steps.values():
        if step["slow_readers"] and step["throughput_check"]:
            assert step["throughput_check"]["slow_readers_tok_s"] >= 0 and step["slow_readers"]["in_flight_avg"] > 0
    with (run_dir / "requests.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(records)
    report = (run_dir / "report.md").read_text()
    for text in ("open loop by arrival rate", "## Load: open loop, offered vs achieved", "offered req/s",
                 "completed ok req/s", "dropped", "Lengths vLLM saw", "queue drained after the burst in",
                 "Poisson arrivals", "lognormal, mean 25 words", "a shared system prompt of 40 words",
                 "conversations of 1-2 turns (uniform)", "slow readers ok"):
        assert text in report, text
    assert "concurrent users" not in report.split("## Envelope table")[0]
    html = (run_dir / "report.html").read_text()
    assert "open loop by arrival rate" in html and "offered vs achieved" in html
