"""The collector's metric names (dashboards and alert rules read them) and its lock-free histogram."""

from __future__ import annotations

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from collector.metrics import TOKEN_LATENCY_BUCKETS, Metrics

# The public names: changing one breaks the Prometheus rules and Grafana dashboards that read it.
PUBLIC_METRICS = {
    "collector_time_to_first_token_seconds": "histogram",
    "collector_inter_token_latency_seconds": "histogram",
    "collector_time_per_output_token_seconds": "histogram",
    "collector_e2e_request_latency_seconds": "histogram",
    "collector_request_prompt_tokens": "histogram",
    "collector_request_generation_tokens": "histogram",
    "collector_requests": "counter",
    "collector_prompt_tokens": "counter",
    "collector_generation_tokens": "counter",
    "collector_passthrough_requests": "counter",
    "collector_requests_in_flight": "gauge",
    "collector_streams_in_flight": "gauge",
    "collector_upstream_up": "gauge",
}
# The standard process series (the report reads the collector's CPU from process_cpu_seconds_total).
PROCESS_METRICS = {
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
}


def families(metrics: Metrics) -> dict[str, Metric]:
    openmetrics, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and openmetrics.endswith(b"# EOF\n")
    body, content_type = metrics.exposition("text/plain")
    assert content_type.startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def test_public_metric_names_and_types_are_stable() -> None:
    metrics = Metrics()
    metrics.requests.labels("m", "chat", "200", "", "stop").inc()
    for histogram in (metrics.time_to_first_token, metrics.time_per_output_token, metrics.e2e_latency,
                      metrics.prompt_tokens_per_request, metrics.generation_tokens_per_request):
        histogram.labels("m", "chat").observe(1)
    metrics.inter_token_latency.labels("m", "chat").observe(0.01)
    metrics.prompt_tokens.labels("m", "chat").inc()
    metrics.generation_tokens.labels("m", "chat").inc()
    metrics.passthrough_requests.labels("2xx").inc()
    found = {name: family.type for name, family in families(metrics).items()}
    assert {name: kind for name, kind in found.items() if name.startswith("collector_")} == PUBLIC_METRICS
    assert {name: found.get(name) for name in PROCESS_METRICS} == PROCESS_METRICS
    assert not set(found) - set(PUBLIC_METRICS) - {n for n in found if n.startswith("process_")}


def test_loop_histogram_matches_prometheus_semantics() -> None:
    metrics = Metrics()
    child = metrics.inter_token_latency.labels("m", "chat")
    values = [0.0, 0.0005, 0.0006, 0.02, 4.9, 5.0, 7.0]
    for value in values:
        child.observe(value)
    family = families(metrics)["collector_inter_token_latency_seconds"]
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    for bound in TOKEN_LATENCY_BUCKETS:
        le = repr(float(bound))
        assert samples[("collector_inter_token_latency_seconds_bucket", le)] == sum(v <= bound for v in values)
    assert samples[("collector_inter_token_latency_seconds_bucket", "+Inf")] == len(values)
    assert samples[("collector_inter_token_latency_seconds_count", None)] == len(values)
    assert abs(samples[("collector_inter_token_latency_seconds_sum", None)] - sum(values)) < 1e-9
