"""python -m collector --upstream URL --host ADDR --port PORT"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys

from collector.app import build_app
from collector.server import serve
from collector.settings import parse_args
from collector.workers import PEERS_ENV, run_workers

GC_THRESHOLD = 20_000


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    if settings.workers > 1 and PEERS_ENV not in os.environ:
        return run_workers(settings.workers, sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Quiet per-request access logs: they would cost more CPU than the proxying itself.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, absent only on odd platforms
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    app = build_app(settings)
    # Everything built so far lives as long as the process: out of the collector's way. Each request
    # allocates a few hundred short-lived containers (aiohttp's request and response objects, the
    # span, dicts); with the default gen-0 threshold (700) the cyclic collector ran every couple of
    # requests and took ~13% of the CPU at 256 streams (py-spy). Reference counting frees almost all
    # of them; the rare cycles (exceptions and their tracebacks) wait a little longer.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)
    logging.getLogger("collector").info("proxying %s on %s:%d", settings.upstream_base, settings.host,
                                        settings.port)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(app, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
