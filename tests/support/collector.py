"""Helpers for the collector tests: run the real `python -m collector` process, read its metrics,
read SSE streams, run an aiohttp app (a scripted upstream) or an OTLP/HTTP receiver in a thread."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from loadgen.procs import free_port, spawn_group, stop_group, wait_ready
from loadgen.settings import APP_PYTHON

PYTHON = APP_PYTHON
if not PYTHON.exists():
    PYTHON = Path(sys.executable)


@contextmanager
def collector_process(upstream: str, *args: str, env: dict[str, str] | None = None,
                      log: Path | None = None) -> Iterator[str]:
    """The real collector (python -m collector) on a free port; yields its base URL. `log`: a file
    that receives the collector's stderr (its log)."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "COLLECTOR_"))}
    environ["COLLECTOR_WORKERS"] = "1"  # the default (auto) depends on the machine's cores
    environ.update(env or {})
    stderr = log.open("wb") if log is not None else subprocess.PIPE
    process = spawn_group(  # not procs.running: a failed start shows the collector's stderr
        [str(PYTHON), "-m", "collector", "--upstream", upstream, "--host", "127.0.0.1", "--port", str(port),
         *args],
        subprocess.DEVNULL, stderr=stderr, env=environ,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/metrics", process, 30, "collector")
        yield url
    finally:
        stop_group(process)
        if process.stderr is not None:
            process.stderr.close()
        if log is not None and not isinstance(stderr, int):
            stderr.close()


def metric_samples(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, keyed by (name, labels)."""
    text = requests.get(base_url + "/metrics", timeout=10).text
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric_sum(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
               **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (sample_name, sample_labels), value in samples.items()
               if sample_name == name and wanted <= sample_labels)


@dataclass
class StreamRead:
    status: int
    events: list[Any] = field(default_factory=list)  # parsed JSON of each data event; "[DONE]" kept as str
    first_byte: float | None = None  # seconds from send to the response head
    first_content: float | None = None  # seconds from send to the first event with generated text
    raw: bytes = b""


def chunk_text(event: Any) -> str:
    if not isinstance(event, dict):
        return ""
    parts = []
    for choice in event.get("choices") or []:
        delta = choice.get("delta") or {}
        parts.append(delta.get("content") or choice.get("text") or "")
    return "".join(parts)


def read_stream(url: str, body: dict[str, Any], timeout: float = 60,
                headers: dict[str, str] | None = None) -> StreamRead:
    """POST a streaming request; time the head and the first content event as a client sees them."""
    started = time.perf_counter()
    with requests.post(url, json=body, stream=True, timeout=timeout, headers=headers) as response:
        read = StreamRead(status=response.status_code, first_byte=time.perf_counter() - started)
        buffer = b""
        for data in response.iter_content(chunk_size=None):
            now = time.perf_counter() - started
            read.raw += data
            buffer += data
            while b"\n\n" in buffer:
                raw_event, buffer = buffer.split(b"\n\n", 1)
                payload = raw_event.removeprefix(b"data: ")
                event: Any = "[DONE]" if payload == b"[DONE]" else json.loads(payload)
                if read.first_content is None and chunk_text(event):
                    read.first_content = now
                read.events.append(event)
    return read


# --- an aiohttp app in a background thread (a scripted upstream for the proxy's own logic) -------

@contextmanager
def serve_app(app: web.Application, port: int | None = None) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    port = port if port is not None else free_port()
    runner = web.AppRunner(app, handler_cancellation=True)
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise TimeoutError("test upstream did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --- an in-process OTLP/HTTP traces receiver -------------------------------------------------------

@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    events: tuple[str, ...]


class OtlpReceiver:
    """Accepts OTLP/HTTP protobuf exports on /v1/traces and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._take(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: _any_value(a.value) for a in span.attributes}
                    spans.append(ReceivedSpan(
                        service=service, name=span.name, trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                        attributes=attributes, events=tuple(e.name for e in span.events)))
        with self._lock:
            self.spans.extend(spans)

    def wait_for(self, predicate: Any, timeout: float) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [s for s in self.spans if predicate(s)]
            if found:
                return found
            time.sleep(0.2)
        return []


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def raw_stream_timing(base_url: str, path: str, body: dict[str, Any], timeout: float = 60) -> tuple[float, bytes]:
    """Seconds from sending the request to receiving the first generated content, timed on a connected
    raw socket so the client's own overhead stays out of the number; and the raw reply."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps(body).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode() + payload
    received = b""
    first_content: float | None = None
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        started = time.perf_counter()
        sock.sendall(request)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
            if first_content is None and re.search(rb'"(content|text)":"[^"]', received):
                first_content = time.perf_counter() - started
    if first_content is None:
        raise AssertionError(f"no generated content in the reply: {received[:300]!r}")
    return first_content, received
