"""The proxy's own logic against a scripted upstream (an aiohttp app in this process): failure
paths vLLM cannot be made to produce on demand, held response head, bad input, API key, bounded
memory for a slow client. The proxy is always the real `python -m collector` process."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgen.procs import free_port
from tests.support.collector import OtlpReceiver, collector_process, metric_samples, metric_sum, read_stream, serve_app
from tests.support.scripted_upstream import MODEL, Scripted


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Scripted, str]]:
    scripted = Scripted()
    with serve_app(scripted.app()) as url:
        yield scripted, url


@pytest.fixture(scope="module")
def proxy(upstream: tuple[Scripted, str]) -> Iterator[str]:
    with collector_process(upstream[1], "--max-body-bytes", "4096") as url:
        yield url


def ask(script: str, stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": script}], "stream": stream, **extra}


def assert_openai_error(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["message"] and error["type"] and error["code"] == status
    return error


def test_stream_is_relayed_usage_requested_upstream_and_cut_out(upstream: tuple[Scripted, str],
                                                               proxy: str) -> None:
    scripted, _ = upstream
    read = read_stream(proxy + "/v1/chat/completions", ask("ok"),
                       headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                "Authorization": "Bearer user-token"})
    assert read.status == 200
    assert read.events[-1] == "[DONE]"
    assert not any(isinstance(e, dict) and "usage" in e for e in read.events)  # the client did not ask
    sent = scripted.seen[-1]
    assert sent["body"]["stream_options"] == {"include_usage": True}
    assert sent["headers"]["Authorization"] == "Bearer user-token"  # passed through unchanged
    # The collector's span joins the caller's trace and becomes vLLM's parent.
    _version, trace_id, span_id, _flags = sent["headers"]["traceparent"].split("-")
    assert trace_id == "0af7651916cd43dd8448eb211c80319c" and span_id != "b7ad6b7169203331"
    samples = metric_samples(proxy)
    assert metric_sum(samples, "collector_generation_tokens_total", model=MODEL) >= 2
    assert metric_sum(samples, "collector_requests_total", model=MODEL, status="200", finish_reason="stop") >= 1


def test_client_that_asked_for_usage_gets_it(proxy: str) -> None:
    read = read_stream(proxy + "/v1/chat/completions", ask("ok", stream_options={"include_usage": True}))
    usage = [e["usage"] for e in read.events if isinstance(e, dict) and e.get("usage")]
    assert usage == [{"prompt_tokens": 5, "completion_tokens": 2}]


def test_response_head_waits_for_the_first_token(proxy: str) -> None:
    read = read_stream(proxy + "/v1/chat/completions", ask("slow-first"))
    assert read.status == 200 and read.first_byte is not None and read.first_content is not None
    # The upstream sent its head and a role chunk at once, then the first token 0.6 s later.
    assert read.first_byte >= 0.55
    assert read.first_content - read.first_byte < 0.3  # (generous: the machine is shared)
    ttft = metric_samples(proxy)
    assert metric_sum(ttft, "collector_time_to_first_token_seconds_count", model=MODEL) >= 1


def test_bytes_held_before_the_first_token_are_bounded(upstream: tuple[Scripted, str], proxy: str) -> None:
    started = time.perf_counter()
    read = read_stream(proxy + "/v1/chat/completions", ask("empty-deltas"))
    assert read.status == 200 and read.first_byte is not None
    # Past the bound the head went out before the upstream even sent its first token.
    assert started + read.first_byte < upstream[0].first_token_sent_at
    assert len(read.events) == 1 + 10_000 + 3 and read.events[-1] == "[DONE]"


def test_error_before_first_token_becomes_an_http_error(proxy: str) -> None:
    response = requests.post(proxy + "/v1/chat/completions", json=ask("error-first"), timeout=10)
    assert assert_openai_error(response, 503)["message"] == "no capacity"


def test_upstream_death_before_first_token_is_a_502(proxy: str) -> None:
    response = requests.post(proxy + "/v1/chat/completions", json=ask("die-first"), timeout=10)
    assert_openai_error(response, 502)


def test_upstream_death_mid_stream_ends_with_an_sse_error_event(proxy: str) -> None:
    read = read_stream(proxy + "/v1/chat/completions", ask("die-mid"))
    assert read.status == 200
    errors = [e for e in read.events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and errors[0]["error"]["type"] == "upstream_disconnected"
    assert read.events[-1] == "[DONE]"
    samples = metric_samples(proxy)
    assert metric_sum(samples, "collector_requests_total", error_type="upstream_disconnected") >= 1


def test_client_disconnect_while_head_is_held_cancels_upstream(upstream: tuple[Scripted, str],
                                                                proxy: str) -> None:
    scripted, _ = upstream
    before = len(scripted.cancelled_at)
    with socket.create_connection(("127.0.0.1", int(proxy.rsplit(":", 1)[1]))) as client:
        body = json.dumps(ask("hang")).encode()
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 5
        while len(scripted.seen) == 0 or scripted.seen[-1]["body"]["messages"][0]["content"] != "hang":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        closed = time.monotonic()
    deadline = closed + 1.0
    while len(scripted.cancelled_at) == before and time.monotonic() < deadline + 0.5:
        time.sleep(0.02)
    assert len(scripted.cancelled_at) > before, "upstream request was not cancelled"
    assert scripted.cancelled_at[-1] - closed < 1.0


def test_non_streaming_request_is_metered(proxy: str) -> None:
    response = requests.post(proxy + "/v1/chat/completions", json=ask("ok", stream=False), timeout=10)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "hi"
    samples = metric_samples(proxy)
    assert metric_sum(samples, "collector_e2e_request_latency_seconds_count", model=MODEL) >= 1


def test_bad_input_gets_openai_style_4xx(proxy: str) -> None:
    url = proxy + "/v1/chat/completions"
    assert_openai_error(requests.post(url, data=b"{not json", headers={"Content-Type": "application/json"},
                                      timeout=10), 400)
    assert_openai_error(requests.post(url, data=b"[1, 2]", headers={"Content-Type": "application/json"},
                                      timeout=10), 400)
    assert_openai_error(requests.post(url, data=b"{}", headers={"Content-Type": "text/plain"}, timeout=10), 415)
    assert_openai_error(requests.post(url, json={"model": MODEL, "pad": "x" * 5000}, timeout=10), 413)
    assert_openai_error(requests.get(url, timeout=10), 405)
    assert_openai_error(requests.request("PROPFIND", proxy + "/v1/models", timeout=10), 405)
    samples = metric_samples(proxy)
    assert metric_sum(samples, "collector_requests_total", error_type="invalid_request_error", model="other") >= 5


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                      st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                               lambda inner: st.lists(inner, max_size=4)
                               | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                               max_leaves=12).map(lambda v: json.dumps(v).encode())),
       content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                     "application/x-www-form-urlencoded", ""]),
       path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_fuzzed_requests_never_get_a_5xx(proxy: str, body: bytes, content_type: str, path: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = requests.post(proxy + path, data=body, headers=headers, timeout=10)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["error"]["message"], response.text


def test_api_key_when_enabled(upstream: tuple[Scripted, str]) -> None:
    with collector_process(upstream[1], env={"COLLECTOR_API_KEY": "s3cret"}) as url:
        assert_openai_error(requests.post(url + "/v1/chat/completions", json=ask("ok", stream=False),
                                          timeout=10), 401)
        assert_openai_error(requests.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"},
                                         timeout=10), 401)
        ok = requests.post(url + "/v1/chat/completions", json=ask("ok", stream=False),
                           headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert ok.status_code == 200
        assert requests.get(url + "/metrics", timeout=10).status_code == 200  # scrapes need no key


def test_upstream_refusing_is_a_fast_502() -> None:
    with collector_process(f"http://127.0.0.1:{free_port()}") as url:
        started = time.monotonic()
        response = requests.post(url + "/v1/chat/completions", json=ask("ok"), timeout=10)
        assert_openai_error(response, 502)
        assert time.monotonic() - started < 2
        assert_openai_error(requests.get(url + "/v1/models", timeout=10), 502)


def test_upstream_not_accepting_is_a_503_within_the_connect_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        backlog = []
        for _ in range(4):  # fill the accept queue so the next connect hangs
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            backlog.append(filler)
        try:
            with collector_process(f"http://127.0.0.1:{port}", "--connect-timeout", "1") as url:
                started = time.monotonic()
                response = requests.post(url + "/v1/chat/completions", json=ask("ok"), timeout=10)
                assert_openai_error(response, 503)
                assert time.monotonic() - started < 3
        finally:
            for filler in backlog:
                filler.close()


def test_slow_client_memory_stays_bounded(upstream: tuple[Scripted, str], proxy: str) -> None:
    scripted, _ = upstream
    process = next(p for p in psutil.process_iter(["cmdline"])
                   if p.info["cmdline"] and "collector" in p.info["cmdline"]
                   and proxy.rsplit(":", 1)[1] in p.info["cmdline"])
    rss_before = process.memory_info().rss
    sent_before = scripted.bytes_sent
    with socket.create_connection(("127.0.0.1", int(proxy.rsplit(":", 1)[1]))) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        body = json.dumps(ask("flood")).encode()
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(3)  # the client reads nothing
        relayed = scripted.bytes_sent - sent_before
        rss_growth = process.memory_info().rss - rss_before
    # 200 MB wanted out; backpressure stops the upstream after socket buffers' worth.
    assert relayed < 32 * 1024 * 1024, relayed
    assert rss_growth < 32 * 1024 * 1024, rss_growth


def test_content_is_recorded_in_spans_only_with_the_opt_in(upstream: tuple[Scripted, str]) -> None:
    for capture in ("false", "true"):
        with OtlpReceiver() as receiver, collector_process(upstream[1], env={
                "COLLECTOR_CAPTURE_CONTENT": capture, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "100"}) as url:
            assert read_stream(url + "/v1/chat/completions", ask("ok")).status == 200
            spans = receiver.wait_for(lambda s: s.service == "collector", 20)
            assert len(spans) == 1
            attributes = spans[0].attributes
            assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.usage.output_tokens"] == 2
            if capture == "true":
                assert attributes["gen_ai.output.messages"] == "Hello world"
                assert json.loads(attributes["gen_ai.input.messages"]) == ask("ok")["messages"]
            else:
                assert "gen_ai.output.messages" not in attributes and "gen_ai.input.messages" not in attributes
                assert "Hello" not in str(attributes)


def test_a_pooled_connection_closed_by_the_upstream_is_retried_once() -> None:
    """An upstream that serves one request per connection and then closes it when the next request
    arrives (what a keep-alive timeout racing with reuse looks like): every request still succeeds."""
    body = json.dumps({"id": "c1", "model": MODEL, "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": "hi"}}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode()
    models = json.dumps({"data": [{"id": MODEL}]}).encode()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        await reader.readexactly(length)
        reply = models if head.startswith(b"GET /v1/models") else body
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(reply), reply))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request on this connection: dropped unanswered
        writer.close()

    async def start() -> asyncio.Server:
        return await asyncio.start_server(serve, "127.0.0.1", port)

    port = free_port()
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with collector_process(f"http://127.0.0.1:{port}") as url, requests.Session() as session:
            for _ in range(4):
                response = session.post(url + "/v1/chat/completions", json=ask("ok", stream=False), timeout=10)
                assert response.status_code == 200, response.text
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(server.wait_closed())
        loop.close()
