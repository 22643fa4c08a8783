"""Native mode beside a vLLM that is already running (VLLM_URL): what a GPU box with its own vLLM needs.

A private stack (its own var/ and ports) is brought up with VLLM_URL pointing at the running stack's
vLLM: it must start no vLLM of its own, relay through its collector to that URL, and have its
Prometheus scrape that vLLM's /metrics. The private stack is always torn down.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from loadgen.procs import free_port
from loadgen.settings import APP_PYTHON, ROOT, service_url
from tests.support.stack import Stack

pytestmark = pytest.mark.stack
LAUNCHER = ROOT / "scripts" / "native_stack.py"
PYTHON = APP_PYTHON


def _local(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PYTHON), str(LAUNCHER), *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_stack_runs_beside_an_external_vllm(stack: Stack, tmp_path: Path) -> None:
    ports = {key: str(free_port()) for key in ("COLLECTOR_PORT", "PROMETHEUS_PORT", "NODE_EXPORTER_PORT",
                                                "ALERTMANAGER_PORT", "ALERT_WEBHOOK_PORT")}
    # VLLM_PORT points nowhere useful: with VLLM_URL set nothing may use it.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, **ports,
           "SERVING_ENVELOPE_VAR": str(tmp_path), "VLLM_URL": stack.vllm + "/", "VLLM_PORT": str(free_port())}
    try:
        up = _local(env, "up", "node-exporter", "prometheus", "collector")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"vllm           external  {stack.vllm}" in up.stdout
        assert not any(line.startswith("vllm") for line in _local(env, "status").stdout.splitlines())
        assert not (tmp_path / "run" / "vllm.pid").exists(), "no vLLM of its own"
        collector = f"http://127.0.0.1:{ports['COLLECTOR_PORT']}"
        reply = requests.post(f"{collector}/v1/chat/completions", timeout=120, json={
            "model": stack.model, "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4
        prometheus = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}"
        deadline, up_value, tokens = time.time() + 60, None, None
        while time.time() < deadline and not (up_value == "1" and tokens):
            body = requests.get(f"{prometheus}/api/v1/query", params={"query": 'up{job="vllm"}'}, timeout=10).json()
            up_value = body["data"]["result"][0]["value"][1] if body["data"]["result"] else None
            body = requests.get(f"{prometheus}/api/v1/query",
                                params={"query": "vllm:generation_tokens_total"}, timeout=10).json()
            tokens = body["data"]["result"]
            time.sleep(1)
        assert up_value == "1" and tokens, (up_value, tokens)
        target = (tmp_path / "prometheus" / "targets" / "vllm.yml").read_text()
        assert stack.vllm.removeprefix("http://") in target
        # loadgen finds the same vLLM for its provenance
        assert service_url({"VLLM_URL": stack.vllm + "/", "VLLM_PORT": "1"}, "VLLM_PORT") == stack.vllm
    finally:
        down = _local(env, "down")
    assert down.returncode == 0, down.stderr
    assert "vllm" not in down.stdout  # the external vLLM is not ours to stop
    assert requests.get(f"{stack.vllm}/health", timeout=10).status_code == 200
