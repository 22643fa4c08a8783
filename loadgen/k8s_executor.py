"""One sweep step as a k6-operator TestRun: create, watch, stop, collect, delete.

The Kubernetes side of `python -m loadgen sweep --executor k8s` (Sweep.step_runner): the step's script and
config go into a ConfigMap, the step into a TestRun (loadgen.kubernetes.testrun: `parallelism`
from the step's users), and this module polls the TestRun's stage until k6-operator says
`finished` or `error`. The sweep's memory watchdog is polled between reads: a reason from it
deletes the TestRun at once (k6-operator then ends its runner pods). After the step each runner
pod's log, where k6 writes one JSON line per request, is saved as step-<n>-requests-<pod>.jsonl
and the records are merged for the sweep's own steady-window and SLO judgement; the ready
replicas of the serving Deployment are read once per step, so a report can give users per replica.

The API is spoken directly with `requests` (no Kubernetes client library): in a pod, through the
service-account token; outside, through `kubectl proxy` (KUBE_API_URL, default 127.0.0.1:8001).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from loadgen.k6_runner import SCRIPT, StepRun, StepSpec, parse_records, step_config
from loadgen.kubernetes import USERS_PER_RUNNER, testrun

TESTRUNS = "/apis/k6.io/v1alpha1/namespaces/{ns}/testruns"
CONFIGMAPS = "/api/v1/namespaces/{ns}/configmaps"
PODS = "/api/v1/namespaces/{ns}/pods"
DEPLOYMENTS = "/apis/apps/v1/namespaces/{ns}/deployments"
DONE_STAGES = ("finished", "error")
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(RuntimeError):
    pass


class KubeApi:
    """The few calls a step needs, against one namespace."""

    def __init__(self, base_url: str, namespace: str, token: str | None = None, verify: bool | str = True,
                 timeout_s: float = 10.0) -> None:
        self.base = base_url.rstrip("/")
        self.ns = namespace
        self.session = requests.Session()
        self.session.verify = verify
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout_s = timeout_s

    @classmethod
    def from_environment(cls, namespace: str | None = None) -> KubeApi:
        """In a pod: the API server and the pod's service account; else KUBE_API_URL (kubectl proxy)."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if host and port and (SERVICE_ACCOUNT / "token").exists():
            ns = namespace or (SERVICE_ACCOUNT / "namespace").read_text().strip()
            return cls(f"https://{host}:{port}", ns, (SERVICE_ACCOUNT / "token").read_text().strip(),
                       verify=str(SERVICE_ACCOUNT / "ca.crt"))
        return cls(os.environ.get("KUBE_API_URL", "http://127.0.0.1:8001"), namespace or "default")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              ok: tuple[int, ...] = (200, 201, 202)) -> requests.Response:
        response = self.session.request(method, self.base + path.format(ns=self.ns), json=body, timeout=self.timeout_s)
        if response.status_code not in ok:
            raise KubeError(f"{method} {path.format(ns=self.ns)}: HTTP {response.status_code} {response.text[:300]}")
        return response

    def apply_configmap(self, name: str, data: dict[str, str]) -> None:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
        if self._call("POST", CONFIGMAPS, body, ok=(200, 201, 409)).status_code == 409:
            self._call("PUT", f"{CONFIGMAPS}/{name}", body)

    def create_testrun(self, obj: dict[str, Any]) -> None:
        self._call("POST", TESTRUNS, obj)

    def testrun_stage(self, name: str) -> str:
        status: dict[str, Any] = self._call("GET", f"{TESTRUNS}/{name}").json().get("status") or {}
        return str(status.get("stage", ""))

    def delete_testrun(self, name: str) -> None:
        self._call("DELETE", f"{TESTRUNS}/{name}", ok=(200, 202, 404))

    def runner_pods(self, testrun_name: str) -> list[str]:
        # k6-operator labels a TestRun's runner pods k6_cr=<name>, runner=true.
        items = self._call("GET", f"{PODS}?labelSelector=k6_cr%3D{testrun_name},runner%3Dtrue").json()["items"]
        return sorted(str(p["metadata"]["name"]) for p in items)

    def pod_log(self, pod: str) -> str:
        return self._call("GET", f"{PODS}/{pod}/log").text

    def ready_replicas(self, label_selector: str) -> int:
        items = self._call("GET", f"{DEPLOYMENTS}?labelSelector={quote(label_selector)}").json()["items"]
        return sum(int((d.get("status") or {}).get("readyReplicas") or 0) for d in items)


@dataclass
class K8sStepRun:
    records: list[dict[str, Any]]
    runners: list[str]  # runner pod names, each with its request file
    parallelism: int
    ready_replicas: int | None
    stage: str
    wall_s: float
    aborted: str | None = None
    request_files: list[Path] = field(default_factory=list)


def run_step_k8s(api: KubeApi, run: str, step: float, users: int, config: dict[str, Any], script: Path,
                 work_dir: Path, *, remote_write_url: str = "", replicas_selector: str | None = None,
                 watchdog: Callable[[], str | None] | None = None, poll_s: float = 2.0,
                 timeout_s: float = 3600.0, per_runner: int = USERS_PER_RUNNER) -> K8sStepRun:
    """Run one step as a TestRun and collect it; the TestRun is deleted whatever happens."""
    work_dir.mkdir(parents=True, exist_ok=True)
    configmap = f"serving-envelope-k6-{run}"
    # The script with the modules beside it that it imports (loadgen/k6/chat-request.js), all mounted at /test.
    scripts = {path.name: path.read_text() for path in sorted(script.parent.glob("*.js"))}
    api.apply_configmap(configmap, {**scripts, f"step-{step:g}.json": json.dumps(config)})
    obj = testrun(run, step, users, script_configmap=configmap, script_file=script.name,
                  remote_write_url=remote_write_url, per_runner=per_runner)
    name = obj["metadata"]["name"]
    started = time.monotonic()
    api.create_testrun(obj)
    stage, aborted = "", None
    try:
        while True:
            if watchdog is not None and (aborted := watchdog()) is not None:
                break
            stage = api.testrun_stage(name)
            if stage in DONE_STAGES:
                break
            if time.monotonic() - started > timeout_s:
                aborted = f"TestRun {name} not finished after {timeout_s:.0f} s (stage {stage or 'none'})"
                break
            time.sleep(poll_s)
        if aborted is not None:
            api.delete_testrun(name)
        runners = api.runner_pods(name)
        records: list[dict[str, Any]] = []
        files = []
        for pod in runners:
            pod_records = parse_records(api.pod_log(pod))
            path = work_dir / f"step-{step:g}-requests-{pod}.jsonl"
            path.write_text("".join(f"{json.dumps(r)}\n" for r in pod_records))
            files.append(path)
            records.extend({**r, "runner": pod} for r in pod_records)
        replicas = api.ready_replicas(replicas_selector) if replicas_selector else None
    finally:
        api.delete_testrun(name)
    return K8sStepRun(records=records, runners=runners, parallelism=obj["spec"]["parallelism"],
                      ready_replicas=replicas, stage=stage, wall_s=time.monotonic() - started, aborted=aborted,
                      request_files=files)


def step_runner(api: KubeApi, *, replicas_selector: str | None = None, poll_s: float = 2.0,
                per_runner: int = USERS_PER_RUNNER) -> Callable[..., StepRun]:
    """A function with loadgen.k6_runner.run_step's signature that runs the step on the cluster, for
    the sweep to call instead (`--executor k8s`): the same records, so the sweep's steady window
    and SLO judgement apply unchanged. What only the cluster knows (runner pods, their request
    files, ready replicas) goes to step-<n>-k8s.json beside them."""

    def run(spec: StepSpec, work_dir: Path, watchdog: Callable[[], str | None] | None = None) -> StepRun:
        config = step_config(spec, "k6-summary.json")  # the runner's own disk; summaries stay there
        result = run_step_k8s(api, spec.run_id, spec.step, spec.vus, config, spec.script or SCRIPT, work_dir,
                              remote_write_url=spec.remote_write_url or "", replicas_selector=replicas_selector,
                              watchdog=watchdog, poll_s=poll_s, per_runner=per_runner)
        (work_dir / f"step-{spec.step:g}-k8s.json").write_text(json.dumps({
            "parallelism": result.parallelism, "runners": result.runners, "stage": result.stage,
            "ready_replicas": result.ready_replicas, "request_files": [p.name for p in result.request_files],
        }, indent=1))
        return StepRun(records=result.records, summary=None, exit_code=0 if result.stage == "finished" else 1,
                       wall_s=result.wall_s, k6_cpu_s=0.0, aborted=result.aborted,
                       stderr_tail=[] if result.stage == "finished" else [f"TestRun stage {result.stage or 'none'}"],
                       ready_replicas=result.ready_replicas)

    return run
