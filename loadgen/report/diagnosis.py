"""Server-side diagnosis beyond the SLO verdict: where requests waited (Little's law), which process
was saturated, where throughput peaked and collapsed (with a Universal Scalability Law fit), and the
consistency checks that say which figures can be trusted.

Every function reads one step's (or the run's) measured figures and returns findings with the
numbers behind them; nothing here is a fixed sentence about causes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadgen import knee
from loadgen.results import RunResults, Step

# A process using at least this share of one core is saturated: Python front-ends (vLLM's API
# server, the collector) run their event loop on one core.
PROCESS_SATURATED_CORES = 0.85
# Requests in flight at the client but not inside vLLM (running + waiting), as a share of those in
# flight, above which the step is said to have waited in front of the engine.
FRONT_WAIT_SHARE = 0.15
HOST_CPU_SATURATED = 0.95
# A step whose throughput is this far under the best lower step has collapsed.
THROUGHPUT_DROP = 0.05
# Per-user streaming speed above the server's own rate per stream by this factor: the client saw
# tokens bunched (several per read), so its per-user speed is not a decode speed.
BUNCHED_FACTOR = 1.5
# Client TTFT may undercut the collector's or vLLM's by this much (histogram buckets, clocks).
TTFT_ORDER_SLACK_S = 0.005
# loadgen's prompts carry a per-request nonce: a prefix-cache hit ratio above this means the server saw
# them as one repeated prompt (e.g. a tokenizer that maps the nonce to an unknown token).
PREFIX_HIT_DOUBT = 0.5

# Memory bandwidth (GB/s) by GPU name as nvidia-smi / DCGM report it; the longest matching key wins.
# Vendor datasheet figures; a plan's hardware.memory_bandwidth_gb_s overrides.
GPU_BANDWIDTH_GB_S = {
    "GB10": 273.0,
    "H200": 4800.0,
    "H100 80GB HBM3": 3350.0,
    "H100 PCIe": 2000.0,
    "H100 NVL": 3900.0,
    "H100": 3350.0,
    "A100-SXM4-80GB": 2039.0,
    "A100-SXM4-40GB": 1555.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,
    "L40S": 864.0,
    "L4": 300.0,
    "A10G": 600.0,
    "RTX 4090": 1008.0,
    "RTX 6000 Ada": 960.0,
    "B200": 8000.0,
}

# vLLM's first histogram bucket upper bounds (seconds), for runs recorded before bucket bounds
# were stored: a quantile at or under the first bound only says "at most this".
VLLM_FIRST_BUCKET_S = {"ttft": 0.001, "itl": 0.01, "queue": 0.3, "e2e": 0.3}


def get_path(d: Any, *keys: str) -> Any:
    """d[k1][k2]... or None where a level is missing (results.json sections may be absent)."""
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def gpu_bandwidth(name: str | None) -> float | None:
    if not name:
        return None
    matches = [key for key in GPU_BANDWIDTH_GB_S if key.lower() in name.lower()]
    return GPU_BANDWIDTH_GB_S[max(matches, key=len)] if matches else None


# ------------------------------------------------------------------ honest quantiles
# A quantile interpolated inside a bucket whose upper bound is at least this multiple of its lower one is
# shown with the bucket: "164 (100-250)", not "163.7" (histogram_quantile assumes an even spread inside).
WIDE_BUCKET_RATIO = 2.0


@dataclass(frozen=True)
class Quantile:
    value: float | None
    upper_bound_only: bool  # the quantile lies in the first bucket: only "<= value" is known
    mean: float | None = None
    bucket: tuple[float, float] | None = None  # the bucket it was interpolated in, where recorded

    @property
    def wide(self) -> bool:
        return self.bucket is not None and self.bucket[0] > 0 and self.bucket[1] >= WIDE_BUCKET_RATIO * self.bucket[0]

    def text_ms(self) -> str:
        if self.value is None:
            return "n/a"
        mean = f" (mean {self.mean * 1000:,.1f})" if self.mean is not None else ""
        if self.upper_bound_only:
            return f"≤ {self.value * 1000:,.0f}{mean}"
        if self.wide and self.bucket is not None:
            return f"{self.value * 1000:,.0f} ({self.bucket[0] * 1000:,.0f}-{self.bucket[1] * 1000:,.0f})"
        if self.bucket is not None:
            return _resolved(self.value * 1000, (self.bucket[1] - self.bucket[0]) * 1000, 0.1)
        return f"{self.value * 1000:,.1f}"

    def text_s(self) -> str:
        """The same in seconds (end-to-end latencies)."""
        if self.value is None:
            return "n/a"
        if self.upper_bound_only:
            return f"≤ {self.value:g}" + (f" (mean {self.mean:.2f})" if self.mean is not None else "")
        if self.wide and self.bucket is not None:
            return f"{self.value:.1f} ({self.bucket[0]:g}-{self.bucket[1]:g})"
        if self.bucket is not None:
            return _resolved(self.value, self.bucket[1] - self.bucket[0], 0.01)
        return f"{self.value:.2f}"


def _resolved(value: float, width: float, finest: float) -> str:
    """A value interpolated inside a bucket `width` wide, to no more digits than the bucket resolves (about a
    tenth of its width, never finer than `finest`): 693.2 inside vLLM's 500-750 ms bucket reads 690."""
    step = max(finest, 10.0 ** math.floor(math.log10(width / 10))) if width > 0 else finest
    if step < 1:  # a power of ten below one: the format rounds it (as 0.785 reads 0.79 elsewhere)
        return f"{value:,.{-math.floor(math.log10(step) + 1e-9)}f}"
    return f"{math.floor(value / step + 0.5) * step:,.0f}"


def server_quantile(group: dict[str, Any] | None, metric: str, q: str, source: str = "vllm") -> Quantile:
    """A histogram quantile as it may honestly be shown: inside the first bucket only its bound."""
    group = group or {}
    value = group.get(f"{metric}_{q}_s")
    mean = group.get(f"{metric}_mean_s")
    if value is None:
        return Quantile(None, False, mean)
    bucket = group.get(f"{metric}_{q}_bucket_s")
    if bucket is not None:
        lower, upper = bucket
        return Quantile(upper, True, mean) if lower == 0 else Quantile(value, False, mean, (lower, upper))
    first = VLLM_FIRST_BUCKET_S.get(metric) if source == "vllm" else None
    if first is not None and value <= first:
        return Quantile(first, True, mean)
    return Quantile(value, False, mean)


# ------------------------------------------------------------------ where requests waited
@dataclass(frozen=True)
class Wait:
    """Little's law at one step: requests the client had open vs those vLLM held."""
    concurrency: float
    client_in_flight: float
    engine_held: float  # vLLM running + waiting (time averages)
    engine_waiting: float
    in_front: float  # client_in_flight - engine_held
    where: str  # "", "the collector", "vLLM's API server", "the host's CPUs", "undetermined"
    evidence: list[str]
    api_server_cpu: float | None = None  # cores
    collector_cpu: float | None = None
    # How far engine_held may be off: by the window's edges when it is vLLM's counted mean, by the few
    # scrapes of an open loop's random arrivals when it is the gauges' (0 for a closed loop's gauges).
    uncertainty: float = 0.0
    counted: bool = False  # engine_held is vLLM's counted mean (else the gauges')
    # Requests the run's slow readers kept open (outside the client's figure): vLLM holds up to that many more.
    slow_readers: float = 0.0

    @property
    def front_of_engine(self) -> bool:
        return _beyond(self.in_front, self.client_in_flight, self.uncertainty)

    @property
    def over_client(self) -> bool:
        """vLLM held more than the client sent, by more than the figures' error and the run's slow readers
        (other traffic?)."""
        return _beyond(-self.in_front - self.slow_readers, self.client_in_flight, self.uncertainty)

    @property
    def slow_readers_explain(self) -> bool:
        """vLLM held more than the client's figure by at least a request, and the run's slow readers account
        for it."""
        return bool(self.slow_readers) and self.in_front <= -1.0 and not self.over_client

    @property
    def within_error(self) -> bool:
        """A gap that would be a finding, were it not within vLLM's figure's own error (and not the run's
        slow readers' doing)."""
        return (_beyond(abs(self.in_front), self.client_in_flight, 0.0)
                and not self.front_of_engine and not self.over_client and not self.slow_readers_explain)

    @property
    def held_source(self) -> str:
        """Which of vLLM's figures engine_held is, as the report names it."""
        return "counted figure" if self.counted else "gauge"

    def verdict(self) -> str:
        """What the step's gap says, in a few words: where requests waited, or why the gap is no finding
        (40 of 279 in front was once labelled "no wait in front": it was under the threshold, not nothing)."""
        if self.front_of_engine:
            return self.where or "in front of the engine"
        if self.over_client:
            return "vLLM held more than the client sent"
        if self.slow_readers_explain:
            return f"the run's slow readers (up to {self.slow_readers:.1f} more in vLLM)" + (
                f" and the {self.held_source}'s error (±{self.uncertainty:.1f})"
                if -self.in_front > self.slow_readers else "")
        if self.within_error:
            return f"within the {self.held_source}'s error (±{self.uncertainty:.1f})"
        if self.in_front >= 1.0:
            share = self.in_front / self.client_in_flight if self.client_in_flight else 0.0
            return f"minor ({share:.0%} of those in flight; a finding from {FRONT_WAIT_SHARE:.0%})"
        return "no wait in front"


def _beyond(difference: float, in_flight: float, uncertainty: float) -> bool:
    """A difference between the client's and vLLM's occupancy that is a finding: at least one request,
    FRONT_WAIT_SHARE of those in flight, and more than the estimate's own error."""
    return difference >= max(1.0, FRONT_WAIT_SHARE * in_flight) and difference > uncertainty


# Little's law on vLLM's request-time counters (the times of the requests that FINISHED in the window,
# summed, over the window) is exact on average only; when one request lasts a sizeable share of the
# window, the few completions (in waves, as closed-loop users that started together finish together)
# swing it far either way: 160 users once "counted" 194 running. Then only the gauges count. But the
# gauges are read at Prometheus's scrape instants: while a request is shorter than a scrape interval,
# the counters rest on more observations than the gauges (an 8-s window holds ~2 scrapes), so they stay.
COUNTED_MAX_REQUEST_SHARE = 0.1
SCRAPE_INTERVAL_S = 5.0  # prometheus/prometheus.yml global.scrape_interval (tests/test_loadgen_diagnosis.py checks)


def counted_means_usable(step: Step) -> bool:
    """Whether a step's counted running/waiting means rest on enough completions: >= ~10 per user, or
    more than the gauges' scrapes in the same window."""
    window = float(step.get("steady_end") or 0) - float(step.get("steady_start") or 0)
    e2e = get_path(step, "client", "e2e_p50_s")
    return e2e is None or window <= 0 or e2e <= max(COUNTED_MAX_REQUEST_SHARE * window, SCRAPE_INTERVAL_S)


def counted_edge_error(step: Step) -> float:
    """How far the counted means can stray from the true time average by the window's edges alone: a
    request in flight at an edge counts whole if it finishes inside and not at all if it finishes after,
    so up to one request's duration per request in flight. Prometheus's increase() takes the counter
    between the scrapes inside the window and scales it to the window, so the error is over the span
    those scrapes cover (an 8-s window holds scrapes 5 s apart), not over the window."""
    window = float(step.get("steady_end") or 0) - float(step.get("steady_start") or 0)
    client = step.get("client") or {}
    duration = client.get("e2e_p95_s") or client.get("e2e_p50_s")
    in_flight = client.get("in_flight_avg") or float(step["concurrency"])
    if not duration or window <= 0:
        return 0.0
    scraped = min(window, max(SCRAPE_INTERVAL_S, (math.floor(window / SCRAPE_INTERVAL_S) - 1) * SCRAPE_INTERVAL_S))
    return float(in_flight * duration / scraped)


def gauge_sampling_error(step: Step, in_flight: float) -> float:
    """How far a gauge averaged over its scrapes in the window can stray from the time average, open loop
    only: there the requests in flight at any instant vary like a Poisson count (random arrivals), so the
    mean of n scrapes has a standard deviation of sqrt(in flight / n); two of them are allowed. A closed
    loop keeps its users' requests open, the count barely varies between scrapes: 0. (A 1 req/s step read
    vLLM's gauge as 1.5 running from two scrapes, with 0.5 open at the client.)"""
    if step.get("mode") != "rate" or in_flight <= 0:
        return 0.0
    window = float(step.get("steady_end") or 0) - float(step.get("steady_start") or 0)
    samples = max(1, math.floor(window / SCRAPE_INTERVAL_S))
    return 2 * math.sqrt(in_flight / samples)


def engine_figures(step: Step | None) -> dict[str, Any]:
    """vLLM's figures for a step: the counted means left out where the requests were too long for them,
    and held to what the client had in flight where they exceed it by no more than the window's edges
    can account for (the original kept as counted_held_raw)."""
    vllm = dict(get_path(step, "server", "vllm") or {}) if step else {}
    if step and not counted_means_usable(step):
        vllm.pop("running_mean_counted", None)
        vllm.pop("waiting_mean_counted", None)
    running, waiting = vllm.get("running_mean_counted"), vllm.get("waiting_mean_counted") or 0.0
    if step and running is not None:
        held = running + waiting
        shown = _held_to_client(step, held)
        if shown != held:
            vllm["running_mean_counted"] = running * shown / held
            if vllm.get("waiting_mean_counted") is not None:
                vllm["waiting_mean_counted"] = waiting * shown / held
            vllm["counted_held_raw"] = held
    return vllm


def _held_to_client(step: Step, counted: float) -> float:
    """A counted mean over what the client had in flight by no more than the window's edges allow, held
    to the client's figure (more than that is left as it is: other traffic, or a bug, to be flagged)."""
    in_flight = get_path(step, "client", "in_flight_avg")
    if in_flight and in_flight < counted <= in_flight + counted_edge_error(step):
        return float(in_flight)
    return counted


def collector_in_flight(step: Step) -> float | None:
    """Requests in the collector, time average, as _mean_held reads vLLM's: the larger of its gauge's
    samples in the window and the figure counted from its request times (Little's law), the latter only
    where the requests are short for the window and none failed (only successes are timed). Each misses
    differently: two scrapes can land where a closed loop's users end together; a few long requests
    straddling the window's edges can leave the count short."""
    collector = get_path(step, "server", "collector") or {}
    figures = [float(collector["in_flight_avg"])] if collector.get("in_flight_avg") is not None else []
    counted = collector.get("in_flight_counted")
    if counted is not None and counted_means_usable(step) and not get_path(step, "client", "errors"):
        figures.append(_held_to_client(step, float(counted)))
    return max(figures, default=None)


def _mean_held(vllm: dict[str, Any]) -> tuple[float | None, float, bool]:
    """(running + waiting, waiting, whether running is the counted figure) inside vLLM, time averages;
    counted (Little's law on vLLM's own request-time histograms) where recorded, else the gauges averaged
    at scrape instants, whichever is larger."""
    running = vllm.get("running_mean_counted")
    waiting = vllm.get("waiting_mean_counted")
    gauge_running, gauge_waiting = vllm.get("running_avg"), vllm.get("waiting_avg")
    counted = running is not None
    if running is None or (gauge_running is not None and gauge_running > running):
        running, counted = gauge_running, False
    if waiting is None or (gauge_waiting is not None and gauge_waiting > waiting):
        waiting = gauge_waiting
    if running is None:
        return None, waiting or 0.0, False
    return running + (waiting or 0.0), waiting or 0.0, counted


def host_cpu_informative(steps: list[Step]) -> bool:
    """Host CPU saturation tells load apart only if the least loaded step left CPU idle: on a box whose
    engine computes (or spins) on CPU cores every step reads ~100%, and saturation is no finding."""
    lowest = min(steps, key=lambda s: s["concurrency"], default=None)
    busy = get_path(lowest, "server", "host", "cpu_busy_ratio")
    return busy is None or busy < HOST_CPU_SATURATED


def where_waited(step: Step, host_cpu_counts: bool = True) -> Wait | None:
    vllm = engine_figures(step)
    if not vllm:
        return None
    held, waiting, counted = _mean_held(vllm)
    if held is None:
        return None
    client = step.get("client") or {}
    in_flight = client.get("in_flight_avg")
    if in_flight is None:  # runs recorded before the client's own figure: a closed loop keeps each user busy
        in_flight = float(step["concurrency"])
    # An open loop's slow readers are this run's requests too, sent beside k6 and kept out of its figures:
    # vLLM holds each for part of the time its reader keeps it open (until its tokens are generated).
    slow = float(get_path(step, "slow_readers", "in_flight_avg") or 0.0)
    uncertainty = counted_edge_error(step) if counted else gauge_sampling_error(step, in_flight)
    in_front = in_flight - held
    collector_cpu = get_path(step, "server", "collector", "cpu_cores")
    api_cpu = vllm.get("api_server_cpu_cores")
    host_busy = get_path(step, "server", "host", "cpu_busy_ratio")
    evidence = [f"client had {in_flight:.1f} requests open on average"
                + (f" (and the run's slow readers {slow:.1f} more)" if slow else "")
                + f", vLLM held {held:.1f} (running + waiting; {waiting:.1f} waiting)"]
    in_collector = collector_in_flight(step)
    if in_collector is not None:
        evidence.append(f"the collector had {in_collector:.1f} in flight")
    where = ""
    if _beyond(in_front, in_flight, uncertainty):
        saturated = []
        if api_cpu is not None:
            evidence.append(f"vLLM's API-server process used {api_cpu:.2f} of a core")
            if api_cpu >= PROCESS_SATURATED_CORES:
                saturated.append("vLLM's API server")
        if collector_cpu is not None:
            evidence.append(f"the collector's process used {collector_cpu:.2f} of a core")
            if collector_cpu >= PROCESS_SATURATED_CORES:
                saturated.append("the collector")
        if host_busy is not None:
            evidence.append(f"host CPUs {host_busy:.0%} busy")
        if saturated:
            where = " and ".join(saturated)
        elif host_cpu_counts and host_busy is not None and host_busy >= HOST_CPU_SATURATED:
            where = "the host's CPUs"
        else:
            where = "undetermined"
    return Wait(step["concurrency"], in_flight, held, waiting, in_front, where, evidence, api_cpu, collector_cpu,
                uncertainty, counted, slow)


REMEDY = {
    "vLLM's API server": "start more API-server processes (vLLM --api-server-count N)",
    "the collector": "run more collector workers, or point heavy clients at vLLM directly",
    "the host's CPUs": "free CPU for the front-ends (fewer co-located processes, a bigger host)",
}


def wait_sentence(wait: Wait) -> str:
    """One sentence from a Wait that showed requests in front of the engine."""
    if wait.where != "undetermined":
        place = f"in front of the engine, in {wait.where}" if wait.where else "in front of the engine"
    else:
        known = [f"{name} used {cpu:.2f} of a core" for name, cpu in
                 (("vLLM's API server", wait.api_server_cpu), ("the collector", wait.collector_cpu)) if cpu is not None]
        unknown = [name for name, cpu in (("vLLM's API server", wait.api_server_cpu),
                                          ("the collector", wait.collector_cpu)) if cpu is None]
        parts = known + ([f"the CPU of {' and '.join(unknown)} was not recorded"] if unknown else [])
        place = f"in front of the engine ({'; '.join(parts)}: where exactly is undetermined)"
    remedy = REMEDY.get(wait.where)
    level = f"{wait.concurrency:g} req/s" if isinstance(wait.concurrency, float) else f"{wait.concurrency} users"
    return (f"requests waited {place}: at {level} the client had {wait.client_in_flight:.0f} open "
            f"but vLLM held only {wait.engine_held:.0f} ({wait.engine_waiting:.0f} of them waiting)"
            + (f"; remedy: {remedy}" if remedy else ""))


# ------------------------------------------------------------------ the throughput knee
@dataclass(frozen=True)
class ThroughputKnee:
    peak_concurrency: float
    peak_tok_s: float
    collapse: list[tuple[float, float, float]]  # (concurrency, tok/s, change vs peak) above the peak, falling


def throughput_knee(points: Sequence[tuple[float, float]]) -> ThroughputKnee | None:
    """Peak of aggregate throughput over concurrency and the steps above it that fell below it."""
    points = sorted((c, t) for c, t in points if t is not None)
    if len(points) < 2:
        return None
    peak_c, peak_t = max(points, key=lambda p: p[1])
    collapse = [(c, t, t / peak_t - 1) for c, t in points if c > peak_c and t < peak_t * (1 - THROUGHPUT_DROP)]
    return ThroughputKnee(peak_c, peak_t, collapse)


@dataclass(frozen=True)
class UslFit:
    fits: bool
    reason: str
    sigma: float | None = None  # contention
    kappa: float | None = None  # coherency (crosstalk)
    lam: float | None = None  # throughput of one user
    peak_n: float | None = None  # N* = sqrt((1 - sigma) / kappa)
    residuals: list[tuple[float, float]] | None = None  # (concurrency, measured / fitted - 1)


def usl_fit(points: Sequence[tuple[float, float]]) -> UslFit:
    """Universal Scalability Law X(N) = lam N / (1 + sigma (N - 1) + kappa N (N - 1)), fitted by least
    squares on its linear form N/C(N) - 1 = sigma (N - 1) + kappa N (N - 1), with C(N) = X(N) / lam and
    lam the one-user throughput."""
    points = sorted((c, t) for c, t in points if t)
    one = next((t for c, t in points if c == 1), None)
    if one is None:
        return UslFit(False, "no one-user step to anchor the fit")
    rest = [(c, t) for c, t in points if c > 1]
    if len(rest) < 3:
        return UslFit(False, f"{len(rest) + 1} steps: too few to fit two parameters and judge the fit")
    a11 = a12 = a22 = b1 = b2 = 0.0
    for n, x in rest:
        u, v, y = n - 1.0, n * (n - 1.0), n * one / x - 1.0
        a11, a12, a22, b1, b2 = a11 + u * u, a12 + u * v, a22 + v * v, b1 + u * y, b2 + v * y
    det = a11 * a22 - a12 * a12
    if abs(det) < 1e-12:
        return UslFit(False, "the steps do not determine both parameters")
    sigma = (b1 * a22 - b2 * a12) / det
    kappa = (a11 * b2 - a12 * b1) / det
    residuals = []
    for n, x in points:
        fitted = one * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))
        residuals.append((n, x / fitted - 1 if fitted > 0 else math.inf))
    worst = max(abs(r) for _, r in residuals)
    if not 0 <= sigma < 1:
        return UslFit(False, f"contention sigma = {sigma:.3f} lies outside [0, 1): the steps do not follow the law",
                      sigma, kappa, one, None, residuals)
    if kappa <= 0:
        return UslFit(worst <= 0.15, "no retrograde term (kappa <= 0): throughput had not started to fall"
                      if worst <= 0.15 else f"residuals up to {worst:.0%}", sigma, kappa, one, None, residuals)
    peak = math.sqrt((1 - sigma) / kappa)
    if worst > 0.15:
        return UslFit(False, f"residuals up to {worst:.0%}: the law does not describe these steps", sigma, kappa,
                      one, peak, residuals)
    return UslFit(True, f"residuals within {worst:.0%}", sigma, kappa, one, peak, residuals)


# ------------------------------------------------------------------ consistency checks
@dataclass(frozen=True)
class Check:
    name: str
    concurrency: float | None
    ok: bool
    detail: str


def server_user_tok_s(step: Step) -> float | None:
    """Tokens per second one stream gets by the server's own clock: 1 / mean inter-token latency."""
    itl = get_path(step, "server", "vllm", "itl_mean_s")
    return 1 / itl if itl else None


def bunched(step: Step) -> bool:
    client = get_path(step, "client", "user_tok_s_p50")
    server = server_user_tok_s(step)
    return bool(client and server and client > BUNCHED_FACTOR * server)


def _edge_note(step: Step) -> str:
    raw = engine_figures(step).get("counted_held_raw")
    return (f" (counted {raw:.1f}, within the ±{counted_edge_error(step):.1f} the window's edges allow)"
            if raw is not None else "")


def consistency_checks(steps: list[Step], bandwidth: dict[str, Any], tolerance: float,
                       shared_prefix: str | None = None) -> list[Check]:
    """The report's cross-checks per step. `shared_prefix` says what the plan's mix shares between requests
    on purpose (a system prompt, resent history): then prefix-cache hits are the workload, not a doubt."""
    checks: list[Check] = []
    host_cpu_counts = host_cpu_informative(steps)
    for step in steps:
        c = step["concurrency"]
        ratio = get_path(step, "throughput_check", "client_over_vllm")
        if ratio is not None:
            checks.append(Check("client tok/s vs vLLM's counter", c, abs(ratio - 1) <= tolerance,
                                f"{ratio:.0%} over the same span (tolerance ±{tolerance:.0%})"))
        wait = where_waited(step, host_cpu_counts)
        if wait is not None:
            # The server cannot hold more than the client sent, unless other traffic reached it.
            over = wait.over_client
            checks.append(Check("Little's law: client in flight vs vLLM running + waiting", c,
                                not wait.front_of_engine and not over,
                                f"{wait.client_in_flight:.1f} open at the client, {wait.engine_held:.1f} in vLLM"
                                + _edge_note(step)
                                + ((f" (a difference within the ±{wait.uncertainty:.1f} that vLLM's counted figure "
                                    "allows over this window)" if wait.counted else
                                    f" (a difference within the ±{wait.uncertainty:.1f} that the gauge's few scrapes "
                                    "of random arrivals allow)") if wait.within_error else "")
                                + (f": {wait.in_front:.1f} waited in front of the engine" if wait.front_of_engine
                                   else "")
                                + (": vLLM held more than the client sent (other traffic on the server?)"
                                   if over else "")
                                + (f" ({wait.verdict()} account for vLLM's excess)"
                                   if wait.slow_readers_explain else "")))
        client_user, server_user = get_path(step, "client", "user_tok_s_p50"), server_user_tok_s(step)
        if client_user and server_user:
            checks.append(Check("per-user speed vs the server's time per token", c, not bunched(step),
                                f"client {client_user:,.0f} tok/s per stream, server {server_user:,.0f} "
                                "(1 / mean ITL)" + (": tokens reached the client bunched, the server's figure is "
                                                    "used" if bunched(step) else "")))
        # Each TTFT as the interval it is known to lie in: the client's is exact, a server quantile lies
        # somewhere in its histogram bucket. Out of order only if the intervals cannot overlap.
        ttft: list[tuple[str, float, float, float]] = []  # (where, value, lowest, highest)
        client_ttft = get_path(step, "client", "ttft_p50_s")
        if client_ttft is not None:
            ttft.append(("client", client_ttft, client_ttft, client_ttft))
        for name, group in (("collector", "collector"), ("vLLM", "vllm")):
            value = get_path(step, "server", group, "ttft_p50_s")
            if value is not None:
                bucket = get_path(step, "server", group, "ttft_p50_bucket_s") or [value, value]
                ttft.append((name, value, min(value, bucket[0]), max(value, bucket[1])))
        if len(ttft) >= 2:
            broken = [f"{a} {va * 1000:.1f} ms < {b} {vb * 1000:.1f} ms"
                      for (a, va, _, high_a), (b, vb, low_b, _) in itertools.pairwise(ttft)
                      if high_a < low_b - max(TTFT_ORDER_SLACK_S, 0.2 * low_b)]
            why = (" (the client's p50 covers requests that started in the window, a server histogram those whose "
                   "first token came in it: under a long queue the two populations differ)")
            checks.append(Check("TTFT p50: client ≥ collector ≥ vLLM", c, not broken,
                                "; ".join(broken) + why if broken else
                                ", ".join(f"{k} {v * 1000:.1f} ms" for k, v, _, _ in ttft)))
        hit = get_path(step, "server", "vllm", "prefix_cache_hit_ratio")
        if hit is not None and shared_prefix:
            checks.append(Check("prefix-cache hits expected (the mix shares prompts on purpose)", c, True,
                                f"{hit:.0%} of prompt tokens came from vLLM's prefix cache ({shared_prefix})"))
        elif hit is not None:
            checks.append(Check("prompts distinct (prefix-cache hit ratio under 50%)", c, hit < PREFIX_HIT_DOUBT,
                                f"{hit:.0%} of prompt tokens came from vLLM's prefix cache"
                                + (": prefill and KV use were cheaper than distinct prompts would make them"
                                   if hit >= PREFIX_HIT_DOUBT else "")))
    limit, single = bandwidth.get("limit_tok_s"), bandwidth.get("single_stream_tok_s")
    if limit and single:
        checks.append(Check("single-stream decode ≤ the memory-bandwidth limit", 1, single <= limit * 1.05,
                            f"{single:,.0f} tok/s vs a limit of {limit:,.0f}"))
    return checks


# ------------------------------------------------------------------ the server's own capacity
@dataclass(frozen=True)
class KvFill:
    kv_cache_tokens: float
    tokens_per_request: float
    users: float  # concurrency at which the requests in flight fill the KV cache


def kv_fill(results: RunResults) -> KvFill | None:
    """At which concurrency this profile's requests fill vLLM's KV cache (cache_config_info's
    kv_cache_size_tokens / (prompt + output tokens per request)); None when vLLM did not say."""
    flags = get_path(results, "provenance", "engine_flags") or {}
    try:
        kv_tokens = float(flags.get("kv_cache_size_tokens") or 0) or (
            float(flags["num_gpu_blocks"]) * float(flags["block_size"]))
    except (KeyError, TypeError, ValueError):
        return None
    if kv_tokens <= 0:
        return None
    def measured(key: str) -> Any:
        return next((v for s in results.get("steps", []) if s.get("status") == "done"
                     if (v := get_path(s, "client", key))), None)
    prompt = measured("prompt_tokens_per_request")
    if prompt is None:  # before any step: the plan's words, at ~1.3 tokens a word plus the chat template
        prompt = 1.3 * float(get_path(results, "plan", "profile", "prompt_words") or 0) + 10
    # Measured where a step finished (a mix's outputs vary; a natural end stops short of max_tokens).
    output = float(measured("output_tokens_per_request") or get_path(results, "plan", "profile", "max_tokens") or 0)
    per_request = prompt + output
    return KvFill(kv_tokens, per_request, kv_tokens / per_request) if per_request > 0 else None


def server_climb_limit(results: RunResults) -> int:
    """The knee search's bound where the plan sets none: from the KV capacity vLLM reports."""
    fill = kv_fill(results)
    return knee.capacity_limit(fill.kv_cache_tokens if fill else None, fill.tokens_per_request if fill else None)
