"""The Grafana dashboards, as code: `python grafana/dashboards.py` writes grafana/dashboards/*.json.

The JSON files are what Grafana provisions; this script is their only source (a test checks the
committed JSON equals its output, so edit here and re-run). Run with --check to compare only.

Every panel queries the Prometheus datasource by its fixed uid; metric names are the real ones of
vLLM 0.32, the collector, node exporter, DCGM exporter and k6's remote-write output; SLO thresholds
are read from the `envelope:*:threshold` recording rules in prometheus/rules/thresholds.yml, so each
number lives in one place.

Library code (the tests compare its output with the committed JSON); grafana/dashboards.py is its command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from loadgen.grafana.annotate import STEP_ANNOTATION_TAG
from loadgen.settings import ROOT

OUT_DIR = ROOT / "grafana" / "dashboards"

PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
GRAFANA_BUILTIN = {"type": "grafana", "uid": "-- Grafana --"}
# GPUs whose DCGM counters are not all alive: GB10 (DGX Spark) reads DCGM_FI_DEV_MEMORY_TEMP and
# DCGM_FI_DEV_MEM_COPY_UTIL as 0 (not N/A), and registers neither DCGM_FI_DEV_FB_* nor
# DCGM_FI_PROF_GR_ENGINE_ACTIVE. Panels of those counters drop GB10's series, so they say
# "not reported on GB10" instead of drawing 0 °C or 0%. DCGM exporter's modelName label names the GPU.
DEAD_ON_GB10 = ("DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_MEM_COPY_UTIL")
NOT_ON_GB10 = ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_PROF_GR_ENGINE_ACTIVE")
NOT_GB10 = 'modelName!~".*GB10.*"'

# Grafana unit ids (the snapshot fallback drawer maps the same ids to axis labels).
SECONDS = "s"
RATIO = "percentunit"
PERCENT = "percent"
REQUESTS_PER_SECOND = "reqps"
TOKENS_PER_SECOND = "suffix: tok/s"
EVENTS_PER_MINUTE = "suffix: /min"
TOKENS = "suffix: tokens"
COUNT = "short"
WATTS = "watt"
CELSIUS = "celsius"
MEGAHERTZ = "rotmhz"
MEBIBYTES = "decmbytes"
BYTES = "bytes"

# Selectors: vLLM labels its series model_name, the collector model (from vLLM's model list).
VLLM = 'model_name=~"$model", instance=~"$instance"'
COLLECTOR = 'model=~"$model"'
NODE = 'instance=~"$instance"'
GPU = 'gpu=~"$gpu"'
K6 = 'run=~"$run", step=~"$step"'
RATE = "$__rate_interval"
# Cores, as CPU-seconds per second summed over every mode (reads the counter only through rate()).
CORES = f"sum(rate(node_cpu_seconds_total{{{NODE}}}[{RATE}]))"
QUANTILES = (("p50", "0.50"), ("p95", "0.95"), ("p99", "0.99"))


def threshold_rule(what: str) -> str:
    """The recording rule that holds one SLO threshold (prometheus/rules/thresholds.yml)."""
    return f"envelope:{what}:threshold"


def quantile(q: str, metric: str, selector: str) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def zero_when_idle(expr: str, reference: str) -> str:
    """`expr`, or 0 while `reference` has series: a panel of rare events (errors, failures) reads 0,
    not "No data", when nothing went wrong."""
    return f"({expr}) or on() (0 * {reference})"


# --- panel building blocks -----------------------------------------------------------------------


def target(expr: str, legend: str, *, exemplar: bool = False, fmt: str = "time_series") -> dict[str, Any]:
    return {"datasource": PROMETHEUS, "expr": expr, "legendFormat": legend, "range": True, "instant": False,
            "exemplar": exemplar, "format": fmt, "editorMode": "code"}


def threshold_target(what: str, legend: str = "SLO threshold") -> dict[str, Any]:
    return target(threshold_rule(what), legend)


def _with_ref_ids(targets: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)]


def _threshold_overrides(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Threshold series (the envelope:* rules) drawn as red dashed lines."""
    return [
        {"matcher": {"id": "byFrameRefID", "options": t["refId"]},
         "properties": [
             {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
             {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
             {"id": "custom.fillOpacity", "value": 0},
         ]}
        for t in targets if t["expr"].startswith("envelope:")
    ]


def timeseries(title: str, description: str, unit: str, targets: Iterable[dict[str, Any]], *,
               no_value: str | None = None, stack: bool = False) -> dict[str, Any]:
    refd = _with_ref_ids(targets)
    defaults: dict[str, Any] = {
        "unit": unit, "min": 0, "color": {"mode": "palette-classic"},
        "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                   "spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"}},
    }
    if no_value:
        defaults["noValue"] = no_value
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": PROMETHEUS,
        "fieldConfig": {"defaults": defaults, "overrides": _threshold_overrides(refd)},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                               "calcs": ["mean", "max", "lastNotNull"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": refd,
    }


def stat(title: str, description: str, unit: str, targets: Iterable[dict[str, Any]], *,
         no_value: str | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "fixed", "fixedColor": "blue"},
                                "decimals": 2 if unit in (RATIO, SECONDS) else None}
    defaults = {k: v for k, v in defaults.items() if v is not None}
    if no_value:
        defaults["noValue"] = no_value
    return {
        "type": "stat", "title": title, "description": description, "datasource": PROMETHEUS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "value_and_name",
                    "justifyMode": "auto", "orientation": "auto"},
        "targets": _with_ref_ids(targets),
    }


def heatmap(title: str, description: str, unit: str, metric: str, selector: str) -> dict[str, Any]:
    expr = f"sum by (le) (increase({metric}_bucket{{{selector}}}[{RATE}]))"
    return {
        "type": "heatmap", "title": title, "description": description, "datasource": PROMETHEUS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"calculate": False, "yAxis": {"unit": unit, "axisPlacement": "left"},
                    "cellGap": 1, "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                    "rowsFrame": {"layout": "auto"}, "legend": {"show": True},
                    "tooltip": {"mode": "single", "yHistogram": True}},
        "targets": _with_ref_ids([target(expr, "{{le}}", fmt="heatmap")]),
    }


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(items: list[tuple[dict[str, Any], int, int]]) -> list[dict[str, Any]]:
    """Place (panel, width, height) left to right on Grafana's 24-column grid; rows span the width.
    Ids are assigned in order, so they are stable across regenerations."""
    panels: list[dict[str, Any]] = []
    x = y = line_height = 0
    for panel_id, (panel, width, height) in enumerate(items, start=1):
        if panel["type"] == "row" or x + width > 24:
            x, y, line_height = 0, y + line_height, 0
        panels.append({**panel, "id": panel_id, "gridPos": {"x": x, "y": y, "w": width, "h": height}})
        x += width
        line_height = max(line_height, height)
        if panel["type"] == "row":
            x, y, line_height = 0, y + height, 0
    return panels


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "type": "query", "name": name, "label": label, "datasource": PROMETHEUS,
        "query": {"query": query, "refId": f"{name}-variable"}, "definition": query,
        "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [],
    }


def step_annotations() -> list[dict[str, Any]]:
    """Sweep steps, two ways: regions while k6 sends requests tagged with a step (from Prometheus,
    works in snapshots and without the loadgen), and the loadgen's own annotations."""
    return [
        {"name": "Sweep steps (k6)", "datasource": PROMETHEUS, "enable": True, "iconColor": "purple",
         "expr": f'sum by (step) (rate(k6_http_reqs_total{{step!=""}}[{RATE}])) > 0',
         "step": "5s", "titleFormat": "step {{step}}", "textFormat": "k6 requests tagged step={{step}}",
         "useValueForTime": False},
        {"name": "Sweep steps (loadgen)", "datasource": GRAFANA_BUILTIN, "enable": True, "iconColor": "blue",
         "target": {"type": "tags", "tags": [STEP_ANNOTATION_TAG], "matchAny": True, "limit": 200}},
    ]


def dashboard(uid: str, title: str, description: str, tags: list[str], variables: list[dict[str, Any]],
              items: list[tuple[dict[str, Any], int, int]]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["serving-envelope", *tags],
        "editable": False, "graphTooltip": 1, "schemaVersion": 39, "version": 1, "timezone": "browser",
        "refresh": "10s", "time": {"from": "now-30m", "to": "now"},
        "timepicker": {"refresh_intervals": ["5s", "10s", "30s", "1m", "5m"]},
        "templating": {"list": variables}, "annotations": {"list": step_annotations()},
        "links": [{"type": "dashboards", "tags": ["serving-envelope"], "asDropdown": False,
                   "includeVars": False, "keepTime": True, "title": "serving-envelope"}],
        "panels": layout(items),
    }


# --- the dashboards ------------------------------------------------------------------------------

# Latency panels query the raw histograms with $__rate_interval (not the 1 m recording rules the
# alerts use): the window follows the zoom, both sides use the same one, and exemplars need the
# raw buckets.
LATENCIES: tuple[tuple[str, str, str, str | None, str], ...] = (
    # (title, collector metric, vLLM metric, threshold or None, what it measures)
    ("TTFT", "collector_time_to_first_token_seconds", "vllm:time_to_first_token_seconds", "ttft_p95_seconds",
     "Time to first token"),
    ("ITL", "collector_inter_token_latency_seconds", "vllm:inter_token_latency_seconds", "itl_p95_seconds",
     "Inter-token latency (gap between streamed tokens)"),
    ("TPOT", "collector_time_per_output_token_seconds", "vllm:request_time_per_output_token_seconds", None,
     "Time per output token, per request: (e2e - TTFT) / (output tokens - 1)"),
    ("E2E latency", "collector_e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds",
     "e2e_p95_seconds", "End-to-end request latency"),
)


def latency_panels() -> list[tuple[dict[str, Any], int, int]]:
    items: list[tuple[dict[str, Any], int, int]] = []
    for short, collector_metric, vllm_metric, threshold, meaning in LATENCIES:
        for side, metric, selector, exemplar, where in (
            ("collector", collector_metric, COLLECTOR, True, "as the client sees it, measured at the proxy"),
            ("vLLM", vllm_metric, VLLM, False, "as vLLM measures it from its frontend"),
        ):
            targets = [target(quantile(q, metric, selector), label, exemplar=exemplar) for label, q in QUANTILES]
            if threshold:
                targets.append(threshold_target(threshold, "SLO p95"))
            items.append((timeseries(
                f"{short} p50/p95/p99 ({side})",
                f"{meaning}, {where}." + (" Red dashed: the p95 SLO threshold." if threshold else "")
                + (" Exemplars link to the request's trace." if exemplar else ""),
                SECONDS, targets), 12, 8))
    return items


def serving_dashboard() -> dict[str, Any]:
    def attainment(what: str) -> list[dict[str, Any]]:
        return [target(f'model:collector_requests_within_{what}_threshold:ratio_rate1m{{{COLLECTOR}}}',
                       "at the proxy {{model}}"),
                target(f'model_name:vllm_requests_within_{what}_threshold:ratio_rate1m{{model_name=~"$model"}}',
                       "in vLLM {{model_name}}")]

    slo_tiles = [
        (stat("TTFT SLO attainment", "Share of requests (last minute) whose time to first token was under the "
              "TTFT threshold (envelope:ttft_p95_seconds:threshold).", RATIO, attainment("ttft"),
              no_value="no requests"), 6, 5),
        (stat("E2E SLO attainment", "Share of requests (last minute) whose end-to-end latency was under the "
              "e2e threshold (envelope:e2e_p95_seconds:threshold).", RATIO, attainment("e2e"),
              no_value="no requests"), 6, 5),
        (stat("Error ratio", "Share of requests that ended in a server-side error (5xx at the proxy, last "
              "minute), beside the threshold; 0 while requests succeed.", RATIO, [
                  target(zero_when_idle(f"model:collector_request_errors:ratio_rate1m{{{COLLECTOR}}}",
                                        f"sum(model:collector_requests:rate1m{{{COLLECTOR}}})"), "server errors"),
                  threshold_target("error_ratio", "threshold")], no_value="no requests"), 6, 5),
        (stat("p95 TTFT now (collector)", "p95 time to first token at the proxy over the last rate window, "
              "beside the threshold.", SECONDS,
              [target(quantile("0.95", "collector_time_to_first_token_seconds", COLLECTOR), "p95"),
               threshold_target("ttft_p95_seconds", "threshold")], no_value="no requests"), 6, 5),
    ]
    traffic = [
        (timeseries("Requests/s", "Finished requests per second: at the proxy by HTTP status, at vLLM by "
                    "finish reason.", REQUESTS_PER_SECOND, [
                        target(f"sum by (status) (rate(collector_requests_total{{{COLLECTOR}}}[{RATE}]))",
                               "collector {{status}}"),
                        target(f"sum by (finished_reason) (rate(vllm:request_success_total{{{VLLM}}}[{RATE}]))",
                               "vLLM {{finished_reason}}"),
                    ]), 8, 8),
        (timeseries("Tokens/s", "Output (generated) and prompt tokens per second, vLLM's counters (ground truth) "
                    "beside the collector's.", TOKENS_PER_SECOND, [
                        target(f"sum(rate(vllm:generation_tokens_total{{{VLLM}}}[{RATE}]))", "vLLM output"),
                        target(f"sum(rate(collector_generation_tokens_total{{{COLLECTOR}}}[{RATE}]))",
                               "collector output"),
                        target(f"sum(rate(vllm:prompt_tokens_total{{{VLLM}}}[{RATE}]))", "vLLM prompt"),
                    ]), 8, 8),
        (timeseries("Errors by type", "Failed requests per second: the collector's error type (client and "
                    "upstream failures) and vLLM's aborted/errored requests. 0 while nothing fails.",
                    REQUESTS_PER_SECOND, [
                        target(zero_when_idle(
                            f'sum by (error_type) (rate(collector_requests_total{{{COLLECTOR}, error_type!=""}}'
                            f"[{RATE}]))", f"sum(rate(collector_requests_total{{{COLLECTOR}}}[{RATE}]))"),
                            "collector {{error_type}}"),
                        target(f'sum by (finished_reason) (rate(vllm:request_success_total{{{VLLM}, '
                               f'finished_reason=~"abort|error"}}[{RATE}]))', "vLLM {{finished_reason}}"),
                    ]), 8, 8),
    ]
    scheduler = [
        (timeseries("Running vs waiting requests", "Requests vLLM is decoding now vs queued for capacity; "
                    "waiting > 0 with climbing TTFT means queueing.", COUNT, [
                        target(f"sum(vllm:num_requests_running{{{VLLM}}})", "running"),
                        target(f"sum(vllm:num_requests_waiting{{{VLLM}}})", "waiting"),
                        target("sum(collector_requests_in_flight)", "in flight at the proxy"),
                        threshold_target("queue_waiting_requests", "waiting threshold"),
                    ]), 6, 8),
        (timeseries("KV cache usage", "Share of vLLM's KV cache blocks in use; near 100% requests are "
                    "preempted.", RATIO, [
                        target(f"max(vllm:kv_cache_usage_perc{{{VLLM}}})", "KV cache used"),
                        threshold_target("kv_cache_usage_ratio", "threshold"),
                    ]), 6, 8),
        (timeseries("Preemptions/min", "Requests vLLM preempted (evicted from the KV cache, to be recomputed).",
                    EVENTS_PER_MINUTE, [
                        target(f"sum(rate(vllm:num_preemptions_total{{{VLLM}}}[{RATE}])) * 60", "preemptions"),
                        threshold_target("preemptions_per_minute", "threshold"),
                    ]), 6, 8),
        (timeseries("Prefix cache hit rate", "Share of prompt tokens served from vLLM's prefix cache.", RATIO, [
            target(f"sum(rate(vllm:prefix_cache_hits_total{{{VLLM}}}[{RATE}])) / "
                   f"sum(rate(vllm:prefix_cache_queries_total{{{VLLM}}}[{RATE}]))", "hit rate"),
        ]), 6, 8),
    ]
    shapes = [
        (heatmap("Prompt length distribution", "Prompt tokens per finished request (vLLM histogram).", TOKENS,
                 "vllm:request_prompt_tokens", VLLM), 12, 8),
        (heatmap("Output length distribution", "Generated tokens per finished request (vLLM histogram).", TOKENS,
                 "vllm:request_generation_tokens", VLLM), 12, 8),
    ]
    items: list[tuple[dict[str, Any], int, int]] = [
        (row("SLO"), 24, 1), *slo_tiles,
        (row("Latency: at the proxy (what users feel) | inside vLLM"), 24, 1), *latency_panels(),
        (row("Traffic and errors"), 24, 1), *traffic,
        (row("Scheduler and KV cache"), 24, 1), *scheduler,
        (row("Request shapes"), 24, 1), *shapes,
    ]
    return dashboard(
        "serving", "Serving", "What users feel (collector) and what vLLM does, with SLO thresholds.",
        ["vllm"], [
            variable("model", "Model", "label_values(vllm:num_requests_running, model_name)"),
            variable("instance", "vLLM instance",
                     'label_values(vllm:num_requests_running{model_name=~"$model"}, instance)'),
        ], items)


def on_gpus_reporting(metric: str) -> str:
    """A DCGM counter that is dead or absent on GB10, without GB10's series (see DEAD_ON_GB10)."""
    assert metric in DEAD_ON_GB10 + NOT_ON_GB10, metric
    return f"{metric}{{{GPU}, {NOT_GB10}}}"


def gpu_host_dashboard() -> dict[str, Any]:
    no_dcgm = "no DCGM data (no GPU, or exporter not running)"
    not_on_gb10 = "not reported on GB10 (DGX Spark), or no DCGM data"
    gpu = [
        (timeseries("GPU utilisation", "DCGM_FI_DEV_GPU_UTIL: share of time a kernel was running.", PERCENT, [
            target(f"DCGM_FI_DEV_GPU_UTIL{{{GPU}}}", "GPU {{gpu}}")], no_value=no_dcgm), 12, 8),
        (timeseries("GPU power", "DCGM_FI_DEV_POWER_USAGE: board power draw.", WATTS, [
            target(f"DCGM_FI_DEV_POWER_USAGE{{{GPU}}}", "GPU {{gpu}}"),
            threshold_target("gpu_power_watts", "threshold")], no_value=no_dcgm), 12, 8),
        (timeseries("GPU temperature", "DCGM_FI_DEV_GPU_TEMP: the GPU die.", CELSIUS, [
            target(f"DCGM_FI_DEV_GPU_TEMP{{{GPU}}}", "GPU {{gpu}}"),
            threshold_target("gpu_temperature_celsius", "threshold")], no_value=no_dcgm), 6, 8),
        (timeseries("GPU memory temperature", "DCGM_FI_DEV_MEMORY_TEMP: the GPU's memory (HBM/GDDR). GB10 "
                    "reads 0 here, which is no temperature: its series are left out.", CELSIUS, [
                        target(on_gpus_reporting("DCGM_FI_DEV_MEMORY_TEMP"), "memory {{gpu}}")],
                    no_value=not_on_gb10), 6, 8),
        (timeseries("GPU clocks", "DCGM_FI_DEV_SM_CLOCK and DCGM_FI_DEV_MEM_CLOCK.", MEGAHERTZ, [
            target(f"DCGM_FI_DEV_SM_CLOCK{{{GPU}}}", "SM {{gpu}}"),
            target(f"DCGM_FI_DEV_MEM_CLOCK{{{GPU}}}", "memory {{gpu}}")], no_value=no_dcgm), 6, 8),
        (timeseries("GPU memory copy utilisation", "DCGM_FI_DEV_MEM_COPY_UTIL: share of time the memory was "
                    "being read or written (decode is bandwidth-bound). GB10 reads 0 here whatever the load: "
                    "its series are left out.", PERCENT, [
                        target(on_gpus_reporting("DCGM_FI_DEV_MEM_COPY_UTIL"), "GPU {{gpu}}")],
                    no_value=not_on_gb10), 6, 8),
        (timeseries("GPU framebuffer memory", "DCGM_FI_DEV_FB_USED/FREE. Not registered on GB10 (DGX Spark): "
                    "its GPU uses host memory, see Host memory below.", MEBIBYTES, [
                        target(on_gpus_reporting("DCGM_FI_DEV_FB_USED"), "used {{gpu}}"),
                        target(on_gpus_reporting("DCGM_FI_DEV_FB_FREE"), "free {{gpu}}")],
                    no_value="not reported on GB10 (unified memory: see Host memory), or no DCGM data"), 12, 8),
        (timeseries("GPU graphics engine active", "DCGM_FI_PROF_GR_ENGINE_ACTIVE: share of time the graphics "
                    "engine (the SMs' work queue) was busy, a finer figure than GPU utilisation. A profiling "
                    "counter: not registered on GB10.", RATIO, [
                        target(on_gpus_reporting("DCGM_FI_PROF_GR_ENGINE_ACTIVE"), "GPU {{gpu}}")],
                    no_value=not_on_gb10), 12, 8),
    ]
    host = [
        (timeseries("Host memory", "node exporter MemAvailable and used (MemTotal - MemAvailable): the memory "
                    "truth on unified-memory boxes (GB10), where running out freezes the machine.", BYTES, [
                        target(f"sum by (instance) (node_memory_MemAvailable_bytes{{{NODE}}})",
                               "available {{instance}}"),
                        target(f"sum by (instance) (node_memory_MemTotal_bytes{{{NODE}}} - "
                               f"node_memory_MemAvailable_bytes{{{NODE}}})", "used {{instance}}"),
                    ]), 8, 8),
        (timeseries("Host memory available (share)", "MemAvailable / MemTotal, beside the floor under which "
                    "the alert fires and the sweep stops.", RATIO, [
                        target(f"sum by (instance) (node_memory_MemAvailable_bytes{{{NODE}}}) / "
                               f"sum by (instance) (node_memory_MemTotal_bytes{{{NODE}}})", "available {{instance}}"),
                        threshold_target("host_memory_available_ratio", "floor"),
                    ]), 8, 8),
        (timeseries("Host CPU", "Share of all cores busy, by mode (node exporter).", RATIO, [
            target(f'sum by (mode) (rate(node_cpu_seconds_total{{{NODE}, mode!="idle"}}[{RATE}])) / '
                   f"scalar({CORES})", "{{mode}}")],
            stack=True), 8, 8),
        (stat("Load average (1m) per core", "node_load1 over the number of cores.", COUNT, [
            target(f"sum(node_load1{{{NODE}}}) / scalar({CORES})", "load per core")]), 12, 5),
        (stat("Swap used", "SwapTotal - SwapFree; swapping under load means memory is short.", BYTES, [
            target(f"sum(node_memory_SwapTotal_bytes{{{NODE}}} - node_memory_SwapFree_bytes{{{NODE}}})",
                   "swap used")]), 12, 5),
    ]
    items: list[tuple[dict[str, Any], int, int]] = [
        (row("GPU (DCGM exporter)"), 24, 1), *gpu, (row("Host (node exporter)"), 24, 1), *host,
    ]
    return dashboard(
        "gpu-host", "GPU and host", "DCGM GPU counters and node exporter host memory/CPU.", ["gpu", "host"], [
            variable("instance", "Host (node exporter)", "label_values(node_memory_MemAvailable_bytes, instance)"),
            variable("gpu", "GPU", "label_values(DCGM_FI_DEV_GPU_UTIL, gpu)"),
        ], items)


def load_test_dashboard() -> dict[str, Any]:
    ok = f'{K6}, expected_response="true"'

    def trend(metric: str) -> list[dict[str, Any]]:
        # k6 pushes each step's percentiles under that step's tag; with stale markers on (the
        # loadgen sets K6_PROMETHEUS_RW_STALE_MARKERS) only the running step's series is live.
        return [target(f"max(k6_{metric}_{label}{{{ok}}})", label) for label, _ in QUANTILES]

    client = [
        (timeseries("Virtual users", "k6 VUs (concurrent closed-loop users), per sweep step.", COUNT, [
            target(f"sum by (step) (k6_vus{{{K6}}})", "VUs step {{step}}")]), 8, 8),
        (timeseries("Request rate", "k6 requests per second by HTTP status.", REQUESTS_PER_SECOND, [
            target(f"sum by (status) (rate(k6_http_reqs_total{{{K6}}}[{RATE}]))", "status {{status}}")]), 8, 8),
        (timeseries("Failures", "Failed k6 requests per second (unexpected status), by status; 0 while "
                    "nothing fails.", REQUESTS_PER_SECOND, [
                        target(zero_when_idle(
                            f'sum by (status) (rate(k6_http_reqs_total{{{K6}, expected_response="false"}}'
                            f"[{RATE}]))", f"sum(rate(k6_http_reqs_total{{{K6}}}[{RATE}]))"),
                            "failed {{status}}"),
                    ]), 8, 8),
        (timeseries("Client TTFT (k6 http_req_waiting)", "Time to first byte at k6. Through the collector, "
                    "which holds the response head until the first token, this is the client's time to first "
                    "token. k6 computes these percentiles over each step's whole run so far.", SECONDS,
                    [*trend("http_req_waiting"), threshold_target("ttft_p95_seconds", "SLO p95")]), 12, 8),
        (timeseries("Client request duration (k6 http_req_duration)", "Whole request at k6, first byte sent "
                    "to last byte received. Percentiles over each step's run so far.", SECONDS,
                    [*trend("http_req_duration"), threshold_target("e2e_p95_seconds", "SLO p95")]), 12, 8),
    ]
    items: list[tuple[dict[str, Any], int, int]] = [(row("k6 client"), 24, 1), *client]
    return dashboard(
        "load-test", "Load test", "The k6 sweep as the client sees it; sweep steps as annotations.", ["k6"], [
            variable("run", "Sweep run", "label_values(k6_vus, run)"),
            variable("step", "Sweep step", 'label_values(k6_vus{run=~"$run"}, step)'),
        ], items)


def all_dashboards() -> dict[str, dict[str, Any]]:
    """uid -> dashboard model."""
    return {d["uid"]: d for d in (serving_dashboard(), gpu_host_dashboard(), load_test_dashboard())}


def render(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed JSON file differs")
    args = parser.parse_args(argv)
    stale = []
    for uid, model in all_dashboards().items():
        path = OUT_DIR / f"{uid}.json"
        text = render(model)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            OUT_DIR.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale dashboards (run python grafana/dashboards.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
