"""The bounded set of model names used as metric labels, learned from the upstream's /v1/models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp

from collector.metrics import Metrics

log = logging.getLogger(__name__)

UNKNOWN_MODEL = "other"
# A model name the upstream does not list may appear after a reload; look again, but rarely.
MISS_REFRESH_SECONDS = 5.0
# While the upstream cannot be reached (or has listed no model yet), look again this often, so
# collector_upstream_up turns 1 within about a second of the upstream coming back.
FAILING_REFRESH_SECONDS = 1.0


class ModelNames:
    def __init__(self, session: aiohttp.ClientSession, upstream: str, metrics: Metrics,
                 refresh_seconds: float) -> None:
        self._session = session
        self._url = upstream + "/v1/models"
        self._metrics = metrics
        self._refresh_seconds = refresh_seconds
        self._names: frozenset[str] = frozenset()
        self._last_attempt = 0.0
        self._task: asyncio.Task[None] | None = None
        self._up: bool | None = None
        self._wake = asyncio.Event()
        self.default: str | None = None  # the first listed model: what the upstream serves by default

    def note_reachable(self) -> None:
        """The upstream answered a request: it is up, whatever the last refresh found."""
        if self._up is not True:
            self._set_up(True)

    def note_unreachable(self) -> None:
        """A request could not reach the upstream: down now, and the refresh loop checks again at
        once and every FAILING_REFRESH_SECONDS until it answers."""
        if self._up is not False:
            self._set_up(False)
            self._wake.set()

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._metrics.upstream_up.set(1 if up else 0)

    def label(self, requested: object) -> str:
        """The metric label for a requested model: a listed name, else "other" (never free input)."""
        if requested is None and self.default is not None:
            return self.default
        if isinstance(requested, str) and requested in self._names:
            return requested
        if time.monotonic() - self._last_attempt > MISS_REFRESH_SECONDS:
            self.refresh_soon()
        return UNKNOWN_MODEL

    def refresh_soon(self) -> None:
        if self._task is None or self._task.done():
            self._last_attempt = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self.refresh())

    async def refresh(self) -> None:
        self._last_attempt = time.monotonic()
        try:
            async with self._session.get(self._url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                body = await response.json(content_type=None)
            names = [entry["id"] for entry in body["data"] if isinstance(entry.get("id"), str)]
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError, KeyError, TypeError) as error:
            self._set_up(False)
            log.debug("model list refresh failed: %s", error)
            return
        self._set_up(True)
        # Bounded even if the upstream lists many names.
        self._names = frozenset(names[:64])
        self.default = names[0] if names else None

    async def run(self) -> None:
        while True:
            await self.refresh()
            self._wake.clear()
            period = self._refresh_seconds if self._up and self._names else FAILING_REFRESH_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period)
