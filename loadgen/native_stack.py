"""Native mode: the compose stack's services as plain processes on 127.0.0.1, no GPU, no Docker.

The same configuration files serve both modes: `compose/.env(.example)` for ports and knobs,
`prometheus/` for scrape, rule and Alertmanager files. Only the scrape targets differ: native
mode writes them for file-based service discovery under var/prometheus/targets.

    scripts/local up|down|status [SERVICE...]
    VLLM_URL=http://HOST:PORT scripts/local up     # beside a vLLM already running (e.g. on a GPU)

With VLLM_URL set (in compose/.env or the environment) the stack starts no vLLM of its own: the
collector relays to that URL and Prometheus scrapes its /metrics there.

Everything it writes (logs, PIDs, data, the generated model) lives under var/.

Library code; `scripts/local` (through the thin `scripts/native_stack.py`) is its command line. It reads
its settings through `loadgen.settings` and runs processes through `loadgen.procs`; nothing of the sweep,
the report or the benchmarks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import requests
import yaml

from loadgen import settings as _settings
from loadgen.procs import StartError, port_in_use, spawn_group, stop_group, wait_ready
from loadgen.settings import APP_PYTHON, ROOT, VLLM_PYTHON, external_vllm, read_settings, vllm_url

VAR = _settings.VAR  # a test points it at a scratch folder

# Prometheus flags shared with compose.yaml's prometheus service (a test keeps them equal).
PROMETHEUS_FLAGS = [
    "--web.enable-remote-write-receiver",
    "--web.enable-lifecycle",
    "--enable-feature=exemplar-storage",
    "--storage.tsdb.retention.time=15d",
]


# vLLM's CPU build starts in ~50-100 s on an idle 2-core machine (engine init, torch.compile);
# a machine busy with other work has needed over 7 minutes.
VLLM_START_TIMEOUT_S = 900.0


class StackError(Exception):
    """A one-line, user-facing reason why the stack could not be brought up."""


@dataclass
class Service:
    name: str
    port: int
    health_path: str
    command: Callable[[dict[str, str]], list[str]]
    requires: str  # executable that must exist, named in the error when it does not
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 60.0

    def url(self, settings: dict[str, str]) -> str:
        return f"http://{settings['BIND_ADDRESS']}:{self.port}"


def model_dir() -> Path:
    return VAR / "model"


def otlp_traces_endpoint(environ: dict[str, str] | None = None) -> str | None:
    """The OTLP/HTTP traces URL from the standard OTEL_* variables (None: tracing export off).

    vLLM and the collector both export there; vLLM gets the full /v1/traces URL because it passes
    the endpoint to its exporter as is.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return base.rstrip("/") + "/v1/traces" if base else None


def vllm_command(s: dict[str, str]) -> list[str]:
    command = [
        str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir()),
        "--served-model-name", s["NATIVE_SERVED_MODEL_NAME"],
        "--load-format", "dummy",
        "--host", s["BIND_ADDRESS"],
        "--port", s["VLLM_PORT"],
        "--max-model-len", s["NATIVE_MAX_MODEL_LEN"],
        "--max-num-seqs", s["NATIVE_MAX_NUM_SEQS"],
        "--num-gpu-blocks-override", s["NATIVE_KV_BLOCKS"],
    ]
    traces = otlp_traces_endpoint()
    if traces:
        command += ["--otlp-traces-endpoint", traces]
    return command


# Collector settings passed from compose/.env(.example) to the collector's environment.
COLLECTOR_ENV = ("COLLECTOR_CONNECT_TIMEOUT", "COLLECTOR_MAX_BODY_BYTES", "COLLECTOR_API_KEY",
                 "COLLECTOR_CAPTURE_CONTENT", "COLLECTOR_FIRST_BYTE_TIMEOUT", "COLLECTOR_RESPONSE_TIMEOUT",
                 "COLLECTOR_IDLE_TIMEOUT", "COLLECTOR_CLIENT_HEADER_TIMEOUT", "COLLECTOR_CLIENT_BODY_TIMEOUT",
                 "COLLECTOR_MAX_N", "COLLECTOR_RELAY_PATHS", "COLLECTOR_WORKERS")


def collector_command(s: dict[str, str]) -> list[str]:
    return [
        str(APP_PYTHON), "-m", "collector",
        "--upstream", vllm_url(s),
        "--host", s["BIND_ADDRESS"],
        "--port", s["COLLECTOR_PORT"],
    ]


def prometheus_command(s: dict[str, str]) -> list[str]:
    return [
        "prometheus",
        f"--config.file={VAR / 'prometheus' / 'prometheus.yml'}",
        f"--storage.tsdb.path={VAR / 'data' / 'prometheus'}",
        f"--web.listen-address={s['BIND_ADDRESS']}:{s['PROMETHEUS_PORT']}",
        *PROMETHEUS_FLAGS,
    ]


def alertmanager_command(s: dict[str, str]) -> list[str]:
    return [
        "prometheus-alertmanager",
        f"--config.file={VAR / 'prometheus' / 'alertmanager.yml'}",
        f"--storage.path={VAR / 'data' / 'alertmanager'}",
        f"--web.listen-address={s['BIND_ADDRESS']}:{s['ALERTMANAGER_PORT']}",
        "--cluster.listen-address=",
    ]


def alert_webhook_command(s: dict[str, str]) -> list[str]:
    # Alertmanager's default receiver (prometheus/alertmanager.yml): logs each notification.
    return [
        str(APP_PYTHON), str(ROOT / "scripts" / "alert_webhook.py"),
        "--host", s["BIND_ADDRESS"],
        "--port", s["ALERT_WEBHOOK_PORT"],
    ]


def node_exporter_command(s: dict[str, str]) -> list[str]:
    return [
        "prometheus-node-exporter",
        f"--web.listen-address={s['BIND_ADDRESS']}:{s['NODE_EXPORTER_PORT']}",
    ]


def services(s: dict[str, str]) -> list[Service]:
    """In start order: the slow vLLM first so the others come up while it loads."""
    vllm_env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": s["NATIVE_KVCACHE_SPACE_GIB"],
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if otlp_traces_endpoint():
        # vLLM's exporter defaults to gRPC; the endpoint above is OTLP/HTTP.
        vllm_env["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"
        vllm_env["OTEL_SERVICE_NAME"] = "vllm"
    own_vllm = [] if external_vllm(s) else [
        Service("vllm", int(s["VLLM_PORT"]), "/health", vllm_command, str(VLLM_PYTHON), vllm_env,
                VLLM_START_TIMEOUT_S)]
    return [
        *own_vllm,
        Service("node-exporter", int(s["NODE_EXPORTER_PORT"]), "/metrics", node_exporter_command,
                "prometheus-node-exporter"),
        Service("alert-webhook", int(s["ALERT_WEBHOOK_PORT"]), "/healthz", alert_webhook_command,
                str(APP_PYTHON)),
        Service("alertmanager", int(s["ALERTMANAGER_PORT"]), "/-/ready", alertmanager_command,
                "prometheus-alertmanager"),
        Service("prometheus", int(s["PROMETHEUS_PORT"]), "/-/ready", prometheus_command, "prometheus"),
        Service("collector", int(s["COLLECTOR_PORT"]), "/metrics", collector_command, str(APP_PYTHON),
                {key: value for key, value in s.items() if key in COLLECTOR_ENV}, start_timeout=VLLM_START_TIMEOUT_S),
    ]


# --- Prometheus files: the repo's own, with native targets beside them ---------------------

# compose service name -> (settings key of its port, native-mode job present?)
SCRAPE_TARGETS = {
    "vllm": "VLLM_PORT",
    "collector": "COLLECTOR_PORT",
    "node-exporter": "NODE_EXPORTER_PORT",
    "dcgm-exporter": "DCGM_EXPORTER_PORT",
    "alertmanager": "ALERTMANAGER_PORT",
    "prometheus": "PROMETHEUS_PORT",
}
NATIVE_ABSENT = {"dcgm-exporter"}  # no GPU here: its target list stays empty, not down


def write_prometheus_dir(s: dict[str, str]) -> None:
    """var/prometheus mirrors prometheus/ through symlinks; only targets/ is written here."""
    out = VAR / "prometheus"
    out.mkdir(parents=True, exist_ok=True)
    for entry in (ROOT / "prometheus").iterdir():
        if entry.name == "targets":
            continue
        link = out / entry.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(entry)
    targets = out / "targets"
    if targets.is_symlink():
        targets.unlink()
    targets.mkdir(exist_ok=True)
    host = s["BIND_ADDRESS"]
    for name, port_key in SCRAPE_TARGETS.items():
        address = f"{host}:{s[port_key]}"
        if name == "vllm" and external_vllm(s):
            address = urlsplit(vllm_url(s)).netloc
        groups = [] if name in NATIVE_ABSENT else [{"targets": [address]}]
        (targets / f"{name}.yml").write_text(yaml.safe_dump(groups))
    # Alertmanager's webhook receiver lives on the host in native mode.
    webhook = out / "alertmanager.yml"
    source = ROOT / "prometheus" / "alertmanager.yml"
    if source.exists():
        if webhook.is_symlink():
            webhook.unlink()
        webhook.write_text(render_alertmanager_config(source.read_text(), host, s["ALERT_WEBHOOK_PORT"]))


def render_alertmanager_config(text: str, host: str, port: str) -> str:
    """prometheus/alertmanager.yml with its webhook receiver at host:port (compose resolves the
    `alert-webhook` service name and ${ALERT_WEBHOOK_PORT} itself)."""
    return text.replace("alert-webhook:", f"{host}:").replace("${ALERT_WEBHOOK_PORT}", port)


# --- Process bookkeeping --------------------------------------------------------------------

def pid_file(name: str) -> Path:
    return VAR / "run" / f"{name}.pid"


def log_file(name: str) -> Path:
    return VAR / "log" / f"{name}.log"


def recorded_pid(name: str) -> int | None:
    """The PID `up` recorded, if that process is still the one we started."""
    path = pid_file(name)
    if not path.exists():
        return None
    try:
        pid_text, _, marker = path.read_text().partition("\n")
        pid = int(pid_text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (ValueError, OSError):
        return None
    return pid if marker.strip() and marker.strip() in cmdline else None


def healthy(service: Service, s: dict[str, str]) -> bool:
    try:
        return requests.get(service.url(s) + service.health_path, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def last_log_line(name: str) -> str:
    try:
        lines = [ln for ln in log_file(name).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


# Children started by this process: kept so they can be reaped (and no Popen is dropped alive).
# Keyed by PID, not name: a test may start a second service of the same name under another var/.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _started_pid(name: str) -> int | None:
    """The PID `up` recorded for NAME, whether or not that process still runs."""
    try:
        return int(pid_file(name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def start(service: Service, s: dict[str, str]) -> int:
    command = service.command(s)
    log_file(service.name).parent.mkdir(parents=True, exist_ok=True)
    pid_file(service.name).parent.mkdir(parents=True, exist_ok=True)
    with log_file(service.name).open("ab") as log:
        process = spawn_group(command, log, env={**os.environ, **service.env})
    # The marker lets `down` refuse to signal a recycled PID that is not ours.
    marker = " ".join(command[1:3]) if len(command) > 2 else command[0]
    pid_file(service.name).write_text(f"{process.pid}\n{marker}\n")
    _children[process.pid] = process
    return process.pid


def stop(name: str, grace: float = 20.0) -> bool:
    started = _started_pid(name)
    pid = recorded_pid(name)
    pid_file(name).unlink(missing_ok=True)
    child = _children.pop(started, None) if started is not None else None
    if pid is None:
        if child is not None:
            child.wait()
        return False
    return stop_group(child if child is not None and child.pid == pid else pid, grace)


# --- Commands -------------------------------------------------------------------------------

def up(s: dict[str, str], only: list[str] | None = None) -> None:
    wanted = [svc for svc in services(s) if only is None or svc.name in only]
    to_start: list[Service] = []
    for svc in wanted:
        if recorded_pid(svc.name) is not None:
            continue  # already ours and running
        if shutil.which(svc.requires) is None and not Path(svc.requires).exists():
            raise StackError(f"{svc.name}: {svc.requires} is not installed (run scripts/setup)")
        if port_in_use(s["BIND_ADDRESS"], svc.port):
            raise StackError(f"{svc.name}: port {s['BIND_ADDRESS']}:{svc.port} is already in use")
        to_start.append(svc)
    if not to_start:
        print("native stack already running")
        return
    if external_vllm(s):
        try:
            requests.get(vllm_url(s) + "/health", timeout=5).raise_for_status()
        except requests.RequestException as error:
            raise StackError(f"VLLM_URL {vllm_url(s)} is not a healthy vLLM ({type(error).__name__})") from None
        print(f"  {'vllm':<14} external  {vllm_url(s)}")
    if any(svc.name == "vllm" for svc in to_start):  # make_model.py skips a current model
        subprocess.run([str(APP_PYTHON), str(ROOT / "scripts" / "make_model.py"), str(model_dir())], check=True)
    write_prometheus_dir(s)
    started: list[str] = []
    try:
        for svc in to_start:
            start(svc, s)
            started.append(svc.name)
        for svc in to_start:
            wait_healthy(svc, s)
            niceness = int(s.get("NATIVE_ENGINE_CORE_NICE", "0") or 0)
            pid = _started_pid(svc.name)
            if svc.name == "vllm" and niceness and pid is not None:
                deprioritize_engine_core(pid, niceness)
            print(f"  {svc.name:<14} up  {svc.url(s)}")
    except (StackError, KeyboardInterrupt) as error:
        for name in reversed(started):
            stop(name)
        if isinstance(error, KeyboardInterrupt):
            raise StackError("interrupted; stopped what was started") from error
        raise


def deprioritize_engine_core(vllm_pid: int, niceness: int) -> list[int]:
    """Lower the scheduling priority of every thread of vLLM's engine-core process (the API server's
    child named VLLM::EngineCore); returns the thread ids changed.

    vLLM's CPU build pins its worker to one core and leaves the engine core on the other, where it
    busy-waits (sched_yield) on the worker's results beside the API server, the collector, k6 and
    Prometheus. Measured on 2 cores, 1 stream x 900 tokens straight at vLLM: 3 of 8 first tokens
    came 2.5-2.9 s late; with the engine core at nice 19, 16 of 16 came in 13-27 ms and requests
    finished ~10% sooner. On a GPU box the engine core has cores of its own.
    """
    changed: list[int] = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(vllm_pid).children():
            if not child.name().startswith("VLLM::EngineCor"):
                continue
            for thread in child.threads():
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, thread.id, niceness)
                    changed.append(thread.id)
    return changed


def wait_healthy(svc: Service, s: dict[str, str]) -> None:
    started = _started_pid(svc.name)
    child = _children.get(started) if started is not None else None
    try:
        if child is None:
            raise StartError(svc.name, exited=True)
        wait_ready(svc.url(s) + svc.health_path, child, svc.start_timeout, svc.name, interval=0.5)
    except StartError as error:
        if error.exited:
            raise StackError(
                f"{svc.name} exited during start-up (see {log_file(svc.name)}: {last_log_line(svc.name)})"
            ) from None
        raise StackError(f"{svc.name} not healthy after {svc.start_timeout:.0f} s (see {log_file(svc.name)})") from None


def down(s: dict[str, str], only: list[str] | None = None) -> None:
    """Stop what `up` started (all of it, or only the named services), in reverse start order."""
    wanted = [svc for svc in reversed(services(s)) if only is None or svc.name in only]
    stopped = [svc.name for svc in wanted if stop(svc.name)]
    if stopped:
        print("stopped: " + ", ".join(stopped))
    else:
        print("native stack is not running" if only is None else "not running: " + ", ".join(only))


def status(s: dict[str, str]) -> int:
    running = 0
    for svc in services(s):
        pid = recorded_pid(svc.name)
        state = "down" if pid is None else ("up" if healthy(svc, s) else "starting/unhealthy")
        running += pid is not None
        print(f"{svc.name:<14} {state:<18} {svc.url(s)}  pid={pid or '-'}")
    return 0 if running else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/local", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("services", nargs="*", help="only these services (default: all)")
    args = parser.parse_args(argv)
    settings = read_settings()
    known = [svc.name for svc in services(settings)]
    unknown = [name for name in args.services if name not in known]
    if unknown:
        parser.error(f"unknown service {', '.join(unknown)} (services: {', '.join(known)})")
    try:
        if args.command == "up":
            up(settings, args.services or None)
        elif args.command == "down":
            down(settings, args.services or None)
        else:
            return status(settings)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
