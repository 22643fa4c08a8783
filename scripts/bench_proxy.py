"""Side-by-side proxy benchmark: direct to vLLM, through nginx (the reference), through the collector.

    .venv/bin/python scripts/bench_proxy.py                       # 1, 64 and 256 streams, ~5 minutes
    .venv/bin/python scripts/bench_proxy.py --soak 600            # then 10 minutes at 256 streams (RSS)
    .venv/bin/python scripts/bench_proxy.py --repeats 0 --soak 600  # the soak alone

It starts its own vLLM CPU server (free ports, max-num-seqs and KV blocks raised so every stream is
served at once), nginx with scripts/bench-nginx.conf and the collector, then runs rounds interleaved
(direct, nginx, collector, direct, ...) and prints one table of medians over rounds: aggregate output
tok/s, p50/p99 TTFT (first chunk with generated text, as the client sees it), the proxy process's
CPU seconds per 1,000 output tokens, and each figure's ratio to direct and to nginx. Every stream is
checked: status 200, the requested number of tokens (vLLM's usage), no error event, [DONE] last.
The load client is asyncio + aiohttp in this process; it costs the same CPU for every target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import native_stack

ROOT = native_stack.ROOT
TARGETS = ("direct", "nginx", "collector")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StartError(Exception):
    """A process did not come up: one line saying which and why."""


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartError(f"{what} exited with status {process.returncode} during start-up")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise StartError(f"{what} not ready after {timeout:.0f} s ({url})")


@contextmanager
def running(command: list[str], env: dict[str, str], log: Path, ready_url: str, timeout: float,
            what: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process in its own session, logging to `log`, ready when `ready_url` answers 200; on exit
    its whole process group is stopped (vLLM forks an engine process)."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)
    try:
        wait_ready(ready_url, process, timeout, what)
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --- the load client ------------------------------------------------------------------------------

@dataclass
class StreamResult:
    ttft: float | None
    tokens: int
    ok: bool
    problem: str = ""


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


CONTENT_MARK = b'"content":"'


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes, max_tokens: int) -> StreamResult:
    started = time.perf_counter()
    ttft = None
    tail = b""
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        if response.status != 200:
            return StreamResult(None, 0, False, f"HTTP {response.status}")
        while True:
            data = await response.content.readany()
            if not data:
                break
            if ttft is None:
                at = data.find(CONTENT_MARK)
                # The role chunk carries "content":"" - the first token is the first non-empty one.
                while at >= 0 and data[at + len(CONTENT_MARK):at + len(CONTENT_MARK) + 1] == b'"':
                    at = data.find(CONTENT_MARK, at + 1)
                if at >= 0:
                    ttft = time.perf_counter() - started
            tail = (tail + data)[-4096:]
    if b'"error"' in tail or not tail.endswith(b"data: [DONE]\n\n"):
        return StreamResult(ttft, 0, False, "stream did not end with [DONE] or carried an error")
    usage_at = tail.rfind(b'"usage":')
    event_end = tail.find(b"\n\n", usage_at)
    try:
        usage = json.loads(tail[tail.rfind(b"data: ", 0, usage_at) + 6:event_end])["usage"]
    except (ValueError, KeyError):
        return StreamResult(ttft, 0, False, "no usage event")
    tokens = int(usage["completion_tokens"])
    ok = tokens == max_tokens and ttft is not None
    return StreamResult(ttft, tokens, ok, "" if ok else f"{tokens} tokens, expected {max_tokens}")


def request_body(model: str, max_tokens: int, index: int) -> bytes:
    return json.dumps({
        "model": model, "messages": [{"role": "user", "content": f"Request {index}: tell a long story."}],
        "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
        "stream_options": {"include_usage": True},
    }).encode()


async def run_round(url: str, concurrency: int, requests_per_stream: int, model: str,
                    max_tokens: int) -> tuple[float, list[StreamResult]]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker(stream: int) -> list[StreamResult]:
            out = []
            for i in range(requests_per_stream):
                body = request_body(model, max_tokens, stream * 1000 + i)
                try:
                    out.append(await one_stream(session, url, body, max_tokens))
                except (aiohttp.ClientError, TimeoutError) as error:
                    out.append(StreamResult(None, 0, False, type(error).__name__))
            return out

        started = time.perf_counter()
        per_worker = await asyncio.gather(*(worker(s) for s in range(concurrency)))
        wall = time.perf_counter() - started
    return wall, [r for results in per_worker for r in results]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


# --- the benchmark --------------------------------------------------------------------------------

@dataclass
class Bench:
    urls: dict[str, str]
    pids: dict[str, int]
    model: str
    max_tokens: int
    rounds: list[Round] = field(default_factory=list)

    def round(self, target: str, concurrency: int, requests_per_stream: int) -> Round:
        processes = process_tree(self.pids[target]) if target in self.pids else []
        cpu_before = cpu_seconds(processes)
        wall, results = asyncio.run(run_round(self.urls[target] + "/v1/chat/completions", concurrency,
                                              requests_per_stream, self.model, self.max_tokens))
        result = Round(target, concurrency, wall, results, cpu_seconds(processes) - cpu_before)
        self.rounds.append(result)
        failures = result.failures
        print(f"  {target:<9} c={concurrency:<4} {result.tokens / wall:8.0f} tok/s  "
              f"TTFT p50 {result.ttft_quantile(0.5) * 1000:7.1f} ms  failures {len(failures)}"
              + (f" ({failures[0]})" if failures else ""), flush=True)
        return result


def median_of(rounds: list[Round], value: str) -> float:
    """The median over rounds of tok/s or a TTFT quantile (ms); CPU per 1,000 tokens is pooled over
    the rounds instead, as one round's CPU time is near the clock-tick resolution at low concurrency."""
    if value == "cpu":
        tokens = sum(r.tokens for r in rounds)
        return sum(r.proxy_cpu for r in rounds) / tokens * 1000 if tokens else float("nan")

    def pick(r: Round) -> float:
        if value == "tok/s":
            return r.tokens / r.wall
        return r.ttft_quantile(0.5 if value == "ttft p50" else 0.99) * 1000
    return statistics.median(pick(r) for r in rounds)


def table(bench: Bench, concurrencies: list[int]) -> str:
    header = ("| streams | target | output tok/s | TTFT p50 ms | TTFT p99 ms | proxy CPU s / 1k tok "
              "| tok/s vs direct | tok/s vs nginx | p50 vs nginx (ms) | p99 vs nginx (ms) | CPU vs nginx |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for concurrency in concurrencies:
        stats = {}
        for target in TARGETS:
            rounds = [r for r in bench.rounds if r.target == target and r.concurrency == concurrency]
            stats[target] = {key: median_of(rounds, key) for key in ("tok/s", "ttft p50", "ttft p99", "cpu")}
        for target in TARGETS:
            s, d, n = stats[target], stats["direct"], stats["nginx"]
            cpu = "-" if target == "direct" else f"{s['cpu']:.4f}"
            cpu_ratio = "-" if target == "direct" else f"{s['cpu'] / n['cpu']:.2f}x"
            lines.append(
                f"| {concurrency} | {target} | {s['tok/s']:.0f} | {s['ttft p50']:.1f} | {s['ttft p99']:.1f} | {cpu} "
                f"| {s['tok/s'] / d['tok/s']:.3f} | {s['tok/s'] / n['tok/s']:.3f} "
                f"| {s['ttft p50'] - n['ttft p50']:+.1f} | {s['ttft p99'] - n['ttft p99']:+.1f} | {cpu_ratio} |")
    return "\n".join(lines)


def soak(bench: Bench, seconds: float, concurrency: int) -> str:
    """Streams through the collector for `seconds`; RSS sampled between rounds."""
    collector = psutil.Process(bench.pids["collector"])
    samples: list[tuple[float, int]] = [(0.0, collector.memory_info().rss)]
    started = time.monotonic()
    streams = failures = 0
    while time.monotonic() - started < seconds:
        result = bench.round("collector", concurrency, 1)
        streams += len(result.results)
        failures += len(result.failures)
        samples.append((time.monotonic() - started, collector.memory_info().rss))
    rss = [mib for _, mib in samples]
    first_half = [r for t, r in samples if t <= seconds / 2]
    return (f"soak: {seconds:.0f} s at {concurrency} streams through the collector, {streams} streams, "
            f"{failures} failed or corrupted; collector RSS start {rss[0] / 2**20:.1f} MiB, "
            f"max over the first half {max(first_half) / 2**20:.1f} MiB, max overall {max(rss) / 2**20:.1f} MiB, "
            f"end {rss[-1] / 2**20:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved rounds per target and concurrency (0: no table, e.g. soak only)")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of a 256-stream RSS soak afterwards")
    parser.add_argument("--soak-concurrency", type=int, default=256)
    args = parser.parse_args(argv)
    # Debian installs nginx in /usr/sbin, which is not on every user's PATH.
    nginx_binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx_binary is None:
        print("error: nginx is not installed (apt-get install nginx)", file=sys.stderr)
        return 1
    settings = native_stack.read_settings()
    widest = max([*args.concurrency, args.soak_concurrency if args.soak else 1])
    ports = {name: free_port() for name in TARGETS}
    # Enough sequences and KV blocks (128 tokens each) that every stream is served at once.
    settings.update({"VLLM_PORT": str(ports["direct"]), "NATIVE_MAX_NUM_SEQS": str(widest),
                     "NATIVE_KV_BLOCKS": str(2 * widest + 64)})
    vllm = next(s for s in native_stack.services(settings) if s.name == "vllm")
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / sub).mkdir()
    conf = (ROOT / "scripts" / "bench-nginx.conf").read_text()
    conf = conf.replace("@PREFIX@", str(work)).replace("@PORT@", str(ports["nginx"]))
    conf = conf.replace("@UPSTREAM@", f"127.0.0.1:{ports['direct']}")
    (work / "nginx.conf").write_text(conf)
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    print(f"vLLM (max-num-seqs {widest}, {settings['NATIVE_KV_BLOCKS']} KV blocks), nginx, collector; "
          f"logs in {work}", flush=True)
    try:
        run(args, settings, vllm, nginx_binary, urls, ports, env, work)
    except StartError as error:
        print(f"error: {error} (logs in {work})", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, settings: dict[str, str], vllm: native_stack.Service, nginx_binary: str,
        urls: dict[str, str], ports: dict[str, int], env: dict[str, str], work: Path) -> None:
    widest = int(settings["NATIVE_MAX_NUM_SEQS"])
    with ExitStack() as stack:
        stack.enter_context(running(vllm.command(settings), {**env, **vllm.env}, work / "vllm.log",
                                    urls["direct"] + "/health", 600, "vLLM"))
        nginx_process = stack.enter_context(running(
            [nginx_binary, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"],
            env, work / "nginx.log", urls["nginx"] + "/health", 30, "nginx"))
        collector_process = stack.enter_context(running(
            [str(native_stack.APP_PYTHON), "-m", "collector", "--upstream", urls["direct"], "--host", "127.0.0.1",
             "--port", str(ports["collector"])], env, work / "collector.log", urls["collector"] + "/metrics",
            30, "collector"))
        bench = Bench(urls, {"nginx": nginx_process.pid, "collector": collector_process.pid},
                      settings["NATIVE_SERVED_MODEL_NAME"], args.max_tokens)
        print("warm-up", flush=True)
        for target in TARGETS:
            bench.round(target, min(8, widest), 1)
        bench.rounds.clear()
        if args.repeats > 0:
            for concurrency in args.concurrency:
                per_stream = max(args.requests_per_stream, 8 // concurrency)
                for repeat in range(args.repeats):
                    print(f"round {repeat + 1}/{args.repeats} at {concurrency} streams", flush=True)
                    for target in TARGETS:
                        bench.round(target, concurrency, per_stream)
            print()
            print(table(bench, args.concurrency))
            lost = sum(len(r.failures) for r in bench.rounds)
            print(f"\n{sum(len(r.results) for r in bench.rounds)} streams, {lost} failed or corrupted")
        if args.soak:
            print(soak(bench, args.soak, args.soak_concurrency))


if __name__ == "__main__":
    raise SystemExit(main())
