"""compose/compose.yaml and its overlays (compose/compose.*.yaml), checked without a Docker engine.

What runs here: the files are parsed, interpolated from compose/.env.example the way Compose does
(`${VAR}`, `${VAR:-default}`, `${VAR:?error}`, `$$`), merged with each overlay (`!reset`,
`!override`, per-key rules), validated against the Compose Specification's JSON schema
(tests/data/compose-spec.json, source and commit in tests/data/README.md), and cross-checked
against the repository: scrape targets, native mode's Prometheus flags and collector settings,
mounted paths, the Alertmanager config as the container renders it (checked by amtool), and the
k6 service's step config against the keys the k6 script reads. `docker compose config` runs too
when the Compose CLI plugin is installed (it is not on the project's machines).

What cannot be checked here: that the images pull, run on arm64 and start, that the GPU
reservation works, that healthchecks pass, and that the services reach each other; that needs a
Docker engine (and for vLLM and DCGM a GPU).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from loadgen import k6_runner, native_stack
from loadgen.settings import APP_PYTHON, ROOT
from tests.support.compose import (
    BASE,
    BRACED,
    COMPOSE_DIR,
    OVERLAYS,
    TEMPLATE,
    TEST_SECRETS,
    ComposeLoader,
    InterpolationError,
    container_ports,
    env_example,
    env_with_secrets,
    interpolate,
    interpolate_tree,
    load_raw,
    load_stack,
    merge,
    repo_mounts,
    services_of,
    strip_tags,
)
from tests.support.stack import Stack

SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"

# Every service issue 2 (and issues 3-5) ask the stack to have.
REQUIRED_SERVICES = {
    "vllm", "collector", "prometheus", "alertmanager", "alert-webhook", "grafana",
    "grafana-image-renderer", "dcgm-exporter", "node-exporter", "otel-collector", "jaeger", "k6", "loadgen",
}
# Services without a healthcheck, and why: nothing in their image can run one, or they exit.
NO_HEALTHCHECK = {
    "dcgm-exporter": "distroless image: no shell or HTTP client",
    "otel-collector": "distroless image: no shell or HTTP client",
    "k6": "one-shot job",
    "loadgen": "one-shot job",
}


# --- Compose semantics, as far as these tests need them -------------------------------------

STACKS = [(BASE,)] + [(BASE, overlay) for overlay in OVERLAYS]
STACK_IDS = ["+".join(path.name for path in stack) for stack in STACKS]


@pytest.fixture(params=STACKS, ids=STACK_IDS)
def compose_stack(request: pytest.FixtureRequest) -> dict[str, Any]:
    files: tuple[Path, ...] = request.param
    return load_stack(files, env_with_secrets())


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return load_stack((BASE,), env_with_secrets())


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return load_stack((BASE, COMPOSE_DIR / "compose.cpu.yaml"), env_with_secrets())


# --- The interpolation and merge helpers themselves ----------------------------------------

def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "value", "EMPTY": ""}
    assert interpolate("a ${SET} $SET $$SET $${SET}", env) == "a value value $SET ${SET}"
    assert interpolate("${EMPTY:-fallback} ${EMPTY-kept} ${UNSET-fallback}", env) == "fallback  fallback"
    assert interpolate("${UNSET:-${SET}}", env) == "value"
    assert interpolate("${SET:+yes}${EMPTY:+no}${UNSET+no}", env) == "yes"
    assert interpolate("${SET:?needed}", env) == "value"
    with pytest.raises(InterpolationError, match="EMPTY is missing a value: needed here"):
        interpolate("${EMPTY:?needed here}", env)
    with pytest.raises(InterpolationError, match="UNSET"):
        interpolate("${UNSET?gone}", env)


def test_merge_follows_compose_rules() -> None:
    base_file = {"services": {"a": {"image": "x:1", "command": ["one", "two"], "cap_add": ["A"],
                                    "environment": {"K": "1", "L": "2"}, "deploy": {"replicas": 1},
                                    "volumes": ["v:/data", "./cfg:/etc/cfg:ro"]}}}
    overlay = yaml.load(
        "services:\n  a:\n    image: y:2\n    command: [three]\n    cap_add: [B]\n"
        "    environment: {L: '3'}\n    deploy: !reset {}\n    volumes: ['./other:/etc/cfg:ro']\n"
        "    labels: !override {z: '1'}\n",
        Loader=ComposeLoader,
    )
    service = merge(base_file, overlay)["services"]["a"]
    assert service == {"image": "y:2", "command": ["three"], "cap_add": ["A", "B"],
                       "environment": {"K": "1", "L": "3"}, "volumes": ["v:/data", "./other:/etc/cfg:ro"],
                       "labels": {"z": "1"}}


# --- Schema -----------------------------------------------------------------------------------

@functools.cache
def schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


def test_stack_validates_against_compose_spec(compose_stack: dict[str, Any]) -> None:
    errors = sorted(schema_validator().iter_errors(compose_stack), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_each_overlay_alone_validates_against_compose_spec() -> None:
    for overlay in OVERLAYS:
        alone = strip_tags(interpolate_tree(load_raw(overlay), env_with_secrets()))
        errors = list(schema_validator().iter_errors(alone))
        assert not errors, f"{overlay.name}: {[e.message for e in errors]}"


def test_schema_check_rejects_a_broken_file(base: dict[str, Any]) -> None:
    """The validation above can fail: a misspelt key and a wrong type are both caught."""
    broken = json.loads(json.dumps(base))
    broken["services"]["prometheus"]["healthcheck"]["tset"] = ["CMD", "true"]
    broken["services"]["vllm"]["ports"] = "8000:8000"
    messages = [error.message for error in schema_validator().iter_errors(broken)]
    assert any("tset" in message for message in messages), messages
    assert any("is not of type 'array'" in message for message in messages), messages


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_when_the_plugin_exists(tmp_path: Path) -> None:
    """`docker compose config` needs no engine; the plugin is absent on the project's machines,
    so here this only proves that (the schema test above is the check that always runs)."""
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
    if version.returncode != 0:
        reason = (version.stderr or version.stdout).strip().splitlines()[0]
        pytest.skip(f"docker compose plugin not installed: {reason}")
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env_with_secrets().items()))
    for files in STACKS:
        args = ["docker", "compose", "--env-file", str(env_file)]
        for path in files:
            args += ["-f", str(path)]
        result = subprocess.run([*args, "config", "--quiet"], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{[p.name for p in files]}: {result.stderr}"


# --- One place for tags and ports ---------------------------------------------------------------

def variables_used(text: str) -> set[str]:
    names = set()
    for match in TEMPLATE.finditer(text):
        if match["named"]:
            names.add(match["named"])
        elif match["braced"] is not None:
            braced = BRACED.fullmatch(match["braced"])
            assert braced is not None, match.group(0)
            names.add(braced["name"])
            names |= variables_used(braced["arg"] or "")
    return names


def test_every_variable_used_is_defined_in_env_example() -> None:
    defined = set(env_example())
    for path in (BASE, *OVERLAYS):
        missing = variables_used(path.read_text()) - defined
        assert not missing, f"{path.name} uses variables compose/.env.example does not define: {sorted(missing)}"


def test_every_image_is_pinned_and_comes_from_env(compose_stack: dict[str, Any]) -> None:
    raw_services = {}
    for path in (BASE, *OVERLAYS):
        raw_services.update({f"{path.name}:{name}": svc for name, svc in load_raw(path)["services"].items()})
    for where, service in raw_services.items():
        if "image" in service:
            assert re.fullmatch(r"\$\{[A-Z0-9_]+_IMAGE\}", str(service["image"])), (
                f"{where}: image must be a ${{..._IMAGE}} from compose/.env.example, got {service['image']!r}"
            )
    for name, service in services_of(compose_stack).items():
        image = service.get("image")
        assert image or service.get("build"), f"{name}: neither image nor build"
        if image:
            repository, _, tag = image.rpartition(":")
            assert repository and "/" not in tag, f"{name}: image {image!r} has no tag"
            assert tag and tag != "latest", f"{name}: image {image!r} is not pinned"


def test_env_example_images_are_pinned() -> None:
    images = {key: value for key, value in env_example().items() if key.endswith("_IMAGE")}
    assert len(images) >= len(REQUIRED_SERVICES)
    for key, image in images.items():
        repository, _, tag = image.rpartition(":")
        assert repository and tag and "/" not in tag and tag != "latest", f"{key}={image}"
        assert "latest" not in tag, f"{key}={image}"


PUBLISHED_PORT = re.compile(r"\$\{BIND_ADDRESS\}:\$\{[A-Z0-9_]+_PORT\}:(\d+|\$\{[A-Z0-9_]+_PORT\})")


def test_every_published_port_binds_bind_address(compose_stack: dict[str, Any]) -> None:
    env = env_with_secrets()
    assert env["BIND_ADDRESS"] == "127.0.0.1"
    for path in (BASE, *OVERLAYS):
        for name, service in load_raw(path)["services"].items():
            assert service.get("network_mode") != "host", f"{name}: host network would bypass BIND_ADDRESS"
            for port in service.get("ports", []):
                assert PUBLISHED_PORT.fullmatch(str(port)), (
                    f"{path.name}:{name}: port {port!r} must be ${{BIND_ADDRESS}}:${{..._PORT}}:<container port>"
                )
    for name, service in services_of(compose_stack).items():
        for port in service.get("ports", []):
            host, published, _ = str(port).split(":")
            assert host == "127.0.0.1" and published.isdigit(), f"{name}: {port}"


def test_compose_scrape_targets_name_services_and_ports(base: dict[str, Any]) -> None:
    """prometheus/targets/*.yml (compose mode) point at services that listen there."""
    services = services_of(base)
    target_files = sorted((ROOT / "prometheus" / "targets").glob("*.yml"))
    assert {path.stem for path in target_files} >= set(native_stack.SCRAPE_TARGETS)
    for path in target_files:
        for group in yaml.safe_load(path.read_text()):
            for target in group["targets"]:
                host, _, port = target.partition(":")
                assert host in services, f"{path.name}: {target} is no compose service"
                assert int(port) in container_ports(services[host]), f"{path.name}: {host} does not listen on {port}"


# --- Mounts ------------------------------------------------------------------------------------

def command_text(service: dict[str, Any]) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key) or []
        parts += [value] if isinstance(value, str) else [str(v) for v in value]
    return " ".join(parts)


def created_by_docker(service: dict[str, Any]) -> set[str]:
    """Container paths of bind mounts whose host folder Docker creates when missing (outputs)."""
    return {entry["target"] for entry in service.get("volumes", [])
            if isinstance(entry, dict) and entry.get("bind", {}).get("create_host_path")}


def test_every_mounted_repo_path_exists(compose_stack: dict[str, Any]) -> None:
    for name, service in services_of(compose_stack).items():
        for host_path, target in repo_mounts(service):
            if target in created_by_docker(service):
                assert host_path.is_relative_to(ROOT), f"{name}: writes to {host_path} outside the repository"
                continue
            assert host_path.exists(), f"{name}: mounts {host_path.relative_to(ROOT)}, which does not exist"
            assert host_path.is_relative_to(ROOT), f"{name}: mounts {host_path} outside the repository"
            # Files the command names under a mounted directory exist too (e.g. the k6 script).
            for used in re.findall(re.escape(target.rstrip("/")) + r"/[\w./-]+", command_text(service)):
                inside = host_path / used[len(target.rstrip("/")) + 1:]
                assert inside.exists(), f"{name}: its command uses {used}, but {inside.relative_to(ROOT)} is missing"


def test_named_volumes_are_declared(compose_stack: dict[str, Any]) -> None:
    declared = set(compose_stack.get("volumes") or {})
    for name, service in services_of(compose_stack).items():
        for entry in service.get("volumes", []):
            source = entry.get("source", "") if isinstance(entry, dict) else str(entry).split(":")[0]
            if source and not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


# --- Services ---------------------------------------------------------------------------------

def test_every_service_of_the_stack_is_present(compose_stack: dict[str, Any]) -> None:
    missing = REQUIRED_SERVICES - set(services_of(compose_stack))
    assert not missing, f"missing services: {sorted(missing)}"


def test_healthchecks(compose_stack: dict[str, Any]) -> None:
    for name, service in services_of(compose_stack).items():
        check = service.get("healthcheck")
        if name in NO_HEALTHCHECK:
            assert check is None, f"{name} has a healthcheck now: drop it from NO_HEALTHCHECK"
            continue
        assert check and check.get("test"), f"{name}: no healthcheck (or list it in NO_HEALTHCHECK with why)"
        test = check["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: {test}"
        for field in ("interval", "timeout", "start_period"):
            assert re.fullmatch(r"\d+(ms|s|m|h)", str(check.get(field, ""))), f"{name}: healthcheck {field}"
        # start_interval makes Compose refuse Docker Engines older than 25 (common on GPU boxes).
        assert "start_interval" not in check, f"{name}: start_interval needs Docker Engine >= 25"
        # A check against a URL uses a port the service listens on inside the network.
        for port in re.findall(r"http://127\.0\.0\.1:(\d+)/", " ".join(test)):
            listens = container_ports(service) | ({13133} if name == "jaeger" else set())
            assert int(port) in listens, f"{name}: healthcheck probes port {port}, service has {sorted(listens)}"


def test_prometheus_flags_equal_native_mode(compose_stack: dict[str, Any]) -> None:
    prometheus = services_of(compose_stack)["prometheus"]
    command: list[str] = prometheus["command"]
    own = {"--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
           "--web.listen-address=0.0.0.0:9090"}
    assert own <= set(command)
    assert [flag for flag in command if flag not in own] == native_stack.PROMETHEUS_FLAGS
    assert "../prometheus:/etc/prometheus:ro" in prometheus["volumes"]


def test_grafana_admin_password_has_no_default(base: dict[str, Any]) -> None:
    assert env_example()["GRAFANA_ADMIN_PASSWORD"] == ""
    with pytest.raises(InterpolationError, match="GRAFANA_ADMIN_PASSWORD"):
        load_stack((BASE,), {**env_example(), "GRAFANA_RENDERER_TOKEN": "x"})
    raw = load_raw(BASE)["services"]["grafana"]["environment"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?.+\}", raw["GF_SECURITY_ADMIN_PASSWORD"])
    grafana = services_of(base)["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == TEST_SECRETS["GRAFANA_ADMIN_PASSWORD"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    renderer = services_of(base)["grafana-image-renderer"]
    assert grafana["GF_RENDERING_SERVER_URL"] == "http://grafana-image-renderer:8081/render"
    assert 8081 in container_ports(renderer)
    assert grafana["GF_RENDERING_CALLBACK_URL"] == "http://grafana:3000/"
    assert grafana["GF_RENDERING_RENDERER_TOKEN"] == renderer["environment"]["AUTH_TOKEN"]


def test_vllm_serves_qwen3_8b_on_the_gpu(base: dict[str, Any]) -> None:
    env = env_example()
    assert env["MODEL"] == "Qwen/Qwen3-8B"
    vllm = services_of(base)["vllm"]
    command = vllm["command"]
    assert command[0] == "Qwen/Qwen3-8B"
    assert command[command.index("--served-model-name") + 1] == env["SERVED_MODEL_NAME"]
    assert command[command.index("--gpu-memory-utilization") + 1] == env["VLLM_GPU_MEMORY_UTILIZATION"]
    assert 0 < float(env["VLLM_GPU_MEMORY_UTILIZATION"]) <= 0.85, "leave unified memory for the OS (DGX Spark)"
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "model-cache:/root/.cache/huggingface" in vllm["volumes"]
    assert vllm["environment"]["HF_TOKEN"] == ""  # passed through from .env, empty unless set
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert vllm["healthcheck"]["start_period"] in ("20m", "30m", "45m", "60m")


def test_collector_gets_native_modes_settings(base: dict[str, Any]) -> None:
    collector = services_of(base)["collector"]
    command = collector["command"]
    assert command[command.index("--upstream") + 1] == "http://vllm:8000"
    assert int(command[command.index("--port") + 1]) in container_ports(collector)
    assert set(native_stack.COLLECTOR_ENV) <= set(collector["environment"])
    assert collector["build"]["dockerfile"] == "collector/Dockerfile"
    assert (COMPOSE_DIR / collector["build"]["context"] / collector["build"]["dockerfile"]).exists()
    dockerfile = (ROOT / "collector" / "Dockerfile").read_text()
    for arg in collector["build"].get("args", {}):
        assert re.search(rf"^ARG {arg}\b", dockerfile, re.M), f"collector/Dockerfile has no ARG {arg}"


def test_cpu_overlay_needs_no_gpu(cpu: dict[str, Any]) -> None:
    env = env_example()
    services = services_of(cpu)
    assert services["vllm"]["image"] == env["VLLM_CPU_IMAGE"]
    assert services["vllm"]["command"][0] == env["CPU_MODEL"]
    assert "--gpu-memory-utilization" not in services["vllm"]["command"]
    for name, service in services.items():
        if service.get("profiles"):
            continue  # not started unless its profile is asked for
        assert "deploy" not in service or "devices" not in str(service["deploy"]), f"{name} still reserves a GPU"
    assert services["dcgm-exporter"]["profiles"] == ["gpu"]
    assert services["k6"]["environment"]["STEP_MODEL"] == env["CPU_SERVED_MODEL_NAME"]
    # Its DCGM scrape target list is empty, as native mode's is.
    mount = next(v for v in services["prometheus"]["volumes"] if str(v).endswith("dcgm-exporter.yml:ro"))
    assert yaml.safe_load((COMPOSE_DIR / str(mount).split(":")[0]).read_text()) == []


def test_shell_commands_parse(compose_stack: dict[str, Any]) -> None:
    """Services whose command is a shell script: the script is valid POSIX sh (`sh -n`)."""
    scripts = {name: service["command"][0] for name, service in services_of(compose_stack).items()
               if service.get("entrypoint") == ["/bin/sh", "-c"]}
    assert {"alertmanager", "k6"} <= set(scripts)
    for name, script in scripts.items():
        result = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"


def test_dcgm_exporter_exposes_the_counters_the_tests_check(base: dict[str, Any]) -> None:
    dcgm = services_of(base)["dcgm-exporter"]
    counters = ROOT / "prometheus" / "dcgm-exporter-counters.csv"
    mounts = dict(repo_mounts(dcgm))
    assert counters.resolve() in mounts, "dcgm-exporter must collect prometheus/dcgm-exporter-counters.csv"
    command = dcgm["command"]
    assert command[command.index("-f") + 1] == mounts[counters.resolve()]
    rows = [line for line in counters.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert rows and all(re.match(r"DCGM_FI_[A-Z0-9_]+\s*,\s*(gauge|counter|label)\b", row) for row in rows)


# --- Alertmanager: the config as the container renders it -----------------------------------

def test_alertmanager_renders_the_webhook_port_and_passes_amtool(base: dict[str, Any], tmp_path: Path) -> None:
    alertmanager = services_of(base)["alertmanager"]
    script = alertmanager["command"][0]
    expression = re.search(r"sed '([^']+)'", script)
    assert expression, script
    mounted = next(h for h, t in repo_mounts(alertmanager) if t == "/etc/alertmanager/alertmanager.yml")
    rendered = tmp_path / "alertmanager.yml"
    with rendered.open("w") as out:
        subprocess.run(["sed", expression[1], str(mounted)], stdout=out, check=True)
    text = rendered.read_text()
    assert "${" not in text
    port = env_example()["ALERT_WEBHOOK_PORT"]
    if "alert-webhook:" in mounted.read_text():
        assert f"alert-webhook:{port}/" in text
        assert int(port) in container_ports(services_of(base)["alert-webhook"])
    amtool = shutil.which("amtool")
    assert amtool, "amtool (Debian prometheus-alertmanager) is installed by scripts/setup"
    result = subprocess.run([amtool, "check-config", str(rendered)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- k6: the compose service's step config against the script ---------------------------------

def k6_script(service: dict[str, Any], workdir: Path) -> str:
    """The k6 service's shell script, with container paths moved to `workdir` and the repo."""
    script: str = service["command"][0]
    return script.replace("/tmp/", f"{workdir}/").replace("/loadgen/", f"{ROOT / 'loadgen'}/")


def run_k6_service(service: dict[str, Any], workdir: Path, overrides: dict[str, str],
                   until: Callable[[str], str] = lambda s: s, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **{k: str(v) for k, v in service["environment"].items()}, **overrides}
    env["PATH"] = f"{APP_PYTHON.parent}:{env['PATH']}"
    return subprocess.run(["sh", "-c", until(k6_script(service, workdir))], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_k6_step_config_has_every_key_the_script_reads(base: dict[str, Any], tmp_path: Path) -> None:
    k6 = services_of(base)["k6"]
    result = run_k6_service(k6, tmp_path, {}, until=lambda script: script.split("\nLOADGEN_STEP_CONFIG=")[0])
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "loadgen-step.json").read_text())
    script_path = ROOT / "loadgen" / "k6" / "chat-stream.js"
    read = set(re.findall(r"\bcfg\.(\w+)", script_path.read_text()))
    assert read, "the k6 script no longer reads cfg.*: update this test and the compose k6 service"
    assert read <= set(config), f"compose k6 step config lacks {sorted(read - set(config))}"
    assert config["target"] == "http://collector:8001"
    assert config["model"] == env_example()["SERVED_MODEL_NAME"]
    assert config["vus"] == int(env_example()["K6_STEP_VUS"])
    # k6 reads K6_* variables as its own options; only the remote-write output's may be set here.
    own = {key for key in k6["environment"] if key.startswith("K6_")}
    assert own <= {"K6_PROMETHEUS_RW_SERVER_URL", "K6_PROMETHEUS_RW_TREND_STATS", "K6_PROMETHEUS_RW_PUSH_INTERVAL"}
    # The same series and labels as loadgen's own steps, so the load-test dashboard shows both.
    assert k6["environment"]["K6_PROMETHEUS_RW_TREND_STATS"] == k6_runner.TREND_STATS
    assert re.search(r"--tag run=compose-\$\(date [^)]*\) --tag step=0\b", k6["command"][0])


@pytest.mark.stack
def test_k6_service_command_runs_against_the_native_stack(base: dict[str, Any], tmp_path: Path,
                                                         stack: Stack) -> None:
    """The compose k6 command, run here with the real k6 1.1.0 against the native stack (1 VU, 3 s):
    it drives the collector, prints its summary and pushes to Prometheus by remote write."""
    k6 = services_of(base)["k6"]
    started = time.time()
    result = run_k6_service(k6, tmp_path, {
        "STEP_TARGET": stack.collector, "STEP_MODEL": stack.model, "STEP_VUS": "1",
        "STEP_DURATION_S": "3", "STEP_MAX_TOKENS": "16", "STEP_REQUEST_TIMEOUT_S": "60",
        "K6_PROMETHEUS_RW_SERVER_URL": f"{stack.prometheus}/api/v1/write",
    })
    assert result.returncode == 0, result.stderr[-2000:]
    # The summary JSON comes first on stdout, k6's progress lines after it.
    summary, _ = json.JSONDecoder().raw_decode(result.stdout, result.stdout.index("{"))
    metrics = summary["metrics"]
    assert metrics["llm_request_ok"]["values"]["rate"] == 1
    assert metrics["llm_output_tokens"]["values"]["count"] > 0
    # The run id is made inside the command: find this run's series by its prefix and time.
    pushed_at = stack.prom_value('max(timestamp(k6_llm_output_tokens_total{run=~"compose-.+", step="0"}))')
    assert pushed_at is not None and pushed_at >= started - 1, "no k6 sample of this run reached Prometheus"
