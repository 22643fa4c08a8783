"""The collector as a gateway people can expose (issue 13), against a scripted upstream and loopback
listeners: the exposure policy (allow-list, API key on every relayed path, no upstream address ever
handed out), every upstream wait bounded and counted by error type, streams vLLM would stream are
metered, and malformed or slow clients get JSON errors without a traceback in the log. The proxy is
always the real `python -m collector` process. Live-vLLM versions: test_collector_hardening_stack.py.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgen.procs import free_port
from tests.support.collector import collector_process, metric_samples, metric_sum, read_stream, serve_app

MODEL = "scripted-model"
KEY = "s3cret"


def sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunk(content: str, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, str] = {"role": "assistant", "content": content} if role else {"content": content}
    return sse({"id": "c1", "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def lax_true(value: object) -> bool:
    """What pydantic (vLLM's request models) treats as true, written independently of the collector's."""
    return value is True or (not isinstance(value, bool) and value in (1, 1.0)) or (
        isinstance(value, str) and value.lower() in ("1", "on", "t", "true", "y", "yes"))


class Upstream:
    """An OpenAI-like upstream (vLLM's paths, including those the collector must not expose) that
    records every path it was asked for; chat behaviour is picked by `messages[0].content`."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.cancelled = 0
        self.accept_encodings: list[str | None] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.paths.append(path)
        self.accept_encodings.append(request.headers.get("Accept-Encoding"))
        port = request.url.port
        if path.endswith("/") and path != "/":
            # FastAPI's redirect_slashes, as vLLM answers it: an absolute URL with its own address.
            return web.Response(status=307, headers={"Location": f"http://127.0.0.1:{port}{path.rstrip('/')}"})
        if path == "/v1/redirect":
            return web.Response(status=307, headers={"Location": f"http://127.0.0.1:{port}/v1/models"})
        if path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        if path == "/v1/chat/completions":
            return await self.chat(request)
        if path == "/tokenize":
            # Large enough that vLLM's GZip middleware compresses it for a client that asks.
            body = json.dumps({"tokens": list(range(2000))}).encode()
            if "gzip" in (request.headers.get("Accept-Encoding") or ""):
                return web.Response(body=gzip.compress(body), headers={
                    "Content-Type": "application/json", "Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
            return web.Response(body=body, content_type="application/json")
        if path == "/v1/stall-body":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = 100
            await response.prepare(request)
            await response.write(b'{"partial":')
            await asyncio.sleep(30)
            return response
        # /health, /version, /invocations, /docs, /openapi.json, /metrics, /load, ...: vLLM answers them.
        return web.json_response({"upstream_path": path})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
            script = body["messages"][0]["content"]
            assert isinstance(script, str)
        except Exception:  # deep nesting included: the scripted upstream refuses, never fails
            return web.json_response({"error": {"message": "bad request", "type": "BadRequestError",
                                                "code": 400}}, status=400)
        self.bodies.append(body)
        if not lax_true(body.get("stream")):
            if script == "silence":
                await asyncio.sleep(30)
            return web.json_response({"id": "c1", "model": MODEL, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if script == "silence":
                await asyncio.sleep(30)  # the head went out; no token ever follows
            await response.write(chunk("", role=True))
            await response.write(chunk("Hello"))
            if script == "stall":
                await asyncio.sleep(30)
            await response.write(chunk(" world", "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                await response.write(sse({"id": "c1", "model": MODEL, "choices": [],
                                          "usage": {"prompt_tokens": 5, "completion_tokens": 2}}))
            await response.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return response


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, str]]:
    scripted = Upstream()
    with serve_app(scripted.app()) as url:
        yield scripted, url


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("collector-logs")


@pytest.fixture(scope="module")
def proxy(upstream: tuple[Upstream, str], log_dir: Path) -> Iterator[str]:
    """Default exposure settings, short timeouts (so the bounded waits end within a test)."""
    with collector_process(upstream[1], "--first-byte-timeout", "1", "--idle-timeout", "1",
                           "--response-timeout", "1.5", "--client-header-timeout", "1",
                           "--client-body-timeout", "1", log=log_dir / "proxy.log") as url:
        yield url


@pytest.fixture(scope="module")
def keyed(upstream: tuple[Upstream, str]) -> Iterator[str]:
    with collector_process(upstream[1], env={"COLLECTOR_API_KEY": KEY}) as url:
        yield url


def ask(script: str, stream: object = True, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": script}], "stream": stream, **extra}


def assert_json_error(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    error: dict[str, Any] = response.json()["error"]
    assert error["message"] and error["type"] and error["code"] == status
    return error


def raw_exchange(base_url: str, request: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send raw bytes on a fresh connection; everything received until the server closes it, and when."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    received = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(request)
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    return received, time.monotonic() - started


def parse_reply(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def no_traceback(log: Path) -> None:
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "ERROR" not in text, text[-2000:]


# --- 1. exposure policy: allow-list, API key on every relayed path ------------------------------

NOT_EXPOSED = ["/invocations", "/docs", "/openapi.json", "/load", "/ping", "/redoc", "/v1",
               "/v1/../invocations", "/v1/%2e%2e/invocations", "/v1/..%2Finvocations", "/v1/./models",
               "//v1/models", "/"]


@pytest.mark.parametrize("path", NOT_EXPOSED)
def test_paths_outside_the_allow_list_are_a_404_and_never_reach_the_upstream(
        upstream: tuple[Upstream, str], proxy: str, path: str) -> None:
    scripted, _ = upstream
    before = len(scripted.paths)
    for method in ("GET", "POST"):
        # Sent as raw bytes: an HTTP client would normalise `..` away before the collector saw it.
        reply, _ = raw_exchange(proxy, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                       "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode())
        status, headers, body = parse_reply(reply)
        assert status == 404, reply[:300]
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"]["type"] == "not_found_error"
    assert scripted.paths[before:] == []


def test_allow_listed_paths_are_relayed(upstream: tuple[Upstream, str], proxy: str) -> None:
    for path in ("/health", "/version", "/tokenize", "/detokenize", "/v1/models", "/v1/embeddings"):
        response = requests.get(proxy + path, timeout=10)
        assert response.status_code == 200, (path, response.text)


def test_metrics_is_the_collectors_own_with_or_without_a_trailing_slash(
        upstream: tuple[Upstream, str], proxy: str) -> None:
    scripted, _ = upstream
    before = len(scripted.paths)
    for path in ("/metrics", "/metrics/"):
        response = requests.get(proxy + path, timeout=10)
        assert response.status_code == 200 and "collector_requests_in_flight" in response.text, path
    assert scripted.paths[before:] == []


@pytest.mark.parametrize("path", ["/health", "/version", "/tokenize", "/detokenize", "/v1/models",
                                  "/invocations", "/docs", "/metrics/x", "/v1/chat/completions/"])
def test_api_key_is_enforced_on_every_path_but_metrics(upstream: tuple[Upstream, str], keyed: str,
                                                       path: str) -> None:
    scripted, _ = upstream
    before = len(scripted.paths)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = requests.post(keyed + path, json=ask("ok", stream=False), headers=headers, timeout=10)
        assert_json_error(response, 401)
    assert scripted.paths[before:] == []
    authorized = requests.post(keyed + path, json=ask("ok", stream=False),
                               headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert authorized.status_code == (404 if path in ("/invocations", "/docs", "/metrics/x") else 200)
    assert requests.get(keyed + "/metrics", timeout=10).status_code == 200  # scrapes need no key


def test_relay_allow_list_is_a_setting(upstream: tuple[Upstream, str]) -> None:
    with collector_process(upstream[1], env={"COLLECTOR_RELAY_PATHS": "/health,/invocations"}) as url:
        assert requests.post(url + "/invocations", json={}, timeout=10).status_code == 200
        assert_json_error(requests.get(url + "/version", timeout=10), 404)
        assert requests.get(url + "/v1/models", timeout=10).status_code == 200  # /v1/* always


# --- 2. trailing slash: the same endpoint, never the upstream's redirect -------------------------

def test_trailing_slash_is_the_same_metered_endpoint(upstream: tuple[Upstream, str], proxy: str) -> None:
    scripted, _ = upstream
    before = metric_samples(proxy)
    for path in ("/v1/chat/completions/", "/v1/chat/completions//"):
        read = read_stream(proxy + path, ask("ok"))
        assert read.status == 200 and read.events[-1] == "[DONE]", read.raw[:300]
        assert scripted.paths[-1] == "/v1/chat/completions"
    response = requests.post(proxy + "/v1/chat/completions/", json=ask("ok", stream=False), timeout=10,
                             allow_redirects=False)
    assert response.status_code == 200 and "Location" not in response.headers
    after = metric_samples(proxy)
    name = "collector_requests_total"
    assert (metric_sum(after, name, model=MODEL, operation="chat", status="200")
            - metric_sum(before, name, model=MODEL, operation="chat", status="200")) == 3


def test_the_upstream_address_is_never_handed_out(upstream: tuple[Upstream, str], proxy: str) -> None:
    _, upstream_url = upstream
    for path in ("/v1/models/", "/v1/redirect", "/health/"):
        response = requests.get(proxy + path, timeout=10, allow_redirects=False)
        assert upstream_url not in response.headers.get("Location", ""), (path, response.headers)
        assert upstream_url.rsplit(":", 1)[1] not in response.text
    redirect = requests.get(proxy + "/v1/redirect", timeout=10, allow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["Location"] == "/v1/models"


# --- 3. every upstream wait is bounded, and counted by its own error type ------------------------

@pytest.fixture(scope="module")
def silent_upstream() -> Iterator[str]:
    """Accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_upstream_that_never_answers_is_a_504_within_the_timeouts(silent_upstream: str) -> None:
    with collector_process(silent_upstream, "--first-byte-timeout", "1", "--response-timeout", "2") as url:
        cases = [("stream", ask("ok"), 1.0, "upstream_first_byte_timeout"),
                 ("whole", ask("ok", stream=False), 2.0, "upstream_response_timeout")]
        for name, body, bound, error_type in cases:
            started = time.monotonic()
            response = requests.post(url + "/v1/chat/completions", json=body, timeout=15)
            took = time.monotonic() - started
            assert assert_json_error(response, 504)["type"] == error_type, name
            assert bound <= took < bound + 2, (name, took)
            assert metric_sum(metric_samples(url), "collector_requests_total", status="504",
                              error_type=error_type) == 1
        started = time.monotonic()
        assert_json_error(requests.get(url + "/v1/models", timeout=15), 504)
        assert time.monotonic() - started < 4


def test_stream_whose_tokens_never_come_is_a_504(proxy: str) -> None:
    started = time.monotonic()
    response = requests.post(proxy + "/v1/chat/completions", json=ask("silence"), timeout=15)
    assert assert_json_error(response, 504)["type"] == "upstream_first_byte_timeout"
    assert time.monotonic() - started < 3
    response = requests.post(proxy + "/v1/chat/completions", json=ask("silence", stream=False), timeout=15)
    assert assert_json_error(response, 504)["type"] == "upstream_response_timeout"


def test_stream_that_stalls_after_a_token_ends_with_an_sse_error_and_done(
        upstream: tuple[Upstream, str], proxy: str) -> None:
    scripted, _ = upstream
    cancelled = scripted.cancelled
    started = time.monotonic()
    read = read_stream(proxy + "/v1/chat/completions", ask("stall"), timeout=15)
    took = time.monotonic() - started
    assert read.status == 200 and read.first_content is not None
    errors = [e["error"] for e in read.events if isinstance(e, dict) and "error" in e]
    assert [e["type"] for e in errors] == ["upstream_idle_timeout"] and errors[0]["code"] == 504
    assert read.events[-1] == "[DONE]"
    assert 1.0 <= took < 3.5, took
    assert metric_sum(metric_samples(proxy), "collector_requests_total", error_type="upstream_idle_timeout") >= 1
    deadline = time.monotonic() + 3  # the stalled upstream request was dropped (vLLM aborts it)
    while scripted.cancelled == cancelled:
        assert time.monotonic() < deadline, "the stalled upstream request was not cancelled"
        time.sleep(0.05)


def test_body_that_stalls_is_a_504_for_metered_and_a_closed_connection_for_relayed(proxy: str) -> None:
    started = time.monotonic()
    reply, took = raw_exchange(proxy, b"GET /v1/stall-body HTTP/1.1\r\nHost: x\r\n\r\n")
    # The head was relayed already: the connection is closed, short of the announced length.
    status, headers, body = parse_reply(reply)
    assert status == 200 and int(headers["content-length"]) > len(body)
    assert took < 4, took
    assert time.monotonic() - started < 5


# --- 4. whatever vLLM streams for is metered as a stream ---------------------------------------

@pytest.mark.parametrize("flag", ["true", "True", "yes", "on", "1", 1, 1.0, "t"])
def test_stream_flags_vllm_accepts_are_metered(upstream: tuple[Upstream, str], proxy: str, flag: object) -> None:
    scripted, _ = upstream
    before = metric_samples(proxy)
    read = read_stream(proxy + "/v1/chat/completions", ask("ok", stream=flag))
    assert read.status == 200 and read.events[-1] == "[DONE]"
    assert not any(isinstance(e, dict) and "usage" in e for e in read.events)  # the client did not ask
    assert scripted.bodies[-1]["stream"] is True and scripted.bodies[-1]["stream_options"] == {"include_usage": True}
    after = metric_samples(proxy)

    def delta(name: str) -> float:
        return metric_sum(after, name, model=MODEL) - metric_sum(before, name, model=MODEL)

    assert delta("collector_time_to_first_token_seconds_count") == 1
    assert delta("collector_generation_tokens_total") == 2
    assert delta("collector_inter_token_latency_seconds_count") >= 1


@pytest.mark.parametrize("flag", ["false", 0, "no", None])
def test_non_stream_flags_stay_non_streaming(upstream: tuple[Upstream, str], proxy: str, flag: object) -> None:
    response = requests.post(proxy + "/v1/chat/completions", json=ask("ok", stream=flag), timeout=10)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "hi"
    assert "stream_options" not in upstream[0].bodies[-1]


# --- 5. bad input: JSON errors, never a 500 or a traceback; n capped ----------------------------

def nested(depth: int, opener: str = "[") -> bytes:
    closer = "]" if opener == "[" else "}"
    inner = opener * depth if opener == "[" else '{"a":' * depth
    return b'{"model":"' + MODEL.encode() + b'","messages":' + (inner + "1" + closer * depth).encode() + b"}"


def test_deeply_nested_json_is_a_400_without_a_traceback(proxy: str, log_dir: Path) -> None:
    for depth in (3000, 100_000):
        for opener in ("[", "{"):
            response = requests.post(proxy + "/v1/chat/completions", data=nested(depth, opener),
                                     headers={"Content-Type": "application/json"}, timeout=10)
            assert "nested too deeply" in assert_json_error(response, 400)["message"]
    no_traceback(log_dir / "proxy.log")


@pytest.mark.parametrize("n", [17, 1000, "1000", 1000.0, " 64 "])
def test_n_above_the_cap_is_a_400(upstream: tuple[Upstream, str], proxy: str, n: object) -> None:
    scripted, _ = upstream
    before = len(scripted.bodies)
    response = requests.post(proxy + "/v1/chat/completions", json=ask("ok", stream=False, n=n), timeout=10)
    error = assert_json_error(response, 400)
    assert error["param"] == "n"
    assert len(scripted.bodies) == before
    assert requests.post(proxy + "/v1/chat/completions", json=ask("ok", n=16), timeout=10).status_code == 200


PARSER_REJECTS = {
    "huge header": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    "huge request line": (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    "too many headers": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
                         + b"".join(b"X-%d: v\r\n" % i for i in range(300)) + b"\r\n", 431),
    "unknown method": (b"FOO /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "NUL in a header": (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "not HTTP": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", PARSER_REJECTS)
def test_parser_rejections_are_json(proxy: str, log_dir: Path, case: str) -> None:
    request, expected = PARSER_REJECTS[case]
    reply, _ = raw_exchange(proxy, request)
    status, headers, body = parse_reply(reply)
    # The status line says HTTP/1.0: aiohttp never parsed a request version (documented in the README).
    assert status == expected, reply[:300]
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == expected
    no_traceback(log_dir / "proxy.log")


def test_slow_headers_get_a_408_and_the_connection_closed(proxy: str) -> None:
    for request in (b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: "):
        reply, took = raw_exchange(proxy, request)
        status, _, body = parse_reply(reply)
        assert status == 408 and json.loads(body)["error"]["type"] == "client_timeout"
        assert 0.9 <= took < 3, took
    # On a kept-alive connection too: one request served, the next one's head dribbles in.
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(0.3)  # the whole reply is in
        started = time.monotonic()
        for piece in (b"GET /me", b"trics HTTP/1.1\r\n", b"X-A: 1\r\n"):
            sock.sendall(piece)
            time.sleep(0.3)
        received = b""
        while data := sock.recv(65536):
            received += data
        assert b"408 Request Timeout" in received and time.monotonic() - started < 3


def test_slow_body_gets_a_408(proxy: str) -> None:
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        reply = sock.recv(65536)
        assert time.monotonic() - started < 3
        # Then closed, after aiohttp's lingering read of what the client may still send (10 s at most).
        while data := sock.recv(65536):
            reply += data
        assert time.monotonic() - started < 15
    status, headers, body = parse_reply(reply)
    assert status == 408 and json.loads(body)["error"]["type"] == "client_timeout"
    assert headers["connection"] == "close"
    samples = metric_samples(proxy)
    assert metric_sum(samples, "collector_requests_total", status="408", error_type="client_timeout") >= 1


# --- 6. gzip only for clients that asked; collector_upstream_up from real outcomes ----------------

def test_relayed_paths_are_not_compressed_for_clients_that_did_not_ask(upstream: tuple[Upstream, str],
                                                                        proxy: str) -> None:
    scripted, _ = upstream
    reply, _ = raw_exchange(proxy, b"GET /tokenize HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = parse_reply(reply)
    assert status == 200 and "content-encoding" not in headers, headers
    assert body.startswith(b'{"tokens": [0, 1,')
    assert scripted.accept_encodings[-1] is None
    # A client that asks gets what the upstream compressed, relayed as is.
    asked = requests.get(proxy + "/tokenize", headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert asked.headers.get("Content-Encoding") == "gzip" and len(asked.json()["tokens"]) == 2000


def test_upstream_up_follows_request_outcomes_and_recovers_within_seconds() -> None:
    port = free_port()
    scripted = Upstream()
    with collector_process(f"http://127.0.0.1:{port}", "--models-refresh-seconds", "30") as url:
        def up() -> float:
            return metric_sum(metric_samples(url), "collector_upstream_up")

        with serve_app(scripted.app(), port):
            deadline = time.monotonic() + 10
            while up() != 1:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert requests.post(url + "/v1/chat/completions", json=ask("ok"), timeout=10).status_code == 200
        # Down: the very next request fails and says so (the 30 s refresh would wait its turn).
        assert_json_error(requests.post(url + "/v1/chat/completions", json=ask("ok"), timeout=10), 502)
        assert up() == 0
        with serve_app(scripted.app(), port):
            started = time.monotonic()
            while up() != 1:  # no traffic needed: the refresh retries every second while failing
                assert time.monotonic() - started < 3, "collector_upstream_up stayed 0"
                time.sleep(0.1)


# --- fuzz targets: nesting depth and header limits ----------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(min_value=1, max_value=50_000), opener=st.sampled_from(["[", "{"]),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/chat/completions/"]))
def test_fuzz_nesting_depth(proxy: str, log_dir: Path, depth: int, opener: str, path: str) -> None:
    response = requests.post(proxy + path, data=nested(depth, opener), headers={"Content-Type": "application/json"},
                             timeout=10)
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert response.json()["error"]["message"]
    no_traceback(log_dir / "proxy.log")


HEADER_BYTES = st.sampled_from([b"a", b" ", b"\t", b"\x00", b"\x7f", b"\x01", b"\xff", b"\xc3\xa9", b":", b"\x0b"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(min_value=0, max_value=200), name_len=st.integers(min_value=1, max_value=9000),
       value_len=st.integers(min_value=0, max_value=12_000), odd=st.lists(HEADER_BYTES, max_size=3),
       path=st.sampled_from(["/metrics", "/no-such-path", "/v1/chat/completions"]),
       method=st.sampled_from(["GET", "POST", "PROPFIND", "G\x00ET", "GET /x"]))
def test_fuzz_header_limits(proxy: str, log_dir: Path, count: int, name_len: int, value_len: int,
                            odd: list[bytes], path: str, method: str) -> None:
    value = (b"v" * value_len) + b"".join(odd)
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(count))
    request = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode() + headers
               + b"X-" + b"n" * name_len + b": " + value + b"\r\n\r\n")
    reply, _ = raw_exchange(proxy, request)
    assert reply.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), reply[:100]
    status, response_headers, body = parse_reply(reply)
    assert status < 500, reply[:300]
    if status >= 400:
        assert response_headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"]["message"]
    no_traceback(log_dir / "proxy.log")
    assert requests.get(proxy + "/metrics", timeout=10).status_code == 200  # still serving


def test_concurrent_stalls_do_not_hold_other_clients(proxy: str) -> None:
    """Bounded waits also mean a stalled upstream request does not delay anyone else's."""
    results: list[float] = []

    def stalled() -> None:
        read_stream(proxy + "/v1/chat/completions", ask("stall"), timeout=15)

    threads = [threading.Thread(target=stalled) for _ in range(4)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    response = requests.post(proxy + "/v1/chat/completions", json=ask("ok", stream=False), timeout=10)
    results.append(time.monotonic() - started)
    for thread in threads:
        thread.join(15)
    assert response.status_code == 200 and results[0] < 1.0
