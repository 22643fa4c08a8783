"""The repo's Prometheus files and the checks run on them: promtool, plus metric names by file:line."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path

from loadgen.settings import ROOT
from tests.support.promql_names import recorded_names, rule_expressions, unknown_metric_errors

PROMETHEUS_DIR = ROOT / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
THRESHOLDS_FILE = RULES_DIR / "thresholds.yml"
ALERTS_FILE = RULES_DIR / "envelope-alerts.yml"
UNIT_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
RUNBOOK = PROMETHEUS_DIR / "runbook.md"
DCGM_COUNTERS = PROMETHEUS_DIR / "dcgm-exporter-counters.csv"


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd, check=False,
    )


def rule_file_errors(paths: Iterable[Path], known_metrics: set[str]) -> list[str]:
    """Everything wrong with these rule files, each message naming file and line.

    promtool's own check first (YAML and PromQL syntax, it reports `file: line:col: ...`); then
    every metric name a rule reads must be known or recorded by one of the files.
    """
    paths = list(paths)
    errors: list[str] = []
    for path in paths:
        result = promtool("check", "rules", path)
        if result.returncode != 0:
            detail = "\n".join(ln.strip() for ln in result.stderr.splitlines() if ln.strip() != "FAILED:")
            errors.append(detail or f"{path}: promtool check rules failed")
    if errors:
        return errors
    known = known_metrics | recorded_names(paths)
    for path in paths:
        errors.extend(unknown_metric_errors(rule_expressions(path), known))
    return errors
