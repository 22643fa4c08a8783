"""The collector in front of a private vLLM (its own ports, started and stopped here) that exports
traces to an in-process OTLP/HTTP receiver, as the shared stack's vLLM does not: one trace joins the
collector's span and vLLM's `llm_request` span; a client disconnect frees vLLM's sequence within
1 s; killing vLLM mid-stream gives the client a terminal SSE error event, then fast 502s."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from loadgen import native_stack
from loadgen.procs import StartError, free_port, running
from tests.support.collector import OtlpReceiver, ReceivedSpan, collector_process, read_stream
from tests.support.stack import Stack

pytestmark = pytest.mark.stack
PROMPT = "A private prompt that must never reach a span"


@dataclass
class Private:
    vllm: str
    collector: str
    model: str
    receiver: OtlpReceiver
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def private(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    settings = {**stack.settings, "VLLM_PORT": str(free_port())}
    vllm_service = next(s for s in native_stack.services(settings) if s.name == "vllm")
    log = tmp_path_factory.mktemp("private-vllm") / "vllm.log"
    url = f"http://127.0.0.1:{settings['VLLM_PORT']}"
    with OtlpReceiver() as receiver:
        env = {**os.environ, **vllm_service.env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
               "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "vllm"}
        command = [*native_stack.vllm_command(settings), "--otlp-traces-endpoint", receiver.endpoint]
        collector_env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        try:
            with (running(command, env, log, url + "/health", 420, "private vLLM") as process,
                  collector_process(url, env=collector_env) as collector):
                yield Private(url, collector, stack.model, receiver, process)
        except StartError as error:
            pytest.fail(f"{error}: {log.read_text()[-800:]}")


def requests_running(private: Private) -> float:
    text = requests.get(private.vllm + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running{"))


def test_collector_and_vllm_spans_share_one_trace(private: Private) -> None:
    read = read_stream(private.collector + "/v1/chat/completions", {
        "model": private.model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6,
        "ignore_eos": True, "stream": True})
    assert read.status == 200

    def is_ours(span: ReceivedSpan) -> bool:
        return span.service == "collector" and span.attributes.get("gen_ai.operation.name") == "chat"

    ours = private.receiver.wait_for(is_ours, 30)
    assert len(ours) == 1, ours
    span = ours[0]
    vllm_spans = private.receiver.wait_for(lambda s: s.name == "llm_request" and s.trace_id == span.trace_id, 30)
    assert len(vllm_spans) == 1, f"no vLLM span in trace {span.trace_id}: {private.receiver.spans}"
    assert vllm_spans[0].parent_span_id == span.span_id  # vLLM's span is the collector span's child
    attributes = span.attributes
    assert span.name == f"chat {private.model}"
    assert attributes["gen_ai.request.model"] == private.model
    assert attributes["gen_ai.response.model"] == private.model
    assert attributes["gen_ai.usage.output_tokens"] == 6
    assert attributes["gen_ai.usage.input_tokens"] == vllm_spans[0].attributes["gen_ai.usage.prompt_tokens"]
    assert attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert 0 < attributes["gen_ai.response.time_to_first_chunk"] < 30
    assert "gen_ai.first_token" in span.events
    assert "error.type" not in attributes
    # No prompt or completion text without the explicit opt-in.
    assert PROMPT not in str(attributes) and "gen_ai.input.messages" not in attributes


def test_client_disconnect_frees_the_vllm_sequence_within_1s(private: Private) -> None:
    assert requests_running(private) == 0
    host, port = private.collector.removeprefix("http://").rsplit(":", 1)
    body = (b'{"model": "%s", "prompt": "x", "max_tokens": 900, "ignore_eos": true, "stream": true}'
            % private.model.encode())
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert client.recv(65536).startswith(b"HTTP/1.1 200")  # the head comes with the first token
        assert requests_running(private) == 1
    closed = time.monotonic()
    while requests_running(private) != 0:
        assert time.monotonic() - closed < 1.0, "vLLM still runs the request 1 s after the client left"
        time.sleep(0.05)


def test_vllm_dying_mid_stream_ends_the_stream_with_an_error_then_502(private: Private) -> None:
    # Runs last in this module: it kills the private vLLM.
    started = time.monotonic()
    with requests.post(private.collector + "/v1/chat/completions", stream=True, timeout=30, json={
            "model": private.model, "messages": [{"role": "user", "content": "go"}], "max_tokens": 900,
            "ignore_eos": True, "stream": True}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(line for line in lines if line.startswith(b"data: {"))
        os.killpg(private.process.pid, signal.SIGKILL)
        rest = [line for line in lines if line]
    assert time.monotonic() - started < 30
    assert b'"type":"upstream_disconnected"' in rest[-2] and rest[-1] == b"data: [DONE]", rest[-3:]
    private.process.wait(30)
    down = requests.post(private.collector + "/v1/chat/completions", timeout=10, json={
        "model": private.model, "messages": [{"role": "user", "content": "go"}], "stream": True})
    assert down.status_code == 502 and down.json()["error"]["type"] == "upstream_unavailable"
