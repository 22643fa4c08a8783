"""Every metric a rule reads exists where it is supposed to come from, on the real components.

The names come from the live /metrics of the pinned vLLM (CPU build, same metrics code as the GPU
build), the collector, node exporter, Prometheus and Alertmanager, plus DCGM exporter's published
default counters (prometheus/dcgm-exporter-counters.csv: DCGM exporter needs a GPU and cannot run
here, so its names are checked against that list, not a live exporter).
"""

from __future__ import annotations

import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from loadgen import slo_rules
from tests.support.prometheus_checks import DCGM_COUNTERS, RULE_FILES, rule_file_errors
from tests.support.promql_names import (
    PROMETHEUS_SYNTHETIC,
    dcgm_counter_names,
    exposed_names,
    metric_names,
    recorded_names,
    rule_expressions,
)
from tests.support.stack import Stack

pytestmark = pytest.mark.stack


@cache
def scrape(url: str) -> str:
    response = requests.get(f"{url}/metrics", timeout=10)
    response.raise_for_status()
    return response.text


def known_metric_names(stack: Stack) -> dict[str, set[str]]:
    return {
        "vllm": exposed_names(scrape(stack.vllm)),
        "collector": exposed_names(scrape(stack.collector)),
        "node-exporter": exposed_names(scrape(stack.node_exporter)),
        "prometheus": exposed_names(scrape(stack.prometheus)) | PROMETHEUS_SYNTHETIC,
        "alertmanager": exposed_names(scrape(stack.alertmanager)),
        "dcgm-exporter": dcgm_counter_names(DCGM_COUNTERS),
    }


def test_every_metric_a_rule_reads_exists_on_its_source(stack: Stack) -> None:
    known = set().union(*known_metric_names(stack).values())
    errors = rule_file_errors(RULE_FILES, known)
    assert errors == [], "\n".join(errors)


def test_each_source_provides_the_names_the_rules_expect_from_it(stack: Stack) -> None:
    """Names are matched to the right source: vllm:* on vLLM, collector_* on the collector, ..."""
    sources = known_metric_names(stack)
    prefixes = {"vllm:": "vllm", "collector_": "collector", "node_": "node-exporter",
                "DCGM_": "dcgm-exporter", "prometheus_": "prometheus", "alertmanager_": "alertmanager"}
    recorded = recorded_names(RULE_FILES)
    used = {name for path in RULE_FILES for item in rule_expressions(path)
            for name in metric_names(item.expr)} - recorded
    for name in sorted(used):
        source = next((s for p, s in prefixes.items() if name.startswith(p)), "prometheus")
        assert name in sources[source], f"{name} is not exposed by {source}"
    # The rules read every source (a file that silently stopped using one would pass above).
    assert {next((s for p, s in prefixes.items() if n.startswith(p)), "prometheus") for n in used} == set(sources)


def test_vllm_bucket_bounds_match_the_pinned_vllm(stack: Stack) -> None:
    """The SLO-attainment rules spell out vLLM's buckets: they must be the live server's."""
    text = scrape(stack.vllm)
    for metric, bounds in slo_rules.VLLM_BUCKETS.items():
        live = [line.split('le="', 1)[1].split('"', 1)[0] for line in text.splitlines()
                if line.startswith(f"{metric}_bucket{{") and f'model_name="{stack.model}"' in line]
        assert live, f"{metric} not on vLLM's /metrics"
        assert tuple(le for le in live if le != "+Inf") == bounds


def test_collector_bucket_bounds_match_the_rules(stack: Stack) -> None:
    """Same for the collector's buckets, as its live /metrics writes them."""
    text = scrape(stack.collector)
    for attainment in slo_rules.ATTAINMENTS:
        if not attainment.record.startswith("model:collector_"):
            continue
        metric = attainment.buckets.split(":")[1]  # collector_..._bucket
        live = {line.split('le="', 1)[1].split('"', 1)[0] for line in text.splitlines()
                if line.startswith(f"{metric}{{")}
        if not live:
            pytest.fail(f"{metric} has no samples yet on the collector (no request has gone through it)")
        assert live - {"+Inf"} == set(attainment.bounds)


def test_live_prometheus_evaluates_every_rule_without_error(stack: Stack) -> None:
    """Loads the repo's rules into the running Prometheus and sees every rule evaluate cleanly.

    Catches what promtool cannot: errors that only appear on real series (many-to-many matching,
    duplicate series after aggregation).
    """
    requests.post(f"{stack.prometheus}/-/reload", timeout=30).raise_for_status()
    expected = {
        rule.get("record") or rule.get("alert")
        for path in RULE_FILES
        for group in _groups(path)
        for rule in group["rules"]
    }
    deadline = time.monotonic() + 30
    while True:
        groups = requests.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        evaluated = all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
        loaded = {rule["name"] for rule in rules}
        if (loaded == expected and evaluated) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert loaded == expected
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert unhealthy == {}
    assert stack.prom_value("envelope:ttft_p95_seconds:threshold") == 2
    running = stack.prom_query(f'model_name:vllm_num_requests_running:sum{{model_name="{stack.model}"}}')
    assert running, "recording rules produced nothing from the live vLLM"


def _groups(path: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups
