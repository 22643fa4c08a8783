"""Turns measured steps into operational judgment: the envelope table, the knee, what broke first
(with server-side evidence), TTFT three ways, the bandwidth limit and the plain-English envelope."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loadgen import arrivals, knee, rate_mode
from loadgen.plan import Plan, plan_from_dict
from loadgen.report import diagnosis
from loadgen.results import RunResults, Step, done_steps
from loadgen.thresholds import load_thresholds

# k6 is multi-threaded: it is CPU-bound when it uses most of the cores it can run on.
CLIENT_CPU_BOUND_SHARE = 0.8
THROUGHPUT_AGREEMENT = 0.10  # client vs vLLM counter tok/s further apart than this is flagged
HOST_CPU_SATURATED = diagnosis.HOST_CPU_SATURATED


@dataclass
class Row:
    concurrency: float  # users; in a rate sweep, offered requests/s
    output_tok_s: float | None
    vllm_tok_s: float | None
    vllm_tok_s_whole_step: bool  # over the whole step (runs recorded before the steady-window query), not the window
    user_tok_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_source: str
    user_tok_s_source: str  # "client", or "vLLM (1 / mean ITL; client saw bunched tokens)"
    e2e_p95_s: float | None
    requests: int
    errors: int
    slo_ok: bool
    broken: list[str]
    signals: list[str]


@dataclass
class Analysis:
    rows: list[Row]
    knee: knee.Knee
    what_broke_first: str
    evidence: list[str]
    envelope: str
    ttft_three_ways: list[dict[str, Any]]
    ttft_gap_note: str
    bandwidth: dict[str, Any]
    flags: list[str] = field(default_factory=list)
    first_signal: str | None = None
    waits: list[diagnosis.Wait] = field(default_factory=list)
    throughput_knee: diagnosis.ThroughputKnee | None = None
    usl: diagnosis.UslFit | None = None
    checks: list[diagnosis.Check] = field(default_factory=list)
    client_signals: list[str] = field(default_factory=list)


_get = diagnosis.get_path


def waiting_peak(vllm: dict[str, Any]) -> float | None:
    """Requests waiting inside vLLM: the gauge's peak at scrape instants, or the mean counted from the
    queue-time histogram (Little's law), whichever shows more; short waits slip between scrapes."""
    values = [v for v in (vllm.get("waiting_max"), vllm.get("waiting_mean_counted")) if v is not None]
    return max(values) if values else None


def running_peak(vllm: dict[str, Any]) -> float | None:
    values = [v for v in (vllm.get("running_max"), vllm.get("running_mean_counted")) if v is not None]
    return max(values) if values else None


def queueing_cause(users: float, kv: float | None, running: float | None, waiting: float,
                   thresholds: dict[str, float],
                   good: tuple[float, float | None, float | None] | None = None) -> str:
    """Why requests waited inside vLLM, from what its gauges showed at the step. `good` is the last good
    step's (users, waiting peak, KV peak): a queue already there with the cache far from full was not the
    cache's doing."""
    kv_full = kv is not None and kv >= thresholds.get("kv_cache_usage_ratio", 0.9)
    if good is not None and kv_full:
        good_users, good_waiting, good_kv = good
        if (good_waiting or 0) >= 0.5 * waiting and good_kv is not None and good_kv < 0.5 * (kv or 0):
            return (f"queueing for prefill: up to {waiting:.0f} requests waited for the engine's prefill budget "
                    f"(already {good_waiting:.0f} at {good_users:.0f} users with the KV cache at {good_kv:.0%}), "
                    f"TTFT climbed, and the KV cache reached {kv:.0%}")
    if kv_full:
        return (f"queueing at a nearly full KV cache: the cache reached {kv:.0%}, so vLLM admitted a new request "
                f"only when blocks freed; up to {waiting:.0f} requests waited and TTFT climbed")
    if running is not None and running < 0.9 * users:
        return (f"queueing at a batch limit: vLLM ran at most {running:.0f} sequences with {users:.0f} users sending "
                f"and the KV cache at {'n/a' if kv is None else format(kv, '.0%')} (its max_num_seqs or token budget); "
                f"up to {waiting:.0f} requests waited and TTFT climbed")
    return (f"queueing for prefill: up to {waiting:.0f} requests waited for a place in the engine's next steps "
            f"(arrivals faster than the prefill budget admits them) and TTFT climbed")


def step_signals(step: Step, thresholds: dict[str, float], host_cpu_counts: bool = True) -> list[str]:
    """Stress signals visible in a step's server-side metrics (and the client's errors)."""
    signals: list[str] = []
    vllm = diagnosis.engine_figures(step)
    host = _get(step, "server", "host") or {}
    client = step.get("client") or {}
    if step.get("hard_stop") and "memory" in str(step["hard_stop"]):
        signals.append("host memory under the floor")
    elif host.get("mem_available_min_bytes") and host.get("mem_total_bytes"):
        ratio = host["mem_available_min_bytes"] / host["mem_total_bytes"]
        if ratio < thresholds.get("host_memory_available_ratio", 0.1):
            signals.append(f"host memory available {ratio:.0%}")
    if client.get("errors"):
        signals.append(f"errors ({error_kinds(step)})")
    kv = vllm.get("kv_cache_usage_max")
    preemptions = vllm.get("preemptions") or 0
    if kv is not None and (kv >= thresholds.get("kv_cache_usage_ratio", 0.9) or preemptions >= 0.5):
        signals.append(f"KV cache {kv:.0%}" + (f", {preemptions:.0f} preemptions" if preemptions >= 0.5 else ""))
    waiting = waiting_peak(vllm)
    if waiting is not None and waiting >= 1:
        signals.append(f"queue: up to {waiting:.0f} waiting")
    wait = diagnosis.where_waited(step, host_cpu_counts)
    if wait is not None and wait.front_of_engine:
        signals.append(f"{wait.in_front:.0f} requests waited in front of the engine"
                       + (f" ({wait.where})" if wait.where and wait.where != "undetermined" else ""))
    api_cpu = vllm.get("api_server_cpu_cores")
    if api_cpu is not None and api_cpu >= diagnosis.PROCESS_SATURATED_CORES:
        signals.append(f"vLLM API server {api_cpu:.2f} core")
    collector_cpu = _get(step, "server", "collector", "cpu_cores")
    if collector_cpu is not None and collector_cpu >= diagnosis.PROCESS_SATURATED_CORES:
        signals.append(f"collector {collector_cpu:.2f} core")
    busy = host.get("cpu_busy_ratio")
    if host_cpu_counts and busy is not None and busy >= HOST_CPU_SATURATED:
        signals.append(f"host CPU {busy:.0%} busy")
    return signals


def error_kinds(step: Step) -> str:
    """Every error of a step by its precise kind and source: the client's status classes, and the
    collector's own error_type (e.g. upstream_connect_timeout) where it recorded the failure."""
    client = step.get("client") or {}
    parts = [f"{n} {k} at the client" for k, n in sorted((client.get("error_kinds") or {}).items())]
    by_type = _get(step, "server", "collector_errors") or {}
    parts += [f"{n:.0f} {k} at the collector" for k, n in sorted(by_type.items()) if n >= 0.5]
    return ", ".join(parts) or "none"


def _ttft(step: Step, ttfb_is_ttft: bool, q: str) -> tuple[float | None, str]:
    if ttfb_is_ttft:
        return _get(step, "client", f"ttft_{q}_s"), "client"
    return _get(step, "server", "vllm", f"ttft_{q}_s"), "vLLM"


def _rise(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before <= 0:
        return None
    return after / before


def broke_first(good: Step | None, bad: Step, ttfb_is_ttft: bool,
                thresholds: dict[str, float], host_cpu_counts: bool = True) -> tuple[str, list[str]]:
    """The cause of the first SLO-breaking step, and the evidence (last good step vs first bad)."""
    vb, vg = diagnosis.engine_figures(bad), diagnosis.engine_figures(good)
    cg = good["concurrency"] if good else None
    cb = bad["concurrency"]
    evidence = [f"SLO broken at {_n_users(cb)}: " + "; ".join(bad["slo"]["broken"])]
    ttft_good, _ = _ttft(good, ttfb_is_ttft, "p95") if good else (None, "")
    ttft_bad, source = _ttft(bad, ttfb_is_ttft, "p95")
    itl_good, itl_bad = vg.get("itl_p95_s"), vb.get("itl_p95_s")
    kv, preemptions = vb.get("kv_cache_usage_max"), vb.get("preemptions") or 0
    waiting_max, running_max = waiting_peak(vb), running_peak(vb)

    def line(label: str, before: Any, after: Any, fmt: str) -> str:
        prefix = f"{format(before, fmt)} at {_n_users(cg or 0)} -> " if (good and before is not None) else ""
        return f"{label}: {prefix}{'n/a' if after is None else format(after, fmt)} at {_n_users(cb)}"

    def quantile_line(label: str, metric: str) -> str:
        """A vLLM histogram p95, as it may honestly be shown ("≤ bound" inside the first bucket)."""
        before = diagnosis.server_quantile(vg, metric, "p95") if good else None
        prefix = (f"{before.text_ms()} at {_n_users(cg or 0)} -> "
                  if before is not None and before.value is not None else "")
        return f"{label}, ms: {prefix}{diagnosis.server_quantile(vb, metric, 'p95').text_ms()} at {_n_users(cb)}"

    client_cap, drop_evidence = rate_mode.drop_cause(bad)  # a rate step that dropped arrivals
    evidence += drop_evidence
    if client_cap is not None:
        return client_cap, evidence
    if bad.get("hard_stop") and "memory" in str(bad["hard_stop"]):
        evidence.append(str(bad["hard_stop"]))
        return "host memory: MemAvailable fell under the watchdog floor (unified memory would freeze the box)", evidence
    client = bad.get("client") or {}
    if client.get("error_ratio", 0) > 0 and any("error" in b for b in bad["slo"]["broken"]):
        kinds = error_kinds(bad)
        evidence.append(f"errors in the steady window: {kinds} of {client.get('requests')} requests")
        return f"errors: {client['error_ratio']:.1%} of requests failed ({kinds})", evidence
    if kv is not None and kv >= thresholds.get("kv_cache_usage_ratio", 0.9) and preemptions >= 0.5:
        evidence.append(line("KV cache usage peak", vg.get("kv_cache_usage_max"), kv, ".0%"))
        evidence.append(line("preemptions in the window", vg.get("preemptions"), preemptions, ".0f"))
        if waiting_max:
            evidence.append(line("requests waiting (peak)", waiting_peak(vg), waiting_max, ".0f"))
        evidence.append(line(f"p95 TTFT ({source})", ttft_good, ttft_bad, ".3f"))
        return (f"KV cache capacity: the cache filled ({kv:.0%}) and vLLM preempted {preemptions:.0f} requests "
                f"(recomputing them), so requests waited and latency climbed"), evidence
    ttft_rise = _rise(ttft_good, ttft_bad)
    if waiting_max is not None and waiting_max >= 1 and (ttft_rise is None or ttft_rise > 1.2):
        evidence.append(line("requests waiting (peak)", waiting_peak(vg), waiting_max, ".0f"))
        evidence.append(line("requests running (peak)", running_peak(vg), running_max, ".0f"))
        evidence.append(line(f"p95 TTFT ({source})", ttft_good, ttft_bad, ".3f"))
        if (_rise(vg.get("queue_p95_s"), vb.get("queue_p95_s")) or 0) > 1.2:
            evidence.append(quantile_line("p95 queue time (vLLM)", "queue"))
        before = (cg, waiting_peak(vg), vg.get("kv_cache_usage_max")) if cg is not None else None
        return queueing_cause(cb, kv, running_max, waiting_max, thresholds, before), evidence
    wait = diagnosis.where_waited(bad, host_cpu_counts)
    if wait is not None and wait.front_of_engine:
        evidence += wait.evidence
        evidence.append(line(f"p95 TTFT ({source})", ttft_good, ttft_bad, ".3f"))
        return "front-end: " + diagnosis.wait_sentence(wait), evidence
    # The mean inter-token latency is exact (_sum/_count); a p95 read off coarse buckets can hide the rise.
    itl_mean_good, itl_mean_bad = vg.get("itl_mean_s"), vb.get("itl_mean_s")
    itl_rise = _rise(itl_mean_good, itl_mean_bad) or _rise(itl_good, itl_bad)
    if itl_rise is not None and itl_rise > 1.3:
        if itl_mean_bad is not None:
            evidence.append(line("mean inter-token latency (vLLM)", itl_mean_good, itl_mean_bad, ".4f"))
        evidence.append(quantile_line("p95 inter-token latency (vLLM)", "itl"))
        evidence.append(line("requests running (peak)", running_peak(vg), running_max, ".0f"))
        evidence.append(line(f"p95 TTFT ({source})", ttft_good, ttft_bad, ".3f"))
        held = "while TTFT held" if ttft_rise is None or ttft_rise < itl_rise else (
            "and prefill, which rides on the same engine steps, slowed with it (TTFT rose too)")
        return (f"decode-bound: every engine step carried more sequences, so the time between tokens grew "
                f"{itl_rise:.1f}x {held}; no queue formed"), evidence
    evidence.append(line(f"p95 TTFT ({source})", ttft_good, ttft_bad, ".3f"))
    evidence.append(line("p95 total latency (client)", _get(good, "client", "e2e_p95_s") if good else None,
                         client.get("e2e_p95_s"), ".2f"))
    if itl_bad is not None:
        evidence.append(quantile_line("p95 inter-token latency (vLLM)", "itl"))
    busy = _get(bad, "server", "host", "cpu_busy_ratio")
    if host_cpu_counts and busy is not None and busy >= HOST_CPU_SATURATED:
        evidence.append(f"host CPUs {busy:.0%} busy")
        return ("host CPU: the host's CPUs were saturated while vLLM showed no queueing, KV pressure or errors; "
                "every process on the box (engine, front-ends, load client) competed for them"), evidence
    return ("latency grew with load; no queueing, KV pressure, front-end wait or errors visible on the server "
            "(server-side figures above)"), evidence


def ttft_three_ways(steps: list[Step]) -> list[dict[str, Any]]:
    rows = []
    for step in steps:
        server = step.get("server") or {}
        rows.append({
            "concurrency": step["concurrency"],
            "client_p50_s": _get(step, "client", "ttft_p50_s"), "client_p95_s": _get(step, "client", "ttft_p95_s"),
            "collector_p50_s": _get(server, "collector", "ttft_p50_s"),
            "collector_p95_s": _get(server, "collector", "ttft_p95_s"),
            "vllm_p50_s": _get(server, "vllm", "ttft_p50_s"),
            "vllm_p95_s": _get(server, "vllm", "ttft_p95_s"),
            # As they may honestly be shown (a quantile inside the first bucket is only a bound).
            "collector_p50": diagnosis.server_quantile(server.get("collector"), "ttft", "p50", "collector"),
            "collector_p95": diagnosis.server_quantile(server.get("collector"), "ttft", "p95", "collector"),
            "vllm_p50": diagnosis.server_quantile(server.get("vllm"), "ttft", "p50"),
            "vllm_p95": diagnosis.server_quantile(server.get("vllm"), "ttft", "p95"),
            "bunched": diagnosis.bunched(step),
        })
    return rows


def gap_note(rows: list[dict[str, Any]], ttfb_is_ttft: bool, verdict: str | None) -> str:
    """The three TTFTs at the least loaded step, from the measured parts only."""
    parts = []
    if not ttfb_is_ttft:
        if verdict == "undetermined":
            parts.append("The target sent its headers and first token together in every probe round and does not "
                         "say it holds the head, so whether k6's time to first byte is time to first token is "
                         "undetermined: the client column is time to first byte, and the SLO used vLLM's own TTFT.")
        else:
            parts.append("The target sends its response headers before the first token (it is not the collector), so "
                         "k6's time to first byte is NOT time to first token here: the client column is time to first "
                         "byte, and the SLO used vLLM's own TTFT.")
    complete = [r for r in rows if r["client_p50_s"] is not None and r["vllm_p50_s"] is not None]
    if complete:
        r = complete[0]
        client_ms = r["client_p50_s"] * 1000
        vllm_q: diagnosis.Quantile = r["vllm_p50"]
        collector_q: diagnosis.Quantile = r["collector_p50"]
        text = (f"At {_n_users(r['concurrency'])}, the least loaded step, p50 TTFT was {client_ms:,.1f} ms at the "
                f"client, {collector_q.text_ms()} ms at the collector and {vllm_q.text_ms()} ms inside vLLM "
                "(server figures are histogram quantiles: \"≤\" marks one that lies in the first bucket, a range the "
                "wide bucket one was interpolated in; the others are rounded to what their bucket resolves).")
        if collector_q.value is not None and not collector_q.upper_bound_only:
            text += (f" Client minus collector: {client_ms - collector_q.value * 1000:+,.1f} ms, the time between the "
                     "collector relaying the first token and k6 reading it"
                     + (" (the collector's p50 is interpolated inside its bucket: read the difference as rough); "
                        if collector_q.wide else "; "))
        else:
            text += " The client-to-collector part cannot be separated (collector figure absent or only a bound); "
        if collector_q.mean is not None and vllm_q.mean is not None:
            # Means from the histograms' _sum/_count are exact, whatever the buckets.
            text += (f"collector minus vLLM by their means (exact: {collector_q.mean * 1000:,.1f} and "
                     f"{vllm_q.mean * 1000:,.1f} ms): {(collector_q.mean - vllm_q.mean) * 1000:+.1f} ms, time outside "
                     "vLLM's own TTFT clock that these metrics do not decompose further.")
        elif collector_q.value is not None and vllm_q.value is not None and not vllm_q.upper_bound_only:
            text += (f"collector minus vLLM: {(collector_q.value - vllm_q.value) * 1000:+.1f} ms, time outside vLLM's "
                     "own TTFT clock that these metrics do not decompose further"
                     + (" (quantiles interpolated inside wide buckets: rough)." if vllm_q.wide or collector_q.wide
                        else "."))
        else:
            text += "the collector-to-vLLM part cannot be measured from these histograms."
        if r["bunched"]:
            text += (" At this step tokens reached the client bunched (its per-user speed is far above the server's "
                     "own rate per stream), so the client's first token waited for a burst: that share of the gap is "
                     "delivery, not generation.")
        parts.append(text)
    if not rows or all(r["collector_p50_s"] is None for r in rows):
        parts.append("Collector TTFT: absent (no collector_* series in Prometheus for this window).")
    return " ".join(parts)


def bandwidth_limit(results: RunResults, plan: Plan, rows: list[Row]) -> dict[str, Any]:
    """Single-stream decode vs the memory-bandwidth limit of the GPU actually measured (by name from
    nvidia-smi / DCGM, or the plan's override); with no GPU it does not apply."""
    model = _get(results, "provenance", "model") or {}
    params = plan.hardware.params_billion * 1e9 if plan.hardware.params_billion else model.get("parameters")
    bytes_per_param = plan.hardware.bytes_per_param or model.get("bytes_per_param")
    gpu = _get(results, "provenance", "gpu", "name")
    bandwidth, source = plan.hardware.memory_bandwidth_gb_s, "the plan"
    if bandwidth is None:
        bandwidth, source = diagnosis.gpu_bandwidth(gpu), f"the {gpu} datasheet"
    single = next((r for r in rows if r.concurrency == 1), None)
    out: dict[str, Any] = {"parameters": params, "bytes_per_param": bytes_per_param, "bandwidth_gb_s": bandwidth,
                           "bandwidth_source": source if bandwidth else None, "gpu": gpu,
                           "single_stream_tok_s": single.user_tok_s if single else None,
                           "single_stream_source": single.user_tok_s_source if single else None, "limit_tok_s": None}
    if not gpu and plan.hardware.memory_bandwidth_gb_s is None:
        out["not_applicable"] = "no GPU was visible (no DCGM series, no nvidia-smi): the server did not decode on one"
        return out
    if params and bytes_per_param and bandwidth:
        out["weight_bytes"] = params * bytes_per_param
        out["limit_tok_s"] = bandwidth * 1e9 / out["weight_bytes"]
        if out["single_stream_tok_s"]:
            out["fraction"] = out["single_stream_tok_s"] / out["limit_tok_s"]
    return out


def _user_speed(step: Step) -> tuple[float | None, str]:
    """Per-user decode speed: the client's, unless it saw tokens bunched; then the server's own."""
    if diagnosis.bunched(step):
        return diagnosis.server_user_tok_s(step), "vLLM (1 / mean ITL: the client saw tokens bunched)"
    return _get(step, "client", "user_tok_s_p50"), "client"


def vllm_tok_s(step: Step) -> tuple[float | None, bool]:
    """vLLM's counter over the steady window (as k6's figure beside it), else over the whole step's
    cross-check span (ramp and drain included: not comparable with k6's window figure), flagged True."""
    window = _get(step, "server", "vllm", "generation_tok_s")
    if window is not None:
        return window, False
    whole = _get(step, "throughput_check", "vllm_tok_s")
    return whole, whole is not None


def analyse(results: RunResults) -> Analysis:
    plan = plan_from_dict(results["plan"])
    thresholds = load_thresholds()
    ttfb_is_ttft = bool(results.get("ttfb_is_ttft"))
    steps = done_steps(results)
    host_cpu_counts = diagnosis.host_cpu_informative(steps)
    rows: list[Row] = []
    for step in steps:
        client = step.get("client") or {}
        ttft50, source = _ttft(step, ttfb_is_ttft, "p50")
        ttft95, _ = _ttft(step, ttfb_is_ttft, "p95")
        user, user_source = _user_speed(step)
        server_tok_s, whole_step = vllm_tok_s(step)
        rows.append(Row(
            concurrency=step["concurrency"], output_tok_s=client.get("output_tok_s"),
            vllm_tok_s=server_tok_s, vllm_tok_s_whole_step=whole_step, user_tok_s=user,
            ttft_p50_s=ttft50, ttft_p95_s=ttft95, ttft_source=source, user_tok_s_source=user_source,
            e2e_p95_s=client.get("e2e_p95_s"), requests=client.get("requests", 0), errors=client.get("errors", 0),
            slo_ok=step["slo"]["ok"], broken=step["slo"]["broken"],
            signals=step_signals(step, thresholds, host_cpu_counts)))
    outcomes = [knee.Outcome(s["concurrency"], s["slo"]["ok"], s.get("hard_stop")) for s in steps]
    found = rate_mode.find_knee(plan, outcomes) if rate_mode.is_rate(plan) else knee.find_knee(plan, outcomes)
    by_c = {s["concurrency"]: s for s in steps}
    flags, client_signals = _flags(steps, results)
    first_signal = next((f"{_n_users(r.concurrency)}: {', '.join(r.signals)}" for r in rows if r.signals), None)
    if found.first_bad is None:
        cause, evidence = "nothing: the SLO held at every concurrency tested", list[str]()
    else:
        good = by_c.get(found.concurrency) if found.concurrency else None
        cause, evidence = broke_first(good, by_c[found.first_bad], ttfb_is_ttft, thresholds, host_cpu_counts)
    three = ttft_three_ways(steps)
    points = [(r.concurrency, r.output_tok_s) for r in rows if r.output_tok_s is not None]
    bandwidth = bandwidth_limit(results, plan, rows)
    waits = [w for w in (diagnosis.where_waited(s, host_cpu_counts) for s in steps) if w is not None]
    peak = diagnosis.throughput_knee(points)
    checks = diagnosis.consistency_checks(steps, bandwidth, THROUGHPUT_AGREEMENT, shared_prefix(plan))
    if steps and not host_cpu_counts:
        flags.append(f"The host's CPUs were at least {HOST_CPU_SATURATED:.0%} busy already at "
                     f"{_n_users(steps[0]['concurrency'])}, the least loaded step: the engine computes (or waits "
                     "spinning) on CPU cores or other work shares them, so host CPU saturation cannot tell load apart "
                     "here and is not used as evidence.")
    for check in checks:
        if not check.ok:
            flags.append(f"{_n_users(check.concurrency) + ': ' if check.concurrency else ''}{check.name}: "
                         f"{check.detail}.")
    return Analysis(rows=rows, knee=found, what_broke_first=cause, evidence=evidence,
                    envelope=envelope_sentence(plan, rows, found, cause, results, peak, waits),
                    ttft_three_ways=three, ttft_gap_note=gap_note(three, ttfb_is_ttft,
                                                                  _get(results, "probe", "verdict")),
                    bandwidth=bandwidth, flags=list(dict.fromkeys(flags)), first_signal=first_signal, waits=waits,
                    throughput_knee=peak, usl=diagnosis.usl_fit(points), checks=checks,
                    client_signals=client_signals)


def _flags(steps: list[Step], results: RunResults) -> tuple[list[str], list[str]]:
    """Doubts about the figures, and signals about the load client (never reported as the server's)."""
    flags: list[str] = []
    client_signals: list[str] = []
    cores = _get(results, "provenance", "host", "cpus") or 1
    for step in steps:
        k6 = step.get("k6") or {}
        used = k6.get("cpu_cores", 0)
        if used > CLIENT_CPU_BOUND_SHARE * cores:
            client_signals.append(f"{_n_users(step['concurrency'])}: k6 used {used:.2f} of the {cores} cores it can "
                                  "run on: the client may be the bottleneck; this step measures the client as much "
                                  "as the server.")
        elif used > 0.1 * cores:
            client_signals.append(f"{_n_users(step['concurrency'])}: k6 used {used:.2f} of {cores} CPU cores; where "
                                  "client and server share cores this lowers the server's throughput.")
        population = _get(step, "client", "population") or ""
        if population.startswith("overlapping"):
            flags.append(f"{_n_users(step['concurrency'])}: fewer requests started in the steady window than there are "
                         "users, so latency is taken from every request overlapping it (includes the warm-up burst); "
                         "lengthen steady_s / max_steady_s for long answers.")
    return flags, client_signals


def shared_prefix(plan: Plan) -> str | None:
    """What the plan's mix shares between requests on purpose, in words; None when prompts are distinct."""
    mix = plan.mix
    if mix is None:
        return None
    shared = ([f"a {mix.system_prompt_words}-word system prompt"] if mix.system_prompt_words else []) + (
        ["conversations resend their history"] if mix.turns != arrivals.Length(value=1) else [])
    return "; ".join(shared) or None


def _users(n: float) -> str:
    if isinstance(n, float):  # a rate sweep's step: offered requests/s (loadgen/rate_mode.py)
        return f"{n:g} requests/s offered (open loop)"
    return f"{n} concurrent user" + ("" if n == 1 else "s")


def _n_users(n: float) -> str:
    if isinstance(n, float):
        return f"{n:g} req/s"
    return f"{n} user" + ("" if n == 1 else "s")


def envelope_sentence(plan: Plan, rows: list[Row], found: knee.Knee, cause: str, results: RunResults,
                      peak: diagnosis.ThroughputKnee | None = None, waits: list[diagnosis.Wait] | None = None) -> str:
    by_c = {r.concurrency: r for r in rows}
    measured = next((s["client"] for s in results["steps"] if s["status"] == "done" and s.get("client")), None)
    prompt = measured.get("prompt_tokens_per_request") if measured else None
    # A mix's outputs vary: the median the client counted (the server's usage), not the profile's cap.
    output = measured.get("output_tokens_per_request") if measured else None
    outputs = (f"outputs of ~{output:.0f} tokens (median of a request mix)" if plan.mix is not None and output
               else f"outputs up to {plan.profile.max_tokens} tokens")
    prompt_text = f" and prompts of ~{prompt:.0f} tokens" if prompt else ""
    if not rows:
        return "No step finished, so there is no envelope yet."
    tail = ""
    if peak is not None and peak.collapse:
        c, tok_s, change = peak.collapse[-1]
        failed = (by_c[c].errors if c in by_c else 0) or 0
        why = (f"past the peak, requests failed ({failed} errors at {_n_users(c)})" if failed
               else "past the peak, more users only add waiting")
        tail += (f" Throughput peaked at {peak.peak_tok_s:,.0f} tok/s at {_n_users(peak.peak_concurrency)} and fell to "
                 f"{tok_s:,.0f} tok/s at {_n_users(c)} ({change:+.0%}): {why}.")
    front = next((w for w in waits or [] if w.front_of_engine), None)
    if front is not None and not cause.startswith("front-end"):
        tail += f" From {_n_users(front.concurrency)} on, " + diagnosis.wait_sentence(front) + "."
    if found.concurrency is None:
        return (f"Even {_users(found.first_bad or 1)} with {outputs} broke the SLO: "
                f"{cause}.") + tail
    row = by_c[found.concurrency]
    e2e = f"{row.e2e_p95_s:.1f} s" if row.e2e_p95_s is not None else "n/a"
    ttft = f"{row.ttft_p95_s:.2f} s" if row.ttft_p95_s is not None else "n/a"
    agg = f"{row.output_tok_s:,.0f} tok/s" if row.output_tok_s is not None else "n/a"
    if row.user_tok_s is not None and row.output_tok_s is not None:
        # Streaming speed after the first token, and the aggregate shared out over the users (the
        # latter includes the wait for the first token): two different figures, both named.
        source = "" if row.user_tok_s_source == "client" else ", by vLLM's clock"
        shared = (f"{row.output_tok_s / row.concurrency:,.0f} tok/s per user averaged over whole requests, "
                  if isinstance(row.concurrency, int) else "")  # a rate step has no fixed number of users
        user = (f"each user streams at about {row.user_tok_s:,.0f} tok/s once the answer starts{source} "
                f"({shared}{agg} in total)")
    else:
        user = f"the users share {agg}"
    head = (f"At up to {_users(found.concurrency)} with {outputs}{prompt_text}, "
            f"p95 latency stays under {e2e} (p95 time to first token {ttft}) and {user}")
    if found.first_bad is None:
        partial = " (this run is partial: see what is missing)" if results.get("status") != "complete" else ""
        return head + (f"; the SLO held at every step tested, so the envelope is at least "
                       f"{_users(found.concurrency)}{partial}.") + tail
    where = (f"at {_n_users(found.first_bad)}" if found.refined else
             f"the SLO broke at {_n_users(found.first_bad)}; the knee lies between, not refined further")
    return head + f". Above {found.concurrency:g} ({where}): {cause}." + tail
