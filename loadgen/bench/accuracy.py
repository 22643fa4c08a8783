"""Accuracy of the loadgen sweep against `vllm bench serve`, side by side on the same server.

Same target, same prompt and output lengths (ignore_eos), repeated rounds. Two methods:

* together (default): both tools load the server AT THE SAME TIME, each with half the concurrency, and
  both are measured over the same window (loadgen's steady window): each tool's own output tok/s and
  p50 TTFT of its requests that started in the window. The server's conditions are identical for both,
  so only the measurement differs, whatever else the machine is doing. vllm bench's per-request
  records (--save-detailed: start times, TTFTs, latencies, output lengths) are cut to that window with
  the same code loadgen uses for its own records. vLLM's counter over the window checks the sum.
* interleaved: ours, then vllm bench, alternating, each with the full concurrency; each tool's own
  figures (loadgen: steady window; vllm bench: its whole run, ramp-up and tail included). Fair only on
  a quiet machine: run-to-run drift of the server lands in the comparison.

    .venv/bin/python scripts/bench_accuracy.py [--mode together|interleaved] [--concurrency 8] [--rounds 3]

Targets: aggregate output tok/s within 3%, p50 TTFT within 5% (or 2 ms). Note: vllm bench times TTFT
with a Python asyncio client, loadgen with k6 (Go); on a CPU-starved box a client's own scheduling delay
is part of what it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loadgen.bench.counters import generation_tokens
from loadgen.bench.peer_tools import VLLM_BENCH_SNIPPET
from loadgen.results import Step, load_run
from loadgen.settings import ROOT, VLLM_PYTHON, read_settings, service_url
from loadgen.stats import client_step_stats


@dataclass
class Measure:
    tool: str
    round: int
    tok_s: float
    ttft_p50_s: float | None
    counter_tok_s: float | None
    requests: int
    prompt_tokens: float | None
    ttft_mean_s: float | None = None
    collector_ttft_p50_s: float | None = None  # the proxy's histogram over the same window (both tools' requests)


def mean_ttft(records: list[dict[str, Any]], start: float, end: float) -> float | None:
    ttfts = [r["ttft_ms"] / 1000 for r in records if start <= r["start_ms"] / 1000 < end and not r.get("error")]
    return statistics.mean(ttfts) if ttfts else None


def our_records(results_dir: Path, concurrency: int) -> list[dict[str, Any]]:
    path = results_dir / "raw" / f"step-{concurrency}-requests.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def loadgen_step(args: argparse.Namespace, concurrency: int, tag: str, work: Path) -> tuple[Path, Step]:
    """One closed-loop loadgen step (the product's own command): its run folder and the step from its
    results.json."""
    plan = {"name": f"bench-accuracy-{tag}", "steps": [concurrency]}
    run_dir = run_one_step_plan(plan, args, tag, work)
    return run_dir, load_run(run_dir)["steps"][0]


def run_one_step_plan(plan: dict[str, Any], args: argparse.Namespace, tag: str, work: Path) -> Path:
    """`python -m loadgen sweep` (the product's own command) on a one-step plan with the benchmark's lengths
    and windows, no knee search and no early stop; returns its run folder."""
    plan = {**plan, "profile": {"prompt_words": args.prompt_words, "max_tokens": args.output_len},
            "search": {"enabled": False}, "warmup_s": args.warmup_s, "steady_s": args.steady_s,
            "max_steady_s": args.steady_s, "stop": {"slo_broken_steps": 3, "error_ratio": 1.0}}
    path = work / f"plan-{tag}.yaml"
    path.write_text(yaml.safe_dump(plan))
    out = subprocess.run([sys.executable, "-m", "loadgen", "sweep", "--plan", str(path), "--target", args.target,
                          "--out", str(work / "runs"), "--no-panels"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    match = re.search(r"run folder: (\S+)", out.stderr)
    if out.returncode != 0 or not match:
        raise SystemExit(f"loadgen sweep failed ({out.returncode}): {out.stderr[-800:]}")
    return Path(match.group(1))


def vllm_bench_command(args: argparse.Namespace, concurrency: int, prompts: int, input_len: int, work: Path,
                       name: str, seed: int) -> list[str]:
    return [str(VLLM_PYTHON), "-c", VLLM_BENCH_SNIPPET, "--backend", "openai-chat", "--base-url", args.target,
            "--endpoint", "/v1/chat/completions", "--model", args.model, "--tokenizer", str(args.tokenizer),
            "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len",
            str(args.output_len), "--num-prompts", str(prompts), "--max-concurrency", str(concurrency),
            "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-result", "--save-detailed",
            "--result-dir", str(work), "--result-filename", name, "--disable-tqdm", "--seed", str(seed)]


def vllm_bench_records(result: dict[str, Any]) -> list[dict[str, Any]]:
    """vllm bench's per-request details as loadgen records (epoch ms). Its start times come from
    time.perf_counter(), the system-wide monotonic clock, so this process maps them to epoch time."""
    offset = time.time() - time.perf_counter()
    records = []
    # vLLM 0.26's detailed result has no "latencies": a stream's latency is its TTFT plus its inter-token gaps.
    latencies = result.get("latencies") or [(ttft or 0) + sum(itl or []) for ttft, itl in
                                            zip(result["ttfts"], result["itls"], strict=True)]
    errors = result.get("errors") or [""] * len(result["ttfts"])
    for start, ttft, latency, tokens, error in zip(result["start_times"], result["ttfts"], latencies,
                                                   result["output_lens"], errors, strict=True):
        records.append({"start_ms": (start + offset) * 1000, "ttft_ms": (ttft or 0) * 1000,
                        "total_ms": (latency or 0) * 1000, "output_tokens": tokens or 0,
                        "prompt_tokens": 0, "error": "error" if error else ""})
    return records


def round_together(args: argparse.Namespace, round_no: int, work: Path, input_len: int,
                   per_request_s: float) -> list[Measure]:
    half = max(1, args.concurrency // 2)
    # vllm bench must outlast loadgen's step: its start-up, the step, and the step's tail.
    span = 25 + args.warmup_s + args.steady_s + 2 * per_request_s
    # Twice the estimate: under contention requests slow down; the surplus only lengthens vllm bench's tail.
    prompts = half * max(8, 2 * int(span / max(per_request_s, 0.1)) + 4)
    name = f"vllm-bench-together-{round_no}.json"
    bench = subprocess.Popen(vllm_bench_command(args, half, prompts, input_len, work, name, round_no), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1"))
    assert bench.stdout is not None
    log = []
    # vllm bench imports vLLM, loads the tokenizer and builds its prompts first: start ours once it loads.
    for line in bench.stdout:
        log.append(line)
        if line.startswith("Starting main benchmark run"):
            break
    time.sleep(3)
    run_dir, step = loadgen_step(args, half, f"together-{round_no}", work)
    rest, _ = bench.communicate(timeout=1800)
    if bench.returncode != 0:
        raise SystemExit(f"vllm bench serve failed: {(''.join(log) + rest)[-800:]}")
    start, end = step["steady_start"], step["steady_end"]
    records = vllm_bench_records(json.loads((work / name).read_text()))
    theirs = client_step_stats(records, start, end, half)
    if min(r["start_ms"] for r in records) / 1000 > start or max(
            (r["start_ms"] + r["total_ms"]) / 1000 for r in records) < end:
        print(f"round {round_no}: vllm bench did not cover loadgen's whole window: its figures are partial",
              file=sys.stderr)
    counter = (step.get("throughput_check") or {}).get("vllm_tok_s")
    collector = ((step.get("server") or {}).get("collector") or {}).get("ttft_p50_s")
    mine = our_records(run_dir, half)
    return [
        Measure("loadgen (k6)", round_no, step["client"]["output_tok_s"], step["client"]["ttft_p50_s"], counter,
                step["client"]["requests"], step["client"]["prompt_tokens_per_request"],
                mean_ttft(mine, start, end), collector),
        Measure("vllm bench serve", round_no, theirs["output_tok_s"], theirs["ttft_p50_s"], counter,
                theirs["requests"], float(input_len), mean_ttft(records, start, end), collector),
    ]


def round_interleaved(args: argparse.Namespace, round_no: int, work: Path, input_len: int) -> list[Measure]:
    def ours() -> Measure:
        _, step = loadgen_step(args, args.concurrency, f"interleaved-{round_no}", work)
        check = step.get("throughput_check") or {}
        return Measure("loadgen (k6)", round_no, step["client"]["output_tok_s"], step["client"]["ttft_p50_s"],
                       check.get("vllm_tok_s"), step["client"]["requests"], step["client"]["prompt_tokens_per_request"])

    def theirs() -> Measure:
        name = f"vllm-bench-{round_no}.json"
        before = generation_tokens(args.vllm)
        out = subprocess.run(vllm_bench_command(args, args.concurrency, args.concurrency * args.requests_per_user,
                                                input_len, work, name, round_no),
                             cwd=ROOT, capture_output=True, text=True, timeout=1800,
                             env=dict(os.environ, HF_HUB_OFFLINE="1"))
        after = generation_tokens(args.vllm)
        if out.returncode != 0:
            raise SystemExit(f"vllm bench serve failed: {out.stderr[-800:]}")
        result = json.loads((work / name).read_text())
        return Measure("vllm bench serve", round_no, float(result["output_throughput"]),
                       float(result["median_ttft_ms"]) / 1000, (after - before) / float(result["duration"]),
                       int(result["completed"]), float(result["total_input_tokens"]) / max(1, int(result["completed"])))

    first, second = (ours, theirs) if round_no % 2 else (theirs, ours)
    return [first(), second()]


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def table(measures: list[Measure], together: bool) -> str:
    counter_label = "vLLM ctr (both)" if together else "vLLM ctr tok/s"
    lines = [f"{'tool':<18} {'round':>5} {'out tok/s':>10} {counter_label:>15} {'p50 TTFT ms':>12} "
             f"{'mean TTFT ms':>13} {'collector p50':>14} {'requests':>9} {'prompt tok':>11}"]
    for m in measures:
        counter = f"{m.counter_tok_s:,.0f}" if m.counter_tok_s is not None else "n/a"
        prompt = f"{m.prompt_tokens:.0f}" if m.prompt_tokens is not None else "n/a"
        ttft = f"{m.ttft_p50_s * 1000:.1f}" if m.ttft_p50_s is not None else "n/a"
        mean = f"{m.ttft_mean_s * 1000:.1f}" if m.ttft_mean_s is not None else "n/a"
        proxy = f"{m.collector_ttft_p50_s * 1000:.1f}" if m.collector_ttft_p50_s is not None else "n/a"
        lines.append(f"{m.tool:<18} {m.round:>5} {m.tok_s:>10,.0f} {counter:>15} {ttft:>12} {mean:>13} {proxy:>14} "
                     f"{m.requests:>9} {prompt:>11}")
    ours = [m for m in measures if m.tool.startswith("loadgen")]
    ref = [m for m in measures if m.tool.startswith("vllm")]
    ratios = [a.tok_s / b.tok_s for a, b in zip(ours, ref, strict=True) if b.tok_s]
    gaps = [a.ttft_p50_s - b.ttft_p50_s for a, b in zip(ours, ref, strict=True)
            if a.ttft_p50_s is not None and b.ttft_p50_s is not None]
    lines.append("")
    if ratios:
        ratio = statistics.median(ratios)
        lines.append(f"aggregate output tok/s, loadgen / vllm bench, per round: {', '.join(f'{r:.3f}' for r in ratios)}"
                     f"; median {ratio:.3f} ({'within' if abs(ratio - 1) <= 0.03 else 'OUTSIDE'} 3%)")
    ttft_ref = _median([m.ttft_p50_s for m in ref])
    if gaps and ttft_ref:
        gap = statistics.median(gaps)
        ok = abs(gap) <= max(0.002, 0.05 * ttft_ref)
        lines.append(f"p50 TTFT, loadgen - vllm bench, per round: {', '.join(f'{g * 1000:+.1f}' for g in gaps)} ms; "
                     f"median {gap * 1000:+.1f} ms ({gap / ttft_ref:+.1%}; {'within' if ok else 'OUTSIDE'} 5% or 2 ms)")
    mean_gaps = [a.ttft_mean_s - b.ttft_mean_s for a, b in zip(ours, ref, strict=True)
                 if a.ttft_mean_s is not None and b.ttft_mean_s is not None]
    if mean_gaps:
        lines.append("mean TTFT, loadgen - vllm bench, per round: "
                     + ", ".join(f"{g * 1000:+.1f}" for g in mean_gaps) + " ms")
    if together:
        closure = [(a.tok_s + b.tok_s) / a.counter_tok_s for a, b in zip(ours, ref, strict=True) if a.counter_tok_s]
        if closure:
            lines.append("both tools' tok/s summed / vLLM's counter over the same window, per round: "
                         + ", ".join(f"{c:.3f}" for c in closure) + " (other traffic on the server raises the counter)")
    else:
        for label, rows in (("loadgen", ours), ("vllm bench", ref)):
            agree = [m.tok_s / m.counter_tok_s for m in rows if m.counter_tok_s]
            if agree:
                lines.append(f"{label} tok/s / vLLM's counter, per round: " + ", ".join(f"{a:.3f}" for a in agree))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings = read_settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("together", "interleaved"), default="together")
    parser.add_argument("--target", default=service_url(settings, "COLLECTOR_PORT"),
                        help="the API both tools load (the collector: its TTFB is TTFT)")
    parser.add_argument("--vllm", default=service_url(settings, "VLLM_PORT"), help="vLLM, for its /metrics")
    parser.add_argument("--model", default=settings.get("NATIVE_SERVED_MODEL_NAME"))
    parser.add_argument("--tokenizer", default=ROOT / "var" / "model", type=Path)
    parser.add_argument("--concurrency", type=int, default=8, help="total streams (together: half per tool)")
    parser.add_argument("--prompt-words", type=int, default=40)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-s", type=float, default=5)
    parser.add_argument("--steady-s", type=float, default=25)
    parser.add_argument("--keep", type=Path, help="keep every run's files in this folder (default: a temp dir)")
    parser.add_argument("--requests-per-user", type=int, default=8,
                        help="interleaved: vllm bench's num-prompts = this x concurrency")
    args = parser.parse_args(argv)
    together = args.mode == "together"
    measures: list[Measure] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # Calibration: our prompt in tokens (vLLM's count) sets vllm bench's random input length, our
        # request time sizes vllm bench's run in the together mode.
        calibration = loadgen_step(args, max(1, args.concurrency // 2) if together else args.concurrency,
                                   "calibration", work)[1]["client"]
        prompt_tokens = calibration["prompt_tokens_per_request"] or args.prompt_words
        input_len = max(1, round(prompt_tokens - 10))  # minus the chat template's share
        per_request_s = calibration["e2e_p50_s"] or 5.0
        print(f"calibration: prompt {prompt_tokens} tokens -> vllm bench --random-input-len {input_len}; "
              f"{per_request_s:.1f} s per request", file=sys.stderr)
        for round_no in range(1, args.rounds + 1):
            found = (round_together(args, round_no, work, input_len, per_request_s) if together
                     else round_interleaved(args, round_no, work, input_len))
            measures += found
            for m in found:
                ttft = f"{m.ttft_p50_s * 1000:.1f} ms" if m.ttft_p50_s is not None else "n/a"
                print(f"round {round_no}: {m.tool}: {m.tok_s:,.0f} tok/s, p50 TTFT {ttft}", file=sys.stderr)
    load_after = os.getloadavg()
    half = f"{args.concurrency // 2} streams each, at the same time" if together else f"{args.concurrency} streams"
    print(f"mode {args.mode}: target {args.target}, {half}, ~{args.prompt_words} prompt words, {args.output_len} "
          f"output tokens (ignore_eos), {args.rounds} rounds")
    print(f"host load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} "
          "cores\n")
    print(table(measures, together))
    return 0


if __name__ == "__main__":
    sys.exit(main())
