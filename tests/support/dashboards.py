"""The provisioned Grafana dashboards (grafana/dashboards/*.json) and their generator, grafana/dashboards.py
(a standalone script outside the Python packages, loaded from its file for the tests that regenerate)."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType
from typing import Any

from loadgen.settings import ROOT

GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_dashboards", GRAFANA / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboards() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in DASHBOARD_FILES]
