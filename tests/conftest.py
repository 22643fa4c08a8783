"""Shared fixtures. `stack` is the live native stack: real vLLM (CPU build), Prometheus,
Alertmanager, node exporter and the collector, on 127.0.0.1.

The suite starts whatever part of the stack is not running and stops exactly that part at the
end; services that were already running (a developer's stack) are reused and left running.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from loadgen import native_stack
from loadgen.settings import read_settings, vllm_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


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


@pytest.fixture(scope="session")
def settings() -> dict[str, str]:
    return read_settings()


@pytest.fixture(scope="session")
def stack(settings: dict[str, str]) -> Iterator[Stack]:
    # Start only what is not running; stop only what this session started.
    missing = [svc.name for svc in native_stack.services(settings) if native_stack.recorded_pid(svc.name) is None]
    if missing:
        try:
            native_stack.up(settings, only=missing)
        except native_stack.StackError as error:
            pytest.fail(f"native stack did not start: {error}")
    host = settings["BIND_ADDRESS"]

    def url(port_key: str) -> str:
        return f"http://{host}:{settings[port_key]}"

    try:
        yield Stack(
            settings=settings,
            vllm=vllm_url(settings),
            collector=url("COLLECTOR_PORT"),
            prometheus=url("PROMETHEUS_PORT"),
            alertmanager=url("ALERTMANAGER_PORT"),
            node_exporter=url("NODE_EXPORTER_PORT"),
            model=settings["NATIVE_SERVED_MODEL_NAME"],
        )
    finally:
        for name in reversed(missing):
            native_stack.stop(name)
