"""Prometheus configuration, rules and alerts, checked with the real promtool/amtool (no live stack).

The live checks (metric names on the real exporters, alerts end to end) are in
test_prometheus_metric_names.py and test_alerts_end_to_end.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from loadgen import native_stack, slo_rules
from loadgen.settings import read_settings
from loadgen.thresholds import load_thresholds
from tests.support.prometheus_checks import (
    ALERTS_FILE,
    PROMETHEUS_DIR,
    RULE_FILES,
    RUNBOOK,
    THRESHOLDS_FILE,
    UNIT_TEST_FILES,
    promtool,
    rule_file_errors,
)
from tests.support.promql_names import metric_names, recorded_names

COMPONENT_PREFIXES = ("Vllm", "Collector", "Node", "Dcgm", "Prometheus", "Alertmanager")
COMPARISONS = {">", "<", ">=", "<=", "==", "!="}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS_FILE)["groups"] for rule in group["rules"] if "alert" in rule]


def seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


# --- promtool / amtool on the files as shipped ------------------------------------------------

def test_promtool_accepts_every_rule_file() -> None:
    assert RULE_FILES, "no rule files found"
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    """Every alert silent just before its `for:` ends and firing after; every recording rule's values."""
    assert UNIT_TEST_FILES
    result = promtool("test", "rules", *UNIT_TEST_FILES, cwd=PROMETHEUS_DIR / "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_mode_config_is_valid() -> None:
    """prometheus.yml with the repo's compose targets (promtool also reads the rule and SD files)."""
    result = promtool("check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_native_mode_files_are_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What scripts/local renders into var/prometheus: Prometheus config and Alertmanager config."""
    monkeypatch.setattr(native_stack, "VAR", tmp_path)
    settings = read_settings()
    native_stack.write_prometheus_dir(settings)
    result = promtool("check", "config", tmp_path / "prometheus" / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = (tmp_path / "prometheus" / "alertmanager.yml").read_text()
    webhook = f"http://{settings['BIND_ADDRESS']}:{settings['ALERT_WEBHOOK_PORT']}/alerts"
    assert webhook in rendered
    check_alertmanager_config(tmp_path / "prometheus" / "alertmanager.yml")


def test_commented_alertmanager_receivers_are_valid(tmp_path: Path) -> None:
    """The email/Slack examples, uncommented, are a valid config (they do not rot silently)."""
    text = (PROMETHEUS_DIR / "alertmanager.yml").read_text()
    text = text.replace("alert-webhook:${ALERT_WEBHOOK_PORT}", "127.0.0.1:9095")
    uncommented = re.sub(r"^(\s+)# ", r"\1", text, flags=re.MULTILINE)
    assert uncommented != text
    config = tmp_path / "alertmanager.yml"
    config.write_text(uncommented)
    receivers = {receiver["name"] for receiver in load(config)["receivers"]}
    assert receivers == {"webhook", "email", "slack"}
    check_alertmanager_config(config)


def check_alertmanager_config(path: Path) -> None:
    amtool = shutil.which("amtool")
    assert amtool, "amtool missing (Debian package prometheus-alertmanager)"
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_interval_is_stated_once() -> None:
    """5 s, in the global section only (Grafana's datasource timeInterval reads this value)."""
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    assert text.count("scrape_interval") == 1
    assert load(PROMETHEUS_DIR / "prometheus.yml")["global"]["scrape_interval"] == "5s"


def test_remote_write_receiver_and_exemplars_are_enabled() -> None:
    assert "--web.enable-remote-write-receiver" in native_stack.PROMETHEUS_FLAGS
    assert "--enable-feature=exemplar-storage" in native_stack.PROMETHEUS_FLAGS


def test_slo_attainment_rules_are_generated_from_current_buckets() -> None:
    assert slo_rules.OUTPUT.read_text() == slo_rules.render(), (
        "prometheus/rules/slo-recording.yml is stale: run .venv/bin/python scripts/slo_rules.py"
    )


# --- the checker itself, on deliberately broken files -----------------------------------------

def test_checker_names_file_and_line_of_a_syntax_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken-rules.yml"
    broken.write_text(
        "groups:\n"
        "  - name: broken\n"
        "    rules:\n"
        "      - alert: Broken\n"
        "        expr: sum(rate(vllm:num_preemptions_total[5m]) > 0\n"
    )
    errors = rule_file_errors([broken], {"vllm:num_preemptions_total"})
    assert len(errors) == 1
    assert f"{broken}: 5:" in errors[0] and "unclosed left parenthesis" in errors[0]


def test_checker_names_file_and_line_of_an_unknown_metric(tmp_path: Path) -> None:
    rules = tmp_path / "typo-rules.yml"
    rules.write_text(
        "groups:\n"
        "  - name: typo\n"
        "    rules:\n"
        "      - record: model_name:vllm_kv_cache_usage_perc:max\n"
        "        expr: max by (model_name) (vllm:kv_cache_usage_perc)\n"
        "      - alert: KvFull\n"
        "        expr: |\n"
        "          model_name:vllm_kv_cache_usage_perc:max > 0.9\n"
        "          or vllm:gpu_cache_usage_perc > 0.9\n"
    )
    errors = rule_file_errors([rules], {"vllm:kv_cache_usage_perc"})
    assert errors == [f"{rules}:7: rule KvFull uses unknown metric vllm:gpu_cache_usage_perc"]


def test_checker_passes_the_shipped_rules_given_their_inputs() -> None:
    """Sanity of the checker: with every name the rules read declared known, nothing is reported."""
    from tests.support.promql_names import rule_expressions

    used = {name for path in RULE_FILES for item in rule_expressions(path) for name in metric_names(item.expr)}
    assert rule_file_errors(RULE_FILES, used) == []
    assert rule_file_errors(RULE_FILES, set()) != []


# --- thresholds: one place, one shape ---------------------------------------------------------

def threshold_values() -> dict[str, float]:
    """envelope:<what>:threshold -> number, read by loadgen's reader (the report's SLO uses it)."""
    return {f"envelope:{what}:threshold": value for what, value in load_thresholds(THRESHOLDS_FILE).items()}


def test_thresholds_file_has_the_agreed_shape() -> None:
    """Only `record: envelope:<what>:threshold` + `expr: vector(<number>)` rules: loadgen and
    grafana parse this file, alerts and SLO rules read its series."""
    rules = [rule for group in load(THRESHOLDS_FILE)["groups"] for rule in group["rules"]]
    assert all(set(rule) == {"record", "expr"} for rule in rules), "no labels or other keys"
    values = threshold_values()
    assert sorted(values) == sorted(rule["record"] for rule in rules), "every rule must be a threshold"
    for name in ("ttft_p95_seconds", "e2e_p95_seconds", "itl_p95_seconds", "error_ratio",
                 "kv_cache_usage_ratio", "queue_waiting_requests", "host_memory_available_ratio",
                 "gpu_temperature_celsius", "gpu_power_watts", "preemptions_per_minute"):
        assert f"envelope:{name}:threshold" in values
    assert values["envelope:ttft_p95_seconds:threshold"] == 2


def test_no_rule_outside_thresholds_file_hard_codes_a_threshold() -> None:
    """Every comparison in a rule compares with an envelope threshold series, or with 0 (a state)."""
    problems: list[str] = []
    for path in RULE_FILES:
        if path == THRESHOLDS_FILE:
            continue
        for group in load(path)["groups"]:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                for node in binary_nodes(promql_parser.parse(rule["expr"])):
                    if str(node.op) not in COMPARISONS:
                        continue
                    rhs_names = metric_names(str(node.rhs))
                    is_zero = isinstance(node.rhs, promql_parser.NumberLiteral) and node.rhs.val == 0
                    if not is_zero and not any(n.startswith("envelope:") for n in rhs_names):
                        problems.append(f"{path.name}: {name}: compares with {node.rhs}")
    assert problems == []


def binary_nodes(tree: promql_parser.Expr) -> list[promql_parser.BinaryExpr]:
    found: list[promql_parser.BinaryExpr] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.BinaryExpr):
            found.append(node)
        return True

    promql_parser.walk(tree, pre_visit=visit)
    return found


def test_every_threshold_is_used() -> None:
    used = {name for rule in alert_rules() for name in metric_names(rule["expr"])}
    slo = (PROMETHEUS_DIR / "rules" / "slo-recording.yml").read_text()
    unused = [name for name in threshold_values() if name not in used and name not in slo]
    assert unused == []


# --- alerts: naming, labels, annotations, runbook, unit-test coverage -------------------------

def runbook_sections() -> dict[str, str]:
    sections: dict[str, str] = {}
    for chunk in re.split(r"^## ", RUNBOOK.read_text(), flags=re.MULTILINE)[1:]:
        title, _, body = chunk.partition("\n")
        sections[title.strip().lower()] = body
    return sections


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_follows_the_mixin_conventions(rule: dict[str, Any]) -> None:
    name = rule["alert"]
    assert re.fullmatch(r"([A-Z][a-z0-9]+)+", name), f"{name} is not CamelCase"
    assert name.startswith(COMPONENT_PREFIXES), f"{name} lacks a component prefix"
    assert seconds(rule["for"]) > 0
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert "{{" not in annotations["summary"], "summary must be static"
    assert "{{" in annotations["description"], "description must be templated"
    assert annotations["runbook_url"] == f"prometheus/runbook.md#{name.lower()}"
    body = runbook_sections().get(name.lower())
    assert body is not None, f"runbook.md has no '## {name}' section"
    for part in ("Meaning", "Impact", "Diagnosis", "Mitigation"):
        assert f"**{part}.**" in body, f"runbook section {name} lacks {part}"


def unit_test_cases() -> dict[str, list[dict[str, Any]]]:
    cases: dict[str, list[dict[str, Any]]] = {}
    for path in UNIT_TEST_FILES:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(case)
    return cases


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_a_silent_then_firing_unit_test(rule: dict[str, Any]) -> None:
    """The promtool test asserts silence one evaluation (5 s) before firing, with labels and annotations."""
    cases = unit_test_cases().get(rule["alert"], [])
    silent = {seconds(c["eval_time"]) for c in cases if not c["exp_alerts"]}
    firing = [c for c in cases if c["exp_alerts"]]
    assert firing, f"no firing case for {rule['alert']}"
    for case in firing:
        assert seconds(case["eval_time"]) - 5 in silent, "no silent case one evaluation before firing"
        assert seconds(case["eval_time"]) >= seconds(rule["for"])
        for alert in case["exp_alerts"]:
            assert alert["exp_labels"]["severity"] == rule["labels"]["severity"]
            assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}


def test_every_recording_rule_is_checked_on_known_input() -> None:
    tested = " ".join(
        case["expr"] for path in UNIT_TEST_FILES for test in load(path)["tests"]
        for case in test.get("promql_expr_test", [])
    )
    recorded = recorded_names(path for path in RULE_FILES if path != THRESHOLDS_FILE)
    untested = sorted(name for name in recorded if not re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", tested))
    assert untested == []
