"""The default alert receiver (scripts/alert_webhook.py), as a process and in-process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from loadgen import alert_webhook, native_stack
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
NOTIFICATION = {
    "version": "4", "status": "firing", "receiver": "webhook", "groupKey": "{}:{alertname=\"X\"}",
    "alerts": [{"status": "firing", "labels": {"alertname": "X", "severity": "warning"},
                "annotations": {"summary": "s"}, "startsAt": "2026-01-01T00:00:00Z"}],
}


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []
    with alert_webhook.running("127.0.0.1", 0, got.append) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}", got


def test_accepts_an_alertmanager_notification(receiver: tuple[str, list[dict[str, Any]]]) -> None:
    url, got = receiver
    assert requests.post(f"{url}/alerts", json=NOTIFICATION, timeout=5).status_code == 200
    assert got == [NOTIFICATION]
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("body", [b"not json", b'{"status": "firing"}', b"[1, 2]"])
def test_rejects_what_is_not_a_notification(receiver: tuple[str, list[dict[str, Any]]], body: bytes) -> None:
    url, got = receiver
    response = requests.post(f"{url}/alerts", data=body, timeout=5)
    assert response.status_code == 400
    assert response.text.startswith("error: ") and response.text.count("\n") == 1
    assert got == []


def test_process_prints_one_json_line_per_notification() -> None:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "alert_webhook.py"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stderr is not None
        listening = process.stderr.readline()  # "alert-webhook listening on HOST:PORT"
        port = int(listening.rsplit(":", 1)[1])
        assert requests.post(f"http://127.0.0.1:{port}/alerts", json=NOTIFICATION, timeout=5).status_code == 200
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    logged = json.loads(lines[0])
    assert logged.pop("received").endswith("Z")
    assert logged == NOTIFICATION


def test_process_reports_a_busy_port_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "alert_webhook.py"), "--port", str(port)],
            capture_output=True, text=True, timeout=15, check=False,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert result.stderr.count("\n") == 1


@pytest.mark.stack
def test_native_alertmanager_delivers_to_the_webhook_log(stack: Stack) -> None:
    """Native mode's wiring: the live Alertmanager's default route ends in var/log/alert-webhook.log."""
    marker = f"delivery-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    alert = {"labels": {"alertname": "AlertWebhookDeliveryTest", "severity": "none", "test_run": marker},
             "annotations": {"summary": "Test alert from tests/test_alerts_webhook.py."},
             "startsAt": now.isoformat(), "endsAt": (now + timedelta(seconds=30)).isoformat()}
    response = requests.post(f"{stack.alertmanager}/api/v2/alerts", json=[alert], timeout=10)
    assert response.status_code == 200, response.text
    log = native_stack.log_file("alert-webhook")
    deadline = time.monotonic() + 30  # group_wait is 5 s
    while time.monotonic() < deadline:
        delivered = [json.loads(line) for line in log.read_text().splitlines()
                     if marker in line and line.startswith("{")]
        if delivered:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the alert did not reach {log} within 30 s")
    labels = delivered[0]["alerts"][0]["labels"]
    assert labels["test_run"] == marker and delivered[0]["receiver"] == "webhook"
