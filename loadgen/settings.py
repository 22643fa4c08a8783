"""The repo's one settings reader and the service URLs built from it.

Ports and knobs live in `compose/.env` (else `compose/.env.example`), overridden by the environment;
outside a checkout (no such file) only the environment counts. Native mode, the compose stack's tests,
the benchmarks and `python -m loadgen` all read them here. This module imports nothing of the repo's own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_FILES = (ROOT / "compose" / ".env", ROOT / "compose" / ".env.example")
# Where native mode, the benchmarks and the generated model keep what they write (ignored by git).
VAR = Path(os.environ.get("SERVING_ENVELOPE_VAR", ROOT / "var"))
# The repo's virtual environments (scripts/setup, scripts/setup-bench).
APP_PYTHON = ROOT / ".venv" / "bin" / "python"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
BENCH_BIN = ROOT / ".venv-bench" / "bin"


def parse_env_file(path: Path, strict: bool = False) -> dict[str, str]:
    """KEY=VALUE lines of an env file as Compose reads them: comments and blank lines skipped, one pair
    of matching quotes around a value stripped. STRICT: any other line is a ValueError."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            if strict:
                raise ValueError(f"{path}:{number}: not a KEY=VALUE line: {raw!r}")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def read_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Settings from compose/.env (or .env.example), overridden by the environment. Without either
    file: the environment alone."""
    environ = os.environ if environ is None else environ
    path = next((p for p in ENV_FILES if p.exists()), None)
    if path is None:
        return dict(environ)
    settings = parse_env_file(path)
    for key in list(settings):
        if key in environ:
            settings[key] = environ[key]
    return settings


def external_vllm(settings: Mapping[str, str]) -> str | None:
    """The URL of a vLLM the stack runs beside instead of starting its own (None: start the CPU build)."""
    url = settings.get("VLLM_URL", "").strip().rstrip("/")
    return url or None


# A service reached at a URL of its own instead of BIND_ADDRESS:PORT: the compose loadgen service sets
# these to service names, a client host to another box's stack (VLLM_URL also means native mode runs
# beside that vLLM: see external_vllm).
URL_SETTINGS = {"COLLECTOR_PORT": "COLLECTOR_URL", "PROMETHEUS_PORT": "PROMETHEUS_URL",
                "GRAFANA_PORT": "GRAFANA_URL"}


def service_url(settings: Mapping[str, str], port_key: str) -> str | None:
    """http://BIND_ADDRESS:PORT of one service (None: no such port setting); vLLM's is VLLM_URL when set,
    the collector's, Prometheus's and Grafana's COLLECTOR_URL, PROMETHEUS_URL and GRAFANA_URL."""
    if port_key == "VLLM_PORT" and external_vllm(settings):
        return external_vllm(settings)  # the stack runs beside an external vLLM
    url = settings.get(URL_SETTINGS.get(port_key, ""), "").strip().rstrip("/")
    if url:
        return url
    return bind_url(settings, port_key) if settings.get(port_key) else None


def bind_url(settings: Mapping[str, str], port_key: str) -> str:
    """http://BIND_ADDRESS:PORT: where native mode runs a service, whatever *_URL says."""
    return f"http://{settings.get('BIND_ADDRESS', '127.0.0.1')}:{settings[port_key]}"


def vllm_url(settings: Mapping[str, str]) -> str:
    """Where vLLM answers: VLLM_URL, else the native stack's own on VLLM_PORT."""
    url = service_url(settings, "VLLM_PORT")
    if url is None:
        raise KeyError("VLLM_PORT")
    return url
