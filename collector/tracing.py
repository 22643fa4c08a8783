"""OpenTelemetry tracing: spans always get real trace ids (for exemplars and the traceparent sent
upstream); they are exported only when a standard OTEL_* endpoint is set."""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from collector import __version__

log = logging.getLogger(__name__)


def export_endpoint(environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER") == "none":
        return None
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def setup_tracing() -> TracerProvider:
    """A tracer provider for the collector; the OTLP/HTTP exporter reads the OTEL_* variables itself."""
    service = os.environ.get("OTEL_SERVICE_NAME") or "collector"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service, "service.version": __version__}))
    endpoint = export_endpoint()
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("exporting traces over OTLP/HTTP to %s", endpoint)
    else:
        log.info("trace export off (no OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT set)")
    return provider


def tracer(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer("collector", __version__)


def trace_id_hex(span: trace.Span) -> str | None:
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
