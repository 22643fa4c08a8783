"""A closed-loop sweep with a request mix, end to end on the live native stack: users send drawn lengths,
conversations that resend their history and a shared system prompt; the report states the mix, the
lengths vLLM saw, and takes the prefix-cache hits the mix causes on purpose for the workload, not a doubt."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.stack import Stack

pytestmark = pytest.mark.stack


def test_a_closed_loop_with_a_request_mix_sends_the_draws_and_reports_them(stack: Stack, tmp_path: Path) -> None:
    plan = {
        "name": "mix-users-test", "steps": [2, 4], "search": {"enabled": False},
        "warmup_s": 2, "steady_s": 8, "max_steady_s": 8, "request_timeout_s": 60,
        "stop": {"error_ratio": 0.5, "slo_broken_steps": 2, "min_host_mem_available_gib": 1},
        # Sized for the native model's 1,024-token context (~3.4 tokens a word) with a second turn's history.
        "mix": {"prompt_words": {"dist": "lognormal", "mean": 25, "cv": 0.5, "max": 55},
                "output_tokens": {"dist": "lognormal", "mean": 48, "cv": 0.5, "min": 8, "max": 120},
                "system_prompt_words": 40, "turns": {"dist": "histogram", "bins": [[1, 2, 1]]},
                "think_time_s": 0.3, "retries": {"max": 1, "errors": ["http_5xx"]}},
    }
    run_dir = stack.sweep(plan, tmp_path)
    results: dict[str, Any] = json.loads((run_dir / "results.json").read_text())
    assert results["plan"]["mode"] == "concurrency" and results["status"] == "complete"
    records = [json.loads(line) for raw in (run_dir / "raw").glob("step-*-requests.jsonl")
               for line in raw.read_text().splitlines() if line.startswith("{")]
    ok = [r for r in records if not r["error"]]
    assert ok and all(r["output_tokens"] == r["max_tokens"] for r in ok)  # ignore_eos: the drawn lengths
    assert len({r["max_tokens"] for r in ok}) > 3 and min(r["max_tokens"] for r in ok) >= 8
    assert max(r["max_tokens"] for r in ok) <= 120
    # Each user's next request is the next draw: no draw is sent twice in a step (fewer requests than draws).
    for step in {r["step"] for r in records}:
        openings = [r["index"] for r in records if r["step"] == step and r["turn"] == 0 and r["attempt"] == 0]
        assert len(openings) == len(set(openings))
    # Second turns resent the history: the prompt grew by the first question and its answer.
    first = {(r["step"], r["index"]): r for r in ok if r["turn"] == 0}
    seconds = [r for r in ok if r["turn"] == 1]
    assert seconds, "no conversation had a second turn"
    for r in seconds:
        opening = first[(r["step"], r["index"])]
        assert r["prompt_tokens"] > opening["prompt_tokens"] + opening["output_tokens"], (opening, r)
    for step in results["steps"]:
        lengths = step["lengths"]
        assert lengths["prompt_count"] >= step["client"]["ok"] and lengths["generation_count"] >= 1, lengths
        # the shared system prompt and the resent history come from vLLM's prefix cache
        assert step["server"]["vllm"]["prefix_cache_hit_ratio"] > 0.2, step["server"]["vllm"]
    with (run_dir / "requests.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(records) and {"index", "turn", "attempt", "max_tokens"} <= set(rows[0])
    report = (run_dir / "report.md").read_text()
    for text in ("closed loop by concurrency", "(a request mix, below)", "## Load: request mix",
                 "lognormal, mean 25 words, cv 0.5, clipped to [1, 55]", "a shared system prompt of 40 words",
                 "conversations of 1-2 turns (uniform)", "a user's next request is a whole conversation",
                 "retried up to 1 times", "Lengths vLLM saw", "prefix cache hit ratio",
                 "(median of a request mix)", "prefix-cache hits expected (the mix shares prompts on purpose)"):
        assert text in report, text
    assert "prompts distinct (prefix-cache hit ratio under 50%)" not in report
    html = (run_dir / "report.html").read_text()
    assert "Load: request mix" in html and "a request mix, below" in html
