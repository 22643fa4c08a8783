"""COLLECTOR_WORKERS > 1: several processes share the port (SO_REUSEPORT) and /metrics, whichever
worker answers it, sums every worker's samples; process series carry one `pid` label per worker."""

from __future__ import annotations

import psutil
import requests

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
