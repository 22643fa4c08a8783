"""A sweep step's TestRun lifecycle (loadgen.k8s_executor) against a local fake Kubernetes API server.

The fake keeps ConfigMaps and TestRuns in memory, moves a TestRun through k6-operator's stages
(created, started, finished) on successive reads, serves one runner pod per `parallelism` whose
log holds k6's JSON request lines, and a Deployment with ready replicas. Every request it gets is
recorded, so the tests can say what was created, read and deleted.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import pytest

from loadgen import k8s_executor, workload
from loadgen.k6_runner import StepRun, StepSpec, step_config
from loadgen.k8s_executor import KubeApi, run_step_k8s
from loadgen.plan import parse_plan
from loadgen.results import load_run
from loadgen.settings import ROOT
from tests.support.stack import Stack

SCHEMA = json.loads((ROOT / "tests" / "data" / "kubernetes-schemas" / "testrun_v1alpha1.json").read_text())
STAGES = ("created", "started", "started", "finished")


@dataclass
class FakeCluster:
    configmaps: dict[str, dict[str, Any]] = field(default_factory=dict)
    testruns: dict[str, dict[str, Any]] = field(default_factory=dict)
    reads: dict[str, int] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    created: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    # What a runner pod's log holds: by default three bare lines; a sweep test asks for k6-shaped records.
    pod_log: Callable[[FakeCluster, str], list[str]] | None = None


def handler(cluster: FakeCluster) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, code: int, body: Any) -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            data: dict[str, Any] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            return data

        def do_POST(self) -> None:
            cluster.calls.append(f"POST {self.path}")
            body = self._body()
            name = body["metadata"]["name"]
            if self.path.endswith("/configmaps"):
                if name in cluster.configmaps:
                    return self._send(409, {"reason": "AlreadyExists"})
                cluster.configmaps[name] = body
            else:
                cluster.testruns[name] = body
                cluster.created.append(body)
                cluster.reads[name] = 0
            self._send(201, body)

        def do_PUT(self) -> None:
            cluster.calls.append(f"PUT {self.path}")
            body = self._body()
            cluster.configmaps[body["metadata"]["name"]] = body
            self._send(200, body)

        def do_DELETE(self) -> None:
            cluster.calls.append(f"DELETE {self.path}")
            name = self.path.rsplit("/", 1)[1]
            if cluster.testruns.pop(name, None) is None:
                return self._send(404, {"reason": "NotFound"})
            cluster.deleted.append(name)
            self._send(200, {})

        def do_GET(self) -> None:
            cluster.calls.append(f"GET {self.path}")
            url = urlparse(self.path)
            if "/testruns/" in url.path:
                name = url.path.rsplit("/", 1)[1]
                if name not in cluster.testruns:
                    return self._send(404, {})
                stage = STAGES[min(cluster.reads[name], len(STAGES) - 1)]
                cluster.reads[name] += 1
                return self._send(200, {**cluster.testruns[name], "status": {"stage": stage}})
            if url.path.endswith("/log"):
                pod = url.path.split("/")[-2]
                if cluster.pod_log is not None:
                    return self._send(200, "\n".join(cluster.pod_log(cluster, pod)))
                index = int(pod.rsplit("-", 1)[1])
                lines = ["k6 starting", *(json.dumps({"vu": vu, "runner_index": index, "ok": True})
                                         for vu in range(3)), '{"cut']
                return self._send(200, "\n".join(lines))
            if url.path.endswith("/pods"):
                selector = parse_qs(url.query)["labelSelector"][0]
                name = dict(kv.split("=") for kv in selector.split(","))["k6_cr"]
                run = next((t for t in cluster.created if t["metadata"]["name"] == name), None)
                count = run["spec"]["parallelism"] if run else 0
                return self._send(200, {"items": [{"metadata": {"name": f"{name}-{i}"}} for i in range(1, count + 1)]})
            if url.path.endswith("/deployments"):
                return self._send(200, {"items": [{"status": {"readyReplicas": 3}}, {"status": {}}]})
            self._send(404, {})

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def cluster() -> Iterator[tuple[FakeCluster, KubeApi]]:
    state = FakeCluster()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, KubeApi(f"http://127.0.0.1:{server.server_address[1]}", "llm")
    finally:
        server.shutdown()
        server.server_close()


def test_a_step_creates_watches_collects_and_deletes_its_testrun(
        cluster: tuple[FakeCluster, KubeApi], tmp_path: Path) -> None:
    state, api = cluster
    script = ROOT / "loadgen" / "k6" / "chat-stream.js"
    result = run_step_k8s(api, "r1", 2, 40, {"vus": 40, "duration_s": 30}, script, tmp_path,
                          replicas_selector="app.kubernetes.io/component=serving-engine", poll_s=0)
    created = state.created[0]
    jsonschema.validate(created, SCHEMA)
    assert created["spec"]["parallelism"] == result.parallelism == 2
    assert created["spec"]["script"]["configMap"] == {"name": "serving-envelope-k6-r1", "file": "chat-stream.js"}
    data = state.configmaps["serving-envelope-k6-r1"]["data"]
    assert data["chat-stream.js"] == script.read_text() and json.loads(data["step-2.json"])["vus"] == 40
    assert data["chat-request.js"] == (script.parent / "chat-request.js").read_text()  # the module the script imports
    assert result.stage == "finished" and result.aborted is None
    # One request file per runner pod, named by the pod; the records merged, each naming its runner.
    assert [p.name for p in result.request_files] == [
        "step-2-requests-serving-envelope-r1-step-2-1.jsonl", "step-2-requests-serving-envelope-r1-step-2-2.jsonl"]
    assert all(len(p.read_text().splitlines()) == 3 for p in result.request_files)
    assert len(result.records) == 6 and {r["runner"] for r in result.records} == set(result.runners)
    assert result.ready_replicas == 3
    assert state.deleted == ["serving-envelope-r1-step-2"] and state.testruns == {}


def test_the_next_step_updates_the_configmap(cluster: tuple[FakeCluster, KubeApi], tmp_path: Path) -> None:
    state, api = cluster
    script = ROOT / "loadgen" / "k6" / "chat-stream.js"
    for step, users in ((1, 8), (2, 64)):
        run_step_k8s(api, "r2", step, users, {"vus": users}, script, tmp_path, poll_s=0)
    assert any(c.startswith("PUT ") and c.endswith("/configmaps/serving-envelope-k6-r2") for c in state.calls)
    assert [t["spec"]["parallelism"] for t in state.created] == [1, 2]


def test_the_watchdog_deletes_the_testrun_at_once(cluster: tuple[FakeCluster, KubeApi], tmp_path: Path) -> None:
    state, api = cluster
    polls = iter([None, "host memory below the floor"])
    result = run_step_k8s(api, "r3", 1, 16, {"vus": 16}, ROOT / "loadgen" / "k6" / "chat-stream.js", tmp_path,
                          watchdog=lambda: next(polls), poll_s=0)
    assert result.aborted == "host memory below the floor"
    assert result.stage == "created"  # read once, never finished
    assert state.deleted == ["serving-envelope-r3-step-1"]
    assert result.ready_replicas is None


def test_api_errors_name_the_call(cluster: tuple[FakeCluster, KubeApi]) -> None:
    _, api = cluster
    message = "GET /apis/k6.io/v1alpha1/namespaces/llm/testruns/nope: HTTP 404"
    with pytest.raises(k8s_executor.KubeError, match=re.escape(message)):
        api.testrun_stage("nope")


def test_step_runner_has_run_steps_shape_for_the_sweep(cluster: tuple[FakeCluster, KubeApi], tmp_path: Path) -> None:
    state, api = cluster
    # A closed-loop request mix's draws travel in the step's config, as they do to a local k6.
    mix_plan = parse_plan({"steps": [48], "mix": {"prompt_words": {"dist": "lognormal", "mean": 30, "cv": 0.5},
                                                  "output_tokens": 64, "turns": 2}}, "plan.yaml")
    mix, _ = workload.closed_loop_settings(mix_plan, "20261201-171244-default")
    spec = StepSpec(run_id="20261201-171244-default", step=48, vus=48, duration_s=30, target="http://collector:8000",
                    model="qwen3-8b", prompt_words=100, max_tokens=64, ignore_eos=True, request_timeout_s=60,
                    remote_write_url="http://prometheus:9090/api/v1/write", extra=mix)
    run = k8s_executor.step_runner(api, replicas_selector="app=vllm", poll_s=0)(spec, tmp_path, None)
    assert isinstance(run, StepRun) and run.exit_code == 0 and len(run.records) == 6
    config = json.loads(state.configmaps["serving-envelope-k6-20261201-171244-default"]["data"]["step-48.json"])
    assert config == step_config(spec, "k6-summary.json")
    assert len(config["mix_rows"]) == workload.CLOSED_ROWS and {r[2] for r in config["mix_rows"]} == {2}
    env = {e["name"]: e["value"] for e in state.created[0]["spec"]["runner"]["env"]}
    assert env["K6_PROMETHEUS_RW_SERVER_URL"] == spec.remote_write_url
    assert env["LOADGEN_STEP_CONFIG"] == "/test/step-48.json"
    side = json.loads((tmp_path / "step-48-k8s.json").read_text())
    assert side["parallelism"] == 2 and side["ready_replicas"] == 3 and len(side["request_files"]) == 2


def test_a_rate_step_gets_a_valid_name(cluster: tuple[FakeCluster, KubeApi], tmp_path: Path) -> None:
    state, api = cluster
    spec = StepSpec(run_id="r5", step=2.5, vus=20, duration_s=30, target="t", model="m", prompt_words=1,
                    max_tokens=1, ignore_eos=True, request_timeout_s=60, remote_write_url=None)
    k8s_executor.step_runner(api, poll_s=0)(spec, tmp_path)
    assert state.created[0]["metadata"]["name"] == "serving-envelope-r5-step-2-5"
    assert state.created[0]["metadata"]["labels"]["serving-envelope/step"] == "2.5"


def k6_records(cluster: FakeCluster, pod: str) -> list[str]:
    """One runner's k6 request lines over the step just run: each of its users one 64-token request every
    0.5 s, ending now (the fake finishes a TestRun after a few reads)."""
    config = next(json.loads(v) for cm in cluster.configmaps.values() for k, v in cm["data"].items()
                  if k.startswith("step-"))
    runners = cluster.created[-1]["spec"]["parallelism"]
    index = int(pod.rsplit("-", 1)[1])
    users = [vu for vu in range(1, config["vus"] + 1) if vu % runners == index % runners]
    now_ms = time.time() * 1000
    return [json.dumps({"step": config["step"], "vu": vu, "start_ms": now_ms - config["duration_s"] * 1000 + 500 * i,
                        "ttft_ms": 50.0, "total_ms": 400.0, "status": 200, "output_tokens": 64, "prompt_tokens": 12,
                        "error": ""})
            for vu in users for i in range(int(config["duration_s"] * 2) - 1)]


@pytest.mark.stack
def test_a_sweep_with_executor_k8s_runs_each_step_as_a_testrun(cluster: tuple[FakeCluster, KubeApi],
                                                               tmp_path: Path, stack: Stack) -> None:
    """`python -m loadgen sweep --executor k8s`: the live collector is probed as always, each step becomes a
    TestRun on the (fake) cluster, the runner pods' records are judged here and the report names the executor."""
    state, api = cluster
    state.pod_log = k6_records
    env = {**os.environ, "KUBE_API_URL": api.base}
    result = subprocess.run(
        [sys.executable, "-m", "loadgen", "sweep", "--executor", "k8s", "--k8s-namespace", "llm",
         "--k8s-replicas-selector", "app=vllm", "--plan", "capstone", "--steps", "4", "--no-search",
         "--warmup-s", "1", "--steady-s", "4", "--no-panels", "--no-remote-write",
         "--target", stack.collector, "--prometheus", stack.prometheus, "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [t["spec"]["parallelism"] for t in state.created] == [1]
    run = next(tmp_path.glob("*-capstone"))
    results = load_run(run)
    step = results["steps"][0]
    assert step["status"] == "done" and (step.get("client") or {}).get("requests", 0) >= 4, step.get("client")
    assert any("k6-operator TestRuns in namespace llm" in note for note in results["notes"])
    assert (run / "raw" / "step-4-k8s.json").exists() and step.get("replicas") == 3
    assert "| 4 | 3 / 1.3 |" in (run / "report.md").read_text()  # ready replicas and users per replica
    # a rate plan is refused before any load, in one line
    refused = subprocess.run([sys.executable, "-m", "loadgen", "sweep", "--executor", "k8s", "--plan", "rate-native",
                              "--target", stack.collector], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and refused.stderr.strip().startswith("error: --executor k8s: runs closed-loop")
    assert state.created[1:] == []
