"""One source, two renderings: the rules and dashboards for one box, or for many pods.

The source is what the repo already ships: prometheus/rules/*.yml and the dashboards of
loadgen.grafana.dashboards. A MixinConfig (the knobs of a monitoring mixin: selectors and
aggregation labels) rewrites their PromQL; the empty config rewrites nothing, so native and
compose mode read exactly today's files (tested byte for byte). The Kubernetes presets below
(production-stack, llm-d) feed loadgen.kubernetes, which wraps the result into PrometheusRule
objects and dashboard ConfigMaps.

What a config changes, and why (the multi-pod rules of issue 16):
  vllm_selector       added to every vllm:* selector. On production-stack it keeps the engines and
                      drops the router, which exports gauges of the same names
                      (vllm:num_requests_running{server=...}): summed with the engines' they would
                      count every running request twice.
  collector_selector, node_selector, dcgm_selector
                      the same for the collector's, node exporter's and DCGM exporter's series.
  agg_labels          kept in every `by (...)` of the rules (e.g. namespace, cluster), so two
                      deployments of one model never merge; histograms stay `sum by (..., le)`
                      over pods and engines, running/waiting summed over pods and engines.
  kv_by               labels the KV-cache max keeps (pod): one full pod is visible as that pod.
  dcgm_pod_label      the label naming the pod a GPU serves: exported_pod when Prometheus scrapes
                      DCGM exporter without honorLabels (the exporter's own pod label is renamed),
                      pod with honorLabels. Adds pod-keyed GPU recording rules and legends.
  node_label          the label naming a node on both node exporter's and DCGM's series: the
                      host-memory alert is joined to nodes that have a GPU.
  k6_native_histograms
                      the load-test dashboard's client percentiles from k6's native histograms,
                      summed over k6-operator's runners (per-runner p95 gauges cannot be combined).
  gateway, gateway_selector
                      whose request-routing metrics (production-stack's router, llm-d's EPP) get
                      recording rules under envelope:* names, and how to select them.

    from loadgen.mixin import NATIVE, render_rule_text, render_dashboard
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, fields, replace
from typing import Any

# Metric families by name prefix; the lookbehind keeps recorded names (model_name:vllm_...,
# model:collector_...) and quoted strings ("$1", job="node_...") out.
_FAMILIES = {"vllm": "vllm:", "collector": "collector_", "node": "node_", "dcgm": "DCGM_FI_"}
_METRIC = re.compile(
    r"(?<![\w:\"$.])(?P<name>(?:vllm:|collector_|node_|DCGM_FI_)[A-Za-z0-9_:]*)(?P<sel>\{[^}]*\})?(?![\w:(])"
)
_BY = re.compile(r"\bby \(([^)]*)\)")
_KV_MAX = re.compile(r"max by \(([^)]*)\) \((vllm:kv_cache_usage_perc)")
_HOST_MEMORY = re.compile(r"(node_memory_MemAvailable_bytes(?:\{[^}]*\})? / node_memory_MemTotal_bytes(?:\{[^}]*\})?)")


@dataclass(frozen=True)
class MixinConfig:
    """Selectors and aggregation labels; every field empty = today's native/compose files."""

    name: str = "native"
    vllm_selector: str = ""
    collector_selector: str = ""
    node_selector: str = ""
    dcgm_selector: str = ""
    agg_labels: tuple[str, ...] = ()
    kv_by: tuple[str, ...] = ()
    dcgm_pod_label: str = ""
    node_label: str = ""
    gateway: str = ""  # "", "production-stack" (its router) or "llm-d" (its EPP): whose metrics map to envelope:*
    gateway_selector: str = ""  # the router's or EPP's series (their job)
    k6_native_histograms: bool = False  # k6 trends arrive as native histograms (k6-operator runners)

    def selector(self, family: str) -> str:
        return {"vllm": self.vllm_selector, "collector": self.collector_selector, "node": self.node_selector,
                "dcgm": self.dcgm_selector}[family]

    @property
    def is_empty(self) -> bool:
        return self == MixinConfig(name=self.name)


def _family(metric: str) -> str:
    return next(f for f, prefix in _FAMILIES.items() if metric.startswith(prefix))


def _with_labels(labels: tuple[str, ...], existing: str) -> str:
    have = [x.strip() for x in existing.split(",") if x.strip()]
    return ", ".join([*[x for x in labels if x not in have], *have])


def inject_selectors(expr: str, config: MixinConfig) -> str:
    """Every vllm:*, collector_*, node_* and DCGM_FI_* selector of `expr` gets its family's matchers."""

    def one(m: re.Match[str]) -> str:
        name, sel = m.group("name"), m.group("sel")
        extra = config.selector(_family(name))
        if not extra:
            return m.group(0)
        inner = (sel or "{}")[1:-1].strip()
        return f"{name}{{{extra}{', ' + inner if inner else ''}}}"

    return _METRIC.sub(one, expr)


def rewrite_rule_expr(expr: str, config: MixinConfig) -> str:
    """A rule's PromQL for this config (identity for the empty config)."""
    out = inject_selectors(expr, config)
    if config.agg_labels:
        out = _BY.sub(lambda m: f"by ({_with_labels(config.agg_labels, m.group(1))})", out)
    if config.kv_by:
        out = _KV_MAX.sub(lambda m: f"max by ({_with_labels(config.kv_by, m.group(1))}) ({m.group(2)}", out)
    if config.node_label:
        dcgm = inject_selectors("DCGM_FI_DEV_GPU_UTIL", config)
        node = config.node_label
        out = _HOST_MEMORY.sub(lambda m: f"({m.group(1)} and on ({node}) max by ({node}) ({dcgm}))", out)
    return out


_K6_TREND_GAUGE = re.compile(r"max\(k6_(?P<trend>\w+?)_p(?P<q>\d\d)\{(?P<sel>[^}]*)\}\)")


def rewrite_dashboard_expr(expr: str, config: MixinConfig) -> str:
    """A panel's PromQL: selectors (dashboards filter with their variables, not by()); k6's
    per-process percentile gauges as quantiles of the runners' summed native histograms."""
    out = inject_selectors(expr, config)
    if config.k6_native_histograms:
        out = _K6_TREND_GAUGE.sub(
            lambda m: f"histogram_quantile(0.{m['q']}, sum(rate(k6_{m['trend']}_seconds{{{m['sel']}}}"
                      f"[$__rate_interval])))", out)
    return out


# --- rule files: rewritten as text, so comments and layout survive ------------------------------

_EXPR_LINE = re.compile(r"^(?P<indent>\s*)(?:- )?expr: (?P<rest>.*)$")


def render_rule_text(text: str, config: MixinConfig) -> str:
    """A prometheus/rules/*.yml file for this config: every `expr:` value rewritten, nothing else.

    Handles the two shapes the repo uses: `expr: <one line>` and `expr: |` followed by a more
    indented block. Alert templates ({{ $labels.x }}, {{ with query ... }}) sit in annotations and
    are never touched."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _EXPR_LINE.match(line)
        if not m:
            out.append(line)
            i += 1
            continue
        rest = m.group("rest")
        if rest.strip() not in ("|", "|-", ">", ">-"):
            prefix = line[: len(line) - len(rest)]
            out.append(prefix + rewrite_rule_expr(rest, config))
            i += 1
            continue
        out.append(line)
        key_indent = len(line) - len(line.lstrip())
        block: list[str] = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > key_indent):
            block.append(lines[i])
            i += 1
        # Trailing blank lines belong to what follows, not to the expression.
        tail: list[str] = []
        while block and not block[-1].strip():
            tail.insert(0, block.pop())
        if block:
            indent = min(len(b) - len(b.lstrip()) for b in block if b.strip())
            body = "\n".join(b[indent:] for b in block)
            out.extend(" " * indent + b if b else b for b in rewrite_rule_expr(body, config).split("\n"))
        out.extend(tail)
    return "\n".join(out)


# --- dashboards: every query of the model rewritten -------------------------------------------

_LEGEND_GPU = "{{gpu}}"


def render_dashboard(model: dict[str, Any], config: MixinConfig) -> dict[str, Any]:
    """A dashboard model (loadgen.grafana.dashboards) for this config; the same object when empty."""
    if config.is_empty:
        return model
    out = copy.deepcopy(model)

    def targets(panel: dict[str, Any]) -> None:
        for t in panel.get("targets", []):
            before = t["expr"]
            t["expr"] = rewrite_dashboard_expr(t["expr"], config)
            if "k6_" in before and "histogram_quantile" in t["expr"] and "histogram_quantile" not in before:
                panel["description"] = panel["description"].replace(
                    "k6 computes these percentiles over each step's whole run so far.",
                    "Percentiles of every runner's requests over the rate window (k6's native histograms, "
                    "summed over k6-operator's runners).").replace(
                    "Percentiles over each step's run so far.",
                    "Percentiles of every runner's requests over the rate window (k6's native histograms, "
                    "summed over k6-operator's runners).")
            if config.dcgm_pod_label and "DCGM_FI_" in t["expr"] and _LEGEND_GPU in t.get("legendFormat", ""):
                t["legendFormat"] = t["legendFormat"].replace(
                    _LEGEND_GPU, f"{{{{Hostname}}}}/{_LEGEND_GPU} {{{{{config.dcgm_pod_label}}}}}")
        for inner in panel.get("panels", []):
            targets(inner)

    for panel in out.get("panels", []):
        targets(panel)
    for var in out.get("templating", {}).get("list", []):
        if isinstance(var.get("query"), dict):
            var["query"]["query"] = rewrite_dashboard_expr(var["query"]["query"], config)
        if isinstance(var.get("definition"), str):
            var["definition"] = rewrite_dashboard_expr(var["definition"], config)
    for ann in out.get("annotations", {}).get("list", []):
        if "expr" in ann:
            ann["expr"] = rewrite_dashboard_expr(ann["expr"], config)
    return out


# --- gateway (router / EPP) metrics mapped to envelope:* names ----------------------------------

def _rules(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"record": record, "expr": expr} for record, expr in pairs]


def _gpu_by_pod_rules(config: MixinConfig) -> dict[str, Any]:
    """DCGM counters keyed by the pod the GPU serves (pod, from exported_pod when that is where it is)."""
    pod = config.dcgm_pod_label
    ns = "exported_namespace" if pod.startswith("exported_") else "namespace"
    # The exporter's own namespace is not the deployment's: group by the GPU's pod and its namespace.
    by = ", ".join(dict.fromkeys([*(lbl for lbl in config.agg_labels if lbl != "namespace"), ns, pod]))

    def keyed(expr: str) -> str:
        inner = f"label_replace({expr}, \"pod\", \"$1\", \"{pod}\", \"(.+)\")" if pod != "pod" else expr
        if ns != "namespace":
            inner = f"label_replace({inner}, \"namespace\", \"$1\", \"{ns}\", \"(.+)\")"
        return inner

    util = inject_selectors("DCGM_FI_DEV_GPU_UTIL", config)
    power = inject_selectors("DCGM_FI_DEV_POWER_USAGE", config)
    fb = inject_selectors("DCGM_FI_DEV_FB_USED", config)
    return {"name": "kubernetes-gpu-by-pod", "rules": _rules(
        ("pod:dcgm_gpu_utilization_percent:avg", keyed(f"avg by ({by}) ({util})")),
        ("pod:dcgm_gpu_power_watts:sum", keyed(f"sum by ({by}) ({power})")),
        ("pod:dcgm_fb_used_mebibytes:sum", keyed(f"sum by ({by}) ({fb})")),
    )}


ROUTER_SELECTOR = 'job=~".+-router-service"'
EPP_SELECTOR = 'job=~".*epp.*"'


def production_stack_router_rules(agg: tuple[str, ...], selector: str = ROUTER_SELECTOR) -> dict[str, Any]:
    """vLLM production-stack's router (vllm_router): its gauges carry `server` (one engine URL)
    and reuse vLLM's names; here they get envelope:gateway_* names and nothing sums them with
    the engines' series."""
    r = selector + ', server!=""'
    by = f" by ({', '.join(agg)})" if agg else ""
    per_server = ", ".join([*agg, "server"])
    return {"name": "envelope-gateway-production-stack", "rules": _rules(
        # Every router replica reports the same engine-scraped gauges: one copy per engine URL.
        ("envelope:gateway_requests_running:sum",
         f"sum{by} (max by ({per_server}) (vllm:num_requests_running{{{r}}}))"),
        ("envelope:gateway_requests_waiting:sum",
         f"sum{by} (max by ({per_server}) (vllm:num_requests_waiting{{{r}}}))"),
        # Each router replica counts the requests it routed: these add up over replicas.
        ("envelope:gateway_requests_per_second:sum", f"sum{by} (vllm:current_qps{{{r}}})"),
        ("envelope:gateway_e2e_seconds:avg", f"avg{by} (vllm:avg_latency{{{r}}})"),
        ("envelope:gateway_itl_seconds:avg", f"avg{by} (vllm:avg_itl{{{r}}})"),
        # Engines the router routes to (one series per engine URL, from every router replica).
        ("envelope:ready_replicas:count", f"count{by} (max by ({per_server}) (vllm:num_requests_running{{{r}}}))"),
    )}


def llm_d_epp_rules(agg: tuple[str, ...], selector: str = EPP_SELECTOR) -> dict[str, Any]:
    """llm-d's endpoint picker (llm_d_epp_*): client-side TTFT/ITL/e2e histograms per model,
    its queue, running requests and ready endpoints, under envelope:gateway_* names."""
    e = selector
    lbl = ", ".join([*agg, "model_name"])
    by = f" by ({', '.join(agg)})" if agg else ""

    def p95(metric: str) -> str:
        return f"histogram_quantile(0.95, sum by ({lbl}, le) (rate({metric}_bucket{{{e}}}[1m])))"

    return {"name": "envelope-gateway-llm-d", "rules": _rules(
        ("model_name:envelope_gateway_ttft_seconds:p95_rate1m", p95("llm_d_epp_request_ttft_seconds")),
        ("model_name:envelope_gateway_itl_seconds:p95_rate1m", p95("llm_d_epp_request_streaming_itl_seconds")),
        ("model_name:envelope_gateway_e2e_seconds:p95_rate1m", p95("llm_d_epp_request_duration_seconds")),
        ("model_name:envelope_gateway_requests:rate1m",
         f"sum by ({lbl}) (rate(llm_d_epp_request_total{{{e}}}[1m]))"),
        ("model_name:envelope_gateway_request_errors:ratio_rate1m",
         f"(sum by ({lbl}) (rate(llm_d_epp_request_error_total{{{e}}}[1m])) "
         f"or 0 * model_name:envelope_gateway_requests:rate1m) / model_name:envelope_gateway_requests:rate1m"),
        ("envelope:gateway_requests_running:sum", f"sum{by} (llm_d_epp_request_running{{{e}}})"),
        ("envelope:gateway_requests_waiting:sum", f"sum{by} (llm_d_epp_flow_control_queue_size{{{e}}})"),
        ("envelope:ready_replicas:count", f"max{by} (llm_d_epp_ready_endpoints{{{e}}})"),
    )}


def extra_rule_groups(config: MixinConfig) -> list[dict[str, Any]]:
    """Rule groups a Kubernetes rendering adds to the repo's files: GPU counters by pod, the gateway's."""
    groups = [_gpu_by_pod_rules(config)] if config.dcgm_pod_label else []
    if config.gateway == "production-stack":
        groups.append(production_stack_router_rules(config.agg_labels, config.gateway_selector or ROUTER_SELECTOR))
    elif config.gateway == "llm-d":
        groups.append(llm_d_epp_rules(config.agg_labels, config.gateway_selector or EPP_SELECTOR))
    elif config.gateway:
        raise ValueError(f"gateway {config.gateway!r}: one of production-stack, llm-d")
    return groups


# --- presets ------------------------------------------------------------------------------------

NATIVE = MixinConfig()

_K8S_AGG = ("namespace",)
PRODUCTION_STACK = MixinConfig(
    name="production-stack",
    # Engines only: production-stack's engine Service is <release>-<model>-engine-service (the
    # ServiceMonitor's job), and the router's same-named gauges carry `server`, engines' never do.
    vllm_selector='job=~".+-engine-service", server=""',
    collector_selector='job="serving-envelope-collector"',
    agg_labels=_K8S_AGG,
    kv_by=("pod",),
    dcgm_pod_label="exported_pod",
    node_label="node",
    gateway="production-stack",
    gateway_selector=ROUTER_SELECTOR,
    k6_native_histograms=True,
)
LLM_D = MixinConfig(
    name="llm-d",
    # llm-d's PodMonitor scrapes the vLLM containers themselves (job = <namespace>/<podmonitor>).
    vllm_selector='job=~".*serving-envelope-vllm"',
    collector_selector='job="serving-envelope-collector"',
    agg_labels=_K8S_AGG,
    kv_by=("pod",),
    dcgm_pod_label="exported_pod",
    node_label="node",
    gateway="llm-d",
    gateway_selector=EPP_SELECTOR,
    k6_native_histograms=True,
)
PRESETS = {c.name: c for c in (PRODUCTION_STACK, LLM_D)}


def load_config(data: dict[str, Any]) -> MixinConfig:
    """A config from a YAML mapping: `preset:` (production-stack, llm-d; default none) and any field
    of MixinConfig to override, e.g. {preset: production-stack, vllm_selector: 'job="my-engines"'}."""
    data = dict(data)
    preset = data.pop("preset", None)
    base = PRESETS[preset] if preset else MixinConfig(name="custom")
    known = {f.name for f in fields(MixinConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown mixin settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    tuples = {k: tuple(v) for k, v in data.items() if k in ("agg_labels", "kv_by")}
    return replace(base, **{**data, **tuples})
