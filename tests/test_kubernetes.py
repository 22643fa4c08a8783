"""One source, two renderings (loadgen.mixin, loadgen.kubernetes), checked without a cluster.

- the empty config renders today's rule files and dashboards byte for byte;
- compose/kubernetes/ is what scripts/render_kubernetes.py writes now (staleness);
- the rendered PrometheusRules pass `promtool check rules`, and `promtool test rules` on
  Kubernetes-shaped series (pods, engines, exported_pod, router copies) proves the multi-pod
  PromQL; the same tests fail on rules rendered without the engine selector;
- `kubectl kustomize` builds each preset; core kinds validate against Kubernetes' schemas
  (kubernetes-validate), the CRD kinds against the schemas in tests/data/kubernetes-schemas/.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

from loadgen import kubernetes, mixin
from loadgen.grafana.dashboards import OUT_DIR as DASHBOARD_DIR
from loadgen.grafana.dashboards import all_dashboards
from loadgen.grafana.dashboards import render as render_json
from loadgen.settings import ROOT
from tests.support.prometheus_checks import RULE_FILES, promtool

K8S = ROOT / "compose" / "kubernetes"
SCHEMAS = ROOT / "tests" / "data" / "kubernetes-schemas"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor_v1.json",
    ("k6.io/v1alpha1", "TestRun"): "testrun_v1alpha1.json",
}
KUBERNETES_VERSION = "1.32"
PRESETS = sorted(mixin.PRESETS)


def rendered_objects(preset: str) -> list[dict[str, Any]]:
    return [o for f in kubernetes.FILES for o in kubernetes.objects_of((K8S / preset / f).read_text())]


def all_rendered_objects() -> list[dict[str, Any]]:
    return [*(o for p in PRESETS for o in rendered_objects(p)),
            *kubernetes.objects_of((K8S / "k6-operator" / "testrun-example.yaml").read_text())]


# --- one source, two renderings -----------------------------------------------------------------

@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_empty_config_renders_each_rule_file_byte_identical(path: Path) -> None:
    assert mixin.render_rule_text(path.read_text(), mixin.NATIVE) == path.read_text()


def test_empty_config_renders_each_dashboard_byte_identical() -> None:
    for uid, model in all_dashboards().items():
        assert render_json(mixin.render_dashboard(model, mixin.NATIVE)) == (DASHBOARD_DIR / f"{uid}.json").read_text()


def test_committed_kubernetes_output_is_fresh() -> None:
    stale = [str(p.relative_to(ROOT)) for p, text in kubernetes.all_outputs().items()
             if not p.exists() or p.read_text() != text]
    assert stale == [], "stale: run .venv/bin/python scripts/render_kubernetes.py"


def test_check_mode_detects_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes, "OUT_DIR", tmp_path)
    assert kubernetes.main([]) == 0
    assert kubernetes.main(["--check"]) == 0
    (tmp_path / "llm-d" / "monitors.yaml").write_text("# edited by hand\n")
    assert kubernetes.main(["--check"]) == 1


def test_selectors_reach_every_raw_series_and_only_raw_series() -> None:
    config = mixin.PRODUCTION_STACK
    expr = ('sum by (model_name) (rate(vllm:request_success_total{finished_reason="error"}[1m])) '
            '/ model_name:vllm_requests:rate1m + collector_upstream_up + on() DCGM_FI_DEV_GPU_UTIL')
    out = mixin.rewrite_rule_expr(expr, config)
    assert 'vllm:request_success_total{job=~".+-engine-service", server="", finished_reason="error"}' in out
    assert "model_name:vllm_requests:rate1m" in out and "model_name:vllm_requests:rate1m{" not in out
    assert 'collector_upstream_up{job="serving-envelope-collector"}' in out
    assert "sum by (namespace, model_name)" in out
    assert mixin.rewrite_rule_expr('label_replace(x, "node_a", "$1", "b", "(.*)")', config).count("{") == 0


def test_rendered_rules_keep_alert_templates_and_change_only_expr() -> None:
    """Annotations (Go templates) arrive in the PrometheusRule exactly as in the rule file: no
    Helm `tpl` pass, no escaping."""
    native = {r["alert"]: r for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    for preset in PRESETS:
        alerts = {r["alert"]: r for o in rendered_objects(preset) if o["kind"] == "PrometheusRule"
                  for g in o["spec"]["groups"] for r in g["rules"] if "alert" in r}
        assert alerts.keys() == native.keys()
        for name, rule in alerts.items():
            assert {k: v for k, v in rule.items() if k != "expr"} == {
                k: v for k, v in native[name].items() if k != "expr"}, name
            assert "{{ $labels" in rule["annotations"]["description"] or name.startswith("Prometheus")


@pytest.mark.parametrize("preset", PRESETS)
def test_every_vllm_selector_of_the_dashboards_and_rules_names_the_engines(preset: str) -> None:
    config = mixin.PRESETS[preset]
    exprs = [t["expr"] for d in kubernetes.dashboards_json((K8S / preset / "dashboards.yaml").read_text()).values()
             for p in d["panels"] for t in p.get("targets", [])]
    exprs += [r["expr"] for o in rendered_objects(preset) if o["kind"] == "PrometheusRule"
              and not o["metadata"]["name"].endswith(preset) for g in o["spec"]["groups"] for r in g["rules"]]
    selectors = re.findall(r"(?<![\w:])vllm:[a-z0-9_:]+(\{[^}]*\})?", " ".join(exprs))
    assert selectors and all(s.startswith("{" + config.vllm_selector) for s in selectors)
    for expr in exprs:
        promql_parser.parse(expr.replace("$__rate_interval", "1m").replace("$model", "x").replace("$instance", "x")
                            .replace("$gpu", "x").replace("$run", "x").replace("$step", "x"))


# --- promtool on the rendered rule objects ------------------------------------------------------

def write_rule_files(preset: str, into: Path, config: mixin.MixinConfig | None = None) -> list[Path]:
    objects = (kubernetes.prometheus_rules(config) if config else
               [o for o in rendered_objects(preset) if o["kind"] == "PrometheusRule"])
    paths = []
    for o in objects:
        path = into / f"{o['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump({"groups": o["spec"]["groups"]}, sort_keys=False))
        paths.append(path)
    return paths


@pytest.mark.parametrize("preset", PRESETS)
def test_promtool_accepts_the_rendered_rules(preset: str, tmp_path: Path) -> None:
    result = promtool("check", "rules", *write_rule_files(preset, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("preset", PRESETS)
def test_promtool_unit_tests_on_kubernetes_shaped_series(preset: str, tmp_path: Path) -> None:
    write_rule_files(preset, tmp_path)
    shutil.copy(K8S / "tests" / f"{preset}-test.yml", tmp_path)
    result = promtool("test", "rules", f"{preset}-test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_multi_pod_tests_fail_without_the_engine_selector(tmp_path: Path) -> None:
    """The router's copies of vllm:num_requests_running would be counted: the tests notice."""
    naive = dataclasses.replace(mixin.PRODUCTION_STACK, vllm_selector="")
    write_rule_files("production-stack", tmp_path, naive)
    shutil.copy(K8S / "tests" / "production-stack-test.yml", tmp_path)
    result = promtool("test", "rules", "production-stack-test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "model_name:vllm_num_requests_running:sum" in result.stdout + result.stderr


# --- kustomize and schemas ----------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_kubectl_kustomize_builds(preset: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run([kubectl, "kustomize", str(K8S / preset)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in built) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in rendered_objects(preset))


def test_core_kinds_validate_against_kubernetes_schemas() -> None:
    core = [o for o in all_rendered_objects() if (o["apiVersion"], o["kind"]) not in CRD_SCHEMAS]
    assert {o["kind"] for o in core} >= {"ConfigMap", "ClusterRole", "ClusterRoleBinding", "Secret"}
    for o in core:
        kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)


def test_crd_kinds_validate_against_their_schemas() -> None:
    kinds = set()
    for o in all_rendered_objects():
        key = (o["apiVersion"], o["kind"])
        if key in CRD_SCHEMAS:
            jsonschema.validate(o, json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text()))
            kinds.add(o["kind"])
    assert kinds == {kind for _, kind in CRD_SCHEMAS}


def test_the_crd_schemas_reject_a_misspelt_field() -> None:
    rule = next(o for o in rendered_objects("production-stack") if o["kind"] == "PrometheusRule")
    bad = json.loads(json.dumps(rule))
    bad["spec"]["groups"][0]["rules"][0]["exprr"] = bad["spec"]["groups"][0]["rules"][0].pop("expr")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json.loads((SCHEMAS / "prometheusrule_v1.json").read_text()))


def test_dashboard_configmaps_are_labelled_for_the_grafana_sidecar() -> None:
    for preset in PRESETS:
        maps = [o for o in rendered_objects(preset) if o["kind"] == "ConfigMap"]
        assert {m["metadata"]["labels"]["grafana_dashboard"] for m in maps} == {"1"}
        assert sorted(k for m in maps for k in m["data"]) == sorted(f"{uid}.json" for uid in all_dashboards())


def test_testrun_parallelism_follows_the_step_users() -> None:
    assert [kubernetes.parallelism_for(u) for u in (1, 32, 33, 64, 65)] == [1, 1, 2, 2, 3]
    step = kubernetes.testrun("r1", 5, 100)
    assert step["spec"]["parallelism"] == 4
    assert "--tag step=5" in step["spec"]["arguments"]
    env = {e["name"]: e["value"] for e in step["spec"]["runner"]["env"]}
    assert env["K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM"] == "true"


# --- the values overlays (written by hand) agree with the rendered objects ----------------------

def values(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return data


def promql_regex(selector: str, label: str) -> str:
    match = re.search(label + r'=~"([^"]*)"', selector)
    assert match, selector
    return match.group(1)


def test_kube_prometheus_stack_values_match_what_the_objects_need() -> None:
    v = values("kube-prometheus-stack-values.yaml")
    spec = v["prometheus"]["prometheusSpec"]
    compose_interval = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert spec["scrapeInterval"] == compose_interval
    assert spec["enableRemoteWriteReceiver"] is True
    assert {"native-histograms", "exemplar-storage"} <= set(spec["enableFeatures"])
    assert all(spec[f"{k}SelectorNilUsesHelmValues"] is False for k in ("rule", "serviceMonitor", "podMonitor"))
    sidecar = v["grafana"]["sidecar"]
    cm = next(o for o in rendered_objects("production-stack") if o["kind"] == "ConfigMap")
    assert cm["metadata"]["labels"][sidecar["dashboards"]["label"]] == sidecar["dashboards"]["labelValue"]
    assert sidecar["dashboards"]["folderAnnotation"] in cm["metadata"]["annotations"]
    uids = {t["datasource"]["uid"] for d in all_dashboards().values()
            for p in d["panels"] for t in p.get("targets", [])}
    assert uids == {sidecar["datasources"]["uid"]}
    traces = {d["uid"] for d in v["grafana"]["additionalDataSources"]}
    assert sidecar["datasources"]["exemplarTraceIdDestinations"]["datasourceUid"] in traces
    relabel = v["prometheus-node-exporter"]["prometheus"]["monitor"]["relabelings"][0]
    assert relabel["targetLabel"] == mixin.PRODUCTION_STACK.node_label == mixin.LLM_D.node_label


def test_production_stack_values_scrape_engines_and_router_the_rules_tell_apart() -> None:
    v = values("production-stack/values.yaml")
    for part in ("servingEngineSpec", "routerSpec"):
        monitor = v[part]["serviceMonitor"]
        assert monitor["enabled"] is True and monitor["honorLabels"] is False
        assert monitor["additionalLabels"]["release"] == kubernetes.RELEASE
    assert v["routerSpec"]["autoscaling"]["enabled"] is False
    assert v["kube-prometheus-stack"]["enabled"] is False
    engines = promql_regex(mixin.PRODUCTION_STACK.vllm_selector, "job")
    router = promql_regex(mixin.ROUTER_SELECTOR, "job")
    # production-stack's Service names: <release>-<model>-engine-service and <release>-router-service.
    assert re.fullmatch(engines, "vllm-llama3-engine-service") and not re.fullmatch(engines, "vllm-router-service")
    assert re.fullmatch(router, "vllm-router-service") and not re.fullmatch(router, "vllm-llama3-engine-service")


def test_llm_d_values_leave_the_epp_to_the_authenticated_monitor() -> None:
    v = values("llm-d/values.yaml")
    assert v["inferenceExtension"]["monitoring"]["prometheus"]["enable"] is False
    epp = next(o for o in rendered_objects("llm-d") if o["metadata"]["name"] == "serving-envelope-epp")
    endpoint = epp["spec"]["endpoints"][0]
    secret = next(o for o in rendered_objects("llm-d") if o["kind"] == "Secret")
    assert endpoint["authorization"]["credentials"]["name"] == secret["metadata"]["name"]
    binding = next(o for o in rendered_objects("llm-d") if o["kind"] == "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]


# --- a user's own config ------------------------------------------------------------------------

def test_a_config_file_renders_one_deployment_of_ones_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "mixin.yaml"
    config.write_text("preset: production-stack\nname: my-stack\nvllm_selector: 'job=\"llama-engines\"'\n"
                      "agg_labels: [cluster, namespace]\n")
    out = tmp_path / "out"
    assert kubernetes.main(["--config", str(config), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*kubernetes.FILES, "kustomization.yaml"])
    rules = (out / "prometheusrules.yaml").read_text()
    assert 'sum by (cluster, namespace, model_name) (vllm:num_requests_running{job="llama-engines"})' in rules
    assert "name: serving-envelope-my-stack" in rules  # the router's group kept, under the config's name
    assert kubernetes.main(["--config", str(config), "--out", str(out), "--check"]) == 0
    paths = []
    for o in kubernetes.objects_of(rules):
        path = tmp_path / f"{o['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump({"groups": o["spec"]["groups"]}))
        paths.append(path)
    result = promtool("check", "rules", *paths)
    assert result.returncode == 0, result.stdout + result.stderr
    config.write_text("preset: production-stack\nvllm_selectr: 'job=\"x\"'\n")
    assert kubernetes.main(["--config", str(config), "--out", str(out)]) == 2
    assert "unknown mixin settings: vllm_selectr" in capsys.readouterr().err
