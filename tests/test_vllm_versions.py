"""Both vLLM versions the project meets expose every vllm:* series it reads.

The pinned vLLM (0.32, CPU build) is checked live by test_prometheus_metric_names.py. The GPU worked
example ran vLLM 0.26 (CUDA) on an H200; its /metrics, saved at the end of that run
(loadgen/examples/h200-qwen3-8b/vllm-metrics-after*.txt), is checked here against every vllm:* name
in the alert and recording rules, the dashboards and the sweep's own step queries. 0.32 adds
vllm:admission_rejections, vllm:prompt_tokens_cached_by_source and vllm:request_num_preemptions;
nothing here may depend on them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.prometheus_checks import RULE_FILES
from tests.support.promql_names import exposed_names, metric_names, recorded_names, rule_expressions

ROOT = Path(__file__).resolve().parent.parent
VLLM_026 = sorted((ROOT / "loadgen" / "examples" / "h200-qwen3-8b").glob("vllm-metrics-after*.txt"))
ONLY_IN_032 = {"vllm:admission_rejections_total", "vllm:prompt_tokens_cached_by_source_total",
               "vllm:request_num_preemptions"}


def _dashboard_exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in _dashboard_exprs(value)]
    if isinstance(node, list):
        return [e for item in node for e in _dashboard_exprs(item)]
    return []


def vllm_names_read() -> set[str]:
    exprs = [item.expr for path in RULE_FILES for item in rule_expressions(path)]
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        exprs += _dashboard_exprs(json.loads(path.read_text()))
    queries = yaml.safe_load((ROOT / "loadgen" / "step-queries.yaml").read_text())
    step = [q for group in queries.values() if isinstance(group, dict) for q in group.values() if isinstance(q, str)]
    exprs += [re.sub(r"\{window_s\}", "60", re.sub(r"\{window\}", "60s", q)).replace("{model}", "m") for q in step]
    names = {n for expr in exprs for n in metric_names(expr) if n.startswith("vllm:")}
    return names - recorded_names(RULE_FILES)


@pytest.mark.parametrize("exposition", VLLM_026, ids=lambda p: p.name)
def test_vllm_026_exposes_every_series_the_project_reads(exposition: Path) -> None:
    names = vllm_names_read()
    assert len(names) >= 15  # the rules, dashboards and step queries read a broad set; an empty parse fails here
    exposed = exposed_names(exposition.read_text())
    assert "vllm:num_requests_running" in exposed
    assert sorted(names - exposed) == []
    assert not names & ONLY_IN_032
