"""Spans when nothing exports them: a bare span context with real ids (what exemplars and the
upstream's traceparent need), joining the client's trace when it sent one."""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from collector.proxy import NO_PARENT, bare_span


def test_a_request_without_trace_headers_starts_a_sampled_trace() -> None:
    first, second = bare_span(NO_PARENT), bare_span(NO_PARENT)
    for span in (first, second):
        context = span.get_span_context()
        assert context.is_valid and context.trace_flags.sampled and not span.is_recording()
    assert first.get_span_context().trace_id != second.get_span_context().trace_id


def test_a_remote_parent_is_joined_with_its_flags_and_state() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    carrier = {"traceparent": parent, "tracestate": "vendor=1"}
    span = bare_span(TraceContextTextMapPropagator().extract(carrier))
    context = span.get_span_context()
    assert format(context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert context.span_id != 0xb7ad6b7169203331 and not context.trace_flags.sampled
    assert context.trace_state.to_header() == "vendor=1"
    out: dict[str, str] = {}
    propagate.inject(out, context=trace.set_span_in_context(span))
    assert out["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-") and out["traceparent"].endswith("-00")
