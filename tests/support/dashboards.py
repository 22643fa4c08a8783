"""The provisioned Grafana dashboards (grafana/dashboards/*.json); their generator is loadgen.grafana.dashboards."""

from __future__ import annotations

import json
from typing import Any

from loadgen.settings import ROOT

GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))


def dashboards() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in DASHBOARD_FILES]
