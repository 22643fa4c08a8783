"""Grafana provisioning and dashboards, checked as files: the dashboard-linter's rules as pytest
checks (datasource by uid, units, $__rate_interval, counters only inside rate/increase, titles,
readable uids), one copy of each dashboard (committed JSON == generator output), thresholds and
recording rules that exist, datasource settings that match Prometheus and compose.

What a file check cannot show (that each query returns data) is in test_grafana_live.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from loadgen.grafana import dashboards as generator
from loadgen.grafana.queries import Window, expand, iter_panels, parse_duration, variable_values
from tests.support.dashboards import DASHBOARD_FILES, dashboards
from tests.support.promql_names import metric_names, recorded_names

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "datasources.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml"
RULES_DIR = ROOT / "prometheus" / "rules"
RANGE_FUNCTIONS = {"rate", "irate", "increase"}
# A duration no author would type: after substitution, every range that is not it was hard-coded.
SENTINEL_RATE_INTERVAL = 4242.0


def panel_targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def sentinel_expand(expr: str, dashboard: dict[str, Any]) -> str:
    """The query with $__rate_interval set to the sentinel and template variables to '.*'."""
    window = Window(0, 3600, 5, SENTINEL_RATE_INTERVAL)
    return expand(expr, variable_values(dashboard), window)


def walk(node: Any, parents: tuple[Any, ...] = ()) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Every node of a promql_parser AST with its ancestors (outermost first)."""
    yield node, parents
    children: list[Any] = []
    if isinstance(node, promql_parser.Call):
        children = list(node.args)
    elif isinstance(node, promql_parser.BinaryExpr):
        children = [node.lhs, node.rhs]
    elif isinstance(node, promql_parser.AggregateExpr):
        children = [node.expr] + ([node.param] if node.param is not None else [])
    elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        children = [node.expr]
    elif isinstance(node, promql_parser.MatrixSelector):
        children = [node.vector_selector]
    for child in children:
        yield from walk(child, (*parents, node))


def is_counter_series(name: str) -> bool:
    """Counters and the cumulative series of histograms: only meaningful as a rate or increase.
    (Recording rules end in their operation, e.g. `:rate1m`, so they never match.)"""
    return name.endswith(("_total", "_bucket", "_count", "_sum"))


def all_rules() -> dict[str, dict[str, Any]]:
    rules: dict[str, dict[str, Any]] = {}
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if "record" in rule:
                    rules[rule["record"]] = rule
    return rules


# --- one copy --------------------------------------------------------------------------------------


def test_committed_json_equals_generator_output() -> None:
    generated = generator.all_dashboards()
    assert sorted(f"{uid}.json" for uid in generated) == [p.name for p in DASHBOARD_FILES]
    for uid, model in generated.items():
        assert (GRAFANA / "dashboards" / f"{uid}.json").read_text() == generator.render(model), (
            f"{uid}.json is stale: run python grafana/dashboards.py")


def test_generator_check_mode_detects_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator, "OUT_DIR", tmp_path)
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    (tmp_path / "serving.json").write_text("{}\n")
    assert generator.main(["--check"]) == 1


# --- dashboard-linter rules -------------------------------------------------------------------------


def test_three_dashboards_with_readable_unique_uids_and_titles() -> None:
    models = dashboards()
    assert {d["uid"] for d in models} == {"serving", "gpu-host", "load-test"}
    for model in models:
        assert re.fullmatch(r"[a-z][a-z0-9-]{2,39}", model["uid"]), model["uid"]
        assert model["title"] and model["description"]
        assert "id" not in model, "provisioned dashboards carry no numeric id"
    assert len({d["title"] for d in models}) == len(models)


def test_every_panel_has_a_unique_title_description_and_id() -> None:
    for model in dashboards():
        panels = list(iter_panels(model))
        assert panels
        titles = [p["title"] for p in panels]
        assert all(titles), model["uid"]
        assert len(set(titles)) == len(titles), f"{model['uid']}: duplicate panel titles"
        ids = [p["id"] for p in model["panels"]]
        assert len(set(ids)) == len(ids)
        for panel in panels:
            assert panel.get("description"), f"{model['uid']}/{panel['title']}: no description"


def test_every_panel_and_query_names_the_prometheus_datasource_by_uid() -> None:
    uids = {ds["uid"] for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    for model in dashboards():
        for panel in iter_panels(model):
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        for panel, target in panel_targets(model):
            assert target["datasource"]["uid"] in uids, f"{panel['title']}: datasource {target['datasource']}"
        for var in model["templating"]["list"]:
            assert var["datasource"]["uid"] in uids
        for annotation in model["annotations"]["list"]:
            assert annotation["datasource"]["uid"] in uids | {"-- Grafana --"}


def test_every_panel_has_a_unit() -> None:
    for model in dashboards():
        for panel in iter_panels(model):
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{model['uid']}/{panel['title']}: no unit"


def all_queries() -> Iterator[tuple[dict[str, Any], str, str]]:
    """(dashboard, where, expr) for every panel query, annotation and variable query."""
    for model in dashboards():
        for panel, target in panel_targets(model):
            yield model, f"{model['uid']}/{panel['title']}/{target['refId']}", target["expr"]
        for annotation in model["annotations"]["list"]:
            if "expr" in annotation:
                yield model, f"{model['uid']}/annotation {annotation['name']}", annotation["expr"]


def test_every_query_is_valid_promql() -> None:
    for model, where, expr in all_queries():
        try:
            promql_parser.parse(sentinel_expand(expr, model))
        except Exception as error:
            pytest.fail(f"{where}: {error}: {expr}")


def test_every_rate_uses_rate_interval() -> None:
    for model, where, expr in all_queries():
        for node, parents in walk(promql_parser.parse(sentinel_expand(expr, model))):
            if isinstance(node, promql_parser.MatrixSelector):
                assert parents and isinstance(parents[-1], promql_parser.Call), f"{where}: bare range: {expr}"
                assert parents[-1].func.name in RANGE_FUNCTIONS, f"{where}: {parents[-1].func.name}"
                assert node.range.total_seconds() == SENTINEL_RATE_INTERVAL, (
                    f"{where}: range not $__rate_interval: {expr}")


def test_counters_appear_only_inside_rate_or_increase() -> None:
    for model, where, expr in all_queries():
        for node, parents in walk(promql_parser.parse(sentinel_expand(expr, model))):
            if isinstance(node, promql_parser.VectorSelector) and is_counter_series(node.name or ""):
                inside = [p for p in parents if isinstance(p, promql_parser.MatrixSelector)]
                assert inside, f"{where}: counter {node.name} read without rate()/increase(): {expr}"


def test_counter_rule_itself_catches_a_bare_counter() -> None:
    # The check above must be able to fail.
    bare = promql_parser.parse("sum(vllm:num_preemptions_total)")
    assert any(isinstance(n, promql_parser.VectorSelector) and is_counter_series(n.name or "")
               and not any(isinstance(p, promql_parser.MatrixSelector) for p in ps) for n, ps in walk(bare))
    assert not is_counter_series("model_name:vllm_num_preemptions:rate1m")


def test_template_variables() -> None:
    by_uid = {d["uid"]: d for d in dashboards()}
    names = {uid: [v["name"] for v in d["templating"]["list"]] for uid, d in by_uid.items()}
    # k6's remote-write series carry no model or instance label (measured): run and step instead.
    assert names == {"serving": ["model", "instance"], "gpu-host": ["instance", "gpu"], "load-test": ["run", "step"]}
    for model in by_uid.values():
        for var in model["templating"]["list"]:
            assert var["query"]["query"].startswith("label_values("), var["name"]
            assert var["allValue"] == ".*" and var["includeAll"]
        used = {m for d, _, expr in all_queries() if d["uid"] == model["uid"] for m in re.findall(r"\$(\w+)", expr)}
        assert {v["name"] for v in model["templating"]["list"]} <= used


def test_latency_panels_show_exemplars() -> None:
    serving = next(d for d in dashboards() if d["uid"] == "serving")
    latency = [p for p in iter_panels(serving) if "(collector)" in p["title"] and p["type"] == "timeseries"]
    assert len(latency) == 4
    for panel in latency:
        quantiles = [t for t in panel["targets"] if t["expr"].startswith("histogram_quantile")]
        assert quantiles and all(t["exemplar"] for t in quantiles), panel["title"]


def test_thresholds_come_from_the_envelope_rules() -> None:
    rules = all_rules()
    used = {name for _, _, expr in all_queries() for name in re.findall(r"envelope:\w+:threshold", expr)}
    assert {"envelope:ttft_p95_seconds:threshold", "envelope:kv_cache_usage_ratio:threshold"} <= used
    for name in used:
        assert name in rules, f"{name} is not defined in prometheus/rules/"
        assert re.fullmatch(r"vector\([0-9.e+-]+\)", str(rules[name]["expr"]).strip()), rules[name]
    # No threshold number is typed into a dashboard: the only literal numbers are quantiles and units.
    for _, where, expr in all_queries():
        numbers = set(re.findall(r"(?<![\w.:\"])\d+(?:\.\d+)?(?![\w.\"])", expr))
        assert numbers <= {"0", "60", "0.50", "0.95", "0.99"}, f"{where}: literal {numbers - {'0'}}"


def test_recording_rules_used_exist() -> None:
    recorded = recorded_names(sorted(RULES_DIR.glob("*.yml")))
    used = {name for _, _, expr in all_queries() for name in metric_names(expr) if name.count(":") == 2}
    assert "model:collector_request_errors:ratio_rate1m" in used
    assert used <= recorded, f"recording rules not defined in prometheus/rules/: {sorted(used - recorded)}"


# --- provisioning -----------------------------------------------------------------------------------


def test_datasources_have_fixed_uids_and_exemplar_links() -> None:
    sources = {ds["uid"]: ds for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    assert set(sources) == {"prometheus", "alertmanager", "traces"}
    prometheus = sources["prometheus"]
    assert prometheus["type"] == "prometheus" and prometheus["isDefault"]
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert [d["datasourceUid"] for d in destinations] == ["traces"]
    assert sources["traces"]["type"] in {"jaeger", "tempo"}
    assert sources["alertmanager"]["jsonData"]["implementation"] == "prometheus"


def test_prometheus_time_interval_equals_the_scrape_interval() -> None:
    scrape = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["global"]["scrape_interval"]
    prometheus = next(ds for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]
                      if ds["uid"] == "prometheus")
    assert parse_duration(prometheus["jsonData"]["timeInterval"]) == parse_duration(scrape)


def compose_grafana() -> tuple[dict[str, Any], set[str]]:
    compose = yaml.safe_load((ROOT / "compose" / "compose.yaml").read_text())
    return compose["services"]["grafana"], set(compose["services"])


def test_datasource_hosts_are_compose_services() -> None:
    _, services = compose_grafana()
    for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]:
        host = re.fullmatch(r"https?://([\w-]+):\d+/?", ds["url"])
        assert host and host.group(1) in services, f"{ds['name']}: {ds['url']} is not a compose service"


def test_provider_path_is_where_compose_mounts_the_dashboards() -> None:
    grafana, _ = compose_grafana()
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    mounts = {source.removeprefix("../"): target for source, target, *_ in
              (v.split(":") for v in grafana["volumes"] if v.startswith("../"))}
    assert mounts.get("grafana/dashboards") == provider["options"]["path"]
    assert mounts.get("grafana/provisioning") == "/etc/grafana/provisioning"
    assert all(v.endswith(":ro") for v in grafana["volumes"] if v.startswith("../grafana"))


def test_panels_fit_the_grid_without_overlapping() -> None:
    for model in dashboards():
        taken: set[tuple[int, int]] = set()
        for panel in model["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                     for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & taken, f"{model['uid']}/{panel['title']} overlaps another panel"
            taken |= cells
