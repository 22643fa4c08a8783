"""The cold start read back from the live stack's Prometheus (loadgen/cold_start.py): vLLM's process
start, its first ready scrape, its first token and the first minute's TTFT, and the report's sentence."""

from __future__ import annotations

import time

import pytest

from loadgen import cold_start
from loadgen.prom import Prometheus
from tests.support.stack import Stack

WEEK_S = 7 * 24 * 3600.0


@pytest.mark.stack
def test_the_live_vllms_start_is_read_back_in_order(stack: Stack) -> None:
    prom = Prometheus(stack.prometheus)
    now = time.time()
    # The suite's earlier tests have sent requests; whichever stack this is, its start is in Prometheus.
    cold = cold_start.measure(prom, stack.model, now, horizon_s=WEEK_S)
    assert cold is not None
    started = prom.scalar('min(process_start_time_seconds{job="vllm"})')
    assert started is not None and cold["started"] == started
    # Loading the model and starting the engine takes seconds; the first token comes once it is ready.
    assert cold["ready_after_s"] is not None and 1 < cold["ready_after_s"] < 900, cold
    assert cold["first_token_after_s"] is not None and cold["first_token_after_s"] >= cold["ready_after_s"] - 5, cold
    assert cold["first_minute_requests"] >= 1 and 0 < cold["first_minute_ttft_mean_s"] < 60, cold
    # Before the process started there was no cold start to read, nor long after it with the default horizon.
    assert cold_start.measure(prom, stack.model, started - 10) is None
    assert cold_start.measure(prom, stack.model, started + cold_start.HORIZON_S + 10) is None


def test_the_sentence_says_what_was_measured_and_what_was_not() -> None:
    text = cold_start.sentence({"ready_after_s": 35.2, "first_token_after_s": 54.9, "first_minute_requests": 158.0,
                                "first_minute_ttft_mean_s": 0.0755, "notes": []}, 0.047)
    assert text.startswith("vLLM answered its first metrics scrape 35 s after its process started")
    assert "158 requests" in text and "76 ms" in text and "against 47 ms" in text
    unknown = cold_start.sentence({"ready_after_s": None, "first_token_after_s": None, "notes": ["an upper bound"]},
                                  None)
    assert unknown.startswith("when vLLM became ready is not in Prometheus") and "an upper bound" in unknown
