"""The request handlers: metered generation endpoints, and a plain relay for every other path."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from yarl import URL

from collector import errors, wire
from collector.metrics import Metrics, finish_reason_label
from collector.models import ModelNames
from collector.settings import Settings
from collector.sse import StreamScanner
from collector.tracing import trace_id_hex
from collector.upstream import relay_headers, request_headers, response_headers

log = logging.getLogger(__name__)

# path -> GenAI operation name (gen_ai.operation.name)
OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion"}
RELAY_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Upstream error bodies are small JSON; more than this is cut (the status still passes through).
MAX_ERROR_BODY = 1 << 20
MAX_ATTRIBUTE_CHARS = 256
# Numeric request parameters -> GenAI span attributes.
REQUEST_ATTRIBUTES = (("max_tokens", "gen_ai.request.max_tokens"),
                      ("max_completion_tokens", "gen_ai.request.max_tokens"),
                      ("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"),
                      ("seed", "gen_ai.request.seed"), ("n", "gen_ai.request.choice.count"))
HEAD_HELD_HEADER = "X-Collector-Head-Held"
CLIENT_CLOSED_STATUS = 499  # nginx's convention: the client went away before the response ended
# Events without generated content (role chunk, empty deltas) held before the first token: past this
# the head is sent anyway, so a strange upstream cannot make the collector hold unbounded bytes.
MAX_HELD_BYTES = 1 << 20
# What pydantic (vLLM's request models) accepts as true for a bool field, besides true, 1 and 1.0.
TRUE_STRINGS = frozenset({"1", "on", "t", "true", "y", "yes"})
# Python's JSON parser recurses per nesting level: a deeply nested body ends in RecursionError.
JSON_ERRORS = (ValueError, RecursionError)
# The parent context of a request that carries no trace headers (a new trace).
NO_PARENT = Context()
SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
# W3C trace context (and baggage): the propagators whose header the collector writes itself.
W3C_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})


def canonical_path(path: str) -> str | None:
    """The path a request is routed and relayed by: trailing slashes dropped (so
    `/v1/chat/completions/` is the chat endpoint, never the upstream's redirect to it). None for a
    path with empty, `.` or `..` segments (decoded): the upstream's URL normalisation would send
    those somewhere else than the path the collector checked."""
    trimmed = path.rstrip("/")
    if not trimmed:
        return "/"
    if any(segment in ("", ".", "..") for segment in trimmed.split("/")[1:]):
        return None
    return trimmed


def stream_requested(value: object) -> bool:
    """Whether vLLM streams for this `stream` value (pydantic's lax bool: true, 1, 1.0, "true", "yes", ...)."""
    if value is True:
        return True
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return value == 1
    return isinstance(value, str) and value.lower() in TRUE_STRINGS


def choice_count(value: object) -> int | None:
    """`n` as vLLM reads it (pydantic's lax int: 3, 3.0, "3", " 3 "); None when it is not a number."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            number = float(value.strip().replace("_", ""))
        except ValueError:
            return None
        return int(number) if number.is_integer() else None
    return None


@dataclass(frozen=True)
class Failure:
    """The upstream could not be used: what the client gets and what the metrics count."""

    status: int
    error_type: str
    message: str

    def response(self) -> web.Response:
        return errors.error_response(self.status, self.message, self.error_type)


@dataclass
class Exchange:
    """What one generation request did, recorded into metrics and its span when it ends."""

    operation: str
    model: str
    started: float
    span: trace.Span
    stream: bool = False
    status: int = 200
    error_type: str = ""
    ttft: float | None = None
    ended: float | None = None
    usage: dict[str, Any] | None = None
    finish_reasons: list[str] = field(default_factory=list)
    request: dict[str, Any] | None = None  # the parsed request body

    @property
    def trace_id(self) -> str | None:
        return trace_id_hex(self.span)

    def fail(self, status: int, error_type: str) -> None:
        self.status, self.error_type = status, error_type


def bare_span(parent: Context) -> trace.Span:
    """A span that records nothing, with real ids: the trace of `parent` (a remote traceparent) or a
    new one, and a new span id, as the SDK's default sampler would give it (sampled unless the
    parent was not). The SDK's span costs ~20% of a request's CPU in attributes, events, locks and
    its end; with no exporter none of that leaves the process."""
    parent_context = trace.get_current_span(parent).get_span_context()
    span_id = random.getrandbits(64) or 1
    if parent_context.is_valid:
        context = trace.SpanContext(parent_context.trace_id, span_id, False, parent_context.trace_flags,
                                    parent_context.trace_state)
    else:
        context = trace.SpanContext(random.getrandbits(128) or 1, span_id, False, SAMPLED)
    return trace.NonRecordingSpan(context)


class Proxy:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession, pool: wire.Pool, metrics: Metrics,
                 models: ModelNames, tracer: trace.Tracer, record_spans: bool = True) -> None:
        self.settings = settings
        # False when no span leaves the process (no exporter): each request then gets a bare span
        # context (bare_span), which is all the exemplars and the upstream's traceparent use.
        self.record_spans = record_spans
        self.session = session  # relayed paths
        self.pool = pool  # metered paths (collector/wire.py)
        self.metrics = metrics
        self.models = models
        self.tracer = tracer
        self.relay_paths = frozenset(settings.relay_paths)
        self._origin = str(URL(settings.upstream_base).origin())
        self._operation_targets = {path: URL(settings.upstream_base + path, encoded=True).raw_path
                                   for path in OPERATIONS}
        fields = frozenset(propagate.get_global_textmap().fields)
        # Trace headers a request may carry (no extraction for a request without any), and whether
        # the outgoing traceparent can be written directly (the default propagators).
        self._trace_fields = tuple(fields)
        self._w3c_only = fields <= W3C_FIELDS
        connect = settings.connect_timeout
        # Relayed paths: sock_read bounds the wait for the response head; after it, each read (see _read_timeout).
        self._whole_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect, sock_connect=connect, sock_read=settings.response_timeout)

    # --- shared checks -------------------------------------------------------------------------

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        key = self.settings.api_key
        if not key:
            return None
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode()):
            return None
        return errors.error_response(401, "missing or invalid API key (Authorization: Bearer ...)",
                                     errors.AUTHENTICATION)

    async def _read_body(self, request: web.Request) -> bytes | web.Response:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return errors.error_response(413, f"request body over {limit} bytes", errors.INVALID_REQUEST)
        try:
            if request.content.is_eof():  # the whole body came with the head: nothing to wait for
                return await request.read()
            async with asyncio.timeout(self.settings.client_body_timeout):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            return errors.error_response(413, f"request body over {limit} bytes", errors.INVALID_REQUEST)
        except TimeoutError:
            response = errors.error_response(
                408, f"request body not received within {self.settings.client_body_timeout:g} s",
                errors.CLIENT_TIMEOUT)
            response.force_close()  # the rest of the body may still come: not a next request
            return response

    async def _send(self, method: str, url: URL, body: bytes | None, headers: Any) -> aiohttp.ClientResponse | Failure:
        """A relayed request's response head (bounded by the response timeout), or why there is none."""
        for attempt in (1, 2):
            try:
                response = await self.session.request(method, url, data=body, headers=headers,
                                                      allow_redirects=False, timeout=self._whole_timeout)
            except aiohttp.ConnectionTimeoutError:
                self.models.note_unreachable()
                return Failure(503, errors.UPSTREAM_CONNECT_TIMEOUT,
                               "upstream did not accept the connection in time")
            except aiohttp.ServerTimeoutError:
                # sock_read: connected and sent, but no response head in time.
                return Failure(504, errors.UPSTREAM_RESPONSE_TIMEOUT,
                               f"upstream did not answer within {self.settings.response_timeout:g} s")
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
                # A pooled keep-alive connection the upstream closed just as it was reused (vLLM
                # closes idle ones after 5 s): nothing was answered, so try once on a new one, as
                # nginx does for its cached upstream connections.
                if attempt == 1 and not isinstance(error, aiohttp.ClientConnectorError):
                    log.debug("retrying %s %s on a new connection: %r", method, url, error)
                    continue
                return self._unavailable(method, url, error)
            except aiohttp.ClientError as error:
                return self._unavailable(method, url, error)
            self.models.note_reachable()
            # From here on each read waits at most the idle timeout.
            self._read_timeout(response, self.settings.idle_timeout)
            return response
        raise AssertionError("unreachable")

    async def _send_metered(self, path: str, body: bytes, headers: CIMultiDict[str],
                            stream: bool) -> wire.Connection | Failure:
        """As _send, on the lean client (collector/wire.py): a metered POST's response head, or why
        there is none. After it each read waits at most the first-byte timeout (a stream, until its
        first token) or the idle timeout."""
        pool = self.pool
        head = pool.head_bytes("POST", self._operation_targets[path], headers.items(), len(body))
        try:
            upstream = await pool.request(head, body, self.settings.first_byte_timeout if stream
                                          else self.settings.response_timeout)
        except wire.ConnectTimeout:
            self.models.note_unreachable()
            return Failure(503, errors.UPSTREAM_CONNECT_TIMEOUT, "upstream did not accept the connection in time")
        except wire.HeadTimeout:
            if stream:
                return Failure(504, errors.UPSTREAM_FIRST_BYTE_TIMEOUT, "upstream sent no response head "
                               f"within {self.settings.first_byte_timeout:g} s")
            return Failure(504, errors.UPSTREAM_RESPONSE_TIMEOUT,
                           f"upstream did not answer within {self.settings.response_timeout:g} s")
        except (wire.ConnectFailed, wire.Disconnected) as error:
            return self._unavailable("POST", path, error)
        self.models.note_reachable()
        upstream.read_timeout(self.settings.first_byte_timeout if stream else self.settings.idle_timeout)
        return upstream

    def _unavailable(self, method: str, url: URL | str, error: Exception) -> Failure:
        log.warning("upstream unavailable for %s %s: %r", method, url, error)
        self.models.note_unreachable()
        return Failure(502, errors.UPSTREAM_UNAVAILABLE, f"upstream unavailable: {type(error).__name__}")

    @staticmethod
    def _read_timeout(upstream: aiohttp.ClientResponse, seconds: float | None) -> None:
        """Bound each further read of this response by `seconds` (counted from now; None: unbounded)."""
        connection = upstream.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = seconds
            connection.protocol.start_timeout()

    # --- every other path ----------------------------------------------------------------------

    async def relay(self, request: web.Request, path: str | None) -> web.StreamResponse:
        """Pass-through for /v1/* and the allow-listed paths (settings.relay_paths), API key
        enforced; every other path is a 404 here and never reaches the upstream."""
        if request.method not in RELAY_METHODS:
            response: web.StreamResponse = errors.error_response(
                405, f"method {request.method} not allowed", errors.INVALID_REQUEST)
        elif (denied := self._unauthorized(request)) is not None:
            response = denied
        elif path is None or not (path.startswith("/v1/") or path in self.relay_paths):
            response = errors.error_response(404, f"no such path: {request.method} {request.path}"[:300],
                                             errors.NOT_FOUND)
        else:
            response = await self._relay(request, path)
        self.metrics.passthrough_requests.labels(f"{response.status // 100}xx").inc()
        return response

    def _upstream_url(self, request: web.Request, path: str) -> URL:
        query = request.rel_url.raw_query_string
        return URL(self.settings.upstream_base + quote(path, safe="/:@!$&'()*+,;=~")
                   + ("?" + query if query else ""), encoded=True)

    async def _relay(self, request: web.Request, path: str) -> web.StreamResponse:
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        # The client's Accept-Encoding goes through (none sent: none asked of the upstream).
        upstream = await self._send(request.method, self._upstream_url(request, path), body or None,
                                    relay_headers(request.headers))
        if isinstance(upstream, Failure):
            return upstream.response()
        async with upstream:
            headers = response_headers(upstream.headers)
            location = headers.get("Location")
            if location is not None and location.startswith(self._origin):
                # Never hand out the upstream's address: its redirects point at the collector.
                headers["Location"] = location[len(self._origin):] or "/"
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            try:
                async for data in upstream.content.iter_any():
                    await response.write(data)
            except aiohttp.ClientError as error:
                log.warning("upstream failed %s %s mid-response: %r", request.method, path, error)
                upstream.close()
                # The head is out: closing the connection is the only way left to say "incomplete".
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
        return response

    # --- generation endpoints ------------------------------------------------------------------

    async def generate(self, request: web.Request, path: str) -> web.StreamResponse:
        started = time.perf_counter()
        operation = OPERATIONS[path]
        carrier = request.headers
        parent = propagate.extract(carrier) if any(f in carrier for f in self._trace_fields) else NO_PARENT
        if self.record_spans:
            span = self.tracer.start_span(
                operation, context=parent, kind=SpanKind.CLIENT,
                attributes={"gen_ai.operation.name": operation, "gen_ai.system": "vllm",
                            "gen_ai.provider.name": "vllm", "http.request.method": request.method,
                            "url.path": path})
        else:
            span = bare_span(parent)
        exchange = Exchange(operation=operation, model="other", started=started, span=span)
        in_flight = self.metrics.series("other", operation).in_flight
        in_flight.inc()
        try:
            return await self._generate(request, path, exchange)
        except asyncio.CancelledError:
            exchange.fail(CLIENT_CLOSED_STATUS, errors.CLIENT_DISCONNECTED)
            raise
        except Exception:
            log.exception("internal error on %s", request.path)
            exchange.fail(500, errors.INTERNAL)
            return errors.error_response(500, "internal error in the collector", errors.INTERNAL)
        finally:
            in_flight.dec()
            self._record(exchange)

    def _reject(self, exchange: Exchange, status: int, message: str, error_type: str,
                param: str | None = None) -> web.Response:
        exchange.fail(status, error_type)
        return errors.error_response(status, message, error_type, param)

    async def _generate(self, request: web.Request, path: str, exchange: Exchange) -> web.StreamResponse:
        if request.method != "POST":
            return self._reject(exchange, 405, f"{path} accepts POST only, not {request.method}",
                                errors.INVALID_REQUEST)
        denied = self._unauthorized(request)
        if denied is not None:
            exchange.fail(401, errors.AUTHENTICATION)
            return denied
        if request.content_type != "application/json":
            return self._reject(exchange, 415, "Content-Type must be application/json",
                                errors.INVALID_REQUEST)
        raw = await self._read_body(request)
        if isinstance(raw, web.Response):
            exchange.fail(raw.status, errors.CLIENT_TIMEOUT if raw.status == 408 else errors.INVALID_REQUEST)
            return raw
        try:
            body = json.loads(raw)
        except RecursionError:
            return self._reject(exchange, 400, "request body is nested too deeply", errors.INVALID_REQUEST)
        except ValueError as error:
            return self._reject(exchange, 400, f"request body is not valid JSON: {error}",
                                errors.INVALID_REQUEST)
        if not isinstance(body, dict):
            return self._reject(exchange, 400, "request body must be a JSON object", errors.INVALID_REQUEST)

        exchange.model = self.models.label(body.get("model"))
        n = choice_count(body.get("n"))
        if n is not None and n > self.settings.max_n:
            return self._reject(exchange, 400, f"n must be at most {self.settings.max_n}, got {n}",
                                errors.INVALID_REQUEST, "n")
        exchange.stream = stream_requested(body.get("stream"))
        exchange.request = body  # annotated on the span when the request ends (_record)
        strip_usage = False
        if exchange.stream:
            options = body.get("stream_options")
            if options is None or (isinstance(options, dict) and not options.get("include_usage")):
                # Token counts come from the usage event; the client did not ask for it, so it is
                # requested here and cut out of what the client receives.
                body["stream_options"] = {**(options or {}), "include_usage": True}
                body["stream"] = True  # "true", 1, "yes": what vLLM streams for, stated plainly
                strip_usage = True
                try:
                    raw = json.dumps(body, separators=(",", ":")).encode()
                except RecursionError:
                    return self._reject(exchange, 400, "request body is nested too deeply",
                                        errors.INVALID_REQUEST)

        headers = request_headers(request.headers)
        headers["Content-Type"] = "application/json"
        self._inject_trace(headers, exchange.span)
        upstream = await self._send_metered(path, raw, headers, exchange.stream)
        if isinstance(upstream, Failure):
            exchange.fail(upstream.status, upstream.error_type)
            return upstream.response()
        async with upstream:
            if upstream.status != 200:
                return await self._upstream_error(upstream, exchange)
            if exchange.stream and upstream.content_type == "text/event-stream":
                return await self._relay_stream(request, upstream, exchange, strip_usage)
            return await self._relay_whole(upstream, exchange)

    def _inject_trace(self, headers: CIMultiDict[str], span: trace.Span) -> None:
        """The span's W3C traceparent (and tracestate) for the upstream: what the default propagators
        write, without their per-call context set-up; any other configured propagator writes its own."""
        if not self._w3c_only:
            propagate.inject(headers, context=trace.set_span_in_context(span))
            return
        context = span.get_span_context()
        if context.is_valid:
            headers["traceparent"] = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
            if context.trace_state:
                headers["tracestate"] = context.trace_state.to_header()

    def _annotate_request(self, exchange: Exchange, body: dict[str, Any]) -> None:
        span = exchange.span
        span.update_name(f"{exchange.operation} {exchange.model}")
        attributes: dict[str, Any] = {"gen_ai.request.stream": exchange.stream}
        requested = body.get("model")
        if isinstance(requested, str):
            attributes["gen_ai.request.model"] = requested[:MAX_ATTRIBUTE_CHARS]
        for key, attribute in REQUEST_ATTRIBUTES:
            value = body.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[attribute] = value
        if self.settings.capture_content:
            prompt = body.get("messages") if exchange.operation == "chat" else body.get("prompt")
            with contextlib.suppress(*JSON_ERRORS):  # annotated when the request ends: nothing may fail there
                attributes["gen_ai.input.messages"] = json.dumps(prompt)
        span.set_attributes(attributes)

    async def _upstream_error(self, upstream: wire.Connection, exchange: Exchange) -> web.Response:
        upstream.read_timeout(self.settings.idle_timeout)
        try:
            body = await upstream.read(MAX_ERROR_BODY)
        except aiohttp.ClientError:
            upstream.close()
            body = errors.error_body("upstream error (its body was not received)", str(upstream.status),
                                     upstream.status)
        exchange.fail(upstream.status, str(upstream.status))
        return web.Response(status=upstream.status, body=body, headers=response_headers(upstream.headers))

    async def _relay_whole(self, upstream: wire.Connection, exchange: Exchange) -> web.Response:
        upstream.read_timeout(self.settings.idle_timeout)
        try:
            body = await upstream.read()
        except aiohttp.ServerTimeoutError:
            upstream.close()
            return self._reject(exchange, 504, f"upstream went silent for {self.settings.idle_timeout:g} s "
                                "mid-response", errors.UPSTREAM_IDLE_TIMEOUT)
        except aiohttp.ClientError:
            return self._reject(exchange, 502, "upstream closed the connection mid-response",
                                errors.UPSTREAM_DISCONNECTED)
        exchange.ended = time.perf_counter()
        try:
            parsed = json.loads(body)
        except JSON_ERRORS:
            parsed = None
        if isinstance(parsed, dict):
            if isinstance(parsed.get("usage"), dict):
                exchange.usage = parsed["usage"]
            choices = parsed.get("choices")
            for choice in choices if isinstance(choices, list) else ():
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    exchange.finish_reasons.append(str(choice["finish_reason"]))
            self._annotate_response(exchange, parsed.get("model"), parsed.get("id"))
            if self.settings.capture_content:
                exchange.span.set_attribute("gen_ai.output.messages", json.dumps(choices))
        return web.Response(status=200, body=body, headers=response_headers(upstream.headers))

    def _annotate_response(self, exchange: Exchange, model: object, response_id: object) -> None:
        if isinstance(model, str):
            exchange.span.set_attribute("gen_ai.response.model", model[:MAX_ATTRIBUTE_CHARS])
        if isinstance(response_id, str):
            exchange.span.set_attribute("gen_ai.response.id", response_id[:MAX_ATTRIBUTE_CHARS])

    async def _relay_stream(self, request: web.Request, upstream: wire.Connection,
                            exchange: Exchange, strip_usage: bool) -> web.StreamResponse:
        scanner = StreamScanner(
            chat=exchange.operation == "chat", strip_usage=strip_usage, capture_content=self.settings.capture_content,
            observe_gap=self.metrics.series(exchange.model, exchange.operation).itl.observe)
        streams = self.metrics.series(exchange.model, exchange.operation).streams
        streams.inc()
        try:
            response = await self._pump(request, upstream, exchange, scanner)
        finally:
            streams.dec()
            exchange.usage = scanner.usage
            exchange.finish_reasons = scanner.finish_reasons
            self._annotate_response(exchange, scanner.response_model, scanner.response_id)
            if self.settings.capture_content:
                exchange.span.set_attribute("gen_ai.output.messages", "".join(scanner.completion_text))
        return response

    async def _pump(self, request: web.Request, upstream: wire.Connection, exchange: Exchange,
                    scanner: StreamScanner) -> web.StreamResponse:
        """Relay the stream; the response head waits for the first token (so TTFB = TTFT).
        Until the first token each read waits at most the first-byte timeout, then the idle timeout."""
        response: web.StreamResponse | None = None
        held: list[bytes] = []
        held_bytes = 0
        failure: str | None = None  # an error type, when the upstream failed
        try:
            while response is None:
                try:
                    data = await upstream.readany()
                except aiohttp.ServerTimeoutError:
                    failure = errors.UPSTREAM_FIRST_BYTE_TIMEOUT
                    break
                except (aiohttp.ClientError, TimeoutError):
                    failure = errors.UPSTREAM_DISCONNECTED
                    break
                if not data:
                    break
                out = scanner.feed(data, time.perf_counter())
                if scanner.error is not None:
                    return self._stream_error_before_first_token(exchange, scanner.error)
                if out:
                    held.append(out)
                    held_bytes += len(out)
                first_token_at = scanner.first_token_at
                if first_token_at is not None or held_bytes > MAX_HELD_BYTES:
                    # The head and the first token go out first; the bookkeeping follows (in a burst,
                    # every stream's first token waits for the work done before it in the loop).
                    response = await self._open_stream(request, upstream, held)
                    held = []
                if first_token_at is not None:
                    upstream.read_timeout(self.settings.idle_timeout)
                    self._first_token(exchange, first_token_at)
            if response is not None and failure is None:
                failure = await self._relay_tokens(upstream, scanner, request)
            if failure is not None:
                # A stalled upstream is dropped: vLLM aborts the request when its client goes away.
                upstream.close()
            rest = scanner.flush()
            if response is None:
                if failure == errors.UPSTREAM_FIRST_BYTE_TIMEOUT:
                    return self._reject(exchange, 504, "upstream sent no token within "
                                        f"{self.settings.first_byte_timeout:g} s", failure)
                if failure is not None or not (scanner.done or scanner.finish_reasons):
                    return self._reject(exchange, 502, "upstream closed the stream before the first token",
                                        errors.UPSTREAM_DISCONNECTED)
                response = await self._open_stream(request, upstream, [*held, rest])
            elif rest and failure is None:
                await response.write(rest)
            if failure is None and not (scanner.done or scanner.finish_reasons):
                failure = errors.UPSTREAM_DISCONNECTED
            if failure is not None:
                exchange.error_type = failure
                if failure == errors.UPSTREAM_DISCONNECTED:
                    message, status = "upstream closed the stream mid-response", 502
                elif failure == errors.UPSTREAM_FIRST_BYTE_TIMEOUT:
                    message, status = f"upstream sent no token within {self.settings.first_byte_timeout:g} s", 504
                else:
                    message, status = f"upstream went silent for {self.settings.idle_timeout:g} s mid-stream", 504
                await response.write(errors.sse_error_event(message, failure, status))
            elif scanner.error is not None:
                exchange.error_type = errors.UPSTREAM_STREAM_ERROR
            await response.write_eof()
            exchange.ended = time.perf_counter()
            return response
        except ConnectionError:
            # The client went away: dropping the upstream connection makes vLLM abort the request.
            upstream.close()
            exchange.fail(CLIENT_CLOSED_STATUS, errors.CLIENT_DISCONNECTED)
            return response if response is not None else web.Response(status=CLIENT_CLOSED_STATUS)
        except asyncio.CancelledError:
            upstream.close()
            raise

    async def _relay_tokens(self, upstream: wire.Connection, scanner: StreamScanner,
                            request: web.Request) -> str | None:
        """The hot path after the first token, run inside the upstream connection's `data_received`
        (wire.Connection.relay): each read de-chunked, scanned, framed and written to the client's
        transport in one call, with no future, task switch or timer per read (the idle timeout is one
        timer that re-arms itself only when it fires). The head and the first token went out through
        aiohttp in _open_stream, and write_eof ends the chunked body. This task wakes only at the end
        or when the client's socket buffer is full: upstream reading pauses until the client has
        drained it (back-pressure: the upstream is read no faster than the client takes it). Returns
        the error type when the upstream failed (None: it ended the stream). A client that went away
        raises ConnectionError."""
        feed = scanner.feed
        transport, protocol, writer = request.transport, request.protocol, request.writer

        def sink(data: bytes, now: float) -> bool:
            out = feed(data, now)
            if not out:
                return False
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client connection closed")
            transport.write(b"%x\r\n%b\r\n" % (len(out), out))
            return protocol.writing_paused

        pass_through = scanner.pass_through

        def framed(data: bytes, now: float) -> bool | None:
            if not pass_through(data, now):
                return None
            if transport is None or transport.is_closing():
                raise ConnectionResetError("client connection closed")
            transport.write(data)  # whole chunks of whole events: the client's framing as it is
            return protocol.writing_paused

        upstream.relay(sink, framed)
        try:
            while await upstream.relayed():
                await writer.drain()
                upstream.resume_reading()
        except aiohttp.ServerTimeoutError:
            return errors.UPSTREAM_IDLE_TIMEOUT
        except (aiohttp.ClientError, TimeoutError):
            return errors.UPSTREAM_DISCONNECTED
        return None

    def _first_token(self, exchange: Exchange, first_token_at: float) -> None:
        exchange.ttft = ttft = first_token_at - exchange.started
        if self.record_spans:  # the event at the first token's time (the span's clock is the wall clock)
            at = time.time_ns() - int((time.perf_counter() - first_token_at) * 1e9)
            exchange.span.add_event("gen_ai.first_token", {"gen_ai.response.time_to_first_chunk": ttft}, at)
        # Observed now, not at the end of the request: like vLLM's own histogram, so a scrape window
        # holds the TTFTs of the requests whose first token came in it.
        trace_id = exchange.trace_id
        self.metrics.series(exchange.model, exchange.operation).ttft.observe(
            ttft, {"trace_id": trace_id} if trace_id else None)

    async def _open_stream(self, request: web.Request, upstream: wire.Connection,
                           held: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=response_headers(upstream.headers))
        # Tells clients (loadgen's probe) that time to first byte here is time to first token.
        response.headers[HEAD_HELD_HEADER] = "first-token"
        await response.prepare(request)
        first = held[0] if len(held) == 1 else b"".join(held)
        if first:
            await response.write(first)
        return response

    def _stream_error_before_first_token(self, exchange: Exchange, error: dict[str, Any]) -> web.Response:
        code = error.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 502
        message = str(error.get("message") or "upstream reported an error before the first token")
        return self._reject(exchange, status, message, errors.UPSTREAM_STREAM_ERROR)

    # --- recording -----------------------------------------------------------------------------

    def _record(self, exchange: Exchange) -> None:
        if exchange.request is not None and self.record_spans:
            self._annotate_request(exchange, exchange.request)
        series = self.metrics.series(exchange.model, exchange.operation)
        finish = exchange.finish_reasons[0] if exchange.finish_reasons else None
        self.metrics.count_request(exchange.model, exchange.operation, str(exchange.status), exchange.error_type,
                                   finish_reason_label(finish))
        trace_id = exchange.trace_id
        exemplar = {"trace_id": trace_id} if trace_id else None
        attributes: dict[str, Any] = {"http.response.status_code": exchange.status}
        if exchange.ttft is not None:  # its histogram was observed at the first token
            attributes["gen_ai.response.time_to_first_chunk"] = exchange.ttft
        usage = exchange.usage or {}
        prompt_tokens, output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt_tokens, int):
            series.prompt_tokens.inc(prompt_tokens)
            series.prompt_per_request.observe(prompt_tokens)
            attributes["gen_ai.usage.input_tokens"] = prompt_tokens
        if isinstance(output_tokens, int):
            series.generation_tokens.inc(output_tokens)
            series.generation_per_request.observe(output_tokens)
            attributes["gen_ai.usage.output_tokens"] = output_tokens
        succeeded = exchange.status == 200 and not exchange.error_type and exchange.ended is not None
        if succeeded and exchange.ended is not None:
            e2e = exchange.ended - exchange.started
            series.e2e.observe(e2e, exemplar)
            if exchange.ttft is not None and isinstance(output_tokens, int) and output_tokens > 1:
                series.tpot.observe((e2e - exchange.ttft) / (output_tokens - 1), exemplar)
        if exchange.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = exchange.finish_reasons
        span = exchange.span
        if exchange.error_type:
            attributes["error.type"] = exchange.error_type
            span.set_status(Status(StatusCode.ERROR, exchange.error_type))
        span.set_attributes(attributes)
        span.end()
