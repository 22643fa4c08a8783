"""The sweep's open-loop mode (plan `mode: rate`): steps by arrival rate (requests/s) instead of users.

Each step draws its arrival schedule and request mix (loadgen/arrivals.py) and runs
loadgen/k6/open-loop.js; the same knee search and SLO judgement as the closed loop then run on the
offered rate. A rate step is recorded like a concurrency step, with its offered rate (a float, in
requests/s) where a closed-loop step has its number of users (an int) and `"mode": "rate"`, plus:

- `rate`: offered vs achieved: the nominal rate, what the schedule held in the steady window, what
  was sent, what completed, what was dropped (could not start on time: every virtual user busy) and
  how late the sent ones left;
- `lengths`: the prompt and output lengths vLLM itself saw (its request_prompt_tokens /
  request_generation_tokens histograms over the step);
- `queue`: vLLM's waiting gauge read from its /metrics once a second during the step, and for a
  step with a burst the time the queue took to drain after the burst ended.

A step that dropped more than the plan's stop.error_ratio of its scheduled requests breaks the
SLO: the server held max_in_flight requests open and the rate was not offered.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from loadgen import arrivals, knee, stats, workload
from loadgen.k6_runner import StepRun, StepSpec
from loadgen.plan import Plan
from loadgen.prom import Prometheus, PrometheusDown
from loadgen.results import RunResults, Step
from loadgen.slow_readers import SlowReaders

OPEN_LOOP_SCRIPT = Path(__file__).resolve().parent / "k6" / "open-loop.js"
MILLI = 1000  # the knee search climbs and bisects in integer milli-requests/s
START_DELAY_MS = 500  # the schedule's zero: this long after k6 starts its users, so none starts late
FALLBACK_MAX_RATE = 1000.0


def is_rate(plan: Plan) -> bool:
    return plan.mode == "rate"


# ------------------------------------------------------------------------------------------ knee search
def _scaled(plan: Plan) -> Plan:
    search = plan.search
    cap = search.max_rate or FALLBACK_MAX_RATE
    return replace(plan, steps=tuple(round(r * MILLI) for r in plan.rates),
                   search=replace(search, max_concurrency=round(cap * MILLI)))


def _outcomes_scaled(outcomes: list[knee.Outcome]) -> list[knee.Outcome]:
    return [replace(o, concurrency=round(o.concurrency * MILLI)) for o in outcomes]


def next_rate(plan: Plan, outcomes: list[knee.Outcome]) -> float | None:
    """The next offered rate: the closed loop's search (seed rates, x growth, bisection to the plan's
    resolution) on rates, capped by search.max_rate."""
    scaled = knee.next_concurrency(_scaled(plan), _outcomes_scaled(outcomes), round(FALLBACK_MAX_RATE * MILLI))
    return None if scaled is None else scaled / MILLI


def find_knee(plan: Plan, outcomes: list[knee.Outcome]) -> knee.Knee:
    found = knee.find_knee(_scaled(plan), _outcomes_scaled(outcomes))
    return knee.Knee(concurrency=found.concurrency / MILLI if found.concurrency else None,
                     first_bad=found.first_bad / MILLI if found.first_bad else None, refined=found.refined)


# ------------------------------------------------------------------------------------------ one step
def step_spec(plan: Plan, run_id: str, rate: float, duration_s: float, target: str, model: str,
              remote_write_url: str | None, api_key: str | None, work_dir: Path) -> StepSpec:
    """The k6 settings of one rate step; its schedule goes to work_dir/step-RATE-schedule.json."""
    mix = workload.mix_of(plan)
    instants = arrivals.schedule(rate, duration_s, plan.arrival)
    if not instants:  # a rate too low for the window still sends one request, mid-step
        instants = [duration_s / 2]
    rows = arrivals.requests_for(instants, mix, plan.arrival.seed)
    work_dir.mkdir(parents=True, exist_ok=True)
    path = (work_dir / f"step-{rate:g}-schedule.json").resolve()
    path.write_text(json.dumps(rows))
    extra = {**workload.converse_settings(mix, run_id), "schedule_path": str(path), "requests": len(rows),
             "rate": rate,
             # After the schedule's end: time for the last conversation's every turn (and retry) to finish.
             "tail_s": ((plan.request_timeout_s * (mix.retries.max + 1)
                         + mix.retries.backoff_s * (2 ** mix.retries.max - 1) + mix.think_time_s)
                        * max(int(r[3]) for r in rows) + 5),
             "late_tolerance_ms": plan.arrival.late_tolerance_ms, "start_delay_ms": START_DELAY_MS,
             "slow_read_bytes_per_s": mix.slow_readers.read_bytes_per_s,
             "slow_recv_buffer_bytes": mix.slow_readers.recv_buffer_bytes}
    return StepSpec(run_id=run_id, step=rate, vus=plan.arrival.max_in_flight, duration_s=duration_s, target=target,
                    model=model, prompt_words=0, max_tokens=int(max(r[2] for r in rows)), ignore_eos=mix.ignore_eos,
                    request_timeout_s=plan.request_timeout_s, remote_write_url=remote_write_url, api_key=api_key,
                    script=OPEN_LOOP_SCRIPT, extra=extra)


def split(run: StepRun) -> tuple[StepRun, list[dict[str, Any]]]:
    """The requests sent (for the usual client statistics) and those dropped."""
    sent = [r for r in run.records if not r.get("dropped")]
    dropped = [r for r in run.records if r.get("dropped")]
    return replace(run, records=sent), dropped


def slow_readers_for(spec: StepSpec, work_dir: Path) -> SlowReaders:
    """The step's slow readers (loadgen/slow_readers.py), sent beside k6 from the same schedule."""
    rows = json.loads(Path(spec.extra["schedule_path"]).read_text())
    cfg = {"target": spec.target, "model": spec.model, "ignore_eos": spec.ignore_eos, "api_key": spec.api_key,
           "request_timeout_s": spec.request_timeout_s, "step": spec.step, **spec.extra}
    return SlowReaders(cfg, rows, work_dir.resolve() / f"step-{spec.step}-requests.jsonl",
                       work_dir.resolve() / f"step-{spec.step}-slow-readers.jsonl")


def slow_figures(records: list[dict[str, Any]], steady_start: float, steady_end: float) -> dict[str, Any] | None:
    """The slow readers' own figures (kept out of the step's client statistics)."""
    if not records:
        return None
    inside = [r for r in records if steady_start <= r["start_ms"] / 1000 < steady_end] or records
    ok = [r for r in inside if not r.get("error")]
    totals = [r["total_ms"] / 1000 for r in ok]
    rates = [r["bytes"] / (r["total_ms"] / 1000) for r in ok if r.get("bytes") and r["total_ms"] > 0]
    return {"requests": len(inside), "ok": len(ok), "errors": len(inside) - len(ok),
            "error_kinds": sorted({str(r["error"]) for r in inside if r.get("error")}),
            "ttft_p50_s": stats.percentile([r["ttft_ms"] / 1000 for r in ok], 50),
            "total_p50_s": stats.percentile(totals, 50), "total_p95_s": stats.percentile(totals, 95),
            "read_bytes_per_s_p50": stats.percentile(rates, 50),
            "output_tokens_p50": stats.percentile([float(r["output_tokens"]) for r in ok], 50),
            # Their share of what the server held: Little's law counts every request this run sent.
            "in_flight_avg": stats.in_flight_over(records, steady_start, steady_end)}


class QueueSampler:
    """vLLM's waiting and running gauges read from its own /metrics about once a second (Prometheus
    scrapes every 5 s, too coarse for a queue that drains in a few seconds)."""

    def __init__(self, metrics_url: str | None, model: str) -> None:
        self.url, self.model = metrics_url, model
        self.samples: list[tuple[float, float, float]] = []  # (time, waiting, running)

    def sample(self) -> None:
        if self.url is None:
            return
        try:
            text = requests.get(self.url, timeout=2).text
        except requests.RequestException:
            return
        values = {"vllm:num_requests_waiting": 0.0, "vllm:num_requests_running": 0.0}
        for family in text_string_to_metric_families(text):
            if family.name in values:
                values[family.name] = sum(s.value for s in family.samples
                                          if s.labels.get("model_name", self.model) == self.model)
        self.samples.append((time.time(), values["vllm:num_requests_waiting"], values["vllm:num_requests_running"]))

    def wrap(self, watchdog: Callable[[], str | None], first: Callable[[], None] | None = None
             ) -> Callable[[], str | None]:
        """The runner's watchdog, sampling on each poll; `first` runs at the first poll (k6 has started)."""
        pending = [first] if first else []

        def check() -> str | None:
            while pending:
                pending.pop()()
            self.sample()
            return watchdog()
        return check


def vllm_metrics_url(prometheus: Prometheus | None) -> str | None:
    """vLLM's /metrics as Prometheus scrapes it (its `vllm` job's instance)."""
    if prometheus is None:
        return None
    try:
        result = prometheus.vector('up{job="vllm"}')
    except PrometheusDown:
        return None
    instance = next((r["metric"].get("instance") for r in result), None)
    return f"http://{instance}/metrics" if instance else None


def offered_in(plan: Plan, rate: float, start: float, end: float) -> float:
    """Requests the plan offers between start and end (seconds from the schedule's zero)."""
    pieces = arrivals._pieces(rate, plan.arrival.bursts, max(end, 1e-9))
    return sum(max(0.0, min(b, end) - max(a, start)) * r for a, b, r in pieces)


def rate_figures(plan: Plan, rate: float, sent: list[dict[str, Any]], dropped: list[dict[str, Any]],
                 steady_start: float, steady_end: float) -> dict[str, Any]:
    """Offered vs achieved over the steady window (requests counted by their scheduled instant)."""
    every = sent + dropped
    zero = schedule_zero(every) or steady_start
    window = max(steady_end - steady_start, 1e-9)

    def inside(r: dict[str, Any]) -> bool:
        return bool(steady_start <= r["scheduled_ms"] / 1000 < steady_end)

    # Arrivals are first attempts of first turns (a conversation's later turns follow its answers, retries
    # follow failures; neither is on the schedule).
    sent_in = [r for r in sent if inside(r) and not r.get("turn") and not r.get("attempt")]
    retries_in = [r for r in sent if r.get("attempt") and steady_start <= r["start_ms"] / 1000 < steady_end]
    dropped_in = [r for r in dropped if inside(r)]
    ok_in = [r for r in sent if not r.get("error") and steady_start <= r["start_ms"] / 1000 < steady_end]
    late = [float(r.get("late_ms") or 0.0) for r in sent_in]
    scheduled = len(sent_in) + len(dropped_in)
    return {
        "nominal_req_s": rate,
        "offered_req_s": offered_in(plan, rate, steady_start - zero, steady_end - zero) / window
        if plan.arrival.bursts else rate,
        "scheduled": scheduled, "scheduled_req_s": scheduled / window,
        "sent": len(sent_in), "sent_req_s": len(sent_in) / window,
        "retries": len(retries_in), "retried_ok": sum(1 for r in retries_in if not r.get("error")),
        "completed_ok": len(ok_in), "completed_ok_req_s": len(ok_in) / window,
        "dropped": len(dropped_in), "dropped_ratio": len(dropped_in) / scheduled if scheduled else 0.0,
        "dropped_total": len(dropped), "scheduled_total": len(every),
        "late_p50_ms": stats.percentile(late, 50), "late_p99_ms": stats.percentile(late, 99),
        # Taken in time by a free user that woke late: k6 itself short of CPU (sent, and said so here).
        "sent_late": sum(1 for x in late if x > plan.arrival.late_tolerance_ms),
        "late_max_ms": max(late) if late else None,
        "max_in_flight": plan.arrival.max_in_flight,
    }


def schedule_zero(records: list[dict[str, Any]]) -> float | None:
    """The instant (epoch s) the step's schedule counts from, as k6 recorded it."""
    return next((r["zero_ms"] / 1000 for r in records if r.get("zero_ms")), None)


def judge_drops(step: Step | dict[str, Any], plan: Plan) -> None:
    figures = step.get("rate") or {}
    ratio = figures.get("dropped_ratio") or 0.0
    if ratio > plan.stop.error_ratio:
        step["slo"]["ok"] = False
        step["slo"]["broken"].append(
            f"dropped {figures['dropped']} of {figures['scheduled']} scheduled requests ({ratio:.1%}): all "
            f"{plan.arrival.max_in_flight} virtual users were busy, so the rate was not offered")


def drop_cause(step: Step) -> tuple[str | None, list[str]]:
    """For a rate step that dropped arrivals: the evidence, and the cause when it is the load client's own
    cap (vLLM neither queued nor filled its slots while every virtual user was busy: Little's law says the
    rate needed more requests open than max_in_flight). Otherwise the server-side cause is found as usual."""
    figures = step.get("rate") or {}
    if not figures.get("dropped"):
        return None, []
    client = step.get("client") or {}
    e2e = client.get("e2e_p50_s")
    needed = figures["nominal_req_s"] * e2e if e2e else None
    evidence = [f"{figures['dropped']} of {figures['scheduled']} scheduled requests dropped "
                f"({figures['dropped_ratio']:.1%}): all {figures['max_in_flight']} virtual users were busy"
                + (f"; at {figures['nominal_req_s']:g} req/s x p50 {e2e:.2f} s per request, Little's law needs "
                   f"~{needed:.0f} open" if needed else "")]
    vllm = (step.get("server") or {}).get("vllm") or {}
    waiting = max((v for v in (vllm.get("waiting_max"), vllm.get("waiting_mean_counted")) if v is not None),
                  default=None)
    if waiting is not None and waiting < 1 and needed is not None and needed > figures["max_in_flight"]:
        return (f"the load client's cap: arrival.max_in_flight ({figures['max_in_flight']}) is below the "
                f"~{needed:.0f} requests this rate keeps open, and vLLM did not queue (waiting peak {waiting:.0f}): "
                "raise max_in_flight to measure the server here"), evidence
    return None, evidence


def queue_figures(sampler: QueueSampler, plan: Plan, zero: float | None) -> dict[str, Any]:
    """The waiting gauge over the step and, with a burst, how long the queue took to drain after it."""
    samples = sampler.samples
    out: dict[str, Any] = {"samples": [[round(t, 3), w, r] for t, w, r in samples],
                           "waiting_max": max((w for _, w, _ in samples), default=None)}
    if not plan.arrival.bursts or zero is None or not samples:
        return out
    drains = []
    for burst in plan.arrival.bursts:
        start, end = zero + burst.at_s, zero + burst.at_s + burst.duration_s
        before = [w for t, w, _ in samples if zero <= t < start]
        during = [w for t, w, _ in samples if start <= t <= end]
        baseline = max(before) if before else 0.0
        peak = max(during + [w for t, w, _ in samples if end < t <= end + 2.0], default=None)
        queued = peak is not None and peak > baseline
        drained_at = next((t for t, w, _ in samples if t > end and w <= baseline), None) if queued else end
        drains.append({"at_s": burst.at_s, "duration_s": burst.duration_s, "factor": burst.factor,
                       "waiting_before_max": baseline, "waiting_peak": peak,
                       "drain_s": None if drained_at is None else drained_at - end,
                       "sample_interval_s": _interval(samples)})
    out["bursts"] = drains
    return out


def _interval(samples: list[tuple[float, float, float]]) -> float | None:
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(samples)]
    return stats.percentile(gaps, 50)


# ------------------------------------------------------------------------------------------ report
_n = workload.number


def capacity_text(results: RunResults) -> str:
    cap = ((results.get("plan") or {}).get("search") or {}).get("max_rate")
    bound = f"{cap:g} requests/s (the plan's search.max_rate)" if cap else (
        f"{FALLBACK_MAX_RATE:g} requests/s (no search.max_rate in the plan)")
    return (f"In a rate sweep the climb is bounded at {bound}; it also stops where the SLO breaks (a step that drops "
            "more than stop.error_ratio of its requests breaks it) or throughput falls.")


def load_context(results: RunResults, steps: list[Step]) -> dict[str, Any] | None:
    """The report's open-loop section: mode, arrivals, mix, offered vs achieved, lengths, drains."""
    plan_data = results.get("plan") or {}
    if plan_data.get("mode") != "rate":
        return None
    from loadgen.plan import plan_from_dict

    plan = plan_from_dict(plan_data)
    mix = workload.mix_of(plan)
    rate_rows, drain_rows, slow_rows = [], [], []
    for s in steps:
        sr = s.get("slow_readers")
        if sr:
            slow_rows.append([f"{s['concurrency']:g}", f"{sr['ok']} of {sr['requests']}", _n(sr["ttft_p50_s"], 3),
                              _n(sr["total_p50_s"], 2), _n(sr["total_p95_s"], 2),
                              _n((s.get("client") or {}).get("e2e_p50_s"), 2), _n(sr["read_bytes_per_s_p50"], 0),
                              _n(sr["output_tokens_p50"], 0), ", ".join(sr["error_kinds"]) or "none"])
        r = s.get("rate") or {}
        rate_rows.append([f"{s['concurrency']:g}", _n(r.get("offered_req_s"), 2), str(r.get("scheduled", "n/a")),
                          _n(r.get("sent_req_s"), 2), _n(r.get("completed_ok_req_s"), 2),
                          f"{r.get('dropped', 'n/a')} ({r.get('dropped_ratio', 0):.1%})" if r else "n/a",
                          _n(r.get("late_p50_ms")), _n(r.get("late_p99_ms")), str(r.get("sent_late", "n/a")),
                          f"{r['retries']} ({r['retried_ok']} ok)" if r.get("retries") is not None else "n/a",
                          _n((s.get("client") or {}).get("in_flight_avg"), 1)])
        for d in (s.get("queue") or {}).get("bursts") or []:
            drain = ("did not drain before the step ended" if d["drain_s"] is None else
                     "no queue formed (waiting never rose above its level before the burst)"
                     if not (d["waiting_peak"] or 0) > d["waiting_before_max"] else
                     f"{d['drain_s']:.1f} s (±{d['sample_interval_s'] or 1:.1f} s sampling)")
            burst = f"x{d['factor']:g} at {d['at_s']:g} s for {d['duration_s']:g} s"
            drain_rows.append([f"{s['concurrency']:g}", burst, _n(d["waiting_before_max"], 0),
                               _n(d["waiting_peak"], 0), drain])
    return {
        "arrivals": arrivals.describe(plan.arrival),
        "mix": workload.describe(mix, open_loop=True),
        "rate_table": {"headers": ["offered req/s (step)", "offered req/s (window)", "scheduled", "sent req/s",
                                   "completed ok req/s", "dropped", "send late p50 ms", "send late p99 ms",
                                   "sent over the tolerance late (k6 short of CPU)", "retries sent",
                                   "client in flight avg"],
                       "rows": rate_rows},
        "length_table": workload.length_table(steps, "offered req/s"),
        "drain_table": {"headers": ["offered req/s", "burst", "waiting before (max)", "waiting peak",
                                    "queue drained after the burst in"], "rows": drain_rows} if drain_rows else None,
        "slow_table": {"headers": ["offered req/s", "slow readers ok", "TTFT p50 s", "total p50 s", "total p95 s",
                                   "other readers' total p50 s", "read bytes/s p50", "output tokens p50", "errors"],
                       "rows": slow_rows} if slow_rows else None,
    }
