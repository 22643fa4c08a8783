"""Side-by-side proxy benchmark: direct to the upstream, through nginx (the reference), through the collector.

    .venv/bin/python scripts/bench_proxy.py --upstream scripted   # 1, 64, 256 streams, no model, ~3 minutes
    .venv/bin/python scripts/bench_proxy.py                       # the same against a CPU vLLM server
    .venv/bin/python scripts/bench_proxy.py --soak 600            # then 10 minutes at 256 streams (RSS)
    .venv/bin/python scripts/bench_proxy.py --repeats 0 --soak 600  # the soak alone
    .venv/bin/python scripts/bench_proxy.py --workers 2           # the collector with COLLECTOR_WORKERS=2

The upstream is either a vLLM CPU server started here (free ports, max-num-seqs and KV blocks raised
so every stream is served at once) or a scripted one (`--upstream scripted`: vLLM's SSE chat format
without a model, one token per stream every --tick-ms, all streams on one timer like a decode step),
which costs little CPU and makes the proxies' own cost the thing measured. nginx runs with
scripts/bench-nginx.conf. Each round follows an unmeasured burst of 2-token answers at its concurrency on
the same target (upstream connections open, as under steady traffic; --cold: none). Rounds are
interleaved (direct, nginx, collector; the order rotates each
round) and the table gives, per target, the median over rounds with its [min-max]: aggregate output
tok/s, p50/p99 TTFT (first chunk with generated text, as the client sees it), the proxy process's CPU
seconds per 1,000 output tokens (scheduler nanoseconds from /proc/PID/schedstat); comparisons with
nginx are taken per pair of back-to-back rounds (ratio or difference), then their median and range.
Every stream is checked: status 200, the requested number of tokens (the usage event), no error
event, [DONE] last. The load client is asyncio + aiohttp in this process; it costs the same CPU for
every target. `--collector-profile FILE` runs the collector under cProfile.

The load client is loadgen.bench.client, the scripted upstream loadgen.bench.scripted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from collector.settings import workers as collector_workers
from loadgen import native_stack
from loadgen.bench import scripted
from loadgen.bench.client import StreamResult, run_round
from loadgen.bench.scripted import SCRIPTED_MODEL
from loadgen.bench.tables import markdown_table
from loadgen.procs import StartError, cpu_seconds, free_port, process_tree, running
from loadgen.settings import APP_PYTHON, ROOT, read_settings

TARGETS = ("direct", "nginx", "collector")


@dataclass
class Round:
    target: str
    concurrency: int
    wall: float
    results: list[StreamResult]
    proxy_cpu: float

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)

    @property
    def failures(self) -> list[str]:
        return [r.problem for r in self.results if not r.ok]

    def ttft_quantile(self, q: float) -> float:
        values = sorted(r.ttft for r in self.results if r.ttft is not None)
        return values[min(len(values) - 1, int(q * len(values)))]


@dataclass
class Bench:
    urls: dict[str, str]
    pids: dict[str, int]
    model: str
    max_tokens: int
    rounds: list[Round] = field(default_factory=list)

    def warm(self, target: str, concurrency: int) -> None:
        """An unmeasured burst of 2-token answers at `concurrency`: every proxy starts the round with its
        upstream connections open, as under steady traffic (nginx keeps them between rounds; the
        collector's pool drops them after 4 s idle, under vLLM's 5)."""
        asyncio.run(run_round(self.urls[target] + "/v1/chat/completions", concurrency, 1, self.model, 2))

    def round(self, target: str, concurrency: int, requests_per_stream: int) -> Round:
        processes = process_tree(self.pids[target]) if target in self.pids else []
        cpu_before = cpu_seconds(processes)
        wall, results = asyncio.run(run_round(self.urls[target] + "/v1/chat/completions", concurrency,
                                              requests_per_stream, self.model, self.max_tokens))
        result = Round(target, concurrency, wall, results, cpu_seconds(processes) - cpu_before)
        self.rounds.append(result)
        failures = result.failures
        cpu = f"  CPU {result.proxy_cpu / max(result.tokens, 1) * 1000:.4f} s/1k tok" if processes else ""
        print(f"  {target:<9} c={concurrency:<4} {result.tokens / wall:8.0f} tok/s  "
              f"TTFT p50 {result.ttft_quantile(0.5) * 1000:7.1f} ms  p99 {result.ttft_quantile(0.99) * 1000:7.1f} ms"
              f"{cpu}  failures {len(failures)}" + (f" ({failures[0]})" if failures else ""), flush=True)
        return result


def figure(r: Round, value: str) -> float:
    """One round's tok/s, TTFT quantile (ms) or proxy CPU seconds per 1,000 output tokens."""
    if value == "tok/s":
        return r.tokens / r.wall
    if value == "cpu":
        return r.proxy_cpu / r.tokens * 1000 if r.tokens else float("nan")
    return r.ttft_quantile(0.5 if value == "ttft p50" else 0.99) * 1000


def spread(values: list[float], fmt: str) -> str:
    """median [min-max] over rounds"""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


def paired(bench: Bench, concurrency: int, target: str, value: str) -> list[tuple[float, float]]:
    """(target, nginx) figures of the rounds run back to back (the i-th round of each)."""
    mine = [r for r in bench.rounds if r.target == target and r.concurrency == concurrency]
    theirs = [r for r in bench.rounds if r.target == "nginx" and r.concurrency == concurrency]
    return [(figure(a, value), figure(b, value)) for a, b in zip(mine, theirs, strict=False)]


def table(bench: Bench, concurrencies: list[int]) -> str:
    """Medians over rounds with their [min-max]; each comparison with nginx is taken per pair of
    interleaved rounds first (ratio or difference), then its median and range are shown."""
    header = ["streams", "target", "output tok/s", "TTFT p50 ms", "TTFT p99 ms", "proxy CPU s / 1k tok",
              "tok/s vs nginx", "p50 vs nginx (ms)", "p99 vs nginx (ms)", "CPU vs nginx"]
    rows: list[list[str]] = []
    for concurrency in concurrencies:
        for target in TARGETS:
            rounds = [r for r in bench.rounds if r.target == target and r.concurrency == concurrency]
            if not rounds:
                continue
            cells = [spread([figure(r, key) for r in rounds], ".0f" if key == "tok/s" else ".1f")
                     for key in ("tok/s", "ttft p50", "ttft p99")]
            cells.append("-" if target == "direct" else spread([figure(r, "cpu") for r in rounds], ".4f"))
            if target == "nginx":
                cells += ["1.000", "+0.0", "+0.0", "1.00x"]
            else:
                cells.append(spread([a / b for a, b in paired(bench, concurrency, target, "tok/s")], ".3f"))
                cells += [spread([a - b for a, b in paired(bench, concurrency, target, key)], "+.1f")
                          for key in ("ttft p50", "ttft p99")]
                cells.append("-" if target == "direct" else
                             spread([a / b for a, b in paired(bench, concurrency, target, "cpu")], ".2f") + "x")
            rows.append([str(concurrency), target, *cells])
    return markdown_table(header, rows)


def soak(bench: Bench, seconds: float, concurrency: int) -> str:
    """Streams through the collector for `seconds`; RSS sampled between rounds."""
    collector = psutil.Process(bench.pids["collector"])

    def rss() -> int:
        return sum(p.memory_info().rss for p in process_tree(collector.pid))
    samples: list[tuple[float, int]] = [(0.0, rss())]
    started = time.monotonic()
    streams = failures = 0
    while time.monotonic() - started < seconds:
        result = bench.round("collector", concurrency, 1)
        streams += len(result.results)
        failures += len(result.failures)
        samples.append((time.monotonic() - started, rss()))
    sizes = [mib for _, mib in samples]
    first_half = [r for t, r in samples if t <= seconds / 2]
    return (f"soak: {seconds:.0f} s at {concurrency} streams through the collector, {streams} streams, "
            f"{failures} failed or corrupted; collector RSS start {sizes[0] / 2**20:.1f} MiB, "
            f"max over the first half {max(first_half) / 2**20:.1f} MiB, max overall {max(sizes) / 2**20:.1f} MiB, "
            f"end {sizes[-1] / 2**20:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", choices=("vllm", "scripted"), default="vllm",
                        help="vllm: a CPU vLLM server started here; scripted: a model-free SSE server "
                             "(one token per stream per --tick-ms), which isolates the proxies' own cost")
    parser.add_argument("--tick-ms", type=float, default=20.0, help="scripted upstream: ms between tokens")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds per target and concurrency (0: no table, e.g. soak only)")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of a 256-stream RSS soak afterwards")
    parser.add_argument("--soak-concurrency", type=int, default=256)
    parser.add_argument("--workers", default="auto",
                        help="the collector's COLLECTOR_WORKERS (auto: its default, one per 4 cores, at most 4)")
    parser.add_argument("--cold", action="store_true",
                        help="no warm-up burst before each round (the collector's pool then opens its upstream "
                             "connections inside the measured burst; nginx keeps its own between rounds)")
    parser.add_argument("--collector-profile", type=Path,
                        help="run the collector under cProfile and write its profile here (slows it)")
    parser.add_argument("--serve-scripted", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_scripted:  # the old way to start the scripted upstream alone
        return scripted.main(["--port", str(args.serve_scripted), "--tick-ms", str(args.tick_ms)])
    # Debian installs nginx in /usr/sbin, which is not on every user's PATH.
    nginx_binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx_binary is None:
        print("error: nginx is not installed (apt-get install nginx)", file=sys.stderr)
        return 1
    settings = read_settings()
    widest = max([*args.concurrency, args.soak_concurrency if args.soak else 1])
    ports = {name: free_port() for name in TARGETS}
    # Enough sequences and KV blocks (128 tokens each) that every stream is served at once.
    settings.update({"VLLM_PORT": str(ports["direct"]), "NATIVE_MAX_NUM_SEQS": str(widest),
                     "NATIVE_KV_BLOCKS": str(2 * widest + 64)})
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / sub).mkdir()
    conf = (ROOT / "scripts" / "bench-nginx.conf").read_text()
    conf = conf.replace("@PREFIX@", str(work)).replace("@PORT@", str(ports["nginx"]))
    conf = conf.replace("@UPSTREAM@", f"127.0.0.1:{ports['direct']}")
    (work / "nginx.conf").write_text(conf)
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COLLECTOR_"))}
    env["COLLECTOR_WORKERS"] = args.workers
    try:
        workers = collector_workers(args.workers)
    except ValueError:
        print(f"error: --workers must be a positive number or auto, got {args.workers!r}", file=sys.stderr)
        return 2
    if args.upstream == "scripted":
        upstream_command = [sys.executable, "-m", "loadgen.bench.scripted", "--port", str(ports["direct"]),
                            "--tick-ms", str(args.tick_ms)]
        print(f"scripted upstream (a token every {args.tick_ms:g} ms per stream), nginx, collector "
              f"({workers} worker(s)); logs in {work}", flush=True)
    else:
        vllm = next(s for s in native_stack.services(settings) if s.name == "vllm")
        upstream_command = vllm.command(settings)
        env.update(vllm.env)
        print(f"vLLM (max-num-seqs {widest}, {settings['NATIVE_KV_BLOCKS']} KV blocks), nginx, collector "
              f"({workers} worker(s)); logs in {work}", flush=True)
    model = SCRIPTED_MODEL if args.upstream == "scripted" else settings["NATIVE_SERVED_MODEL_NAME"]
    try:
        run(args, upstream_command, model, nginx_binary, urls, ports, env, work)
    except StartError as error:
        print(f"error: {error} (logs in {work})", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, upstream_command: list[str], model: str, nginx_binary: str,
        urls: dict[str, str], ports: dict[str, int], env: dict[str, str], work: Path) -> None:
    widest = max(args.concurrency)
    with ExitStack() as stack:
        stack.enter_context(running(upstream_command, env, work / "upstream.log", urls["direct"] + "/health", 600,
                                    "upstream"))
        nginx_process = stack.enter_context(running(
            [nginx_binary, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"],
            env, work / "nginx.log", urls["nginx"] + "/health", 30, "nginx"))
        profile = ["-m", "cProfile", "-o", str(args.collector_profile)] if args.collector_profile else []
        collector_process = stack.enter_context(running(
            [str(APP_PYTHON), *profile, "-m", "collector", "--upstream", urls["direct"],
             "--host", "127.0.0.1", "--port", str(ports["collector"])], env, work / "collector.log",
            urls["collector"] + "/metrics", 30, "collector"))
        bench = Bench(urls, {"nginx": nginx_process.pid, "collector": collector_process.pid}, model, args.max_tokens)
        print("warm-up", flush=True)
        for target in TARGETS:
            bench.round(target, min(8, widest), 1)
        bench.rounds.clear()
        if args.repeats > 0:
            for concurrency in args.concurrency:
                per_stream = max(args.requests_per_stream, 16 // concurrency)
                for repeat in range(args.repeats):
                    # Interleaved, and the order rotates so no target always follows the same one.
                    order = TARGETS[repeat % len(TARGETS):] + TARGETS[:repeat % len(TARGETS)]
                    print(f"round {repeat + 1}/{args.repeats} at {concurrency} streams", flush=True)
                    for target in order:
                        if not args.cold:
                            bench.warm(target, concurrency)
                        bench.round(target, concurrency, per_stream)
            print()
            print(table(bench, args.concurrency))
            lost = sum(len(r.failures) for r in bench.rounds)
            print(f"\n{sum(len(r.results) for r in bench.rounds)} streams, {lost} failed or corrupted")
        if args.soak:
            print(soak(bench, args.soak, args.soak_concurrency))


if __name__ == "__main__":
    raise SystemExit(main())
