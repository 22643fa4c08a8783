"""The live native stack as the tests see it (the `stack` fixture in tests/conftest.py yields one)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests


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
