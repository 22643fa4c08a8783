"""Operations side of issue 13: `scripts/local down SERVICE` stops that service only, and names an
unknown one. Runs the launcher with a private var/ and its own ports (never the running stack)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from loadgen.procs import free_port
from loadgen.settings import APP_PYTHON, ROOT

LAUNCHER = ROOT / "scripts" / "native_stack.py"
PYTHON = APP_PYTHON


@pytest.fixture
def launcher(tmp_path: Path) -> dict[str, str]:
    """Environment of a private stack: its own var/ and free ports for the two light services."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COLLECTOR_"))},
            "SERVING_ENVELOPE_VAR": str(tmp_path), "NODE_EXPORTER_PORT": str(free_port()),
            "ALERT_WEBHOOK_PORT": str(free_port())}


def local(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PYTHON), str(LAUNCHER), *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def states(env: dict[str, str]) -> dict[str, str]:
    lines = local(env, "status").stdout.splitlines()
    return {line.split()[0]: line.split()[1] for line in lines if line.strip()}


def test_down_with_a_service_stops_only_that_service(launcher: dict[str, str]) -> None:
    started = local(launcher, "up", "node-exporter", "alert-webhook")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        assert states(launcher)["node-exporter"] == "up" and states(launcher)["alert-webhook"] == "up"
        stopped = local(launcher, "down", "node-exporter")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == "stopped: node-exporter"
        after = states(launcher)
        assert after["node-exporter"] == "down" and after["alert-webhook"] == "up", after
        again = local(launcher, "down", "node-exporter")
        assert again.returncode == 0 and again.stdout.strip() == "not running: node-exporter"
    finally:
        local(launcher, "down")
    assert set(states(launcher).values()) == {"down"}


def test_unknown_service_is_named_and_nothing_is_stopped(launcher: dict[str, str]) -> None:
    for command in ("down", "up"):
        result = local(launcher, command, "prometheuss")
        assert result.returncode == 2
        assert "unknown service prometheuss" in result.stderr and "prometheus" in result.stderr
