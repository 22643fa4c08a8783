"""The SLO a sweep checks each step against: prometheus/rules/thresholds.yml (the one place every
threshold lives), overridden per run by the plan's `slo:` section."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

THRESHOLDS_FILE = Path(__file__).resolve().parent.parent / "prometheus" / "rules" / "thresholds.yml"
RECORD = re.compile(r"^envelope:(?P<what>[a-z0-9_]+):threshold$")
VECTOR = re.compile(r"^\s*vector\(\s*(?P<number>[-+0-9.eE]+)\s*\)\s*$")
# SLO key (plan) -> threshold name (thresholds.yml)
SLO_FROM_THRESHOLDS = {
    "ttft_p95_s": "ttft_p95_seconds",
    "itl_p95_s": "itl_p95_seconds",
    "e2e_p95_s": "e2e_p95_seconds",
    "error_ratio": "error_ratio",
}


class ThresholdsError(ValueError):
    pass


def parse_thresholds(data: Any, source: str) -> dict[str, float]:
    """{what: number} from rules shaped `record: envelope:<what>:threshold`, `expr: vector(N)`."""
    out: dict[str, float] = {}
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list):
        raise ThresholdsError(f"{source}: groups: missing or not a list")
    for group in groups:
        for rule in group.get("rules") or []:
            match = RECORD.match(str(rule.get("record", "")))
            if not match:
                continue
            number = VECTOR.match(str(rule.get("expr", "")))
            if not number:
                raise ThresholdsError(f"{source}: {rule['record']}: expr must be vector(NUMBER), "
                                      f"got {rule.get('expr')!r}")
            out[match["what"]] = float(number["number"])
    return out


def load_thresholds(path: Path = THRESHOLDS_FILE) -> dict[str, float]:
    """The thresholds; a missing or unreadable file is an error, never an SLO that silently checks nothing."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ThresholdsError(f"{path}: cannot read the SLO thresholds ({error.strerror or error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ThresholdsError(f"{path}: not YAML: {str(error).splitlines()[0]}") from None
    return parse_thresholds(data, str(path))


def slo_for_run(thresholds: dict[str, float], overrides: dict[str, float]) -> dict[str, dict[str, Any]]:
    """{slo key: {"value": number, "source": where it came from}}."""
    slo: dict[str, dict[str, Any]] = {}
    for key, name in SLO_FROM_THRESHOLDS.items():
        if name in thresholds:
            slo[key] = {"value": thresholds[name], "source": f"thresholds.yml envelope:{name}:threshold"}
    for key, value in overrides.items():
        slo[key] = {"value": value, "source": "plan override"}
    return slo
