"""The live native stack as the tests see it (the `stack` fixture in tests/conftest.py yields one)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Stack:
    settings: dict[str, str]
    vllm: str
    collector: str
    prometheus: str
    alertmanager: str
    node_exporter: str
    model: str

    def prom_query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query against the live Prometheus; raises on a query error."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        response = requests.get(f"{self.prometheus}/api/v1/query", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {expr}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def prom_value(self, expr: str) -> float | None:
        result = self.prom_query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for_scrape(self, seconds: float | None = None) -> None:
        """Sleep long enough for one more scrape of every target."""
        time.sleep(seconds if seconds is not None else 2 * 5 + 1)

    def sweep(self, plan: dict[str, Any], work: Path) -> Path:
        """Runs `python -m loadgen sweep` with `plan` through the collector (no panels), as a user would;
        returns the run folder."""
        plan_path = work / "plan.yaml"
        plan_path.write_text(yaml.safe_dump(plan))
        out = work / "reports"
        result = subprocess.run([sys.executable, "-m", "loadgen", "sweep", "--plan", str(plan_path), "--target",
                                 self.collector, "--prometheus", self.prometheus, "--no-panels", "--out", str(out)],
                                cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return next(out.iterdir())
