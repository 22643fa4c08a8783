"""COLLECTOR_WORKERS > 1: several processes share the port (SO_REUSEPORT) and /metrics, whichever
worker answers it, sums every worker's samples; process series carry one `pid` label per worker."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest
import requests

from collector import settings
from tests.support.collector import collector_process, metric_samples, metric_sum, read_stream, serve_app
from tests.support.scripted_upstream import MODEL, Scripted

REQUESTS = 30


def test_metrics_from_all_workers_are_summed() -> None:
    with serve_app(Scripted().app()) as upstream, collector_process(upstream, env={"COLLECTOR_WORKERS": "2"}) as proxy:
        for index in range(REQUESTS):  # a new connection each: the kernel spreads them over the workers
            read = read_stream(proxy + "/v1/chat/completions", {
                "model": MODEL, "stream": True, "messages": [{"role": "user", "content": f"ok {index}"}]})
            assert read.status == 200 and read.events[-1] == "[DONE]"
        pids: set[str] = set()
        for _ in range(8):  # each scrape is a new connection too, answered by either worker
            samples = metric_samples(proxy)
            assert metric_sum(samples, "collector_requests_total", status="200") == REQUESTS
            assert metric_sum(samples, "collector_time_to_first_token_seconds_count", model=MODEL) == REQUESTS
            assert metric_sum(samples, "collector_generation_tokens_total", model=MODEL) == 2 * REQUESTS
            assert metric_sum(samples, "collector_inter_token_latency_seconds_count", model=MODEL) == REQUESTS
            assert metric_sum(samples, "collector_upstream_up") == 1
            assert metric_sum(samples, "collector_streams_in_flight") == 0
            cpu = {dict(labels)["pid"]: value for (name, labels), value in samples.items()
                   if name == "process_cpu_seconds_total"}
            pids |= set(cpu)
            assert len(cpu) == 2 and all(value > 0 for value in cpu.values())
        port = int(proxy.rsplit(":", 1)[1])
        listeners = {str(c.pid) for c in psutil.net_connections("tcp")
                     if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid}
        assert pids == listeners  # one series per worker, and both workers listen on the port
        assert requests.get(proxy + "/metrics", timeout=10).status_code == 200


def test_auto_is_one_worker_per_four_cores_at_most_four(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [settings.auto_workers(cores) for cores in (1, 2, 4, 8, 16, 20, 64)] == [1, 1, 1, 2, 4, 4, 4]
    monkeypatch.delenv("COLLECTOR_WORKERS", raising=False)
    assert settings.parse_args([]).workers == settings.auto_workers()  # the default
    assert settings.parse_args(["--workers", "AUTO"]).workers == settings.auto_workers()
    monkeypatch.setenv("COLLECTOR_WORKERS", "3")
    assert settings.parse_args([]).workers == 3


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_worker_count_is_one_line_naming_it(value: str) -> None:
    result = subprocess.run([sys.executable, "-m", "collector"], env={"COLLECTOR_WORKERS": value, "PATH": ""},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--workers (COLLECTOR_WORKERS) must be a positive number or auto, got '{value}'" in result.stderr
