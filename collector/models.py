"""The bounded set of model names used as metric labels, learned from the upstream's /v1/models."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from collector.metrics import Metrics

log = logging.getLogger(__name__)

UNKNOWN_MODEL = "other"
# A model name the upstream does not list may appear after a reload; look again, but rarely.
MISS_REFRESH_SECONDS = 5.0


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
        self.default: str | None = None  # the first listed model: what the upstream serves by default

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
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as error:
            self._metrics.upstream_up.set(0)
            log.debug("model list refresh failed: %s", error)
            return
        self._metrics.upstream_up.set(1)
        # Bounded even if the upstream lists many names.
        self._names = frozenset(names[:64])
        self.default = names[0] if names else None

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_seconds if self._names else 2.0)
