"""Open-loop workloads: when each request is sent (an arrival schedule) and what it asks (a request mix).

The schedule is drawn here, in Python, with a fixed seed, before the step starts; k6
(loadgen/k6/open-loop.js) sends request i at its scheduled instant whatever happened to the
earlier ones, so a slow server cannot slow its own arrivals (no coordinated omission). A request
whose instant passed while every virtual user was busy is not sent late: it is dropped and
counted (the same rule as k6's arrival-rate executors and their dropped_iterations).

Inter-arrival times:
- ``poisson``: exponential gaps (a Poisson process of the given rate);
- ``gamma``: gamma gaps with shape ``burstiness`` and mean 1/rate, as ``vllm bench serve
  --burstiness``: 1 is Poisson, below 1 burstier (coefficient of variation 1/sqrt(burstiness)),
  above 1 more even;
- ``constant``: evenly spaced.
A burst multiplies the rate by ``factor`` for ``duration_s`` from ``at_s``; the process is drawn in
operational time (unit rate) and mapped through the integrated rate, so the gaps keep their shape.

Request mixes: prompt and output lengths each a fixed number, a lognormal (mean and coefficient of
variation) or a histogram (bins with weights, inline or in a YAML file shipped under
loadgen/plans/); natural ends (no ignore_eos) as an option; a system prompt shared by every request
(so vLLM's prefix cache serves it).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PLANS_DIR = Path(__file__).resolve().parent / "plans"
PROCESSES = ("poisson", "gamma", "constant")


class WorkloadError(ValueError):
    """One line: which field is wrong and why (the plan prefixes its file name)."""


@dataclass(frozen=True)
class Burst:
    at_s: float
    duration_s: float
    factor: float


@dataclass(frozen=True)
class Arrival:
    process: str = "poisson"
    burstiness: float = 1.0
    seed: int = 0
    max_in_flight: int = 128  # k6 virtual users: requests open at once before arrivals are dropped
    late_tolerance_ms: float = 50.0  # no user free until this long after its instant: dropped, not sent late
    bursts: tuple[Burst, ...] = ()


@dataclass(frozen=True)
class Length:
    dist: str = "fixed"  # fixed | lognormal | histogram
    value: int | None = None  # fixed
    mean: float | None = None  # lognormal
    cv: float | None = None  # lognormal: standard deviation / mean
    bins: tuple[tuple[int, int, float], ...] = ()  # histogram: (low, high, weight), low..high inclusive
    min: int = 1
    max: int | None = None


@dataclass(frozen=True)
class SlowReaders:
    share: float = 0.0  # of the arrivals, sent by loadgen/slow_readers.py instead of k6
    read_bytes_per_s: float = 2000.0  # ~10 tokens/s of OpenAI stream chunks
    recv_buffer_bytes: int = 4096  # the reader's socket buffer, small so back-pressure reaches the server


@dataclass(frozen=True)
class Retries:
    max: int = 0  # retries after the first attempt
    # The client's error kinds that are retried (not `on`: YAML 1.1 reads that key as true).
    errors: tuple[str, ...] = ("timeout", "connection", "http_5xx")
    backoff_s: float = 1.0  # before the first retry, doubling after each


RETRYABLE = ("timeout", "connection", "http_5xx", "http_4xx", "stream_error", "no_usage", "empty_stream", "bad_chunk")


@dataclass(frozen=True)
class Mix:
    prompt_words: Length = field(default_factory=lambda: Length(value=40))
    output_tokens: Length = field(default_factory=lambda: Length(value=128))
    ignore_eos: bool = True  # False: natural ends (the model's end of sequence), max_tokens is only a cap
    system_prompt_words: int = 0  # a system prompt shared by every request (prefix cache)
    # Multi-turn: an arrival opens a conversation of this many turns; each turn resends the whole history
    # (earlier questions and the model's answers) and a new question, after think_time_s.
    turns: Length = field(default_factory=lambda: Length(value=1))
    think_time_s: float = 0.0
    slow_readers: SlowReaders = field(default_factory=SlowReaders)
    retries: Retries = field(default_factory=Retries)


# ------------------------------------------------------------------------------------------ parsing
def _num(where: str, value: Any, minimum: float, integer: bool = False, above: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise WorkloadError(f"{where}: must be {'an integer' if integer else 'a number'}, got {value!r}")
    if value < minimum or (above and value == minimum):
        raise WorkloadError(f"{where}: must be {'>' if above else '>='} {minimum}, got {value!r}")
    return value


def _mapping(where: str, raw: Any, known: tuple[str, ...]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise WorkloadError(f"{where}: must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise WorkloadError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(known)})")
    return raw


def parse_arrival(raw: Any, where: str = "arrival") -> Arrival:
    data = _mapping(where, raw, tuple(Arrival.__dataclass_fields__))
    process = data.get("process", "poisson")
    if process not in PROCESSES:
        raise WorkloadError(f"{where}.process: must be one of {', '.join(PROCESSES)}, got {process!r}")
    burstiness = float(_num(f"{where}.burstiness", data.get("burstiness", 1.0), 0, above=True))
    if process != "gamma" and burstiness != 1.0:
        raise WorkloadError(f"{where}.burstiness: only for process gamma (got process {process!r})")
    bursts_raw = data.get("bursts") or []
    if not isinstance(bursts_raw, list | tuple):
        raise WorkloadError(f"{where}.bursts: must be a list of {{at_s, duration_s, factor}}, got {bursts_raw!r}")
    bursts = []
    for i, b in enumerate(bursts_raw):
        b = _mapping(f"{where}.bursts[{i}]", b, tuple(Burst.__dataclass_fields__))
        for key in Burst.__dataclass_fields__:
            if key not in b:
                raise WorkloadError(f"{where}.bursts[{i}].{key}: required")
        bursts.append(Burst(at_s=float(_num(f"{where}.bursts[{i}].at_s", b["at_s"], 0)),
                            duration_s=float(_num(f"{where}.bursts[{i}].duration_s", b["duration_s"], 0, above=True)),
                            factor=float(_num(f"{where}.bursts[{i}].factor", b["factor"], 0))))
    ordered = sorted(bursts, key=lambda b: b.at_s)
    for a, b in itertools.pairwise(ordered):
        if b.at_s < a.at_s + a.duration_s:
            raise WorkloadError(f"{where}.bursts: bursts overlap (at {a.at_s:g} s and {b.at_s:g} s)")
    return Arrival(process=process, burstiness=burstiness,
                   seed=int(_num(f"{where}.seed", data.get("seed", 0), 0, integer=True)),
                   max_in_flight=int(_num(f"{where}.max_in_flight", data.get("max_in_flight", 128), 1, integer=True)),
                   late_tolerance_ms=float(_num(f"{where}.late_tolerance_ms", data.get("late_tolerance_ms", 50.0), 0)),
                   bursts=tuple(ordered))


def _bins(where: str, raw: Any) -> tuple[tuple[int, int, float], ...]:
    if isinstance(raw, str):  # a histogram file shipped in the repo, relative to loadgen/plans/
        path = PLANS_DIR / raw
        if not path.exists():
            raise WorkloadError(f"{where}: histogram file {raw!r} not found under loadgen/plans/")
        raw = (yaml.safe_load(path.read_text()) or {}).get("bins")
    if not isinstance(raw, list | tuple) or not raw:
        raise WorkloadError(f"{where}: must be a non-empty list of [low, high, weight], got {raw!r}")
    bins = []
    for i, b in enumerate(raw):
        if not isinstance(b, list | tuple) or len(b) != 3:
            raise WorkloadError(f"{where}[{i}]: must be [low, high, weight], got {b!r}")
        low = _num(f"{where}[{i}] low", b[0], 1, integer=True)
        high = _num(f"{where}[{i}] high", b[1], low, integer=True)
        weight = _num(f"{where}[{i}] weight", b[2], 0)
        bins.append((int(low), int(high), float(weight)))
    if sum(w for _, _, w in bins) <= 0:
        raise WorkloadError(f"{where}: weights must not all be 0")
    return tuple(bins)


def parse_length(raw: Any, where: str) -> Length:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return Length(value=int(_num(where, raw, 1, integer=True)))
    data = _mapping(where, raw, tuple(Length.__dataclass_fields__))
    # A recorded plan (dataclasses.asdict) carries every field, unset ones as None or ().
    data = {k: v for k, v in data.items() if v is not None and not (k == "bins" and isinstance(v, tuple) and not v)}
    dist = data.get("dist", "fixed")
    minimum = int(_num(f"{where}.min", data.get("min", 1), 1, integer=True))
    maximum = data.get("max")
    if maximum is not None:
        maximum = int(_num(f"{where}.max", maximum, minimum, integer=True))
    if dist == "fixed":
        if "value" not in data:
            raise WorkloadError(f"{where}.value: required for dist fixed")
        return Length(value=int(_num(f"{where}.value", data["value"], 1, integer=True)), min=minimum, max=maximum)
    if dist == "lognormal":
        for key in ("mean", "cv"):
            if key not in data:
                raise WorkloadError(f"{where}.{key}: required for dist lognormal")
        return Length(dist=dist, mean=float(_num(f"{where}.mean", data["mean"], 1)),
                      cv=float(_num(f"{where}.cv", data["cv"], 0)), min=minimum, max=maximum)
    if dist == "histogram":
        if "bins" not in data:
            raise WorkloadError(f"{where}.bins: required for dist histogram (a list, or a file under loadgen/plans/)")
        return Length(dist=dist, bins=_bins(f"{where}.bins", data["bins"]), min=minimum, max=maximum)
    raise WorkloadError(f"{where}.dist: must be fixed, lognormal or histogram, got {dist!r}")


def parse_mix(raw: Any, where: str = "mix") -> Mix:
    data = _mapping(where, raw, tuple(Mix.__dataclass_fields__))
    for key in ("prompt_words", "output_tokens"):
        if key not in data:
            raise WorkloadError(f"{where}.{key}: required (a number, or {{dist: ...}})")
    ignore_eos = data.get("ignore_eos", True)
    if not isinstance(ignore_eos, bool):
        raise WorkloadError(f"{where}.ignore_eos: must be true or false, got {ignore_eos!r}")
    return Mix(prompt_words=parse_length(data["prompt_words"], f"{where}.prompt_words"),
               output_tokens=parse_length(data["output_tokens"], f"{where}.output_tokens"), ignore_eos=ignore_eos,
               system_prompt_words=int(_num(f"{where}.system_prompt_words", data.get("system_prompt_words", 0), 0,
                                            integer=True)),
               turns=parse_length(data.get("turns", 1), f"{where}.turns"),
               think_time_s=float(_num(f"{where}.think_time_s", data.get("think_time_s", 0.0), 0)),
               slow_readers=_slow_readers(data.get("slow_readers"), f"{where}.slow_readers"),
               retries=_retries(data.get("retries"), f"{where}.retries"))


def _retries(raw: Any, where: str) -> Retries:
    data = _mapping(where, raw, tuple(Retries.__dataclass_fields__))
    kinds = data.get("errors", Retries.errors)
    if not isinstance(kinds, list | tuple) or not kinds or any(kind not in RETRYABLE for kind in kinds):
        raise WorkloadError(f"{where}.errors: must be a non-empty list of {', '.join(RETRYABLE)}, got {kinds!r}")
    return Retries(max=int(_num(f"{where}.max", data.get("max", 0), 0, integer=True)), errors=tuple(kinds),
                   backoff_s=float(_num(f"{where}.backoff_s", data.get("backoff_s", 1.0), 0)))


def _slow_readers(raw: Any, where: str) -> SlowReaders:
    data = _mapping(where, raw, tuple(SlowReaders.__dataclass_fields__))
    share = float(_num(f"{where}.share", data.get("share", 0.0), 0))
    if share > 1:
        raise WorkloadError(f"{where}.share: must be <= 1, got {share!r}")
    return SlowReaders(share=share,
                       read_bytes_per_s=float(_num(f"{where}.read_bytes_per_s", data.get("read_bytes_per_s", 2000.0),
                                                   0, above=True)),
                       recv_buffer_bytes=int(_num(f"{where}.recv_buffer_bytes", data.get("recv_buffer_bytes", 4096),
                                                  1024, integer=True)))


# ------------------------------------------------------------------------------------------ schedule
def rate_at(rate: float, bursts: tuple[Burst, ...], t: float) -> float:
    for b in bursts:
        if b.at_s <= t < b.at_s + b.duration_s:
            return rate * b.factor
    return rate


def _pieces(rate: float, bursts: tuple[Burst, ...], duration_s: float) -> list[tuple[float, float, float]]:
    """(start, end, rate) pieces covering [0, duration_s]."""
    edges = sorted({0.0, duration_s, *(min(duration_s, b.at_s) for b in bursts),
                    *(min(duration_s, b.at_s + b.duration_s) for b in bursts)})
    return [(a, b, rate_at(rate, bursts, a)) for a, b in itertools.pairwise(edges) if b > a]


def schedule(rate: float, duration_s: float, arrival: Arrival) -> list[float]:
    """Arrival instants (seconds from the step's start) of a step at `rate` requests/s, drawn with the
    plan's seed: unit-rate gaps in operational time, mapped through the integrated rate."""
    if rate <= 0 or duration_s <= 0:
        return []
    pieces = _pieces(rate, arrival.bursts, duration_s)
    total = sum((b - a) * r for a, b, r in pieces)  # expected arrivals
    rng = np.random.default_rng(arrival.seed)
    n = int(total + 10 * math.sqrt(total) / max(min(arrival.burstiness, 1.0), 1e-3) + 20)
    if arrival.process == "constant":
        gaps = np.ones(n)
    elif arrival.process == "poisson":
        gaps = rng.exponential(1.0, n)
    else:
        gaps = rng.gamma(arrival.burstiness, 1.0 / arrival.burstiness, n)
    operational = np.cumsum(gaps)
    if arrival.process == "constant":
        operational -= 0.5  # the first request half a gap in, as the rest are spaced
    while operational[-1] < total:  # very bursty draws: extend until the whole step is covered
        more = rng.gamma(arrival.burstiness, 1.0 / arrival.burstiness, n)
        operational = np.concatenate([operational, operational[-1] + np.cumsum(more)])
    out: list[float] = []
    done = 0.0
    index = 0
    for a, b, r in pieces:
        span = (b - a) * r
        while index < len(operational) and operational[index] < done + span:
            out.append(float(a + (operational[index] - done) / r) if r > 0 else a)
            index += 1
        done += span
    return out


# ------------------------------------------------------------------------------------------ mixes
def sample_lengths(length: Length, n: int, rng: np.random.Generator) -> list[int]:
    if length.dist == "fixed":
        values = np.full(n, float(length.value or 1))
    elif length.dist == "lognormal":
        sigma2 = math.log1p((length.cv or 0.0) ** 2)
        mu = math.log(length.mean or 1.0) - sigma2 / 2  # so that the mean is `mean`
        values = rng.lognormal(mu, math.sqrt(sigma2), n)
    else:
        weights = np.array([w for _, _, w in length.bins])
        which = rng.choice(len(length.bins), size=n, p=weights / weights.sum())
        values = np.array([rng.integers(length.bins[i][0], length.bins[i][1] + 1) for i in which], dtype=float)
    upper = length.max if length.max is not None else np.inf
    return [int(v) for v in np.clip(np.rint(values), length.min, upper)]


def requests_for(instants: list[float], mix: Mix, seed: int) -> list[list[float]]:
    """One [offset_ms, prompt_words, max_tokens, turns, slow_reader] row per arrival (the schedule k6
    reads); a conversation's turns each ask prompt_words and answer up to max_tokens; a slow reader's
    row (1) is sent by loadgen/slow_readers.py, not k6."""
    rng = np.random.default_rng(seed + 1)
    prompts = sample_lengths(mix.prompt_words, len(instants), rng)
    outputs = sample_lengths(mix.output_tokens, len(instants), rng)
    turns = sample_lengths(mix.turns, len(instants), rng)
    slow = (rng.random(len(instants)) < mix.slow_readers.share).astype(int).tolist()
    return [[round(t * 1000, 3), p, o, n, s] for t, p, o, n, s in zip(instants, prompts, outputs, turns, slow,
                                                                        strict=True)]


def describe(arrival: Arrival) -> str:
    process = {"poisson": "Poisson arrivals (exponential gaps)",
               "gamma": f"bursty arrivals (gamma gaps, burstiness {arrival.burstiness:g}: coefficient of variation "
                        f"{1 / math.sqrt(arrival.burstiness):.2f})",
               "constant": "evenly spaced arrivals"}[arrival.process]
    bursts = "".join(f"; a burst of x{b.factor:g} from {b.at_s:g} s for {b.duration_s:g} s" for b in arrival.bursts)
    return (f"open loop: {process}, seed {arrival.seed}{bursts}; up to {arrival.max_in_flight} requests open at once, "
            f"a request no user is free to take within {arrival.late_tolerance_ms:g} ms of its instant is dropped")


def describe_length(length: Length, unit: str) -> str:
    if length.dist == "fixed":
        return f"{length.value} {unit}"
    bounds = (f", clipped to [{length.min}, {length.max if length.max is not None else 'inf'}]"
              if length.min > 1 or length.max is not None else "")
    if length.dist == "lognormal":
        return f"lognormal, mean {length.mean:g} {unit}, cv {length.cv:g}{bounds}"
    low, high = min(b[0] for b in length.bins), max(b[1] for b in length.bins)
    bins = f"a histogram of {len(length.bins)} bins" if len(length.bins) > 1 else "uniform"
    return f"{low}-{high} {unit} ({bins}){bounds}"
