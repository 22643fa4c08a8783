"""The report's diagnosis on recorded runs and on the pure functions behind it (no stack needed).

`data/h200-qwen3-8b-default/results.json` is the project's own default sweep as it ran against vLLM
0.26 (CUDA) on an NVIDIA H200 (shared/fixtures): its report used to say "no queueing, KV pressure or
errors visible on the server" and flag the load client as the first stress signal on the server.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.prom import bucket_of
from loadgen.report import diagnosis
from loadgen.report.analysis import analyse, broke_first, queueing_cause
from loadgen.report.plots import _spaced
from loadgen.results import Step, load_run

ROOT = Path(__file__).resolve().parent.parent
H200 = ROOT / "tests" / "data" / "h200-qwen3-8b-default"


@pytest.fixture()
def h200_run(tmp_path: Path) -> Path:
    run = tmp_path / "h200"
    shutil.copytree(H200, run)
    return run


def test_h200_report_names_the_front_end_wait_the_peak_and_the_collapse(h200_run: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "loadgen", "report", str(h200_run)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = (h200_run / "report.md").read_text()
    analysis = analyse(load_run(h200_run))
    # where requests waited: in front of the engine, from 160 users on (vLLM held 104 of 160)
    assert analysis.what_broke_first.startswith("front-end: requests waited in front of the engine")
    assert "vLLM held only 203" in analysis.what_broke_first
    assert analysis.first_signal is not None and analysis.first_signal.startswith("160 users: 56 requests waited")
    assert "no queueing, KV pressure or errors visible" not in report
    # the throughput knee beside the SLO knee
    assert analysis.knee.concurrency == 368 and analysis.knee.first_bad == 416
    peak = analysis.throughput_knee
    assert peak is not None and peak.peak_concurrency == 368 and round(peak.peak_tok_s) == 18767
    assert [(c, round(d, 2)) for c, _, d in peak.collapse] == [(512, -0.27)]
    assert "peaked at 18,767 tok/s at 368 users and fell to 13,757 tok/s at 512 users (-27%)" in analysis.envelope
    # no client-CPU flag: k6 used under one of the 16 cores it could run on
    assert not analysis.client_signals and not any("k6" in f or "CPU" in f for f in analysis.flags)
    assert "CPU-bound" not in report
    # per-user speed consistent with the aggregate, both named
    assert "65 tok/s once the answer starts (51 tok/s per user averaged over whole requests, 18,767 tok/s" in report
    # ITL and queue time at low load are first-bucket artifacts: shown as bounds, never as 5.0 / 9.5 / 285 ms
    server = report.split("## Server side per step")[1].split("##")[0]
    one_user = next(line for line in server.splitlines() if line.startswith("| 1 |"))
    assert "≤ 10" in one_user and "≤ 300" in one_user and "5.0" not in one_user and "285" not in one_user
    # the decode limit of the GPU that was measured (H200), not a GB10 figure
    assert "4800 GB/s" in report and "195 tok/s" in report and "66.7% of the limit" in report
    # the Universal Scalability Law fit and its residuals are shown, with its verdict
    assert "Universal Scalability Law fit: contention sigma" in report and "residuals" in report
    # plot labels never overlap: 320 / 368 / 416 / 512 cannot all be labelled on a log axis
    assert _spaced([1, 5, 20, 40, 80, 160, 320, 368, 416, 512], log=True) == [1, 5, 20, 40, 80, 160, 320, 512]


def test_bucket_of_says_when_a_quantile_is_only_a_bound() -> None:
    buckets = [(0.01, 900.0), (0.025, 990.0), (0.05, 1000.0), (float("inf"), 1000.0)]
    assert bucket_of(buckets, 0.5) == (0.0, 0.01)
    assert bucket_of(buckets, 0.95) == (0.01, 0.025)
    assert bucket_of([(0.01, 0.0), (float("inf"), 0.0)], 0.5) is None
    first = diagnosis.server_quantile({"itl_p50_s": 0.005, "itl_p50_bucket_s": [0.0, 0.01], "itl_mean_s": 0.0042},
                                      "itl", "p50")
    assert first.upper_bound_only and first.text_ms() == "≤ 10 (mean 4.2)"
    inner = diagnosis.server_quantile({"itl_p95_s": 0.02, "itl_p95_bucket_s": [0.01, 0.025]}, "itl", "p95")
    # interpolated inside a bucket 2.5x as wide as its start: the bucket is shown with it
    assert not inner.upper_bound_only and inner.wide and inner.text_ms() == "20 (10-25)"
    # inside a narrower bucket: no more digits than the bucket resolves (about a tenth of its width)
    narrow = diagnosis.server_quantile({"ttft_p50_s": 0.6932, "ttft_p50_bucket_s": [0.5, 0.75]}, "ttft", "p50")
    assert not narrow.wide and narrow.text_ms() == "690"
    assert diagnosis.server_quantile({"ttft_p50_s": 0.123, "ttft_p50_bucket_s": [0.1, 0.15]},
                                     "ttft", "p50").text_ms() == "123"
    assert diagnosis.server_quantile({"itl_p95_s": 0.01234, "itl_p95_bucket_s": [0.01, 0.015]},
                                     "itl", "p95").text_ms() == "12.3"
    # no bucket recorded (older runs): as recorded
    assert diagnosis.server_quantile({"ttft_p50_s": 0.6932}, "ttft", "p50").text_ms() == "693.2"
    e2e = diagnosis.server_quantile({"e2e_p95_s": 4.5, "e2e_p95_bucket_s": [2.5, 5.0]}, "e2e", "p95")
    assert e2e.text_s() == "4.5 (2.5-5)"
    narrow_e2e = diagnosis.server_quantile({"e2e_p95_s": 1.48, "e2e_p95_bucket_s": [1.0, 1.5]}, "e2e", "p95")
    assert narrow_e2e.text_s() == "1.48"
    long_e2e = diagnosis.server_quantile({"e2e_p95_s": 12.34, "e2e_p95_bucket_s": [10.0, 15.0]}, "e2e", "p95")
    assert long_e2e.text_s() == "12.3"
    first_e2e = diagnosis.server_quantile({"e2e_p95_s": 0.2, "e2e_p95_bucket_s": [0.0, 0.3]}, "e2e", "p95")
    assert first_e2e.text_s() == "≤ 0.3"


def test_usl_fit_recovers_known_parameters_and_refuses_a_bad_fit() -> None:
    sigma, kappa, lam = 0.05, 0.0004, 100.0
    points = [(n, lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))) for n in (1, 2, 4, 8, 16, 32, 64, 128)]
    fit = diagnosis.usl_fit(points)
    assert fit.fits and fit.sigma is not None and fit.kappa is not None and fit.peak_n is not None
    assert abs(fit.sigma - sigma) < 1e-6 and abs(fit.kappa - kappa) < 1e-8
    assert abs(fit.peak_n - ((1 - sigma) / kappa) ** 0.5) < 1e-3
    assert not diagnosis.usl_fit([(1, 100.0), (2, 190.0)]).fits  # too few steps
    assert not diagnosis.usl_fit([(2, 100.0), (4, 190.0), (8, 300.0), (16, 350.0)]).fits  # no one-user anchor
    zigzag = diagnosis.usl_fit([(1, 100.0), (2, 400.0), (4, 150.0), (8, 900.0), (16, 200.0)])
    assert not zigzag.fits


def test_little_law_places_the_wait_by_the_front_ends_cpu() -> None:
    vllm: dict[str, Any] = {"running_avg": 20.0, "waiting_avg": 0.0, "api_server_cpu_cores": 0.98}
    collector: dict[str, Any] = {"cpu_cores": 0.4, "in_flight_avg": 63.0}
    step: Step = {"concurrency": 64, "client": {"in_flight_avg": 64.0},
                  "server": {"vllm": vllm, "collector": collector, "host": {"cpu_busy_ratio": 0.6}}}
    wait = diagnosis.where_waited(step)
    assert wait is not None and wait.front_of_engine and wait.where == "vLLM's API server"
    assert "--api-server-count" in diagnosis.wait_sentence(wait)
    vllm["api_server_cpu_cores"] = 0.3
    collector["cpu_cores"] = 0.97
    wait = diagnosis.where_waited(step)
    assert wait is not None and wait.where == "the collector"
    # the counted occupancy (Little's law on vLLM's own histograms) wins over gauges that missed it
    vllm.update(running_avg=0.0, running_mean_counted=63.5)
    wait = diagnosis.where_waited(step)
    assert wait is not None and not wait.front_of_engine


def test_bunched_delivery_uses_the_servers_per_user_speed() -> None:
    step: Step = {"concurrency": 1, "client": {"user_tok_s_p50": 678_038.0},
                  "server": {"vllm": {"itl_mean_s": 0.0045}}}
    assert diagnosis.bunched(step)
    assert diagnosis.server_user_tok_s(step) == pytest.approx(222.2, abs=0.1)
    step["client"]["user_tok_s_p50"] = 215.0
    assert not diagnosis.bunched(step)


def test_gpu_bandwidth_by_name() -> None:
    assert diagnosis.gpu_bandwidth("NVIDIA H200") == 4800.0
    assert diagnosis.gpu_bandwidth("NVIDIA H100 80GB HBM3") == 3350.0
    assert diagnosis.gpu_bandwidth("NVIDIA GB10") == 273.0
    assert diagnosis.gpu_bandwidth(None) is None and diagnosis.gpu_bandwidth("Some Other GPU") is None


def test_a_missing_grafana_client_only_skips_annotations(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare GPU box without grafana-client: the sweep goes on, the note says why nothing was annotated."""
    from loadgen.grafana.annotate import Annotator

    monkeypatch.setitem(sys.modules, "grafana_client", None)
    monkeypatch.setitem(sys.modules, "grafana_client.api", None)
    annotator = Annotator.connect("http://127.0.0.1:3000")
    assert annotator.api is None and "not available" in annotator.note
    annotator.step("run", 1, 0.0, 1.0, "text")  # a no-op, no exception


def rendered_copy(source: Path, tmp_path: Path) -> Path:
    """A copy of a recorded run folder, its report rendered by `python -m loadgen report` (as a user would)."""
    run = tmp_path / "run"
    shutil.copytree(source, run)
    result = subprocess.run([sys.executable, "-m", "loadgen", "report", str(run)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return run


EXAMPLE = ROOT / "loadgen" / "examples" / "h200-qwen3-8b"


def test_counted_occupancy_is_left_out_when_requests_are_long_for_the_window() -> None:
    """Little's law on vLLM's request-time counters rests on the requests that finished in the window: with
    20 s requests in a 30 s window the H200 KV run "counted" 194 running with 160 users sending."""
    vllm: dict[str, Any] = {"running_avg": 149.5, "waiting_avg": 7.8, "running_mean_counted": 193.8,
                            "waiting_mean_counted": 10.8}
    step: Step = {"concurrency": 160, "steady_start": 0.0, "steady_end": 30.0,
                  "client": {"in_flight_avg": 159.4, "e2e_p50_s": 18.0}, "server": {"vllm": vllm}}
    assert not diagnosis.counted_means_usable(step)
    assert "running_mean_counted" not in diagnosis.engine_figures(step)
    wait = diagnosis.where_waited(step)
    assert wait is not None and wait.engine_held == pytest.approx(157.3)  # the gauges, not 204.6
    # A short step's gauges hold ~2 scrapes: requests shorter than a scrape interval keep the counted means.
    short: Step = {**step, "steady_end": 8.0, "client": {"in_flight_avg": 19.9, "e2e_p50_s": 2.4}}
    assert diagnosis.counted_means_usable(short)
    short["client"]["e2e_p50_s"] = diagnosis.SCRAPE_INTERVAL_S + 0.1
    assert not diagnosis.counted_means_usable(short)
    scrape = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert scrape == f"{diagnosis.SCRAPE_INTERVAL_S:g}s"
    step["client"]["e2e_p50_s"] = 0.7  # short requests: the counted means stand
    assert diagnosis.counted_means_usable(step)
    wait = diagnosis.where_waited(step)
    assert wait is not None and wait.engine_held == pytest.approx(204.6)
    # ...and then the server holding more than the client sent is flagged, never printed as agreement
    little = [c for c in diagnosis.consistency_checks([step], {}, 0.03) if c.name.startswith("Little's law")]
    assert little and not little[0].ok and "more than the client sent" in little[0].detail


def test_counted_occupancy_over_the_client_within_the_edge_error_is_held_to_it() -> None:
    """A fresh CI capstone step counted 5.6 in vLLM with 5 users sending (8-s window, ~1-s requests): the
    requests straddling the window's edges count whole or not at all. Within that error the report shows
    what the client had in flight and says so; beyond it, it is flagged."""
    vllm: dict[str, Any] = {"running_avg": 4.0, "waiting_avg": 0.0, "running_mean_counted": 5.6,
                            "waiting_mean_counted": 0.0}
    step: Step = {"concurrency": 5, "steady_start": 0.0, "steady_end": 8.0,
                  "client": {"in_flight_avg": 4.95, "e2e_p50_s": 0.8, "e2e_p95_s": 1.2}, "server": {"vllm": vllm}}
    assert diagnosis.counted_edge_error(step) == pytest.approx(4.95 * 1.2 / 5.0)  # 5 s between scrapes
    figures = diagnosis.engine_figures(step)
    assert figures["running_mean_counted"] == pytest.approx(4.95) and figures["counted_held_raw"] == 5.6
    assert vllm["running_mean_counted"] == 5.6  # the recorded figure is untouched
    little = [c for c in diagnosis.consistency_checks([step], {}, 0.03) if c.name.startswith("Little's law")]
    assert little[0].ok and "counted 5.6, within the ±1.2 the window's edges allow" in little[0].detail
    vllm["running_mean_counted"] = 6.5  # more than the edges explain: kept, and over the client
    assert "counted_held_raw" not in diagnosis.engine_figures(step)
    assert diagnosis.engine_figures(step)["running_mean_counted"] == 6.5


def test_a_gap_within_the_counted_figure_s_error_is_no_wait_in_front() -> None:
    """A fresh capstone's 5-user step: client 5.0 in flight, vLLM's counted mean 4.0 over an 8-s window of
    ~1-s requests (good to about ±1.1 by the window's edges; here 3.9 and ±1.2): no finding; a larger gap
    still is one."""
    vllm: dict[str, Any] = {"running_avg": 3.0, "waiting_avg": 0.0, "running_mean_counted": 3.9,
                            "waiting_mean_counted": 0.0}
    step: Step = {"concurrency": 5, "steady_start": 0.0, "steady_end": 8.0,
                  "client": {"in_flight_avg": 5.0, "e2e_p50_s": 1.0, "e2e_p95_s": 1.2}, "server": {"vllm": vllm}}
    wait = diagnosis.where_waited(step)
    assert wait is not None and wait.uncertainty == pytest.approx(5.0 * 1.2 / 5)
    assert not wait.front_of_engine and not wait.over_client
    assert wait.verdict() == "within the counted figure's error (±1.2)"
    little = [c for c in diagnosis.consistency_checks([step], {}, 0.03) if c.name.startswith("Little's law")]
    assert little[0].ok and "within the ±1.2 that vLLM's counted figure allows" in little[0].detail
    vllm["running_mean_counted"] = 2.5
    wait = diagnosis.where_waited(step)
    assert wait is not None and wait.front_of_engine and wait.verdict() == "undetermined"
    vllm.update(running_avg=4.0, running_mean_counted=3.5)  # the gauges' figure: no counted edge error
    wait = diagnosis.where_waited(step)
    assert wait is not None and wait.uncertainty == 0.0 and wait.front_of_engine


def test_the_wait_verdict_names_a_gap_under_the_threshold_instead_of_calling_it_none() -> None:
    """The H200 default run's 280-user step had 40 of 279 requests in front of the engine (14%, under the
    15% that makes a finding) and the table said "no wait in front"."""
    def wait(in_front: float, client: float = 279.4, **kw: Any) -> diagnosis.Wait:
        return diagnosis.Wait(concurrency=280, client_in_flight=client, engine_held=client - in_front,
                              engine_waiting=0.0, in_front=in_front, where="vLLM's API server", evidence=[], **kw)
    assert wait(40.1).verdict() == "minor (14% of those in flight; a finding from 15%)"
    assert wait(0.4).verdict() == "no wait in front"
    assert wait(108.5).verdict() == "vLLM's API server"
    assert wait(-60.0).verdict() == "vLLM held more than the client sent"


def test_collector_in_flight_is_counted_where_the_gauge_has_two_scrapes() -> None:
    """A fresh capstone step read the collector's gauge as 0.5 in flight with 5 users sending: its two
    scrapes in an 8-s window, one before the first request and one where every user's request had just
    ended together. Its own request times, summed, say 5 (held to the client's figure within the edge
    error); with failures (not timed) or long requests the gauge's in-window samples stand."""
    collector: dict[str, Any] = {"in_flight_avg": 0.5, "in_flight_counted": 5.2}
    client: dict[str, Any] = {"in_flight_avg": 4.97, "e2e_p50_s": 1.0, "e2e_p95_s": 1.07, "errors": 0}
    step: Step = {"concurrency": 5, "steady_start": 0.0, "steady_end": 8.0, "client": client,  # type: ignore[typeddict-item]
                  "server": {"collector": collector, "vllm": {}}}
    assert diagnosis.collector_in_flight(step) == pytest.approx(4.97)
    collector["in_flight_counted"] = 4.6
    assert diagnosis.collector_in_flight(step) == pytest.approx(4.6)
    client["errors"] = 3
    assert diagnosis.collector_in_flight(step) == pytest.approx(0.5)
    client.update(errors=0, e2e_p50_s=diagnosis.SCRAPE_INTERVAL_S + 1)
    assert diagnosis.collector_in_flight(step) == pytest.approx(0.5)
    # 20 users, 3-s requests in an 8-s window: the count came out at 9.2, the gauge's scrapes at 20
    client.update(e2e_p50_s=3.2, e2e_p95_s=6.0, in_flight_avg=19.9)
    collector.update(in_flight_avg=20.0, in_flight_counted=9.2)
    assert diagnosis.collector_in_flight(step) == pytest.approx(20.0)
    client.update(e2e_p50_s=diagnosis.SCRAPE_INTERVAL_S + 1)
    del collector["in_flight_avg"]
    assert diagnosis.collector_in_flight(step) is None


def test_evidence_shows_a_first_bucket_quantile_as_its_bound() -> None:
    """A fresh capstone's evidence said "p95 queue time (vLLM): 0.285 at 5 users": histogram_quantile inside
    vLLM's first queue-time bucket (0-300 ms) with nothing ever waiting. Only the bound is known."""
    steps = {s["concurrency"]: s for s in load_run(EXAMPLE / "20261201-170350-gpu-kv-fill")["steps"]}
    good, bad = steps[160], steps[400]
    _, evidence = broke_first(good, bad, True, {"kv_cache_usage_ratio": 0.9})
    # both interpolated inside vLLM's 2.5-5 s bucket: shown with it (the rise lies within one bucket)
    assert "p95 queue time (vLLM), ms: 3,763 (2,500-5,000) at 160 users -> 4,992 (2,500-5,000) at 400 users" in evidence
    vllm = diagnosis.get_path(good, "server", "vllm")
    vllm.update(queue_p95_s=0.285, queue_mean_s=0.0)
    vllm.pop("queue_p95_bucket_s", None)
    _, evidence = broke_first(good, bad, True, {"kv_cache_usage_ratio": 0.9})
    assert "p95 queue time (vLLM), ms: ≤ 300 (mean 0.0) at 160 users -> 4,992 (2,500-5,000) at 400 users" in evidence


def test_queueing_is_attributed_from_the_gauges() -> None:
    thresholds = {"kv_cache_usage_ratio": 0.9}
    assert queueing_cause(400, 0.94, 400, 65, thresholds).startswith("queueing at a nearly full KV cache")
    # a queue already there at the last good step with the cache far from full is not the cache's doing
    assert queueing_cause(400, 0.94, 400, 65, thresholds, (160, 47, 0.37)).startswith("queueing for prefill")
    assert queueing_cause(64, 0.2, 32, 30, thresholds).startswith("queueing at a batch limit: vLLM ran at most 32")
    assert queueing_cause(64, 0.2, 64, 5, thresholds).startswith("queueing for prefill")


def test_the_h200_worked_example_names_vllms_api_server_and_the_decode_bound_kv_run(tmp_path: Path) -> None:
    """The project's own run on an H200 (scripts/gpu-run), re-analysed from its results.json."""
    default = load_run(EXAMPLE / "20261201-151031-default")
    analysis = analyse(default)
    assert analysis.what_broke_first.startswith("front-end: requests waited in front of the engine, in vLLM's API")
    assert "vLLM's API-server process used 1.01 of a core" in analysis.evidence
    peak = analysis.throughput_knee
    assert peak is not None and (peak.peak_concurrency, round(peak.peak_tok_s)) == (160, 13857)
    assert analysis.usl is not None and analysis.usl.fits and analysis.usl.peak_n is not None
    assert 120 < analysis.usl.peak_n < 200  # the fitted peak agrees with the measured one
    # Long prompts and answers past the KV cache (814,368 tokens): 160, 400, 640 users. The queue was there
    # at 160 already (closed-loop waves of 1,000-token prefills), the cache reached 94% at 400 and filled
    # with 223 preemptions at 640.
    kv = analyse(load_run(next(EXAMPLE.glob("*-gpu-kv-fill"))))
    assert kv.what_broke_first.startswith("queueing for prefill"), kv.what_broke_first
    assert "KV cache reached 94%" in kv.what_broke_first
    top = next(r for r in kv.rows if r.concurrency == 640)
    assert any("KV cache 100%, 223 preemptions" in s for s in top.signals), top.signals
    # The remedy the default run's report named, applied: vLLM restarted with --api-server-count 4. At 320
    # users nothing waited in front of the engine any more and throughput doubled (10,819 -> 21,293 tok/s).
    remedy = load_run(EXAMPLE / "20261201-171244-default")
    assert analyse(remedy).what_broke_first.startswith("nothing")
    at_320 = {s["concurrency"]: s for s in remedy["steps"]}[320]
    wait = diagnosis.where_waited(at_320)
    assert wait is not None and not wait.front_of_engine
    before = {s["concurrency"]: s for s in default["steps"]}[320]
    assert at_320["client"]["output_tok_s"] > 1.9 * before["client"]["output_tok_s"]
    # every example run re-renders from its folder alone
    run = rendered_copy(next(EXAMPLE.glob("*-capstone")), tmp_path)
    assert "NVIDIA H200" in (run / "report.md").read_text()
    # a counted occupancy is shown with what the window's edges can move it by (320 users: 128.5 of 319
    # counted in vLLM, gauges 210.8), and a gap under the finding threshold is named, not called none
    report = (rendered_copy(EXAMPLE / "20261201-151031-default", tmp_path / "default") / "report.md").read_text()
    def rows(section: str) -> dict[str, str]:
        text = report.split(f"## {section}")[1].split("\n## ")[0]
        return {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    server = rows("Server side per step")
    assert "128.5 / 0.0 (±100.4)" in server["| 320"] and "(±" not in server["| 1"]
    assert "minor (14% of those in flight; a finding from 15%)" in rows("Where requests waited")["| 280"]


def test_a_cpu_run_with_bunched_delivery_prints_no_impossible_per_user_speed(tmp_path: Path) -> None:
    """Recorded on this project's CPU harness with the first generated model (hidden 256, 2 layers), vLLM beside
    a private stack (VLLM_URL): the API server delivered 900-token answers in bursts, so the client timed
    982,016 tok/s for one stream. The report must show vLLM's own per-stream rate instead, flagged, and name the
    front-end wait it measured."""
    run = rendered_copy(ROOT / "tests" / "data" / "cpu-tiny-bunched", tmp_path)
    analysis = analyse(load_run(run))
    one = analysis.rows[0]
    assert one.concurrency == 1 and one.user_tok_s is not None and one.user_tok_s < 2_000
    assert one.user_tok_s_source.startswith("vLLM")
    assert any("bunched" in f for f in analysis.flags)
    report = (run / "report.md").read_text()
    table = report.split("## Envelope table")[1].split("##")[0]
    assert "982,016" not in table and "(vLLM)" in table
    assert analysis.envelope.count("by vLLM's clock") == 1
    assert analysis.what_broke_first.startswith("front-end: requests waited in front of the engine")
    # no GPU: no percentage of some GPU's bandwidth
    assert "Not applicable: no GPU was visible" in report


def test_a_real_connect_timeout_outage_is_named_at_the_collector(tmp_path: Path) -> None:
    """Recorded with scripts/record_fault_run.py on the native stack: vLLM's upstream stopped accepting
    connections after the 2-user step, and every request of the 4-user step got the collector's 503. The
    report used to say only "http_5xx" and explain the fall in throughput as "more users only add waiting"."""
    run = rendered_copy(ROOT / "tests" / "data" / "cpu-connect-timeout", tmp_path)
    analysis = analyse(load_run(run))
    assert analysis.what_broke_first.startswith("errors: 100.0% of requests failed"), analysis.what_broke_first
    assert "upstream_connect_timeout at the collector" in analysis.what_broke_first
    report = (run / "report.md").read_text()
    assert "past the peak, requests failed (48 errors at 4 users)" in report
    assert "only add waiting" not in report


def test_errors_are_named_by_kind_and_source() -> None:
    """The 503s a bend-native run got were the collector's upstream connect timeout: the report names that,
    not only k6's status class."""
    from loadgen.report.analysis import error_kinds

    step: Step = {"client": {"errors": 3, "error_kinds": {"http_5xx": 3}},
                            "server": {"collector_errors": {"upstream_connect_timeout": 3.0, "client_disconnect": 0.2}}}
    assert error_kinds(step) == "3 http_5xx at the client, 3 upstream_connect_timeout at the collector"


def test_an_open_loop_s_slow_readers_and_few_scrapes_are_no_other_traffic() -> None:
    """A short rate step (8-s window) with slow readers, as CI recorded it: at 1 req/s vLLM's gauge read 1.5
    running from one scrape with 0.5 open at k6; at 3 req/s vLLM counted 3.4 with 2.4 open at k6 and the
    run's slow readers keeping 2.3 more open. Both were flagged "vLLM held more than the client sent (other
    traffic on the server?)": the traffic was the run's own, and one scrape of random arrivals says little."""
    def rate_step(rate: float, vllm: dict[str, Any], client: dict[str, Any], slow: float | None) -> Step:
        step: Step = {"concurrency": rate, "mode": "rate", "steady_start": 0.0, "steady_end": 8.0,
                      "client": client, "server": {"vllm": vllm}}  # type: ignore[typeddict-item]
        if slow is not None:
            step["slow_readers"] = {"requests": 4, "ok": 4, "in_flight_avg": slow}
        return step
    low = rate_step(1.0, {"running_avg": 1.5, "waiting_avg": 0.0, "running_mean_counted": 0.79},
                    {"in_flight_avg": 0.49, "e2e_p50_s": 0.40, "e2e_p95_s": 0.50}, 0.2)
    assert diagnosis.gauge_sampling_error(low, 0.49) == pytest.approx(2 * (0.49 / 1) ** 0.5)
    wait = diagnosis.where_waited(low)
    assert wait is not None and not wait.counted and not wait.over_client and not wait.front_of_engine
    assert wait.verdict() == "the run's slow readers (up to 0.2 more in vLLM) and the gauge's error (±1.4)"
    high = rate_step(3.0, {"running_avg": 2.0, "waiting_avg": 0.0, "running_mean_counted": 3.38},
                     {"in_flight_avg": 2.36, "e2e_p50_s": 0.46, "e2e_p95_s": 0.97}, 2.3)
    wait = diagnosis.where_waited(high)
    assert wait is not None and wait.counted and not wait.over_client
    assert wait.verdict() == "the run's slow readers (up to 2.3 more in vLLM)"
    little = [c for c in diagnosis.consistency_checks([high], {}, 0.03) if c.name.startswith("Little's law")]
    assert little[0].ok and "account for vLLM's excess" in little[0].detail
    # without slow readers the excess stands as a doubt; a closed loop's gauge has no sampling allowance
    high.pop("slow_readers")
    wait = diagnosis.where_waited(high)
    assert wait is not None and wait.over_client and wait.verdict() == "vLLM held more than the client sent"
    closed = {**low, "mode": "concurrency"}
    assert diagnosis.gauge_sampling_error(closed, 0.49) == 0.0  # type: ignore[arg-type]
