"""Open-loop accuracy: a loadgen rate step against `vllm bench serve --request-rate` at the same rate and lengths.

    .venv/bin/python scripts/bench_rate_accuracy.py [--rate 4] [--arrivals constant,poisson] [--rounds 2]

Interleaved rounds on the same target (loadgen first, then vllm bench, then the next round), each tool with
its own figure: loadgen's output tok/s over its steady window, vllm bench's `output_throughput` (its
output tokens over its whole run), and vLLM's own counter over each run beside both. Same lengths: ignore_eos
and the same output length; vllm bench's random input length is set from the prompt tokens vLLM counted for
loadgen's requests (minus the chat template's ~10 tokens).

Arrivals: `constant` (loadgen's evenly spaced schedule; vllm bench with a huge --burstiness, i.e. gamma gaps
with a coefficient of variation ~0) offers exactly the rate on both sides, so the throughputs compare the
measurement. `poisson` (--burstiness 1 on both sides): each side draws its own arrivals, and the count in a
run of N requests varies by ~1/sqrt(N) on its own; the table shows each side's achieved request rate.
Target: output tok/s within 3%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen.bench.accuracy import run_one_step_plan, vllm_bench_command, vllm_bench_records
from loadgen.bench.counters import generation_tokens
from loadgen.results import RunResults, load_run
from loadgen.settings import ROOT, read_settings, service_url
from loadgen.stats import client_step_stats

NEAR_CONSTANT_BURSTINESS = 1e6  # gamma gaps with coefficient of variation 0.001


@dataclass
class Run:
    tool: str
    arrivals: str
    round: int
    tok_s: float
    req_s: float
    counter_tok_s: float | None
    requests: int
    prompt_tokens: float | None


def loadgen_rate_step(args: argparse.Namespace, arrivals: str, tag: str, work: Path) -> RunResults:
    plan = {"name": f"bench-rate-{tag}", "mode": "rate", "rates": [args.rate],
            "arrival": {"process": arrivals, "seed": args.seed}}
    return load_run(run_one_step_plan(plan, args, tag, work))


def ours(args: argparse.Namespace, arrivals: str, round_no: int, work: Path) -> Run:
    step = loadgen_rate_step(args, arrivals, f"{arrivals}-{round_no}", work)["steps"][0]
    client, rate = step["client"], step["rate"]
    return Run("loadgen (k6)", arrivals, round_no, client["output_tok_s"], rate["completed_ok_req_s"],
               (step.get("throughput_check") or {}).get("vllm_tok_s"), client["requests"],
               client["prompt_tokens_per_request"])


def windowed(result: dict[str, Any], warmup_s: float, steady_s: float) -> tuple[float, float]:
    """vllm bench's own requests (--save-detailed) cut to a window defined as loadgen's is (warm-up after the
    first request, then the steady window) and counted with loadgen's code: (output tok/s, completed req/s)."""
    records = vllm_bench_records(result)
    start = min(r["start_ms"] for r in records) / 1000 + warmup_s
    figures = client_step_stats(records, start, start + steady_s)
    return figures["output_tok_s"], figures["ok"] / steady_s


def theirs(args: argparse.Namespace, arrivals: str, round_no: int, work: Path, input_len: int) -> list[Run]:
    name = f"vllm-bench-{arrivals}-{round_no}.json"
    prompts = max(10, round(args.rate * (args.warmup_s + args.steady_s)))
    command = vllm_bench_command(args, 100_000, prompts, input_len, work, name, args.seed + round_no)
    command += ["--request-rate", f"{args.rate:g}", "--burstiness",
                f"{NEAR_CONSTANT_BURSTINESS if arrivals == 'constant' else 1.0:g}"]
    before = generation_tokens(args.vllm)
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    after = generation_tokens(args.vllm)
    if out.returncode != 0:
        raise SystemExit(f"vllm bench serve failed: {out.stderr[-800:]}")
    result = json.loads((work / name).read_text())
    duration = float(result["duration"])
    prompt = float(result["total_input_tokens"]) / max(1, int(result["completed"]))
    tok_s, req_s = windowed(result, args.warmup_s, args.steady_s)
    return [Run("vllm bench serve", arrivals, round_no, float(result["output_throughput"]),
                float(result["request_throughput"]), (after - before) / duration, int(result["completed"]), prompt),
            Run("vllm bench window", arrivals, round_no, tok_s, req_s, None, int(result["completed"]), prompt)]


def table(runs: list[Run], rate: float) -> str:
    lines = [f"{'tool':<18} {'arrivals':<9} {'round':>5} {'out tok/s':>10} {'vLLM ctr tok/s':>15} "
             f"{'done req/s':>11} {'requests':>9} {'prompt tok':>11}"]
    for r in runs:
        counter = f"{r.counter_tok_s:,.0f}" if r.counter_tok_s is not None else "n/a"
        prompt = f"{r.prompt_tokens:.0f}" if r.prompt_tokens is not None else "n/a"
        lines.append(f"{r.tool:<18} {r.arrivals:<9} {r.round:>5} {r.tok_s:>10,.1f} {counter:>15} {r.req_s:>11.3f} "
                     f"{r.requests:>9} {prompt:>11}")
    lines.append("")
    for arrivals in dict.fromkeys(r.arrivals for r in runs):
        mine = [r for r in runs if r.arrivals == arrivals and r.tool.startswith("loadgen")]
        for tool, label in (("vllm bench serve", "its own output_throughput (whole run)"),
                            ("vllm bench window", "its requests in the same kind of window")):
            ref = [r for r in runs if r.arrivals == arrivals and r.tool == tool]
            ratios = [a.tok_s / b.tok_s for a, b in zip(mine, ref, strict=False) if b.tok_s]
            if ratios:
                ratio = statistics.median(ratios)
                lines.append(f"{arrivals}, {rate:g} req/s: output tok/s, loadgen / vllm bench ({label}), per round: "
                             f"{', '.join(f'{x:.3f}' for x in ratios)}; median {ratio:.3f} "
                             f"({'within' if abs(ratio - 1) <= 0.03 else 'OUTSIDE'} 3%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings = read_settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=service_url(settings, "COLLECTOR_PORT"),
                        help="the API both tools load (the collector: its TTFB is TTFT)")
    parser.add_argument("--vllm", default=service_url(settings, "VLLM_PORT"), help="vLLM, for its /metrics")
    parser.add_argument("--model", default=settings.get("NATIVE_SERVED_MODEL_NAME"))
    parser.add_argument("--tokenizer", default=ROOT / "var" / "model", type=Path)
    parser.add_argument("--rate", type=float, default=4.0, help="requests/s, both tools")
    parser.add_argument("--arrivals", default="constant,poisson", help="constant and/or poisson")
    parser.add_argument("--prompt-words", type=int, default=45)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup-s", type=float, default=5)
    parser.add_argument("--steady-s", type=float, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="keep every run's files in this folder (default: a temp dir)")
    args = parser.parse_args(argv)
    runs: list[Run] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        input_len: int | None = None
        for arrivals in args.arrivals.split(","):
            for round_no in range(1, args.rounds + 1):
                mine = ours(args, arrivals, round_no, work)
                if input_len is None:  # the prompt vLLM counted for ours, less the chat template's share
                    input_len = max(1, round((mine.prompt_tokens or args.prompt_words) - 10))
                    print(f"calibration: prompt {mine.prompt_tokens} tokens -> vllm bench --random-input-len "
                          f"{input_len}", file=sys.stderr)
                runs += [mine, *theirs(args, arrivals, round_no, work, input_len)]
                for r in runs[-3:]:
                    print(f"{arrivals} round {round_no}: {r.tool}: {r.tok_s:,.1f} tok/s, {r.req_s:.3f} req/s",
                          file=sys.stderr)
    load_after = os.getloadavg()
    print(f"target {args.target}, {args.rate:g} req/s, ~{args.prompt_words} prompt words, {args.output_len} output "
          f"tokens (ignore_eos), {args.rounds} interleaved rounds per arrival kind")
    print(f"host load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after, on {os.cpu_count()} "
          "cores\n")
    print(table(runs, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
