"""Prometheus metrics of the collector (OpenMetrics exposition, exemplars carry the trace id).

Names are stable: dashboards and alert rules read them. Every label value is bounded: the model
comes from the upstream's own model list ("other" for anything else), operation is one of two,
status/error type/finish reason are small closed sets.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# OpenTelemetry GenAI advice (gen_ai.server.time_to_first_token) refined: 1 ms .. 10 s, plus
# a tail to 60 s so a queueing server's TTFT stays inside the buckets.
TTFT_BUCKETS = (
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3,
    0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
)
# GenAI advice for time per output token starts at 10 ms; CPU decode and batching go below it.
TOKEN_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
)
# GenAI advice for gen_ai.client.operation.duration (powers of two from 10 ms), extended.
E2E_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84,
    327.68,
)
TOKEN_COUNT_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "function_call", "content_filter", "abort",
                            "error"})

REQUEST_LABELS = ("model", "operation")
OUTCOME_LABELS = ("model", "operation", "status", "error_type", "finish_reason")


class Metrics:
    """All collector metrics, in their own registry (so tests can run several proxies)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # *_created series would double the series count in the text format for no use here.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_cpu_seconds_total & co.: the report's "is the proxy saturated?" evidence (one event loop,
        # one core), read like vLLM's own API-server process figures.
        ProcessCollector(registry=r)
        self.time_to_first_token = Histogram(
            "collector_time_to_first_token_seconds",
            "Time from the request reaching the collector to the first chunk with generated content.",
            REQUEST_LABELS, buckets=TTFT_BUCKETS, registry=r)
        self.inter_token_latency = LoopHistogram(
            "collector_inter_token_latency_seconds",
            "Time between consecutive streamed chunks with generated content, as the client receives them.",
            REQUEST_LABELS, TOKEN_LATENCY_BUCKETS)
        r.register(self.inter_token_latency)
        self.time_per_output_token = Histogram(
            "collector_time_per_output_token_seconds",
            "Per request: (end-to-end - TTFT) / (output tokens - 1).",
            REQUEST_LABELS, buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram(
            "collector_e2e_request_latency_seconds",
            "Time from the request reaching the collector to the end of its response.",
            REQUEST_LABELS, buckets=E2E_BUCKETS, registry=r)
        self.prompt_tokens_per_request = Histogram(
            "collector_request_prompt_tokens", "Input tokens per request (from the upstream's usage).",
            REQUEST_LABELS, buckets=TOKEN_COUNT_BUCKETS, registry=r)
        self.generation_tokens_per_request = Histogram(
            "collector_request_generation_tokens", "Output tokens per request (from the upstream's usage).",
            REQUEST_LABELS, buckets=TOKEN_COUNT_BUCKETS, registry=r)
        self.requests = Counter(
            "collector_requests", "Generation requests by outcome (HTTP status, error type, finish reason).",
            OUTCOME_LABELS, registry=r)
        self.prompt_tokens = Counter(
            "collector_prompt_tokens", "Input tokens (from the upstream's usage).", REQUEST_LABELS, registry=r)
        self.generation_tokens = Counter(
            "collector_generation_tokens", "Output tokens (from the upstream's usage).", REQUEST_LABELS,
            registry=r)
        self.requests_in_flight = Gauge(
            "collector_requests_in_flight", "Generation requests being served now.", ("operation",),
            registry=r)
        self.streams_in_flight = Gauge(
            "collector_streams_in_flight", "Streaming responses being relayed now.", ("operation",),
            registry=r)
        self.passthrough_requests = Counter(
            "collector_passthrough_requests", "Requests to other paths, relayed unmetered, by status class.",
            ("status_class",), registry=r)
        self.upstream_up = Gauge(
            "collector_upstream_up", "1 when the upstream answered the latest request or model-list refresh, "
            "0 when it could not be reached.",
            registry=r)
        # labels() costs a lock and a tuple build per call: the children are looked up once per label set.
        self._series: dict[tuple[str, str], RequestSeries] = {}
        self._outcomes: dict[tuple[str, ...], Any] = {}

    def series(self, model: str, operation: str) -> RequestSeries:
        """The per-request histograms and counters of one (model, operation)."""
        found = self._series.get((model, operation))
        if found is None:
            found = self._series[(model, operation)] = RequestSeries(
                ttft=self.time_to_first_token.labels(model, operation),
                itl=self.inter_token_latency.labels(model, operation),
                tpot=self.time_per_output_token.labels(model, operation),
                e2e=self.e2e_latency.labels(model, operation),
                prompt_per_request=self.prompt_tokens_per_request.labels(model, operation),
                generation_per_request=self.generation_tokens_per_request.labels(model, operation),
                prompt_tokens=self.prompt_tokens.labels(model, operation),
                generation_tokens=self.generation_tokens.labels(model, operation),
                in_flight=self.requests_in_flight.labels(operation),
                streams=self.streams_in_flight.labels(operation))
        return found

    def count_request(self, *labels: str) -> None:
        """collector_requests_total{model, operation, status, error_type, finish_reason} += 1"""
        child = self._outcomes.get(labels)
        if child is None:
            child = self._outcomes[labels] = self.requests.labels(*labels)
        child.inc()

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Body and content type for a scrape; OpenMetrics (with exemplars) when the scraper asks."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


@dataclass(frozen=True)
class RequestSeries:
    ttft: Any
    itl: LoopHistogramChild
    tpot: Any
    e2e: Any
    prompt_per_request: Any
    generation_per_request: Any
    prompt_tokens: Any
    generation_tokens: Any
    in_flight: Any
    streams: Any


def finish_reason_label(reason: str | None) -> str:
    if not reason:
        return ""
    return reason if reason in FINISH_REASONS else "other"


class LoopHistogramChild:
    """One label set's buckets: plain counters, no lock (see LoopHistogram)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class LoopHistogram(Collector):
    """A histogram for the per-chunk hot path: ~10x cheaper than prometheus_client's, which takes two
    locks per observation. Safe because every observation and every scrape runs on the one event loop
    thread. No exemplars (per-request histograms carry those)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(buckets)
        self.children: dict[tuple[str, ...], LoopHistogramChild] = {}

    def labels(self, *values: str) -> LoopHistogramChild:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = LoopHistogramChild(self.bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), child.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(cumulative)))
            family.add_metric(list(values), buckets, child.sum)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
