"""Before any step: is the target an OpenAI-compatible server, which model does it serve, and does
its time to first byte equal its time to first token?

The collector holds the response head until the first token and says so in a header: that is the
verdict. Any other target is judged by timing, and only where timing can tell: headers measurably
ahead of the first token (vLLM itself sends them before prefill ends) mean TTFB is not TTFT; head
and first token together in every round is "undetermined" (a server that delivers in bursts looks
the same as a proxy that holds the head), and the sweep then takes TTFT from vLLM's own histogram."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass

import requests


class TargetError(RuntimeError):
    """One line: why the target cannot be load-tested."""


# How far the head must lead the first token, in at least one round, to call them apart.
HEAD_LEAD_S = 0.002


@dataclass(frozen=True)
class Probe:
    model: str
    headers_s: float  # median time to the response head
    first_token_s: float  # median time to the first chunk with generated text
    ttfb_is_ttft: bool
    verdict: str  # "head held (collector header)", "headers before first token" or "undetermined"


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The bearer header the collector asks for when it has an API key (none without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def served_model(target: str, api_key: str | None = None) -> str:
    try:
        response = requests.get(f"{target}/v1/models", timeout=10, headers=auth_headers(api_key))
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (requests.RequestException, KeyError, IndexError, ValueError) as error:
        raise TargetError(f"{target} does not serve an OpenAI-compatible model list ({type(error).__name__}: "
                          f"{str(error)[:120]})") from None


# Set by the collector on streams whose head it held until the first token.
HEAD_HELD_HEADER = "X-Collector-Head-Held"


def _one(target: str, model: str, api_key: str | None) -> tuple[float, float, bool]:
    body = {"model": model, "messages": [{"role": "user", "content": "probe: say something long"}],
            "max_tokens": 8, "stream": True, "ignore_eos": True}
    headers = auth_headers(api_key)
    start = time.perf_counter()
    with requests.post(f"{target}/v1/chat/completions", json=body, headers=headers, stream=True,
                       timeout=60) as response:
        head = time.perf_counter() - start
        held = response.headers.get(HEAD_HELD_HEADER) == "first-token"
        if response.status_code != 200:
            raise TargetError(f"{target}/v1/chat/completions answered HTTP {response.status_code}: "
                              f"{response.text[:160]}")
        for line in response.iter_lines():
            if line.startswith(b"data:") and line != b"data: [DONE]":
                chunk = json.loads(line[5:])
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    first = time.perf_counter() - start
                    return head, first, held
    raise TargetError(f"{target}: a streaming chat completion produced no text")


def probe_target(target: str, model: str | None = None, api_key: str | None = None, rounds: int = 5) -> Probe:
    model = model or served_model(target, api_key)
    try:
        samples = [_one(target, model, api_key) for _ in range(rounds)]
    except requests.RequestException as error:
        raise TargetError(f"{target}: streaming chat completion failed ({type(error).__name__})") from None
    head = statistics.median(s[0] for s in samples)
    first = statistics.median(s[1] for s in samples)
    if all(s[2] for s in samples):
        return Probe(model, head, first, ttfb_is_ttft=True, verdict="head held (collector header)")
    if any(s[1] - s[0] > HEAD_LEAD_S for s in samples):
        return Probe(model, head, first, ttfb_is_ttft=False, verdict="headers before first token")
    return Probe(model, head, first, ttfb_is_ttft=False, verdict="undetermined")
