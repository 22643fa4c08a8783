"""The peer benchmark's pure logic (loadgen.bench): reading vLLM's counters, finding the window in which they moved,
and reading each peer tool's result files (shapes copied from real runs of vllm bench serve 0.32,
GuideLLM 0.8.1 and AIPerf 0.13.0 against the native stack). The peer tools themselves are too heavy for CI:
scripts/bench_peers.py runs them."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from loadgen.bench import counters, peer_tools, peers
from loadgen.results import RunResults
from loadgen.settings import ROOT

METRICS = """\
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="qwen3-tiny-dummy"} 3188.0
vllm:generation_tokens_total{engine="0",model_name="other-model"} 5.0
vllm:prompt_tokens_total{engine="0",model_name="qwen3-tiny-dummy"} 9100.0
vllm:num_requests_running{engine="0",model_name="qwen3-tiny-dummy"} 2.0
vllm:num_requests_waiting{engine="0",model_name="qwen3-tiny-dummy"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="qwen3-tiny-dummy"} 0.93
vllm:num_preemptions_total{engine="0",model_name="qwen3-tiny-dummy"} 6.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="qwen3-tiny-dummy"} 1.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="qwen3-tiny-dummy"} 72.0
vllm:request_success_total{engine="0",finished_reason="abort",model_name="qwen3-tiny-dummy"} 3.0
vllm:request_success_total{engine="0",finished_reason="error",model_name="qwen3-tiny-dummy"} 0.0
vllm:request_success_total{engine="0",finished_reason="repetition",model_name="qwen3-tiny-dummy"} 2.0
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="qwen3-tiny-dummy"} 40.0
process_cpu_seconds_total 12.5
"""


def test_counters_are_summed_per_model_and_finish_reason() -> None:
    s = counters.parse_vllm_metrics(METRICS, "qwen3-tiny-dummy")
    assert s.generation_tokens == 3188.0  # the other model's 5 tokens are not counted
    assert s.prompt_tokens == 9100.0
    assert s.requests_finished == 75.0  # stop + length + repetition
    assert s.requests_aborted == 3.0
    assert s.requests_errored == 0.0
    assert (s.running, s.waiting, s.kv_cache_usage, s.preemptions) == (2.0, 1.0, 0.93, 6.0)


def test_without_a_model_every_label_set_counts_and_junk_lines_are_skipped() -> None:
    text = METRICS + "garbage line without value\nvllm:generation_tokens_total{model_name=\"x\"} NaN\n"
    assert counters.parse_vllm_metrics(text).generation_tokens == 3193.0


def _samples(points: Sequence[tuple[float, float]]) -> list[tuple[float, counters.ServerSample]]:
    return [(t, counters.ServerSample(generation_tokens=g, requests_finished=g // 100, prompt_tokens=g / 2))
            for t, g in points]


def test_window_spans_the_counter_moves_with_half_interval_ends() -> None:
    # idle 0..2 s (tool start-up), tokens from 2.x s to 6.x s, idle after.
    points = [(0.0, 0), (1.0, 0), (2.0, 0), (3.0, 300), (4.0, 700), (5.0, 1100), (6.0, 1200), (7.0, 1200)]
    w = counters.active_window(_samples(points))
    assert w is not None
    assert (w.start, w.end) == (2.5, 5.5)
    assert w.generation_tokens == 1200
    assert w.tok_s == pytest.approx(400.0)
    assert w.requests_finished == 12
    assert w.prompt_tokens == 600


def test_window_keeps_the_biggest_stretch_not_a_warm_up_request_before_it() -> None:
    # vllm bench serve sends one test request, then waits a few seconds, then the run.
    points = [(0.0, 0), (1.0, 128), (2.0, 128), (3.0, 128), (4.0, 128), (5.0, 128), (6.0, 600), (7.0, 1100),
              (8.0, 1152), (9.0, 1152)]
    w = counters.active_window(_samples(points))
    assert w is not None
    assert w.start == 5.5
    assert w.generation_tokens == 1152 - 128


def test_no_movement_means_no_window() -> None:
    assert counters.active_window(_samples([(0.0, 10), (1.0, 10)])) is None
    assert counters.active_window([]) is None


def test_peaks_report_gauge_maxima_and_counter_deltas() -> None:
    samples = [(0.0, counters.ServerSample(kv_cache_usage=0.2, waiting=0, preemptions=1, requests_finished=10)),
               (1.0, counters.ServerSample(kv_cache_usage=0.96, waiting=13, preemptions=4, requests_finished=12)),
               (2.0, counters.ServerSample(kv_cache_usage=0.5, waiting=2, preemptions=7, requests_finished=30))]
    p = counters.peaks(samples)
    assert p["kv_cache_usage_max"] == 0.96
    assert p["waiting_max"] == 13
    assert p["preemptions"] == 6
    assert p["requests_finished"] == 20
    assert counters.peaks([]) == {}


VLLM_BENCH_RESULT = {"completed": 16, "failed": 0, "total_output_tokens": 2048, "duration": 9.768,
                     "output_throughput": 209.66, "median_ttft_ms": 396.04, "p50_ttft_ms": 396.04,
                     "p95_e2el_ms": 3414.45}


def test_vllm_bench_result() -> None:
    r = peer_tools.parse_vllm_bench(VLLM_BENCH_RESULT)
    assert (r.output_tok_s, r.ttft_p50_ms, r.e2e_p95_ms, r.requests_ok, r.output_tokens) == (
        209.66, 396.04, 3414.45, 16, 2048)


def _dist(p50: float, p95: float, mean: float, total: float) -> dict[str, object]:
    return {"mean": mean, "total_sum": total, "percentiles": {"p50": p50, "p95": p95}}


GUIDELLM_REPORT = {"benchmarks": [{"config": {"strategy": {"type_": "concurrent", "streams": 4}}, "metrics": {
    "request_totals": {"successful": 16, "errored": 0, "incomplete": 0, "total": 16},
    "output_tokens_per_second": {"successful": _dist(165.9, 518.4, 210.3, 430708.3),
                                 "total": _dist(165.9, 518.4, 210.3, 430708.3)},
    "time_to_first_token_ms": {"successful": _dist(360.8, 568.3, 353.6, 5656.9)},
    "request_latency": {"successful": _dist(2.43, 2.95, 2.4, 38.4)},
    "output_token_count": {"successful": _dist(128, 128, 128, 2048)},
}}], "conclusions": []}


def test_guidellm_report_latency_seconds_become_ms() -> None:
    r = peer_tools.parse_guidellm(GUIDELLM_REPORT)
    assert r.output_tok_s == 210.3
    assert r.ttft_p50_ms == 360.8
    assert r.e2e_p95_ms == pytest.approx(2950.0)
    assert (r.requests_ok, r.output_tokens) == (16, 2048)


def test_a_missing_section_is_none_not_a_crash() -> None:
    r = peer_tools.parse_guidellm({"benchmarks": []})
    assert r.output_tok_s is None and r.requests_ok is None
    assert peer_tools.parse_vllm_bench({}).output_tok_s is None


AIPERF_EXPORT = {"output_token_throughput": {"unit": "tokens/sec", "avg": 335.93},
                 "time_to_first_token": {"unit": "ms", "avg": 384.1, "p50": 315.8, "p95": 996.1},
                 "request_latency": {"unit": "ms", "avg": 1552.2, "p50": 1555.1, "p95": 1710.6},
                 "completed_request_count": {"unit": "requests", "avg": 16.0},
                 "request_count": {"unit": "requests", "avg": 16.0},
                 "total_output_tokens": {"unit": "tokens", "avg": 2150.0},
                 "total_usage_completion_tokens": {"unit": "tokens", "avg": 2048.0}}


def test_aiperf_export_and_its_retokenized_token_count_is_flagged() -> None:
    r = peer_tools.parse_aiperf(AIPERF_EXPORT)
    assert (r.output_tok_s, r.ttft_p50_ms, r.e2e_p95_ms, r.requests_ok) == (335.93, 315.8, 1710.6, 16)
    assert r.notes and "+5.0%" in r.notes[0]
    same = peer_tools.parse_aiperf({**AIPERF_EXPORT, "total_output_tokens": {"avg": 2048.0}})
    assert same.notes == []


def test_rate_between_interpolates_the_counter() -> None:
    samples = [(0.0, 0.0), (1.0, 100.0), (2.0, 300.0), (3.0, 600.0)]
    assert counters.rate_between(samples, 0.5, 2.5) == pytest.approx((450.0 - 50.0) / 2.0)
    assert counters.rate_between(samples, 1.0, 3.0) == pytest.approx(250.0)
    assert counters.rate_between(samples, 2.0, 4.0) is None  # past the last sample: unknown, not a guess
    assert counters.rate_between(samples, 2.0, 2.0) is None


def test_loadgen_is_compared_with_vllm_over_its_own_steady_window() -> None:
    measured = _measured()
    measured.generation_samples = [(0.0, 0.0), (10.0, 1000.0), (20.0, 5000.0), (30.0, 6000.0)]
    row = peers.ThroughputRow("loadgen", 1, peer_tools.Reported(output_tok_s=390.0, window=(10.0, 20.0)), measured)
    assert row.vllm_tok_s == pytest.approx(400.0)  # not the whole active window's 4000 / 10 s
    assert row.ratio == pytest.approx(0.975)


def test_loadgen_step_and_its_missing_steps() -> None:
    results: RunResults = {"ttfb_is_ttft": True, "steps": [
        {"status": "done", "concurrency": 8, "steady_start": 100.0, "steady_end": 116.0,
         "client": {"output_tok_s": 512.0, "ttft_p50_s": 0.2, "e2e_p95_s": 1.5, "ok": 40},
         "throughput_check": {"vllm_tok_s": 520.0, "client_tok_s": 510.0, "client_over_vllm": 0.981}}]}
    r = peer_tools.parse_loadgen_step(results)
    assert (r.output_tok_s, r.ttft_p50_ms, r.e2e_p95_ms, r.requests_ok) == (512.0, 200.0, 1500.0, 40)
    assert r.notes == ["loadgen's own cross-check against vLLM (Prometheus): client/vLLM = 0.981"]
    assert r.window == (100.0, 116.0)
    empty = peer_tools.parse_loadgen_step({"steps": [], "missing": ["k6 crashed"]})
    assert empty.output_tok_s is None and "k6 crashed" in empty.notes[0]


def test_guidellm_goodput_probes_from_the_search_conclusion() -> None:
    report = {"benchmarks": [{"config": {"strategy": {"streams": s}}} for s in (4, 8, 16, 12)],
              "conclusions": [{"probes": [
                  {"streams": 4, "attainment": 1.0}, {"streams": 8, "attainment": 1.0},
                  {"streams": 16, "attainment": 0.4}, {"streams": 12, "attainment": 0.97}],
                  "best_passing_streams": 12, "lowest_failing_streams": 16, "stop_reason": "converged"}]}
    g = peer_tools.parse_guidellm_goodput(report)
    assert g["streams"] == [4, 8, 16, 12]
    assert (g["best_passing"], g["lowest_failing"], g["stop_reason"], g["count"]) == (12, 16, "converged", 4)


GUIDELLM_LOG = """\
26-11-23 17:48:22|INFO |progress:_log_update:420 - Benchmark 1 (concurrent@4): started | elapsed=0.0s
26-11-23 17:49:18|INFO |progress:_log_update:420 - Benchmark 1 (concurrent@4): completed | elapsed=55.3s
26-11-23 17:49:18|INFO |progress:_log_update:420 - Benchmark 2 (concurrent@8): started | elapsed=0.0s
26-11-23 17:50:37|INFO |progress:_log_update:420 - Benchmark 3 (concurrent@16): started | elapsed=0.0s
  File "/x/guidellm/benchmark/profiles/goodput.py", line 210, in _record_probe
    raise RuntimeError(
RuntimeError: The goodput profile requires latency objectives that can be measured on this workload. No request
"""


def test_guidellm_probes_and_its_error_from_the_log_when_it_died_without_a_report() -> None:
    assert peer_tools.guidellm_log_probes(GUIDELLM_LOG) == [4, 8, 16]
    assert (peer_tools.last_python_error(GUIDELLM_LOG) or "").startswith("RuntimeError: The goodput profile requires")
    assert peer_tools.last_python_error("all fine") is None


def test_goodput_from_attainment_ignores_passes_above_the_first_failure() -> None:
    assert peer_tools.goodput_from_attainment([4, 8, 16, 32], [1.0, 0.96, 0.5, 0.99], 0.95) == (8, 16)
    assert peer_tools.goodput_from_attainment([4, 8], [1.0, None], 0.95) == (4, None)
    assert peer_tools.goodput_from_attainment([1], [0.2], 0.95) == (None, 1)


def test_aiperf_search_history() -> None:
    history = {"iterations": [
        {"iteration_idx": 0, "variation_values": {"phases.profiling.concurrency": 1}, "feasible": True},
        {"iteration_idx": 1, "variation_values": {"phases.profiling.concurrency": 32}, "feasible": False},
        {"iteration_idx": 2, "variation_values": {"phases.profiling.concurrency": 16}, "feasible": True}],
        "boundary_summary": {"feasible_max": {"value": 16}, "infeasible_min": {
            "value": 32, "first_breach": {"metric_tag": "time_to_first_token", "stat": "p95", "observed": 4100.0,
                                          "threshold": 1000.0}}},
        "convergence_reason": "monotonic_precision_reached"}
    s = peer_tools.parse_aiperf_search(history)
    assert s["concurrencies"] == [1, 32, 16]
    assert s["feasible"] == [True, False, True]
    assert (s["feasible_max"], s["infeasible_min"], s["reason"]) == (16, 32, "monotonic_precision_reached")


def _measured(**server: float) -> peers.Measured:
    return peers.Measured(command=["x"], exit_code=0, wall_s=30.0, cpu_s=12.0, timed_out=False, log="log",
                       window=counters.Window(start=10.0, end=20.0, generation_tokens=4000.0, requests_finished=30,
                                        prompt_tokens=4000),
                       server=server, busy_before=False, sampler_failures=0)


def test_ratio_and_other_traffic_detection() -> None:
    row = peers.ThroughputRow("guidellm", 1, peer_tools.Reported(output_tok_s=380.0, requests_ok=30),
                           _measured(requests_finished=31))
    assert row.vllm_tok_s == 400.0
    assert row.ratio == pytest.approx(0.95)
    assert peers.other_traffic(row) is None  # one extra request (a tool's own check) is tolerated
    busy = peers.ThroughputRow("aiperf", 1, peer_tools.Reported(output_tok_s=380.0, requests_ok=30),
                            _measured(requests_finished=45))
    assert "vLLM finished 45 requests, the tool reports 30" in (peers.other_traffic(busy) or "")


def test_tables_carry_every_run_and_the_medians() -> None:
    rows = [peers.ThroughputRow("vllm-bench", n, peer_tools.Reported(output_tok_s=v, ttft_p50_ms=100.0, requests_ok=30),
                             _measured(requests_finished=30)) for n, v in ((1, 390.0), (2, 410.0))]
    rows.append(peers.ThroughputRow("loadgen", 1, peer_tools.Reported(), None, "not run: no loadgen"))
    every = peers.throughput_table(rows)
    assert every.count("\n") == 1 + 3
    assert "| vllm-bench | 2 | 410 | 400 | 1.025 |" in every
    assert "| 30 | 133 |" in every  # requests ok, then vLLM's prompt tokens per request (4000 / 30)
    assert "not run: no loadgen" in every
    summary = peers.throughput_summary(rows)
    assert "| vllm-bench | 2 / 2 | 400 | 400 | 1.000 |" in summary
    assert "| loadgen | 0 / 0 | - | - | - |" in summary
    # A round with someone else's traffic on the server is left out of the medians.
    rows.append(peers.ThroughputRow("vllm-bench", 3, peer_tools.Reported(output_tok_s=900.0, requests_ok=30),
                                 _measured(requests_finished=80)))
    assert "| vllm-bench | 2 / 3 | 400 | 400 | 1.000 |" in peers.throughput_summary(rows)


def test_knee_table_says_no_when_a_tool_gives_no_reason() -> None:
    table = peers.knee_table([
        peers.KneeResult("guidellm", "goodput", steps=5, concurrencies=[4, 8, 16, 12, 14], wall_s=300, answer=12,
                      first_failing=14, converged="converged", server={"kv_cache_usage_max": 0.96,
                                                                       "waiting_max": 3, "preemptions": 2}),
        peers.KneeResult("loadgen", "knee", steps=4, answer=12, says_why="KV cache | preemptions 6")])
    assert "| guidellm | goodput | 5 | 4, 8, 16, 12, 14 | 300 | - | 12 | 14 | converged | no | 96%, 3, 2 |" in table
    assert "KV cache / preemptions 6" in table  # a pipe inside a cell would break the markdown row


@pytest.mark.parametrize("argv, message", [
    (["--tools", "vllm-bench,locust"], "unknown locust"),
    (["--rounds", "0"], "--rounds"),
    (["--slo-ttft-p95-s", "-1"], "--slo-ttft-p95-s"),
])
def test_bad_arguments_get_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        peers.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_commands_send_load_to_the_target_only_with_the_same_workload() -> None:
    target = peer_tools.Target(api_url="http://127.0.0.1:8001", via="collector", metrics_url="http://127.0.0.1:8000/metrics",
                       prometheus_url="http://127.0.0.1:9090", model="m", tokenizer_dir=ROOT / "var" / "model")
    w = peer_tools.throughput_workload(quick=True)
    vb = peer_tools.vllm_bench_command(target, w, ROOT / "var" / "x")
    assert vb[vb.index("--base-url") + 1] == "http://127.0.0.1:8001"
    assert vb[vb.index("--max-concurrency") + 1] == str(w.concurrency)
    assert "--ignore-eos" in vb
    scenario = peer_tools.guidellm_scenario(target, prompt_tokens=w.prompt_tokens, output_tokens=w.output_tokens,
                                    profile={"kind": "concurrent", "streams": [w.concurrency]}, constraints=[],
                                    out_json=ROOT / "x.json", slo_ttft_ms=1000)
    assert scenario["spec"]["backend"]["target"] == "http://127.0.0.1:8001"
    assert scenario["spec"]["metrics"]["slo"] == {"ttft_ms": 1000}
    ap = peer_tools.aiperf_base(target, w.prompt_tokens, w.output_tokens, ROOT / "x")
    assert ap[ap.index("--url") + 1] == "http://127.0.0.1:8001"
    assert ap[ap.index("--server-metrics") + 1] == "http://127.0.0.1:8000/metrics"
    assert ap[ap.index("--extra-inputs") + 1] == "ignore_eos:true"
