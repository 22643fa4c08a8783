#!/usr/bin/env python3
"""Accuracy of the loadgen sweep against `vllm bench serve`, side by side on the same server.

Same target, same concurrency, same prompt and output lengths (ignore_eos), rounds interleaved
(ours, vLLM's, vLLM's, ours, ...) and repeated. For each tool: its own aggregate output tok/s and
p50 TTFT, and vLLM's own generation-token counter over the tool's measurement window (read from
vLLM's /metrics directly, before and after). Prints one table with medians and ratios.

    .venv/bin/python scripts/bench_accuracy.py [--target URL] [--concurrency 8] [--rounds 3]

Targets: aggregate output tok/s within 3%, p50 TTFT within 5% (or 2 ms).

Method difference to keep in mind: loadgen reports the steady window of a closed-loop step (warm-up
excluded, in-flight tokens counted by the share produced inside the window); `vllm bench serve` reports
total tokens over its whole run, including the first wave's simultaneous prefill and the last wave's
ramp-down. Its TTFT is measured by a Python asyncio client, ours by k6 (Go); on a CPU-starved box a
client's own scheduling delay is part of what it measures.
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
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.settings import service_url, stack_settings  # noqa: E402

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
VLLM_BENCH = """
import argparse, sys
from vllm.benchmarks.serve import add_cli_args, main
parser = argparse.ArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


@dataclass
class Measure:
    tool: str
    round: int
    tok_s: float
    ttft_p50_s: float
    counter_tok_s: float | None
    requests: int
    prompt_tokens: float | None


def generation_tokens(vllm_url: str) -> float:
    """vllm:generation_tokens_total summed over series, straight from vLLM's /metrics."""
    text = requests.get(f"{vllm_url}/metrics", timeout=10).text
    return sum(float(m.group(1)) for m in re.finditer(r"^vllm:generation_tokens_total\{[^}]*\} ([0-9.e+]+)$", text,
                                                      re.MULTILINE))


def run_ours(args: argparse.Namespace, round_no: int, work: Path) -> Measure:
    plan = {"name": "bench-accuracy", "profile": {"prompt_words": args.prompt_words, "max_tokens": args.output_len},
            "steps": [args.concurrency], "search": {"enabled": False}, "warmup_s": args.warmup_s,
            "steady_s": args.steady_s, "max_steady_s": args.steady_s, "stop": {"slo_broken_steps": 3,
                                                                                 "error_ratio": 1.0}}
    path = work / f"plan-{round_no}.yaml"
    path.write_text(yaml.safe_dump(plan))
    out = subprocess.run([sys.executable, "-m", "loadgen", "sweep", "--plan", str(path), "--target", args.target,
                          "--out", str(work / "runs"), "--no-panels"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    match = re.search(r"run folder: (\S+)", out.stderr)
    if out.returncode != 0 or not match:
        raise SystemExit(f"loadgen sweep failed ({out.returncode}): {out.stderr[-800:]}")
    results = json.loads((Path(match.group(1)) / "results.json").read_text())
    step = results["steps"][0]
    check = step.get("throughput_check") or {}
    return Measure("loadgen (k6)", round_no, step["client"]["output_tok_s"], step["client"]["ttft_p50_s"],
                   check.get("vllm_tok_s"), step["client"]["requests"], step["client"]["prompt_tokens_per_request"])


def run_vllm_bench(args: argparse.Namespace, round_no: int, work: Path, input_len: int) -> Measure:
    name = f"vllm-bench-{round_no}.json"
    command = [str(VLLM_PYTHON), "-c", VLLM_BENCH, "--backend", "openai-chat", "--base-url", args.target,
               "--endpoint", "/v1/chat/completions", "--model", args.model, "--tokenizer", str(args.tokenizer),
               "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len",
               str(args.output_len), "--num-prompts", str(args.concurrency * args.requests_per_user),
               "--max-concurrency", str(args.concurrency), "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl,e2el",
               "--save-result", "--result-dir", str(work), "--result-filename", name, "--disable-tqdm",
               "--seed", str(round_no)]
    before = generation_tokens(args.vllm)
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    after = generation_tokens(args.vllm)
    if out.returncode != 0:
        raise SystemExit(f"vllm bench serve failed: {out.stderr[-800:]}")
    result = json.loads((work / name).read_text())
    duration = float(result["duration"])
    return Measure("vllm bench serve", round_no, float(result["output_throughput"]),
                   float(result["median_ttft_ms"]) / 1000, (after - before) / duration, int(result["completed"]),
                   float(result["total_input_tokens"]) / max(1, int(result["completed"])))


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def table(measures: list[Measure]) -> str:
    lines = [f"{'tool':<18} {'round':>5} {'out tok/s':>10} {'vLLM ctr tok/s':>15} {'p50 TTFT ms':>12} "
             f"{'requests':>9} {'prompt tok':>11}"]
    for m in measures:
        counter = f"{m.counter_tok_s:,.0f}" if m.counter_tok_s is not None else "n/a"
        prompt = f"{m.prompt_tokens:.0f}" if m.prompt_tokens is not None else "n/a"
        lines.append(f"{m.tool:<18} {m.round:>5} {m.tok_s:>10,.0f} {counter:>15} {m.ttft_p50_s * 1000:>12.1f} "
                     f"{m.requests:>9} {prompt:>11}")
    ours = [m for m in measures if m.tool.startswith("loadgen")]
    ref = [m for m in measures if m.tool.startswith("vllm")]
    tok_ours, tok_ref = _median([m.tok_s for m in ours]), _median([m.tok_s for m in ref])
    ttft_ours, ttft_ref = _median([m.ttft_p50_s for m in ours]), _median([m.ttft_p50_s for m in ref])
    ctr_ours, ctr_ref = _median([m.counter_tok_s for m in ours]), _median([m.counter_tok_s for m in ref])
    lines.append("")
    lines.append(f"{'median':<18} {'':>5} {'out tok/s':>10} {'vLLM ctr tok/s':>15} {'p50 TTFT ms':>12}")
    for label, tok, ctr, ttft in (("loadgen (k6)", tok_ours, ctr_ours, ttft_ours),
                                  ("vllm bench serve", tok_ref, ctr_ref, ttft_ref)):
        lines.append(f"{label:<18} {'':>5} {tok or 0:>10,.0f} {ctr or 0:>15,.0f} {(ttft or 0) * 1000:>12.1f}")
    if tok_ours and tok_ref and ttft_ours and ttft_ref:
        tok_ratio = tok_ours / tok_ref
        ttft_gap = ttft_ours - ttft_ref
        lines.append("")
        lines.append(f"aggregate output tok/s: loadgen / vllm bench = {tok_ratio:.3f} "
                     f"({'within' if abs(tok_ratio - 1) <= 0.03 else 'OUTSIDE'} 3%)")
        ok_ttft = abs(ttft_gap) <= max(0.002, 0.05 * ttft_ref)
        lines.append(f"p50 TTFT: loadgen - vllm bench = {ttft_gap * 1000:+.1f} ms ({ttft_gap / ttft_ref:+.1%}; "
                     f"{'within' if ok_ttft else 'OUTSIDE'} 5% or 2 ms)")
        if ctr_ours and ctr_ref:
            lines.append(f"each tool against vLLM's own counter: loadgen {tok_ours / ctr_ours:.3f}, "
                         f"vllm bench {tok_ref / ctr_ref:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings = stack_settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=service_url(settings, "COLLECTOR_PORT"),
                        help="the API both tools load (the collector: its TTFB is TTFT)")
    parser.add_argument("--vllm", default=service_url(settings, "VLLM_PORT"), help="vLLM, for its /metrics")
    parser.add_argument("--model", default=settings.get("NATIVE_SERVED_MODEL_NAME"))
    parser.add_argument("--tokenizer", default=ROOT / "var" / "model", type=Path)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prompt-words", type=int, default=40)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup-s", type=float, default=5)
    parser.add_argument("--steady-s", type=float, default=25)
    parser.add_argument("--requests-per-user", type=int, default=8, help="vllm bench: num-prompts = this x concurrency")
    args = parser.parse_args(argv)
    measures: list[Measure] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Our prompt in tokens (vLLM's count) sets vllm bench's random input length.
        first = run_ours(args, 0, work)
        input_len = max(1, round((first.prompt_tokens or args.prompt_words) - 10))  # minus the chat template's share
        print(f"calibration round: prompt {first.prompt_tokens} tokens -> vllm bench --random-input-len {input_len}",
              file=sys.stderr)
        for round_no in range(1, args.rounds + 1):
            order = (run_ours, run_vllm_bench) if round_no % 2 else (run_vllm_bench, run_ours)
            for runner in order:
                measure = (run_ours(args, round_no, work) if runner is run_ours
                           else run_vllm_bench(args, round_no, work, input_len))
                measures.append(measure)
                print(f"round {round_no}: {measure.tool}: {measure.tok_s:,.0f} tok/s, "
                      f"p50 TTFT {measure.ttft_p50_s * 1000:.1f} ms", file=sys.stderr)
    print(f"target {args.target}, {args.concurrency} concurrent streams, ~{args.prompt_words} prompt words, "
          f"{args.output_len} output tokens (ignore_eos), {args.rounds} interleaved rounds")
    load_after = os.getloadavg()
    print(f"host load average (1, 5, 15 min) before {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}, "
          f"after {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f} on {os.cpu_count()} cores: well above "
          "the core count, other work competes with the server and both clients, and rounds scatter accordingly\n")
    print(table(measures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
