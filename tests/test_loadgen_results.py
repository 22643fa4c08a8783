"""results.json through its typed contract (loadgen.results): every run folder the repo keeps loads, and a
folder that is not a run of this loadgen is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadgen.results import SCHEMA_VERSION, ResultsError, done_steps, load_run
from loadgen.settings import ROOT

KEPT_RUNS = sorted(path.parent for path in [*(ROOT / "tests" / "data").glob("*/results.json"),
                                            *(ROOT / "loadgen" / "examples").glob("*/*/results.json")])


@pytest.mark.parametrize("run_dir", KEPT_RUNS, ids=lambda p: p.name)
def test_every_kept_run_folder_loads(run_dir: Path) -> None:
    results = load_run(run_dir)
    assert results.get("schema_version", 1) == SCHEMA_VERSION  # written before the version: version 1
    steps = done_steps(results)
    assert steps and [s["concurrency"] for s in steps] == sorted(s["concurrency"] for s in steps)


@pytest.mark.parametrize(("content", "says"), [
    (None, "no results.json (not a sweep run folder)"),
    ("nope", "not JSON"),
    ("[1]", "not a loadgen run (a JSON object was expected)"),
    ('{"steps": []}', "not a loadgen run (no run_id, plan, status)"),
    ('{"schema_version": 99, "run_id": "x"}', "results schema version 99, this loadgen reads version 1"),
    ('{"run_id": "x", "plan": {}, "status": "complete", "steps": [{"status": "done"}]}', "step 1 has no concurrency"),
])
def test_what_is_not_a_run_is_refused_in_one_line(tmp_path: Path, content: str | None, says: str) -> None:
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    with pytest.raises(ResultsError) as refused:
        load_run(tmp_path)
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_a_new_run_records_the_schema_version(tmp_path: Path) -> None:
    kept = json.loads((KEPT_RUNS[0] / "results.json").read_text())
    (tmp_path / "results.json").write_text(json.dumps({**kept, "schema_version": SCHEMA_VERSION}))
    assert load_run(tmp_path)["schema_version"] == SCHEMA_VERSION
