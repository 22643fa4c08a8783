"""The sweep and the capstone end to end: real k6, real vLLM (CPU build) behind the collector, real
Prometheus; short steps. The report is checked as a person would see it (headless Chromium)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import yaml

from loadgen.probe import probe_target
from loadgen.procs import free_port
from loadgen.prom import Prometheus, render, step_queries
from loadgen.report import diagnosis
from loadgen.report.analysis import analyse, waiting_peak
from loadgen.results import load_run
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.stack

SECTIONS = ("## The envelope", "## Envelope table", "## Time to first token, three ways",
            "## Throughput cross-check and load-client CPU", "## Server side per step",
            "## Single-stream decode vs the memory-bandwidth limit", "## Panels", "## Reproducibility")


def loadgen(*args: str, wait: bool = True) -> Any:
    command = [sys.executable, "-m", "loadgen", *args]
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def run_dir_of(output: str) -> Path:
    match = re.search(r"run folder: (\S+)", output)
    assert match, output
    return ROOT / match.group(1)


def results_of(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "results.json").read_text())
    return data


def write_plan(tmp_path: Path, **plan: Any) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def screenshot(html: Path, png: Path) -> None:
    profile = tempfile.mkdtemp()
    try:
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,2000",
                        html.as_uri()], capture_output=True, timeout=120, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dump_dom(html: Path) -> str:
    profile = tempfile.mkdtemp()
    try:
        out = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", f"--user-data-dir={profile}", "--dump-dom",
                              html.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return out.stdout


def png_is_not_blank(png: Path) -> tuple[int, float]:
    """(distinct colours, share of non-white pixels) of a screenshot."""
    import matplotlib.image as mpimg

    pixels = mpimg.imread(str(png))[:, :, :3].reshape(-1, 3)
    distinct = len({tuple(p) for p in (pixels[:: max(1, len(pixels) // 20000)] * 255).astype(int)})
    non_white = float((pixels.min(axis=1) < 0.97).mean())
    return distinct, non_white


def test_capstone_end_to_end_writes_a_complete_report(stack: Stack) -> None:
    result = loadgen("capstone", "--target", stack.collector, "--prometheus", stack.prometheus,
                     "--warmup-s", "2", "--steady-s", "8", "--max-steady-s", "12", "--out", "var/reports/test-loadgen")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = run_dir_of(result.stderr)
    results = results_of(run_dir)
    assert results["status"] == "complete" and results["ttfb_is_ttft"] is True
    steps = {s["concurrency"]: s for s in results["steps"]}
    assert sorted(steps) == [1, 5, 20]
    for c, step in steps.items():
        client = step["client"]
        assert step["status"] == "done"
        assert client["ok"] >= 1 and client["output_tok_s"] > 0 and client["ttft_p50_s"] > 0, (c, client)
        assert client["output_tokens_per_request"] == 128  # ignore_eos + max_tokens fix the length
        assert 0 < client["ttft_p50_s"] <= client["e2e_p50_s"]
        vllm = step["server"]["vllm"]
        # Engine occupancy by Little's law from vLLM's own request-time counters (every request counted,
        # unlike the running gauge sampled at scrape instants): a closed loop keeps the engine busy. Never
        # more in the engine than users sending, beyond what the window's edges can account for.
        assert vllm["ttft_p50_s"] is not None and vllm["running_mean_counted"] >= 0.5, vllm
        shown = diagnosis.engine_figures(step)
        # Held figures are scaled to the client's in-flight, so their sum may exceed it by a rounding ulp.
        held = shown["running_mean_counted"] + (shown.get("waiting_mean_counted") or 0)
        assert held <= client["in_flight_avg"] * (1 + 1e-9), (vllm, client, diagnosis.counted_edge_error(step))
        assert step["server"]["host"]["mem_available_min_bytes"] > 0
        assert step["k6"]["cpu_s"] > 0
    assert steps[20]["server"]["vllm"]["running_mean_counted"] > 2 * steps[1]["server"]["vllm"]["running_mean_counted"]
    check = steps[20]["throughput_check"]
    # At least one scrape interval (5 s) between the counter's samples, give or take the scrapes' jitter
    # (a fresh machine's CI read 4.994 s).
    assert check is not None and check["span"][1] - check["span"][0] >= 4.5
    # vLLM counts other helpers' traffic too, so only a loose agreement is asserted here; the accuracy
    # benchmark (scripts/bench_accuracy.py) measures it properly.
    assert 0.3 < check["client_over_vllm"] < 1.5, check
    # the per-request CSV holds every request k6 recorded
    with (run_dir / "requests.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(s["k6"]["requests_total"] for s in results["steps"])
    assert {int(r["step"]) for r in rows} == {1, 5, 20}
    # k6 pushed its metrics to Prometheus by remote write, tagged with the run and the step
    expr = render(step_queries()["k6"]["ttft_p95"], run=results["run_id"])
    steps_seen = {r["metric"]["step"] for r in stack.prom_query(f"last_over_time({expr}[15m])")}
    assert steps_seen == {"1", "5", "20"}

    report = (run_dir / "report.md").read_text()
    for section in SECTIONS:
        assert section in report
    analysis = analyse(load_run(run_dir))
    assert analysis.envelope in report and analysis.envelope.startswith(("At up to", "Even"))
    table = report.split("## Envelope table")[1].split("##")[0]
    for c in (1, 5, 20):
        row = next(line for line in table.splitlines() if line.startswith(f"| {c} |"))
        assert "n/a" not in row.split("|")[2], row  # aggregate tok/s measured
    assert "engine_version: 0.32.0" in report and "k6_version: k6 v1.1.0" in report
    assert "kv_cache_size_tokens" in report
    # no GPU here: a memory-bandwidth limit does not apply (never a percentage of some GPU's figure)
    decode = report.split("## Single-stream decode vs the memory-bandwidth limit")[1].split("##")[0]
    assert "Not applicable: no GPU was visible" in decode and "% of the limit" not in decode

    # re-render from raw data only: the same numbers
    before = report.split("Report generated")[1].split("\n", 1)[1]
    rerender = loadgen("report", str(run_dir))
    assert rerender.returncode == 0, rerender.stderr
    assert (run_dir / "report.md").read_text().split("Report generated")[1].split("\n", 1)[1] == before

    html = run_dir / "report.html"
    text = html.read_text()
    assert re.findall(r'<img src="([^"]{0,5})', text) and all(
        src == "data:" for src in re.findall(r'<img src="([^"]{0,5})', text)), "images must be inline"
    assert "<link" not in text and "<script" not in text, "the HTML must be self-contained"
    png = run_dir / "screenshot.png"
    screenshot(html, png)
    distinct, non_white = png_is_not_blank(png)
    assert distinct > 50 and non_white > 0.05, (distinct, non_white)
    dom = dump_dom(html)
    assert "Envelope table" in dom and "What broke first" in dom
    assert re.search(r"<td>20</td>", dom) and analysis.envelope.split(",")[0] in dom


def test_sweep_names_what_broke_first_with_server_evidence(stack: Stack, tmp_path: Path) -> None:
    # 32 streams against max-num-seqs 16: 16 requests wait for a slot, each about one answer's time
    # (384 tokens: seconds even on a machine twice as fast), far above the 2 s TTFT SLO; 2 users
    # never wait (a CPU-harness stall can delay a first token by ~1.5 s, hence the roomy SLO).
    plan = write_plan(tmp_path, name="test-queue", profile={"prompt_words": 10, "max_tokens": 384},
                      steps=[2, 32], search={"enabled": False}, warmup_s=3, steady_s=10, max_steady_s=15,
                      request_timeout_s=120,
                      stop={"slo_broken_steps": 3, "error_ratio": 0.5}, slo={"ttft_p95_s": 2.0})
    result = loadgen("sweep", "--plan", str(plan), "--target", stack.collector, "--prometheus", stack.prometheus,
                     "--out", "var/reports/test-loadgen", "--no-panels")
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = run_dir_of(result.stderr)
    results = results_of(run_dir)
    analysis = analyse(load_run(run_dir))
    good = next(s for s in results["steps"] if s["concurrency"] == 2)
    bad = next(s for s in results["steps"] if s["concurrency"] == 32)
    assert good["slo"]["ok"], good["slo"]
    assert not bad["slo"]["ok"]
    # 16 users over the 16 sequence slots wait all the time: vLLM's waiting gauge at scrape instants or its
    # queue-time counter over the requests finished in the window (whichever caught more) shows it.
    assert (waiting_peak(bad["server"]["vllm"]) or 0) >= 1, bad["server"]["vllm"]
    assert (waiting_peak(good["server"]["vllm"]) or 0) < 1, good["server"]["vllm"]
    assert analysis.knee.first_bad == 32
    assert analysis.what_broke_first.startswith(("queueing", "KV cache capacity")), analysis.what_broke_first
    assert any("waiting" in line for line in analysis.evidence), analysis.evidence
    report = (run_dir / "report.md").read_text()
    assert analysis.what_broke_first in report
    assert "ttft_p95_s" in report and "plan override" in report


def _wait_for_steps(run_dir_holder: subprocess.Popen[str], count: int, timeout: float = 240) -> Path:
    """Reads the run folder from the process's stderr, then waits until `count` steps are done."""
    assert run_dir_holder.stderr is not None
    run_dir = None
    deadline = time.time() + timeout
    while run_dir is None and time.time() < deadline:
        line = run_dir_holder.stderr.readline()
        if line.startswith("run folder: "):
            run_dir = ROOT / line.split(": ", 1)[1].strip()
    assert run_dir is not None
    while time.time() < deadline:
        path = run_dir / "results.json"
        if path.exists() and sum(s["status"] == "done" for s in results_of(run_dir)["steps"]) >= count:
            return run_dir
        time.sleep(0.5)
    raise AssertionError(f"{count} steps not done in {timeout} s")


def _k6_child(process: subprocess.Popen[str], timeout: float = 30) -> psutil.Process:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in psutil.Process(process.pid).children(recursive=True):
            if child.name() == "k6" and "run" in child.cmdline():  # not `k6 version` (provenance)
                return child
        time.sleep(0.2)
    raise AssertionError("no k6 child process")


def test_ctrl_c_and_k6_crash_keep_finished_steps_and_resume_continues(stack: Stack, tmp_path: Path) -> None:
    plan = write_plan(tmp_path, name="test-resume", profile={"prompt_words": 10, "max_tokens": 32}, steps=[1, 3],
                      search={"enabled": False}, warmup_s=2, steady_s=5, max_steady_s=5,
                      stop={"slo_broken_steps": 3})
    common = ("--target", stack.collector, "--prometheus", stack.prometheus, "--no-panels")
    # 1. Ctrl-C during the second step
    process = loadgen("sweep", "--plan", str(plan), *common, "--out", "var/reports/test-loadgen", wait=False)
    run_dir = _wait_for_steps(process, 1)
    _k6_child(process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-1500:]
    first = results_of(run_dir)
    assert first["status"] == "partial" and [s["concurrency"] for s in first["steps"]] == [1]
    report = (run_dir / "report.md").read_text()
    assert "what is missing" in report and "interrupted (Ctrl-C or SIGTERM)" in report
    # 2. resume, and k6 dies (killed) during the remaining step
    process = loadgen("sweep", "--resume", str(run_dir), *common, wait=False)
    _k6_child(process).kill()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr[-1500:]
    second = results_of(run_dir)
    assert second["status"] == "partial"
    assert any("k6 exited with code" in m or "k6 wrote no request records" in m
               for s in second["steps"] for m in s["missing"]), second["steps"]
    assert "step 3:" in (run_dir / "report.md").read_text()
    # 3. resume again: finishes, the first step kept as it was measured
    result = loadgen("sweep", "--resume", str(run_dir), *common)
    assert result.returncode == 0, result.stderr[-1500:]
    final = results_of(run_dir)
    assert final["status"] == "complete"
    assert [s["concurrency"] for s in final["steps"]] == [1, 3]
    assert final["steps"][0]["started"] == first["steps"][0]["started"]
    assert sum("resumed" in n for n in final["notes"]) == 2


def test_prometheus_going_away_mid_sweep_gives_a_partial_report(stack: Stack, tmp_path: Path) -> None:
    """A second, real Prometheus (scraping the same vLLM and node exporter) that is stopped after step 1."""
    binary = shutil.which("prometheus")
    assert binary, "the Debian prometheus package is part of the native stack"
    port = free_port()
    config = {"global": {"scrape_interval": "5s"}, "scrape_configs": [
        {"job_name": "vllm", "static_configs": [{"targets": [stack.vllm.removeprefix("http://")]}]},
        {"job_name": "node-exporter", "static_configs": [{"targets": [stack.node_exporter.removeprefix("http://")]}]},
    ]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                   "--web.enable-remote-write-receiver"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while time.time() < deadline:
            if Prometheus(url).reachable():
                break
            time.sleep(0.5)
        plan = write_plan(tmp_path, name="test-promdown", profile={"prompt_words": 10, "max_tokens": 32},
                          steps=[1, 2], search={"enabled": False}, warmup_s=2, steady_s=8, max_steady_s=8,
                          stop={"slo_broken_steps": 3})
        process = loadgen("sweep", "--plan", str(plan), "--target", stack.collector, "--prometheus", url,
                          "--out", "var/reports/test-loadgen", "--no-panels", wait=False)
        run_dir = _wait_for_steps(process, 1)
        _k6_child(process)  # step 2 is under way (Prometheus answered the check between the steps)
        prometheus.send_signal(signal.SIGTERM)
        prometheus.wait(timeout=30)
        stdout, stderr = process.communicate(timeout=180)
    finally:
        if prometheus.poll() is None:
            prometheus.kill()
    assert process.returncode == 3, stderr[-1500:]
    results = results_of(run_dir)
    assert results["status"] == "partial"
    assert results["steps"][0]["status"] == "done" and results["steps"][0]["server"]["vllm"] is not None
    # the console agrees with the report: the step cut short by Prometheus is not printed as "ok"
    console = [line for line in (stdout + stderr).replace("\r", "\n").splitlines()
               if "2 users:" in line and "tok/s" in line]
    assert console and all("not kept" in line and " ok" not in line.split("errors")[-1] for line in console), stdout
    report = (run_dir / "report.md").read_text()
    assert "what is missing" in report and "Prometheus" in report.split("what is missing")[1].split("##")[0]
    assert os.path.exists(run_dir / "report.html")


def test_probe_tells_the_collector_from_vllm(stack: Stack) -> None:
    """Through the collector the head waits for the first token (TTFB = TTFT) and the collector says so;
    vLLM sends its head at once. Straight at vLLM the verdict comes from timing, which may only say
    "undetermined" (head and token in one write every round), never "held"."""
    through_collector = probe_target(stack.collector, stack.model)
    direct = probe_target(stack.vllm, stack.model)
    assert through_collector.ttfb_is_ttft and through_collector.verdict == "head held (collector header)"
    assert not direct.ttfb_is_ttft, direct
    assert direct.verdict in ("headers before first token", "undetermined"), direct
    if direct.verdict == "headers before first token":
        assert direct.headers_s < direct.first_token_s, direct
    head = requests.post(f"{stack.collector}/v1/chat/completions", stream=True, timeout=60, json={
        "model": stack.model, "max_tokens": 2, "stream": True, "messages": [{"role": "user", "content": "x"}]})
    with head:
        assert head.headers.get("X-Collector-Head-Held") == "first-token"


def test_host_memory_watchdog_stops_the_sweep(stack: Stack, tmp_path: Path) -> None:
    """A floor above the box's memory: node exporter's MemAvailable is under it at once, so the step is cut,
    nothing higher runs, and the report names host memory as what broke first."""
    plan = write_plan(tmp_path, name="test-watchdog", profile={"prompt_words": 10, "max_tokens": 32}, steps=[1, 2],
                      warmup_s=2, steady_s=10, max_steady_s=10, stop={"min_host_mem_available_gib": 100_000})
    started = time.time()
    result = loadgen("sweep", "--plan", str(plan), "--target", stack.collector, "--prometheus", stack.prometheus,
                     "--out", "var/reports/test-loadgen", "--no-panels")
    assert result.returncode == 0, result.stderr[-1500:]
    run_dir = run_dir_of(result.stderr)
    results = results_of(run_dir)
    assert [s["concurrency"] for s in results["steps"]] == [1]
    step = results["steps"][0]
    assert "fell under the floor" in step["hard_stop"] and step["ended"] - started < 60
    analysis = analyse(load_run(run_dir))
    assert analysis.knee.concurrency is None and analysis.what_broke_first.startswith("host memory")
    assert analysis.what_broke_first in (run_dir_of(result.stderr) / "report.md").read_text()
