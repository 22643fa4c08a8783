"""What k6-operator does with a step, simulated here with two local k6 processes and no cluster.

The operator runs `parallelism` k6 runners, each with `--execution-segment` i/n:(i+1)/n of the
same script and the tag instance_id=i, and does not aggregate their results. With k6's trends
pushed as native histograms (loadgen.kubernetes.testrun sets K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM),
Prometheus adds the runners up: this test checks that nothing is lost or counted twice against
the requests a local target actually served, that one p95 comes out of both runners, and that the
Kubernetes rendering of the load-test dashboard reads it.

The Prometheus is the same Debian binary as native mode's, started privately with the flags of
compose/kubernetes/kube-prometheus-stack-values.yaml (remote-write receiver, native histograms):
native mode's own Prometheus runs without native histograms and rejects such a write whole (the
second test shows it), so it is left alone.
"""

from __future__ import annotations

import http.server
import math
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from loadgen import kubernetes
from loadgen.k6_runner import k6_binary
from loadgen.procs import free_port, running

SCRIPT = """
import http from 'k6/http';
import { sleep } from 'k6';
export const options = { scenarios: { step: { executor: 'constant-vus', vus: 4, duration: '5s' } } };
export default function () { http.get(__ENV.TARGET); sleep(0.05); }
"""
RUNNERS = 2


class _Counter(http.server.BaseHTTPRequestHandler):
    served = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with _Counter.lock:
            _Counter.served += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def target() -> Iterator[str]:
    _Counter.served = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Counter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def prometheus(tmp_path: Path, *flags: str) -> tuple[list[str], str]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 5s}\n")
    command = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
               f"--web.listen-address=127.0.0.1:{port}", "--web.enable-remote-write-receiver", *flags]
    return command, f"http://127.0.0.1:{port}"


def run_runners(tmp_path: Path, target: str, write_url: str, runners: int = RUNNERS) -> None:
    script = tmp_path / "step.js"
    script.write_text(SCRIPT)
    sequence = ",".join(["0", *(f"{i}/{runners}" for i in range(1, runners)), "1"])
    procs = []
    for i in range(runners):
        segment = f"{'0' if i == 0 else f'{i}/{runners}'}:{'1' if i == runners - 1 else f'{i + 1}/{runners}'}"
        env = {"PATH": "/usr/bin:/bin", "TARGET": target, "K6_PROMETHEUS_RW_SERVER_URL": write_url,
               "K6_PROMETHEUS_RW_TREND_AS_NATIVE_HISTOGRAM": "true", "K6_PROMETHEUS_RW_PUSH_INTERVAL": "1s"}
        command = [str(k6_binary()), "run", "--quiet", "--no-usage-report", "--address", f"127.0.0.1:{free_port()}",
                   "-o", "experimental-prometheus-rw", "--execution-segment", segment,
                   "--execution-segment-sequence", sequence, "--tag", f"instance_id={i}", "--tag", "run=segments",
                   str(script)]
        log = (tmp_path / f"k6-{i}.log").open("wb")
        procs.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for i, (process, log) in enumerate(procs):
        code = process.wait(timeout=60)
        log.close()
        assert code == 0, (tmp_path / f"k6-{i}.log").read_text()


def query(base: str, expr: str) -> dict[str, float]:
    result = requests.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()["data"]["result"]
    return {",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1]) for r in result}


def test_two_runners_add_up_in_prometheus_nothing_lost_or_doubled(tmp_path: Path, target: str) -> None:
    command, base = prometheus(tmp_path, "--enable-feature=native-histograms")
    with running(command, {"PATH": "/usr/bin:/bin"}, tmp_path / "prometheus.log", f"{base}/-/ready", 60,
                 "prometheus"):
        run_runners(tmp_path, target, f"{base}/api/v1/write")
        served = _Counter.served
        assert served > 20
        per_runner = query(base, 'sum by (instance_id) (k6_http_reqs_total{run="segments"})')
        assert set(per_runner) == {f"instance_id={i}" for i in range(RUNNERS)}
        assert sum(per_runner.values()) == served  # every request once: none lost, none twice
        # The step's 4 users split over the runners (2 + 2), not 4 each.
        assert query(base, 'max by (instance_id) (k6_vus{run="segments"})') == {
            f"instance_id={i}": 4 / RUNNERS for i in range(RUNNERS)}
        # The runners' latency histograms add up to one distribution of every request ...
        assert query(base, 'sum(histogram_count(k6_http_req_duration_seconds{run="segments"}))') == {"": served}
        # ... from which one p95 for the whole step comes (per-runner p95 gauges could not be combined).
        p95 = query(base, 'histogram_quantile(0.95, sum(k6_http_req_duration_seconds{run="segments"}))')[""]
        assert math.isfinite(p95) and 0 < p95 < 5
        # The Kubernetes rendering of the load-test dashboard reads exactly these series.
        rendered = kubernetes.OUT_DIR / "production-stack" / "dashboards.yaml"
        dashboard = kubernetes.dashboards_json(rendered.read_text())
        exprs = [t["expr"] for p in dashboard["load-test"]["panels"] for t in p.get("targets", [])
                 if "histogram_quantile" in t["expr"]]
        assert len(exprs) == 6
        for expr in exprs:
            filled = expr.replace("$run", "segments").replace("$step", ".*").replace("$__rate_interval", "1m")
            (value,) = query(base, filled).values()
            assert math.isfinite(value) and 0 < value < 5, expr


def test_without_native_histograms_prometheus_rejects_the_runners_writes(tmp_path: Path, target: str) -> None:
    """Why kube-prometheus-stack-values.yaml turns native histograms on: a write that carries one is
    refused whole, counters included."""
    command, base = prometheus(tmp_path)
    with running(command, {"PATH": "/usr/bin:/bin"}, tmp_path / "prometheus.log", f"{base}/-/ready", 60,
                 "prometheus"):
        run_runners(tmp_path, target, f"{base}/api/v1/write", runners=1)
        assert _Counter.served > 0
        assert query(base, "sum(k6_http_reqs_total)") == {}
    assert "native histograms are disabled" in (tmp_path / "prometheus.log").read_text()
