"""Shared fixtures. `stack` is the live native stack: real vLLM (CPU build), Prometheus,
Alertmanager, node exporter and the collector, on 127.0.0.1.

The suite starts whatever part of the stack is not running and stops exactly that part at the
end; services that were already running (a developer's stack) are reused and left running.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadgen import native_stack
from loadgen.settings import read_settings, vllm_url
from tests.support.stack import Stack


@pytest.fixture(scope="session")
def settings() -> dict[str, str]:
    return read_settings()


@pytest.fixture(scope="session")
def stack(settings: dict[str, str]) -> Iterator[Stack]:
    # Start only what is not running; stop only what this session started.
    missing = [svc.name for svc in native_stack.services(settings) if native_stack.recorded_pid(svc.name) is None]
    if missing:
        try:
            native_stack.up(settings, only=missing)
        except native_stack.StackError as error:
            pytest.fail(f"native stack did not start: {error}")
    url = {svc.name: svc.url(settings) for svc in native_stack.services(settings)}  # where native mode runs them

    try:
        yield Stack(
            settings=settings,
            vllm=vllm_url(settings),
            collector=url["collector"],
            prometheus=url["prometheus"],
            alertmanager=url["alertmanager"],
            node_exporter=url["node-exporter"],
            model=settings["NATIVE_SERVED_MODEL_NAME"],
        )
    finally:
        for name in reversed(missing):
            native_stack.stop(name)
