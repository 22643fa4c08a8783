"""Issue 13's probes against the real vLLM of the native stack, through a private collector with an
API key: what vLLM itself does (a 307 to its own address for a trailing slash, /invocations
generating) is shown directly, then that none of it gets past the collector; stream flags vLLM
accepts are metered to vLLM's own usage; deep JSON and a huge `n` are clean 400s."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.collector import collector_process, metric_samples, metric_sum, read_stream
from tests.support.stack import Stack

pytestmark = pytest.mark.stack
KEY = "hardening-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hardening-stack") / "collector.log"


@pytest.fixture(scope="module")
def keyed(stack: Stack, log: Path) -> Iterator[str]:
    with collector_process(stack.vllm, env={"COLLECTOR_API_KEY": KEY}, log=log) as url:
        deadline = time.monotonic() + 20  # the model-name label set is learned from /v1/models
        while metric_sum(metric_samples(url), "collector_upstream_up") < 1:
            assert time.monotonic() < deadline, "collector never reached vLLM's /v1/models"
            time.sleep(0.2)
        yield url


def chat(model: str, max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "max_tokens": max_tokens, "ignore_eos": True, **extra}


def test_paths_outside_the_policy_never_reach_vllm(stack: Stack, keyed: str) -> None:
    # vLLM generates for /invocations (SageMaker's entry point): unmetered, if it were relayed.
    direct = requests.post(stack.vllm + "/invocations", json=chat(stack.model), timeout=60)
    assert direct.status_code == 200 and direct.json()["choices"]
    before = metric_samples(keyed)
    for path in ("/invocations", "/docs", "/openapi.json", "/load", "/ping"):
        assert requests.post(keyed + path, json=chat(stack.model), timeout=30).status_code == 401, path
        response = requests.post(keyed + path, json=chat(stack.model), headers=AUTH, timeout=30)
        assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error", path
    for path in ("/health", "/version", "/v1/models", "/tokenize"):
        method = "POST" if path == "/tokenize" else "GET"
        body = {"model": stack.model, "prompt": "sea"} if method == "POST" else None
        assert requests.request(method, keyed + path, json=body, timeout=30).status_code == 401, path
        assert requests.request(method, keyed + path, json=body, headers=AUTH, timeout=30).status_code == 200, path
    # vLLM's own /metrics/ (trailing slash) is the collector's /metrics: no key, no vllm:* series.
    own = requests.get(keyed + "/metrics/", timeout=30)
    assert own.status_code == 200 and "collector_requests_in_flight" in own.text and "vllm:" not in own.text
    tokens = "collector_generation_tokens_total"
    assert metric_sum(metric_samples(keyed), tokens) == metric_sum(before, tokens)


def test_trailing_slash_is_metered_and_never_a_redirect_to_vllm(stack: Stack, keyed: str) -> None:
    direct = requests.post(stack.vllm + "/v1/chat/completions/", json=chat(stack.model), timeout=30,
                           allow_redirects=False)
    assert direct.status_code == 307 and stack.vllm in direct.headers["Location"]  # what vLLM does
    before = metric_samples(keyed)
    response = requests.post(keyed + "/v1/chat/completions/", json=chat(stack.model, 5), headers=AUTH,
                             timeout=60, allow_redirects=False)
    assert response.status_code == 200 and "Location" not in response.headers
    assert stack.vllm not in response.text
    read = read_stream(keyed + "/v1/chat/completions/", {**chat(stack.model, 5), "stream": True}, headers=AUTH)
    assert read.status == 200 and read.events[-1] == "[DONE]"
    after = metric_samples(keyed)
    assert (metric_sum(after, "collector_generation_tokens_total", model=stack.model)
            - metric_sum(before, "collector_generation_tokens_total", model=stack.model)) == 10
    assert (metric_sum(after, "collector_time_to_first_token_seconds_count", model=stack.model)
            - metric_sum(before, "collector_time_to_first_token_seconds_count", model=stack.model)) == 1


@pytest.mark.parametrize("flag", ["true", 1, "yes"])
def test_stream_flags_vllm_accepts_are_metered_to_vllms_usage(stack: Stack, keyed: str, flag: object) -> None:
    direct = read_stream(stack.vllm + "/v1/chat/completions",
                         chat(stack.model, 12, stream=flag, stream_options={"include_usage": True}))
    assert direct.status == 200 and direct.events[-1] == "[DONE]"  # vLLM streams for it
    usage = next(e["usage"] for e in direct.events if isinstance(e, dict) and e.get("usage"))
    before = metric_samples(keyed)
    read = read_stream(keyed + "/v1/chat/completions", chat(stack.model, 12, stream=flag), headers=AUTH)
    assert read.status == 200 and read.events[-1] == "[DONE]"
    assert not any(isinstance(e, dict) and e.get("usage") for e in read.events)
    after = metric_samples(keyed)

    def delta(name: str) -> float:
        return metric_sum(after, name, model=stack.model) - metric_sum(before, name, model=stack.model)

    assert delta("collector_generation_tokens_total") == usage["completion_tokens"] == 12
    assert delta("collector_prompt_tokens_total") == usage["prompt_tokens"]
    assert delta("collector_time_to_first_token_seconds_count") == 1


def test_deep_json_and_huge_n_are_clean_400s(stack: Stack, keyed: str, log: Path) -> None:
    deep = b'{"model":"' + stack.model.encode() + b'","messages":' + b"[" * 3000 + b"]" * 3000 + b"}"
    response = requests.post(keyed + "/v1/chat/completions", data=deep, timeout=30,
                             headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 400 and "nested too deeply" in response.json()["error"]["message"]
    huge_n = requests.post(keyed + "/v1/chat/completions", json=chat(stack.model, n=1000), headers=AUTH, timeout=30)
    assert huge_n.status_code == 400 and huge_n.json()["error"]["param"] == "n"
    assert "Traceback" not in log.read_text()
