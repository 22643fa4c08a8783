"""The aiohttp application: routes, the upstream session's lifetime, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from collector import errors, wire
from collector.metrics import Metrics
from collector.models import ModelNames
from collector.proxy import OPERATIONS, Proxy, canonical_path
from collector.settings import Settings
from collector.tracing import export_endpoint, setup_tracing, tracer
from collector.upstream import make_session
from collector.workers import PEERS_ENV, PeerMetrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors (bad method, bad request) as OpenAI-style JSON, never HTML."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        error_type = errors.INVALID_REQUEST if error.status < 500 else errors.INTERNAL
        return errors.error_response(error.status, error.reason, error_type)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return errors.error_response(500, "internal error in the collector", errors.INTERNAL)


def build_app(settings: Settings, metrics: Metrics | None = None,
              provider: TracerProvider | None = None) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[json_errors])
    metrics = metrics if metrics is not None else Metrics()
    # Spans are recorded when they go somewhere: a provider given here, or an OTLP endpoint set.
    record_spans = provider is not None or export_endpoint() is not None
    provider = provider if provider is not None else setup_tracing()
    # One of several workers (collector/workers.py): /metrics is the sum over all of them.
    peers_dir = os.environ.get(PEERS_ENV)
    peers = PeerMetrics(metrics, peers_dir) if peers_dir else None

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        session = make_session(settings.connect_timeout)
        pool = wire.Pool(settings.upstream_base, settings.connect_timeout)
        models = ModelNames(session, settings.upstream_base, metrics, settings.models_refresh_seconds)
        proxy = Proxy(settings, session, pool, metrics, models, tracer(provider), record_spans)
        app[PROXY_KEY] = proxy
        refresher = asyncio.get_running_loop().create_task(models.run())
        if peers is not None:
            await peers.start()
        yield
        if peers is not None:
            await peers.stop()
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        pool.close()
        await session.close()
        provider.shutdown()

    async def serve_metrics(request: web.Request) -> web.Response:
        accept = request.headers.get("Accept")
        if peers is not None:
            body, content_type = await peers.exposition(accept)
        else:
            body, content_type = metrics.exposition(accept)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def generation(request: web.Request) -> web.StreamResponse:
        return await app[PROXY_KEY].generate(request, request.path)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        """Every path but the exact ones above, routed by its canonical form (no trailing slash):
        `/v1/chat/completions/` is metered as chat, `/metrics/` is the collector's own, and the rest
        is relayed or refused by the exposure policy (Proxy.relay)."""
        path = canonical_path(request.path)
        if path in OPERATIONS:
            return await app[PROXY_KEY].generate(request, path)
        if path == "/metrics" and request.method in ("GET", "HEAD"):
            return await serve_metrics(request)
        return await app[PROXY_KEY].relay(request, path)

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/metrics", serve_metrics)
    for path in OPERATIONS:
        app.router.add_route("*", path, generation)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


PROXY_KEY = web.AppKey("proxy", Proxy)
