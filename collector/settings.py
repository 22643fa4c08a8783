"""The collector's settings: command-line flags, each also settable by an environment variable."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

# Non-/v1 paths of vLLM relayed by default (with the API key enforced); every other non-/v1 path is
# a 404 from the collector. See the README's "Exposure policy".
DEFAULT_RELAY_PATHS = ("/health", "/version", "/tokenize", "/detokenize")


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


# COLLECTOR_WORKERS=auto: one worker per this many cores the process may run on, at most AUTO_MAX_WORKERS.
# Measured (README, "Proxy overhead"): on a 16-core host 4 workers matched nginx's TTFT under a burst
# of 256 streams where 1 was 24 ms behind; on 2 shared cores a second worker only competes with the
# upstream and the load client for them.
CORES_PER_WORKER = 4
AUTO_MAX_WORKERS = 4


def auto_workers(cores: int | None = None) -> int:
    if cores is None:
        cores = len(os.sched_getaffinity(0))
    return max(1, min(AUTO_MAX_WORKERS, cores // CORES_PER_WORKER))


def workers(value: str) -> int:
    """COLLECTOR_WORKERS / --workers: a positive count, or auto."""
    if value.strip().lower() == "auto":
        return auto_workers()
    count = int(value)
    if count <= 0:
        raise ValueError(value)
    return count


def _paths(value: str) -> tuple[str, ...]:
    paths = tuple(p.strip().rstrip("/") for p in value.split(",") if p.strip().rstrip("/"))
    for path in paths:
        if not path.startswith("/") or path.startswith("/v1/") or path == "/metrics":
            raise ValueError(path)
    return paths


@dataclass(frozen=True)
class Settings:
    upstream: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8001
    # Bounded so "upstream down" becomes a 502/503 quickly instead of a hung client.
    connect_timeout: float = 3.0
    # Streams: the upstream's response head, then its first token (queue wait + prefill).
    first_byte_timeout: float = 120.0
    # Responses that are not streamed (vLLM answers a non-streaming generation only when it is
    # complete): the response head.
    response_timeout: float = 600.0
    # Once an answer flows: silence between two reads of it.
    idle_timeout: float = 60.0
    # Clients: a request head (from the connection or its first byte), and a request body.
    client_header_timeout: float = 10.0
    client_body_timeout: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    # Choices per request (`n`); above it a 400.
    max_n: int = 16
    # Non-/v1 upstream paths relayed (key enforced); any other non-/v1 path is a 404.
    relay_paths: tuple[str, ...] = DEFAULT_RELAY_PATHS
    # Empty = no key check at the proxy (Authorization is passed through unchanged either way).
    api_key: str = ""
    # Prompt and completion text go into spans only with this explicit opt-in.
    capture_content: bool = False
    # How often the label set of model names is refreshed from the upstream's /v1/models.
    models_refresh_seconds: float = 30.0
    # Processes serving the port (SO_REUSEPORT); /metrics sums them all. See collector/workers.py.
    workers: int = 1
    log_level: str = "INFO"

    @property
    def upstream_base(self) -> str:
        return self.upstream.rstrip("/")


def parse_args(argv: list[str] | None = None) -> Settings:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m collector",
        description="OpenAI-compatible reverse proxy that meters every request and token.",
    )

    def env(name: str, default: object) -> str:
        return os.environ.get(name) or str(default)

    parser.add_argument("--upstream", default=os.environ.get("COLLECTOR_UPSTREAM", defaults.upstream),
                        help="base URL of the OpenAI-compatible server (env COLLECTOR_UPSTREAM)")
    parser.add_argument("--host", default=os.environ.get("COLLECTOR_HOST", defaults.host),
                        help="listen address (env COLLECTOR_HOST)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("COLLECTOR_PORT", defaults.port)),
                        help="listen port (env COLLECTOR_PORT)")
    parser.add_argument("--connect-timeout", type=float,
                        default=float(os.environ.get("COLLECTOR_CONNECT_TIMEOUT", defaults.connect_timeout)),
                        help="seconds to connect to the upstream (env COLLECTOR_CONNECT_TIMEOUT)")
    parser.add_argument("--first-byte-timeout", type=float,
                        default=float(env("COLLECTOR_FIRST_BYTE_TIMEOUT", defaults.first_byte_timeout)),
                        help="streams: seconds to the upstream's response head, then to its first token "
                             "(env COLLECTOR_FIRST_BYTE_TIMEOUT)")
    parser.add_argument("--response-timeout", type=float,
                        default=float(env("COLLECTOR_RESPONSE_TIMEOUT", defaults.response_timeout)),
                        help="responses that are not streamed: seconds to the upstream's response head "
                             "(env COLLECTOR_RESPONSE_TIMEOUT)")
    parser.add_argument("--idle-timeout", type=float,
                        default=float(env("COLLECTOR_IDLE_TIMEOUT", defaults.idle_timeout)),
                        help="seconds of upstream silence allowed within an answer (env COLLECTOR_IDLE_TIMEOUT)")
    parser.add_argument("--client-header-timeout", type=float,
                        default=float(env("COLLECTOR_CLIENT_HEADER_TIMEOUT", defaults.client_header_timeout)),
                        help="seconds a client may take to send a request head (env COLLECTOR_CLIENT_HEADER_TIMEOUT)")
    parser.add_argument("--client-body-timeout", type=float,
                        default=float(env("COLLECTOR_CLIENT_BODY_TIMEOUT", defaults.client_body_timeout)),
                        help="seconds a client may take to send a request body (env COLLECTOR_CLIENT_BODY_TIMEOUT)")
    parser.add_argument("--max-body-bytes", type=int,
                        default=int(os.environ.get("COLLECTOR_MAX_BODY_BYTES", defaults.max_body_bytes)),
                        help="largest accepted request body (env COLLECTOR_MAX_BODY_BYTES)")
    parser.add_argument("--max-n", type=int, default=int(env("COLLECTOR_MAX_N", defaults.max_n)),
                        help="largest accepted `n` (choices per request) (env COLLECTOR_MAX_N)")
    parser.add_argument("--relay-paths",
                        default=os.environ.get("COLLECTOR_RELAY_PATHS", ",".join(defaults.relay_paths)),
                        help="comma-separated non-/v1 upstream paths relayed (API key enforced); every other "
                             "non-/v1 path is a 404; empty: none (env COLLECTOR_RELAY_PATHS)")
    parser.add_argument("--api-key", default=os.environ.get("COLLECTOR_API_KEY", defaults.api_key),
                        help="require 'Authorization: Bearer KEY' (env COLLECTOR_API_KEY; empty = off)")
    parser.add_argument("--capture-content", action=argparse.BooleanOptionalAction,
                        default=_env_bool("COLLECTOR_CAPTURE_CONTENT"),
                        help="record prompt and completion text in spans (env COLLECTOR_CAPTURE_CONTENT)")
    parser.add_argument("--models-refresh-seconds", type=float,
                        default=float(os.environ.get("COLLECTOR_MODELS_REFRESH_SECONDS",
                                                     defaults.models_refresh_seconds)),
                        help="refresh period of the model-name label set (env COLLECTOR_MODELS_REFRESH_SECONDS)")
    parser.add_argument("--workers", default=env("COLLECTOR_WORKERS", "auto"),
                        help="processes sharing the port, for bursts of requests on several cores; /metrics "
                             f"sums them; auto: one per {CORES_PER_WORKER} cores this process may use, at most "
                             f"{AUTO_MAX_WORKERS} (env COLLECTOR_WORKERS)")
    parser.add_argument("--log-level", default=os.environ.get("COLLECTOR_LOG_LEVEL", defaults.log_level))
    args = parser.parse_args(argv)
    if not args.upstream.startswith(("http://", "https://")):
        parser.error(f"--upstream must be an http(s) URL, got {args.upstream!r}")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be 1..65535, got {args.port}")
    timeouts = (args.connect_timeout, args.first_byte_timeout, args.response_timeout, args.idle_timeout,
                args.client_header_timeout, args.client_body_timeout)
    if min(timeouts) <= 0 or args.max_body_bytes <= 0 or args.max_n <= 0:
        parser.error("every timeout, --max-body-bytes and --max-n must be positive")
    try:
        count = workers(args.workers)
    except ValueError:
        parser.error(f"--workers (COLLECTOR_WORKERS) must be a positive number or auto, got {args.workers!r}")
    try:
        relay_paths = _paths(args.relay_paths)
    except ValueError as error:
        parser.error(f"--relay-paths: {error} is not a non-/v1 absolute path (/v1/* is always relayed)")
    return Settings(
        upstream=args.upstream, host=args.host, port=args.port, connect_timeout=args.connect_timeout,
        first_byte_timeout=args.first_byte_timeout, response_timeout=args.response_timeout,
        idle_timeout=args.idle_timeout, client_header_timeout=args.client_header_timeout,
        client_body_timeout=args.client_body_timeout, max_body_bytes=args.max_body_bytes, max_n=args.max_n,
        relay_paths=relay_paths, api_key=args.api_key, capture_content=args.capture_content,
        models_refresh_seconds=args.models_refresh_seconds, workers=count, log_level=args.log_level.upper(),
    )
