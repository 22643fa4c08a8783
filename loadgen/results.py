"""results.json, the contract between the sweep (which writes it after every step) and everything that reads
a run: the analysis, the report, the panel export and the benchmarks. Typed here, read only through
`load_run(dir)` (or `parse_run` for a run still in memory), with a schema version.

    RunResults   one run: what was measured against what, its plan and SLO, its steps, notes and gaps
    Step         one load step (closed loop: `concurrency` users; rate mode: `concurrency` offered req/s)
    ClientStats  the client's figures over a step's steady window (loadgen.stats.client_step_stats)
    StepSlo      the SLO verdict of a step

Sections whose keys come from elsewhere (the step queries in step-queries.yaml, the k6 summary, provenance,
the plan as written by Plan.to_dict) stay `dict[str, Any]`. Version 1 is every results.json written so far;
a run folder written before the version was recorded is version 1. Imports nothing of the repo.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict, cast

SCHEMA_VERSION = 1
RESULTS = "results.json"


class ResultsError(ValueError):
    """One line: why a run folder cannot be read."""


class StepSlo(TypedDict):
    ok: bool
    broken: list[str]
    checked: dict[str, Any]  # key -> {"value", "limit", "source"}


class ClientStats(TypedDict, total=False):
    requests: int
    population: str
    ok: int
    errors: int
    error_kinds: dict[str, int]
    error_ratio: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_p99_s: float | None
    e2e_p50_s: float | None
    e2e_p95_s: float | None
    output_tokens_per_request: float | None
    prompt_tokens_per_request: float | None
    output_tok_s: float
    user_tok_s_p50: float | None
    user_tok_s_p5: float | None
    in_flight_avg: float | None


class Step(TypedDict, total=False):
    concurrency: float  # users (an int in a closed-loop run), or offered requests/s in rate mode
    started: float
    ended: float
    status: str  # "done", "failed" or "incomplete"; only done steps count
    missing: list[str]
    hard_stop: str | None
    steady_start: float
    steady_end: float
    client: ClientStats
    k6: dict[str, Any]
    server: dict[str, Any] | None  # group -> name -> value, from loadgen/step-queries.yaml
    throughput_check: dict[str, Any] | None
    slo: StepSlo
    # rate mode (loadgen/rate_mode.py)
    mode: str
    rate: dict[str, Any]
    lengths: dict[str, Any] | None
    queue: dict[str, Any]
    slow_readers: dict[str, Any] | None  # loadgen/slow_readers.py's own figures, apart from the client's
    replicas: int | None  # --executor k8s: the serving Deployment's ready replicas during the step


class RunResults(TypedDict, total=False):
    schema_version: int
    run_id: str
    created: float
    finished: float
    status: str  # "running", "complete" or "partial"
    target: str
    model: str
    plan: dict[str, Any]  # Plan.to_dict(); plan_from_dict reads it back
    slo: dict[str, dict[str, Any]]
    probe: dict[str, Any]
    ttfb_is_ttft: bool
    provenance: dict[str, Any]
    command: list[str]
    steps: list[Step]
    missing: list[str]
    notes: list[str]
    prometheus_url: str | None
    timeline: dict[str, Any]
    panels_note: str
    cold_start: dict[str, Any] | None  # loadgen/cold_start.py: vLLM started shortly before the run


REQUIRED = ("run_id", "plan", "steps", "status")
STEP_REQUIRED = ("concurrency", "status")


def parse_run(data: object, source: str) -> RunResults:
    """DATA (a parsed results.json, or the sweep's own record) checked against the contract; ResultsError
    says in one line why it is not a run this loadgen can read."""
    if not isinstance(data, dict):
        raise ResultsError(f"{source}: not a loadgen run (a JSON object was expected)")
    version = data.get("schema_version", 1)
    if version != SCHEMA_VERSION:
        raise ResultsError(f"{source}: results schema version {version!r}, this loadgen reads version "
                           f"{SCHEMA_VERSION} (render it with the loadgen that wrote it)")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise ResultsError(f"{source}: not a loadgen run (no {', '.join(missing)})")
    steps = data["steps"]
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ResultsError(f"{source}: not a loadgen run (steps is not a list of objects)")
    for number, step in enumerate(steps, 1):
        absent = [key for key in STEP_REQUIRED if key not in step]
        if absent:
            raise ResultsError(f"{source}: step {number} has no {', '.join(absent)}")
    return cast(RunResults, data)


def load_run(run_dir: Path) -> RunResults:
    """RUN_DIR/results.json as a typed run; ResultsError (one line) when it is missing or not a run."""
    path = Path(run_dir) / RESULTS
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultsError(f"{run_dir}: no {RESULTS} (not a sweep run folder)") from None
    except OSError as error:
        raise ResultsError(f"{path}: cannot be read ({error.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ResultsError(f"{path}: not JSON ({error})") from None
    return parse_run(data, str(path))


def done_steps(results: RunResults) -> list[Step]:
    """The steps that count (status done), lowest load first."""
    return sorted((s for s in results["steps"] if s["status"] == "done"), key=lambda s: s["concurrency"])
