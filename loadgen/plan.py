"""Sweep plans: PyYAML files under loadgen/plans/ (profiles, steps, windows, stop conditions, search).

A bad plan raises PlanError naming the field and why, before any load is sent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loadgen.arrivals import Arrival, Mix, WorkloadError, parse_arrival, parse_mix

PLANS_DIR = Path(__file__).resolve().parent / "plans"
PROFILES_FILE = PLANS_DIR / "profiles.yaml"


class PlanError(ValueError):
    """One line: which field of which plan file is wrong, and why."""


@dataclass(frozen=True)
class Profile:
    name: str
    prompt_words: int
    max_tokens: int
    ignore_eos: bool = True


@dataclass(frozen=True)
class Search:
    enabled: bool = True
    growth: float = 2.0
    max_concurrency: int | None = None  # None: bounded by the server's KV capacity (knee.capacity_limit)
    resolution: float = 0.25
    max_steps: int = 14
    max_rate: float | None = None  # mode rate: the climb's cap in requests/s


@dataclass(frozen=True)
class Stop:
    error_ratio: float = 0.05
    slo_broken_steps: int = 2
    min_host_mem_available_gib: float = 4.0


@dataclass(frozen=True)
class Hardware:
    memory_bandwidth_gb_s: float | None = None
    params_billion: float | None = None
    bytes_per_param: float | None = None


@dataclass(frozen=True)
class Plan:
    name: str
    profile: Profile
    steps: tuple[int, ...]
    search: Search = field(default_factory=Search)
    warmup_s: float = 20.0
    steady_s: float = 60.0
    max_steady_s: float = 300.0
    request_timeout_s: float = 180.0
    stop: Stop = field(default_factory=Stop)
    slo: dict[str, float] = field(default_factory=dict)
    hardware: Hardware = field(default_factory=Hardware)
    # mode "rate": open-loop steps by arrival rate (requests/s), see loadgen/arrivals.py
    mode: str = "concurrency"
    rates: tuple[float, ...] = ()
    arrival: Arrival = field(default_factory=Arrival)
    mix: Mix | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SLO_KEYS = ("ttft_p95_s", "itl_p95_s", "e2e_p95_s", "error_ratio", "min_user_tok_s")


def builtin_profiles() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = yaml.safe_load(PROFILES_FILE.read_text())
    return data


def _number(where: str, value: Any, *, minimum: float, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise PlanError(f"{where}: must be {'an integer' if integer else 'a number'}, got {value!r}")
    if value < minimum:
        raise PlanError(f"{where}: must be >= {minimum}, got {value!r}")
    return value


def _known_fields(where: str, raw: dict[str, Any], cls: type[Any]) -> None:
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PlanError(f"{where}{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")


def _section(source: str, data: dict[str, Any], key: str, cls: type[Any]) -> dict[str, Any]:
    raw = data.get(key) or {}
    if not isinstance(raw, dict):
        raise PlanError(f"{source}: {key}: must be a mapping, got {type(raw).__name__}")
    _known_fields(f"{source}: {key}.", raw, cls)
    return raw


def _profile(source: str, raw: Any) -> Profile:
    if isinstance(raw, str):
        profiles = builtin_profiles()
        if raw not in profiles:
            raise PlanError(f"{source}: profile: unknown profile {raw!r} (known: {', '.join(profiles)})")
        return Profile(name=raw, **profiles[raw])
    if not isinstance(raw, dict):
        raise PlanError(f"{source}: profile: must be a profile name or a mapping, got {raw!r}")
    _known_fields(f"{source}: profile.", raw, Profile)
    for key in ("prompt_words", "max_tokens"):
        if key not in raw:
            raise PlanError(f"{source}: profile.{key}: required")
        _number(f"{source}: profile.{key}", raw[key], minimum=1, integer=True)
    return Profile(name=str(raw.get("name", "custom")), prompt_words=raw["prompt_words"],
                   max_tokens=raw["max_tokens"], ignore_eos=bool(raw.get("ignore_eos", True)))


def parse_plan(data: Any, source: str = "plan") -> Plan:
    if not isinstance(data, dict):
        raise PlanError(f"{source}: must be a YAML mapping at the top level")
    _known_fields(f"{source}: ", data, Plan)
    steps = data.get("steps", [1, 5, 20])
    if not isinstance(steps, list) or not steps:
        raise PlanError(f"{source}: steps: must be a non-empty list of concurrencies, got {steps!r}")
    for i, step in enumerate(steps):
        _number(f"{source}: steps[{i}]", step, minimum=1, integer=True)
    if steps != sorted(set(steps)):
        raise PlanError(f"{source}: steps: must rise strictly (seed steps run in order), got {steps!r}")
    search = Search(**_section(source, data, "search", Search))
    _number(f"{source}: search.growth", search.growth, minimum=1.01)
    if search.max_concurrency is not None:
        _number(f"{source}: search.max_concurrency", search.max_concurrency, minimum=1, integer=True)
    _number(f"{source}: search.resolution", search.resolution, minimum=0)
    _number(f"{source}: search.max_steps", search.max_steps, minimum=1, integer=True)
    stop = Stop(**_section(source, data, "stop", Stop))
    _number(f"{source}: stop.error_ratio", stop.error_ratio, minimum=0)
    _number(f"{source}: stop.slo_broken_steps", stop.slo_broken_steps, minimum=1, integer=True)
    _number(f"{source}: stop.min_host_mem_available_gib", stop.min_host_mem_available_gib, minimum=0)
    hardware = Hardware(**_section(source, data, "hardware", Hardware))
    for key, value in asdict(hardware).items():
        if value is not None:
            _number(f"{source}: hardware.{key}", value, minimum=0)
    slo = data.get("slo") or {}
    if not isinstance(slo, dict):
        raise PlanError(f"{source}: slo: must be a mapping")
    for key, value in slo.items():
        if key not in SLO_KEYS:
            raise PlanError(f"{source}: slo.{key}: unknown SLO (known: {', '.join(SLO_KEYS)})")
        _number(f"{source}: slo.{key}", value, minimum=0)
    for key in ("warmup_s", "steady_s", "max_steady_s", "request_timeout_s"):
        if key in data:
            _number(f"{source}: {key}", data[key], minimum=0 if key == "warmup_s" else 1)
    if "max_steady_s" in data and "steady_s" in data and data["max_steady_s"] < data["steady_s"]:
        raise PlanError(f"{source}: max_steady_s: must be >= steady_s ({data['steady_s']}), got {data['max_steady_s']}")
    mode, rates, arrival, mix = _workload(source, data)
    return Plan(
        name=str(data.get("name", Path(source).stem)),
        profile=_profile(source, data.get("profile", "short-chat")),
        steps=tuple(steps),
        search=search,
        warmup_s=float(data.get("warmup_s", 20.0)),
        steady_s=float(data.get("steady_s", 60.0)),
        # Unset: long answers may stretch a window to 3x steady_s, so a budgeted sweep stays bounded.
        max_steady_s=float(data.get("max_steady_s", 3 * float(data.get("steady_s", 60.0)))),
        request_timeout_s=float(data.get("request_timeout_s", 180.0)),
        stop=stop,
        slo={k: float(v) for k, v in slo.items()},
        hardware=hardware,
        mode=mode, rates=rates, arrival=arrival, mix=mix,
    )


def _workload(source: str, data: dict[str, Any]) -> tuple[str, tuple[float, ...], Arrival, Mix | None]:
    """mode, rates, arrival and mix (open-loop rate steps and request mixes: loadgen/arrivals.py)."""
    mode = data.get("mode", "concurrency")
    if mode not in ("concurrency", "rate"):
        raise PlanError(f"{source}: mode: must be concurrency or rate, got {mode!r}")
    rates = data.get("rates") or []
    rates = list(rates) if isinstance(rates, tuple) else rates  # a recorded plan (asdict keeps tuples)
    if mode == "rate":
        if not isinstance(rates, list) or not rates:
            raise PlanError(f"{source}: rates: mode rate needs a non-empty list of requests/s, got {rates!r}")
        for i, rate in enumerate(rates):
            _number(f"{source}: rates[{i}]", rate, minimum=0.001)
        if rates != sorted(set(rates)):
            raise PlanError(f"{source}: rates: must rise strictly (seed rates run in order), got {rates!r}")
        max_rate = (data.get("search") or {}).get("max_rate")
        if max_rate is not None:
            _number(f"{source}: search.max_rate", max_rate, minimum=0.001)
    elif rates:
        raise PlanError(f"{source}: rates: only with mode: rate (this plan's mode is {mode})")
    try:
        arrival = parse_arrival(data.get("arrival"))
        mix = parse_mix(data["mix"]) if data.get("mix") else None
    except WorkloadError as error:
        raise PlanError(f"{source}: {error}") from None
    # A recorded closed-loop plan carries the default arrival: only a set one is refused.
    if mode != "rate" and arrival != Arrival():
        raise PlanError(f"{source}: arrival: only with mode: rate (this plan's mode is {mode})")
    # Slow readers are sent by loadgen's own client at their arrival instants; a closed loop has none.
    if mode != "rate" and mix is not None and mix.slow_readers.share:
        raise PlanError(f"{source}: mix.slow_readers: only with mode: rate (this plan's mode is {mode})")
    return mode, tuple(float(r) for r in rates), arrival, mix


def load_plan(path: Path | str) -> Plan:
    """A plan from a file path, or a bundled plan's name (default, capstone, bend-native)."""
    candidate = Path(path)
    if not candidate.exists() and (PLANS_DIR / f"{path}.yaml").exists():
        candidate = PLANS_DIR / f"{path}.yaml"
    if not candidate.exists():
        raise PlanError(f"{path}: plan file not found")
    try:
        data = yaml.safe_load(candidate.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise PlanError(f"{candidate}:{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    return parse_plan(data, str(candidate))


def plan_from_dict(data: dict[str, Any]) -> Plan:
    """Rebuild a plan recorded in results.json (for --resume and re-rendering)."""
    data = dict(data)
    profile = data.pop("profile")
    data["profile"] = dict(profile)
    data["steps"] = list(data["steps"])
    data["rates"] = list(data.get("rates") or [])
    if data.get("arrival"):
        data["arrival"] = {**data["arrival"], "bursts": list(data["arrival"].get("bursts") or [])}
    return parse_plan(data, "results.json plan")
