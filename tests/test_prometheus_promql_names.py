"""The metric-name helpers the rule and dashboard tests rely on (tests/promql_names.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.promql_names import (
    PromQLError,
    dcgm_counter_names,
    exposed_names,
    metric_names,
    rule_expressions,
    substitute_grafana_variables,
)


@pytest.mark.parametrize(("expr", "names"), [
    ("up", {"up"}),
    ('sum by (le, model_name) (rate(vllm:e2e_request_latency_seconds_bucket{model_name="m"}[1m]))',
     {"vllm:e2e_request_latency_seconds_bucket"}),
    # label names, grouping labels, function names and keywords are not metrics
    ("histogram_quantile(0.95, sum without (le) (rate(a_bucket[5m]))) > on() group_left() b:c:threshold",
     {"a_bucket", "b:c:threshold"}),
    ('{__name__="by_name", job="x"} unless ignoring(job) offset_metric offset 5m', {"by_name", "offset_metric"}),
    ("max_over_time(sum(rate(x_total[1m]))[10m:30s]) or vector(0)", {"x_total"}),
    ('count(label_replace(z, "dst", "$1", "src", "(.*)"))', {"z"}),
])
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_metric_names_accepts_grafana_variables() -> None:
    expr = ('histogram_quantile($quantile, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket'
            '{model_name=~"$model"}[$__rate_interval] offset ${offset})))')
    assert metric_names(expr) == {"vllm:time_to_first_token_seconds_bucket"}
    substituted = substitute_grafana_variables(expr)
    assert '"$model"' in substituted  # inside strings: untouched
    assert "[5m]" in substituted and "offset 5m" in substituted and "histogram_quantile(1," in substituted


def test_metric_names_rejects_broken_promql() -> None:
    with pytest.raises(PromQLError, match="sum\\(rate"):
        metric_names("sum(rate(x[5m])")


def test_exposed_names_reads_samples_and_declared_types() -> None:
    text = (
        "# TYPE used_total counter\n"
        'used_total{a="1"} 3\n'
        "# TYPE unused counter\n"  # OpenMetrics-style counter name, no sample yet
        "# TYPE lat_seconds histogram\n"  # labelled histogram before its first observation
        "# TYPE g gauge\n"
        "g 1\n"
    )
    assert exposed_names(text) == {"used_total", "unused_total", "lat_seconds_bucket", "lat_seconds_count",
                                   "lat_seconds_sum", "g"}


def test_dcgm_counter_names_skip_comments_and_label_rows(tmp_path: Path) -> None:
    csv = tmp_path / "counters.csv"
    csv.write_text("# Temperature\nDCGM_FI_DEV_GPU_TEMP,    gauge, GPU temperature (in C).\n"
                   "# DCGM_FI_DEV_SM_ACTIVE, gauge, off\nDCGM_FI_DRIVER_VERSION, label, Driver Version\n"
                   "DCGM_FI_DEV_DEC_UTIL ,     gauge, Decoder utilization (in %).\n")
    assert dcgm_counter_names(csv) == {"DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_DEC_UTIL"}


def test_rule_expressions_report_the_expr_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n"
        "  - name: g\n"
        "    rules:\n"
        "      - record: a:b:c\n"
        "        expr: vector(1)\n"
        "      - alert: Folded\n"
        "        for: 1m\n"
        "        expr: >-\n"
        "          a:b:c\n"
        "          > 0\n"
    )
    found = [(item.line, item.rule, item.expr.strip()) for item in rule_expressions(rules)]
    assert found == [(5, "a:b:c", "vector(1)"), (8, "Folded", "a:b:c > 0")]
