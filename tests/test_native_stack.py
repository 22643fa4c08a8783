"""Native mode: the launcher's failure handling, the generated model, and the live stack after the seed smoke."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from tokenizers import Tokenizer

from loadgen import native_stack, smoke
from loadgen.procs import free_port, port_in_use
from loadgen.settings import ROOT, read_settings
from tests.support.stack import Stack


@pytest.fixture
def scratch_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private var/ so launcher tests never touch the running stack's PIDs or logs."""
    monkeypatch.setattr(native_stack, "VAR", tmp_path)
    return tmp_path


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_settings_come_from_env_example_and_environment_overrides() -> None:
    settings = read_settings({"VLLM_PORT": "18000"})
    assert settings["VLLM_PORT"] == "18000"
    assert settings["BIND_ADDRESS"] == "127.0.0.1"
    assert settings["MODEL"] == "Qwen/Qwen3-8B"
    for key in ("NATIVE_KV_BLOCKS", "NATIVE_MAX_NUM_SEQS", "NATIVE_MAX_MODEL_LEN", "NATIVE_KVCACHE_SPACE_GIB"):
        assert int(settings[key]) > 0, key


def test_port_in_use_is_named_and_nothing_starts(scratch_var: Path, busy_port: int) -> None:
    settings = read_settings({"NODE_EXPORTER_PORT": str(busy_port)})
    with pytest.raises(native_stack.StackError, match=f"node-exporter: port 127.0.0.1:{busy_port} is already in use"):
        native_stack.up(settings, only=["node-exporter"])
    assert not list(scratch_var.glob("run/*.pid"))


def test_missing_package_is_named(scratch_var: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = read_settings({"NODE_EXPORTER_PORT": str(free_port())})
    real_services = native_stack.services

    def without_binary(s: dict[str, str]) -> list[native_stack.Service]:
        found = real_services(s)
        for svc in found:
            svc.requires = "no-such-node-exporter-binary"
        return found

    monkeypatch.setattr(native_stack, "services", without_binary)
    with pytest.raises(native_stack.StackError, match="no-such-node-exporter-binary is not installed"):
        native_stack.up(settings, only=["node-exporter"])


def test_service_that_dies_at_start_is_reported_and_the_rest_stopped(
    scratch_var: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = read_settings(
        {"NODE_EXPORTER_PORT": str(free_port()), "ALERTMANAGER_PORT": str(free_port())}
    )
    real_services = native_stack.services

    def broken_alertmanager(s: dict[str, str]) -> list[native_stack.Service]:
        found = real_services(s)
        for svc in found:
            if svc.name == "alertmanager":
                svc.command = lambda _s: ["prometheus-alertmanager", "--no-such-flag"]
        return found

    monkeypatch.setattr(native_stack, "services", broken_alertmanager)
    with pytest.raises(native_stack.StackError, match=r"alertmanager exited during start-up \(see .*alertmanager.log"):
        native_stack.up(settings, only=["node-exporter", "alertmanager"])
    # node exporter had started; it must have been stopped again
    assert native_stack.recorded_pid("node-exporter") is None
    assert not port_in_use("127.0.0.1", int(settings["NODE_EXPORTER_PORT"]))


def test_down_on_a_stopped_stack_says_so_and_exits_zero(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "native_stack.py"), "down"],
        env={"SERVING_ENVELOPE_VAR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "native stack is not running"


def test_every_id_the_model_can_emit_decodes_to_text() -> None:
    model = native_stack.model_dir()
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == config["vocab_size"]
    special = {tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")}
    prefix = tokenizer.decode([50])
    silent = [
        i for i in range(config["vocab_size"])
        if i not in special and len(tokenizer.decode([50, i])) <= len(prefix)
    ]
    assert silent == []


@pytest.mark.stack
def test_seed_smoke_then_vllm_and_prometheus_hold_requests_and_tokens(stack: Stack) -> None:
    def vllm_counter(name: str) -> float:
        text = requests.get(f"{stack.vllm}/metrics", timeout=10).text
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")]
        assert values, f"{name} missing from vLLM /metrics"
        return sum(values)

    before = vllm_counter("vllm:generation_tokens_total")
    stack.wait_for_scrape()  # a sample before the smoke, so increase() sees it even on a fresh stack
    records = asyncio.run(smoke.run_smoke(stack.collector, stack.model, max_tokens=16))
    assert [r.step for r in records].count(20) == 20 and len(records) == 26
    assert all(r.ok for r in records), [r for r in records if not r.ok]
    assert all(r.output_tokens == 16 and r.ttft_s is not None and r.ttft_s <= r.total_s for r in records)
    table = smoke.summary_table(records)
    assert table.splitlines()[0].split()[0] == "concurrent" and len(table.splitlines()) == 4

    # vLLM's own counters saw at least our tokens (other traffic may add more).
    assert vllm_counter("vllm:generation_tokens_total") - before >= 26 * 16
    assert vllm_counter("vllm:request_success_total") >= 26

    stack.wait_for_scrape()
    for expr in (
        "sum(vllm:request_success_total)",
        "sum(vllm:generation_tokens_total)",
        "sum(vllm:prompt_tokens_total)",
        "sum(increase(vllm:generation_tokens_total[2m]))",
        "node_memory_MemAvailable_bytes",
        "node_memory_MemTotal_bytes",
    ):
        value = stack.prom_value(expr)
        assert value is not None and value > 0, expr
    up = {r["metric"]["job"]: r["value"][1] for r in stack.prom_query("up")}
    for job in ("vllm", "collector", "node-exporter", "prometheus", "alertmanager"):
        assert up.get(job) == "1", (job, up)


def test_the_engine_core_yields_to_the_front_end(stack: Stack) -> None:
    """The CPU build's engine core busy-waits beside the API server; native mode runs it at the configured
    niceness (README "Why the generated model is no smaller") so first tokens do not stall for seconds."""
    wanted = int(stack.settings["NATIVE_ENGINE_CORE_NICE"])
    vllm_pid = native_stack.recorded_pid("vllm")
    if vllm_pid is None:
        pytest.skip("vLLM was not started by native mode here (VLLM_URL or a developer's own)")
    engine = [p for p in psutil.Process(vllm_pid).children() if p.name().startswith("VLLM::EngineCor")]
    assert engine, "no engine-core child under vLLM's API server"
    threads = [t.id for t in engine[0].threads()]
    assert threads and all(os.getpriority(os.PRIO_PROCESS, tid) == wanted for tid in threads)
