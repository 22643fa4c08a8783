"""Bad input gets one clear line before any load is sent: plan files, thresholds, the target."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadgen.plan import PlanError, load_plan, parse_plan
from loadgen.procs import free_port
from loadgen.thresholds import THRESHOLDS_FILE, ThresholdsError, load_thresholds, parse_thresholds, slo_for_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("plan", "message"), [
    ({"steps": [1, 5, 5]}, "steps: must rise strictly"),
    ({"steps": []}, "steps: must be a non-empty list"),
    ({"steps": [1, "five"]}, "steps[1]: must be an integer"),
    ({"steps": [0, 2]}, "steps[0]: must be >= 1"),
    ({"profile": "longest-answer"}, "profile: unknown profile 'longest-answer'"),
    ({"profile": {"prompt_words": 10}}, "profile.max_tokens: required"),
    ({"search": {"growth": 1}}, "search.growth: must be >= 1.01"),
    ({"search": {"grwoth": 2}}, "search.grwoth: unknown field"),
    ({"stop": {"error_ratio": "high"}}, "stop.error_ratio: must be a number"),
    ({"slo": {"ttft_p99_s": 1}}, "slo.ttft_p99_s: unknown SLO"),
    ({"steady_s": 0}, "steady_s: must be >= 1"),
    ({"warmpu_s": 3}, "warmpu_s: unknown field"),
])
def test_bad_plan_names_the_field_and_why(plan: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError) as error:
        parse_plan(plan, "plan.yaml")
    assert str(error.value).startswith("plan.yaml: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nsteps: [1, 5\nprofile: short-chat\n")
    with pytest.raises(PlanError, match=r"broken.yaml: line \d+: not valid YAML"):
        load_plan(path)


def test_bundled_plans_parse() -> None:
    for name in ("default", "capstone", "bend-native"):
        plan = load_plan(name)
        assert plan.steps[0] == 1
    assert load_plan("default").steps == (1, 5, 20)
    assert load_plan("capstone").search.enabled is False


def test_thresholds_file_feeds_the_slo() -> None:
    thresholds = load_thresholds()
    data = yaml.safe_load(THRESHOLDS_FILE.read_text())
    records = [r["record"] for g in data["groups"] for r in g["rules"] if r["record"].startswith("envelope:")]
    assert len(thresholds) == len(records)
    slo = slo_for_run(thresholds, {"ttft_p95_s": 0.5})
    assert slo["ttft_p95_s"] == {"value": 0.5, "source": "plan override"}
    assert slo["e2e_p95_s"]["value"] == thresholds["e2e_p95_seconds"]
    assert slo["e2e_p95_s"]["source"] == "thresholds.yml envelope:e2e_p95_seconds:threshold"


def test_thresholds_of_the_wrong_shape_are_refused() -> None:
    bad = {"groups": [{"rules": [{"record": "envelope:ttft_p95_seconds:threshold", "expr": "vector(2) * 2"}]}]}
    with pytest.raises(ThresholdsError, match="envelope:ttft_p95_seconds:threshold: expr must be vector"):
        parse_thresholds(bad, "t.yml")


def _loadgen(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "loadgen", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent)})


def test_unreachable_target_is_one_line_before_any_step(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = _loadgen("sweep", "--target", f"http://127.0.0.1:{free_port()}", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: http://127.0.0.1:")
    assert "does not serve an OpenAI-compatible model list" in lines[0]
    assert not out.exists(), "nothing may be written before the target answers"


def test_bad_plan_file_from_the_command_line(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("steps: [1, 5]\nstop:\n  slo_broken_steps: 0\n")
    result = _loadgen("sweep", "--plan", str(plan), "--target", "http://127.0.0.1:9", "--out",
                      str(tmp_path / "r"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {plan}: stop.slo_broken_steps: must be >= 1, got 0"


def test_report_of_a_folder_without_results(tmp_path: Path) -> None:
    result = _loadgen("report", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path}: no results.json (not a sweep run folder)"


def test_a_missing_or_broken_thresholds_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ThresholdsError, match="cannot read the SLO thresholds"):
        load_thresholds(tmp_path / "thresholds.yml")
    (tmp_path / "thresholds.yml").write_text("groups: [\n")
    with pytest.raises(ThresholdsError, match="not YAML"):
        load_thresholds(tmp_path / "thresholds.yml")
