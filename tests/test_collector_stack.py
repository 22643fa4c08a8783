"""The collector against the live native stack's real vLLM: its timings agree with what a client
measures, its token counts equal vLLM's usage, failures come back as real HTTP errors, and the
shared stack's Prometheus scrapes it (with trace-id exemplars).

Timing and counting tests run a private collector process in front of the shared vLLM, so the
counters they read hold only their own requests even while other traffic reaches the stack.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.collector import (
    chunk_text,
    collector_process,
    metric_samples,
    metric_sum,
    raw_stream_timing,
    read_stream,
)
from tests.support.stack import Stack

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def private_collector(stack: Stack) -> Iterator[str]:
    with collector_process(stack.vllm) as url:
        deadline = time.monotonic() + 20  # the model-name label set is learned from /v1/models
        while metric_sum(metric_samples(url), "collector_upstream_up") < 1:
            assert time.monotonic() < deadline, "collector never reached vLLM's /v1/models"
            time.sleep(0.2)
        yield url


def chat(model: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": True, **extra}


def test_proxy_ttft_matches_the_clients(stack: Stack, private_collector: str) -> None:
    name = "collector_time_to_first_token_seconds_sum"
    gaps_ms = []
    for _ in range(10):
        before = metric_sum(metric_samples(private_collector), name, model=stack.model)
        client_ttft, reply = raw_stream_timing(private_collector, "/v1/chat/completions", chat(stack.model, 4))
        proxy_ttft = metric_sum(metric_samples(private_collector), name, model=stack.model) - before
        assert reply.startswith(b"HTTP/1.1 200") and proxy_ttft > 0
        # Head held until the first token: the first bytes the client gets already hold it.
        head, _, first_body = reply.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower() and first_body
        gaps_ms.append((client_ttft - proxy_ttft) * 1000)
    # The client never sees its first token before the proxy does, and sees it a few ms later at most.
    # The gap is the two hops of the proxy plus scheduling: on 2 cores shared with vLLM's decode
    # threads (and other work) single requests wait for a core, so the best case carries the claim
    # and the median gets headroom.
    assert min(gaps_ms) > 0, gaps_ms
    assert min(gaps_ms) < 2.0, gaps_ms
    assert statistics.median(gaps_ms) < 10.0, gaps_ms


@pytest.mark.parametrize("client_asks_usage", [True, False])
def test_token_counts_equal_vllm_usage(stack: Stack, private_collector: str, client_asks_usage: bool) -> None:
    # vLLM's own usage for this prompt, asked directly.
    direct = read_stream(stack.vllm + "/v1/chat/completions",
                         chat(stack.model, 12, stream_options={"include_usage": True}))
    usage = next(e["usage"] for e in direct.events if isinstance(e, dict) and e.get("usage"))
    assert usage["completion_tokens"] == 12

    extra = {"stream_options": {"include_usage": True}} if client_asks_usage else {}
    before = metric_samples(private_collector)
    read = read_stream(private_collector + "/v1/chat/completions", chat(stack.model, 12, **extra))
    after = metric_samples(private_collector)
    seen_usage = [e["usage"] for e in read.events if isinstance(e, dict) and e.get("usage")]
    assert seen_usage == ([usage] if client_asks_usage else [])
    assert sum(1 for e in read.events if chunk_text(e)) >= 1

    def delta(name: str) -> float:
        return metric_sum(after, name, model=stack.model) - metric_sum(before, name, model=stack.model)

    assert delta("collector_prompt_tokens_total") == usage["prompt_tokens"]
    assert delta("collector_generation_tokens_total") == usage["completion_tokens"]
    assert delta("collector_requests_total") == 1
    assert metric_sum(after, "collector_requests_total", model=stack.model, finish_reason="length") >= 1
    # TPOT recorded from the usage count; ITL once per content chunk after the first.
    assert delta("collector_time_per_output_token_seconds_count") == 1
    assert delta("collector_inter_token_latency_seconds_count") >= 1


def test_non_streaming_and_completions_are_counted(stack: Stack, private_collector: str) -> None:
    before = metric_samples(private_collector)
    response = requests.post(private_collector + "/v1/completions", timeout=60, json={
        "model": stack.model, "prompt": "Once upon a time", "max_tokens": 7, "ignore_eos": True})
    assert response.status_code == 200
    usage = response.json()["usage"]
    after = metric_samples(private_collector)
    labels = {"model": stack.model, "operation": "text_completion"}
    assert (metric_sum(after, "collector_generation_tokens_total", **labels)
            - metric_sum(before, "collector_generation_tokens_total", **labels)) == usage["completion_tokens"] == 7
    assert (metric_sum(after, "collector_prompt_tokens_total", **labels)
            - metric_sum(before, "collector_prompt_tokens_total", **labels)) == usage["prompt_tokens"]


def test_vllm_errors_come_back_as_http_errors(stack: Stack, private_collector: str) -> None:
    url = private_collector + "/v1/chat/completions"
    unknown = requests.post(url, json=chat("no-such-model", 4), timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == 404
    # A prompt over max-model-len fails before the first token: an HTTP 400, not a 200 with a broken stream.
    too_long = requests.post(url, json={**chat(stack.model, 4), "messages": [
        {"role": "user", "content": "sea " * (int(stack.settings["NATIVE_MAX_MODEL_LEN"]) + 10)}]}, timeout=30)
    assert too_long.status_code == 400 and "error" in too_long.json()
    samples = metric_samples(private_collector)
    # The unknown name is never a label value: it is counted as "other".
    assert metric_sum(samples, "collector_requests_total", model="other", status="404") >= 1
    assert not any("no-such-model" in str(labels) for _, labels in samples)
    assert metric_sum(samples, "collector_requests_total", model=stack.model, status="400") >= 1


def test_shared_collector_relays_and_is_scraped_with_exemplars(stack: Stack) -> None:
    assert requests.get(stack.collector + "/health", timeout=10).status_code == 200
    models = requests.get(stack.collector + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [stack.model]
    read = read_stream(stack.collector + "/v1/chat/completions", chat(stack.model, 4))
    assert read.status == 200 and read.events[-1] == "[DONE]"
    port = stack.settings["COLLECTOR_PORT"]
    assert stack.prom_value(f'up{{job="collector",instance=~".*:{port}"}}') == 1
    stack.wait_for_scrape()
    assert (stack.prom_value(f'sum(collector_requests_total{{model="{stack.model}",status="200"}})') or 0) >= 1
    now = time.time()
    params = {"query": "collector_time_to_first_token_seconds_bucket", "start": str(now - 600), "end": str(now)}
    response = requests.get(f"{stack.prometheus}/api/v1/query_exemplars", params=params, timeout=30)
    exemplars = [e for series in response.json()["data"] for e in series["exemplars"]]
    assert exemplars and all(len(e["labels"]["trace_id"]) == 32 for e in exemplars)
