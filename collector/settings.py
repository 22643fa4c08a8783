"""The collector's settings: command-line flags, each also settable by an environment variable."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    upstream: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8001
    # Bounded so "upstream down" becomes a 502/503 quickly instead of a hung client.
    connect_timeout: float = 3.0
    max_body_bytes: int = 32 * 1024 * 1024
    # Empty = no key check at the proxy (Authorization is passed through unchanged either way).
    api_key: str = ""
    # Prompt and completion text go into spans only with this explicit opt-in.
    capture_content: bool = False
    # How often the label set of model names is refreshed from the upstream's /v1/models.
    models_refresh_seconds: float = 30.0
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
    parser.add_argument("--upstream", default=os.environ.get("COLLECTOR_UPSTREAM", defaults.upstream),
                        help="base URL of the OpenAI-compatible server (env COLLECTOR_UPSTREAM)")
    parser.add_argument("--host", default=os.environ.get("COLLECTOR_HOST", defaults.host),
                        help="listen address (env COLLECTOR_HOST)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("COLLECTOR_PORT", defaults.port)),
                        help="listen port (env COLLECTOR_PORT)")
    parser.add_argument("--connect-timeout", type=float,
                        default=float(os.environ.get("COLLECTOR_CONNECT_TIMEOUT", defaults.connect_timeout)),
                        help="seconds to connect to the upstream (env COLLECTOR_CONNECT_TIMEOUT)")
    parser.add_argument("--max-body-bytes", type=int,
                        default=int(os.environ.get("COLLECTOR_MAX_BODY_BYTES", defaults.max_body_bytes)),
                        help="largest accepted request body (env COLLECTOR_MAX_BODY_BYTES)")
    parser.add_argument("--api-key", default=os.environ.get("COLLECTOR_API_KEY", defaults.api_key),
                        help="require 'Authorization: Bearer KEY' (env COLLECTOR_API_KEY; empty = off)")
    parser.add_argument("--capture-content", action=argparse.BooleanOptionalAction,
                        default=_env_bool("COLLECTOR_CAPTURE_CONTENT"),
                        help="record prompt and completion text in spans (env COLLECTOR_CAPTURE_CONTENT)")
    parser.add_argument("--models-refresh-seconds", type=float,
                        default=float(os.environ.get("COLLECTOR_MODELS_REFRESH_SECONDS",
                                                     defaults.models_refresh_seconds)),
                        help="refresh period of the model-name label set (env COLLECTOR_MODELS_REFRESH_SECONDS)")
    parser.add_argument("--log-level", default=os.environ.get("COLLECTOR_LOG_LEVEL", defaults.log_level))
    args = parser.parse_args(argv)
    if not args.upstream.startswith(("http://", "https://")):
        parser.error(f"--upstream must be an http(s) URL, got {args.upstream!r}")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be 1..65535, got {args.port}")
    if args.connect_timeout <= 0 or args.max_body_bytes <= 0:
        parser.error("--connect-timeout and --max-body-bytes must be positive")
    return Settings(
        upstream=args.upstream, host=args.host, port=args.port, connect_timeout=args.connect_timeout,
        max_body_bytes=args.max_body_bytes, api_key=args.api_key, capture_content=args.capture_content,
        models_refresh_seconds=args.models_refresh_seconds, log_level=args.log_level.upper(),
    )
