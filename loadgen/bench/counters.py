"""vLLM's own counters as the ground truth of a benchmark: one scrape of its /metrics (read with
prometheus-client's text parser), a sampler thread, the window in which the generation counter moved,
counter rates and server-side peaks. Used by every benchmark in loadgen.bench; imports nothing of the repo.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from dataclasses import dataclass

import requests
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

SAMPLE_INTERVAL_S = 0.5
# Counter increments closer than this belong to one stretch of load (a tool's own warm-up request a few
# seconds before its run is a separate stretch and is left out).
ACTIVITY_GAP_S = 2.5


@dataclass(frozen=True)
class ServerSample:
    """One scrape of vLLM's /metrics, summed over label sets of the served model."""

    generation_tokens: float = 0.0
    prompt_tokens: float = 0.0
    requests_finished: float = 0.0  # finished_reason stop, length, repetition
    requests_aborted: float = 0.0
    requests_errored: float = 0.0
    preemptions: float = 0.0
    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0  # fraction 0..1


SAMPLE_SERIES = {
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:num_preemptions_total": "preemptions",
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
}
FINISHED_REASON_FIELD = {"stop": "requests_finished", "length": "requests_finished",
                         "repetition": "requests_finished", "abort": "requests_aborted", "error": "requests_errored"}


def _samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (prometheus-client's parser); a line it cannot
    read is skipped, not fatal."""
    try:
        return [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    except ValueError:
        pass
    samples: list[Sample] = []
    for line in text.splitlines():  # a malformed line: read the exposition line by line
        if not line or line.startswith("#"):
            continue
        try:
            samples += [sample for family in text_string_to_metric_families(line) for sample in family.samples]
        except ValueError:
            continue
    return samples


def parse_vllm_metrics(text: str, model: str | None = None) -> ServerSample:
    """The counters and gauges the comparison needs from a Prometheus text exposition."""
    totals: dict[str, float] = {}
    for sample in _samples(text):
        name, labels, value = sample.name, sample.labels, sample.value
        if model is not None and labels.get("model_name", model) != model:
            continue
        if name == "vllm:request_success_total":
            target = FINISHED_REASON_FIELD.get(labels.get("finished_reason", "stop"), "requests_finished")
        elif name in SAMPLE_SERIES:
            target = SAMPLE_SERIES[name]
        else:
            continue
        if math.isfinite(value):
            totals[target] = totals.get(target, 0.0) + value
    return ServerSample(**totals)


def scrape(metrics_url: str, model: str | None) -> ServerSample:
    response = requests.get(metrics_url, timeout=5)
    response.raise_for_status()
    return parse_vllm_metrics(response.text, model)


@dataclass(frozen=True)
class Window:
    """The stretch in which vLLM's generation counter moved, from timed samples."""

    start: float
    end: float
    generation_tokens: float
    requests_finished: float
    prompt_tokens: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def tok_s(self) -> float | None:
        return self.generation_tokens / self.seconds if self.seconds > 0 else None


def active_window(samples: list[tuple[float, ServerSample]], gap_s: float = ACTIVITY_GAP_S) -> Window | None:
    """The longest-by-tokens stretch of counter increments; its ends sit halfway between the samples
    that bracket the first and the last increment (error: half a sample interval at each end)."""
    moves = [i for i in range(1, len(samples)) if samples[i][1].generation_tokens > samples[i - 1][1].generation_tokens]
    if not moves:
        return None
    stretches: list[list[int]] = [[moves[0]]]
    for i in moves[1:]:
        if samples[i - 1][0] - samples[stretches[-1][-1]][0] > gap_s:
            stretches.append([i])
        else:
            stretches[-1].append(i)

    def tokens(stretch: list[int]) -> float:
        return samples[stretch[-1]][1].generation_tokens - samples[stretch[0] - 1][1].generation_tokens

    best = max(stretches, key=tokens)
    first, last = best[0], best[-1]
    before, after = samples[first - 1], samples[last]
    return Window(
        start=(samples[first - 1][0] + samples[first][0]) / 2,
        end=(samples[last - 1][0] + samples[last][0]) / 2,
        generation_tokens=tokens(best),
        requests_finished=after[1].requests_finished - before[1].requests_finished,
        prompt_tokens=after[1].prompt_tokens - before[1].prompt_tokens,
    )


def rate_between(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Counter rate over [start, end], the counter read by linear interpolation between samples."""
    if end <= start or not samples or start < samples[0][0] or end > samples[-1][0]:
        return None

    def at(when: float) -> float:
        for (t0, v0), (t1, v1) in itertools.pairwise(samples):
            if t0 <= when <= t1:
                return v0 if t1 == t0 else v0 + (v1 - v0) * (when - t0) / (t1 - t0)
        return samples[-1][1]

    return (at(end) - at(start)) / (end - start)


class CounterSampler:
    """Scrapes vLLM's /metrics every SAMPLE_INTERVAL_S in a thread while a tool runs."""

    def __init__(self, metrics_url: str, model: str | None) -> None:
        self.metrics_url, self.model = metrics_url, model
        self.samples: list[tuple[float, ServerSample]] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), scrape(self.metrics_url, self.model)))
            except (requests.RequestException, ValueError):
                self.failures += 1
            self._stop.wait(SAMPLE_INTERVAL_S)

    def __enter__(self) -> CounterSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def peaks(samples: list[tuple[float, ServerSample]]) -> dict[str, float]:
    """Server-side evidence over a run: gauge peaks and counter deltas."""
    if not samples:
        return {}
    first, last = samples[0][1], samples[-1][1]
    return {
        "kv_cache_usage_max": max(s.kv_cache_usage for _, s in samples),
        "waiting_max": max(s.waiting for _, s in samples),
        "running_max": max(s.running for _, s in samples),
        "preemptions": last.preemptions - first.preemptions,
        "requests_finished": last.requests_finished - first.requests_finished,
        "requests_aborted": last.requests_aborted - first.requests_aborted,
        "requests_errored": last.requests_errored - first.requests_errored,
        "generation_tokens": last.generation_tokens - first.generation_tokens,
    }


def generation_tokens(vllm_url: str) -> float:
    """vllm:generation_tokens_total summed over every series, straight from vLLM's /metrics."""
    return scrape(f"{vllm_url}/metrics", None).generation_tokens
