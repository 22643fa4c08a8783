"""Ports and knobs from the repo's one settings file (compose/.env, else .env.example).

Parsed by scripts/native_stack.py (the one parser); outside a checkout only the environment counts.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NATIVE_STACK = ROOT / "scripts" / "native_stack.py"


def stack_settings() -> dict[str, str]:
    if not NATIVE_STACK.exists():
        return dict(os.environ)
    module = sys.modules.get("native_stack")
    if module is None:
        spec = importlib.util.spec_from_file_location("native_stack", NATIVE_STACK)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["native_stack"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    settings: dict[str, str] = module.read_settings()
    return settings


def service_url(settings: dict[str, str], port_key: str) -> str | None:
    if port_key == "VLLM_PORT" and settings.get("VLLM_URL", "").strip():
        return settings["VLLM_URL"].strip().rstrip("/")  # the stack runs beside an external vLLM
    port = settings.get(port_key)
    return f"http://{settings.get('BIND_ADDRESS', '127.0.0.1')}:{port}" if port else None
