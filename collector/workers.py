"""Several collector processes on one port (COLLECTOR_WORKERS > 1), with one /metrics.

One event loop handles a burst of requests one after another; with N workers the kernel spreads new
connections over N processes listening on the same port (SO_REUSEPORT), so a burst's request heads
are handled in parallel. The parent process only starts the workers, forwards SIGINT/SIGTERM and
exits when one of them does (stopping the others).

Metrics stay per worker (the lock-free loop histograms and the trace-id exemplars stay as they are);
each worker also answers its own exposition on a Unix socket in a private directory, and whichever
worker Prometheus reaches sums every worker's samples (counters, histograms, gauges; the
`collector_upstream_up` gauge is the minimum: 0 as soon as one worker cannot reach vLLM). Process
metrics (`process_cpu_seconds_total` & co.) get a `pid` label, one series per worker, so
`sum(rate(process_cpu_seconds_total[1m]))` is the collector's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from collector.metrics import Metrics

PEERS_ENV = "COLLECTOR_WORKER_PEERS_DIR"
MIN_GAUGES = frozenset({"collector_upstream_up"})
PEER_TIMEOUT = 5.0


def run_workers(count: int, argv: list[str]) -> int:
    """Start `count` workers (this program again, with PEERS_ENV set) and wait for them."""
    peers = tempfile.mkdtemp(prefix="collector-workers-")
    env = {**os.environ, PEERS_ENV: peers}
    children = [subprocess.Popen([sys.executable, "-m", "collector", *argv], env=env) for _ in range(count)]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        pid, status = os.wait()  # the first worker to exit ends the collector
        code = os.waitstatus_to_exitcode(status)
        forward(signal.SIGTERM, None)
        for child in children:
            if child.pid != pid:
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        return code if code >= 0 else 128 - code
    finally:
        for sock in Path(peers).glob("*"):
            sock.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.rmdir(peers)


class PeerMetrics:
    """This worker's side: its exposition on a Unix socket, and the sum over every worker's."""

    def __init__(self, metrics: Metrics, peers_dir: str) -> None:
        self.metrics = metrics
        self.dir = Path(peers_dir)
        self.path = self.dir / f"{os.getpid()}.sock"
        self._server: asyncio.AbstractServer | None = None
        self._own = CollectorRegistry(auto_describe=False)
        self._own.register(WithPid(metrics.registry))

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._answer, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.path.unlink(missing_ok=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.own())
            await writer.drain()
        finally:
            writer.close()

    def own(self) -> bytes:
        """This worker's samples, process metrics labelled with its pid."""
        text: bytes = openmetrics_latest(self._own)  # type: ignore[no-untyped-call]
        return text

    async def _peer(self, path: Path) -> bytes:
        try:
            async with asyncio.timeout(PEER_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    return await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return b""  # a worker that is gone or stuck: its samples are missing from this scrape

    async def exposition(self, accept: str | None) -> tuple[bytes, str]:
        others = [path for path in self.dir.glob("*.sock") if path != self.path]
        texts = [self.own(), *await asyncio.gather(*(self._peer(path) for path in others))]
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Merged(texts))
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type


class Merged(Collector):
    """The sum of several workers' OpenMetrics expositions (see the module's docstring)."""

    def __init__(self, texts: list[bytes]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
        for text in self.texts:
            if not text:
                continue
            for family in text_string_to_metric_families(text.decode()):  # type: ignore[no-untyped-call]
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type,
                                                            family.unit)
                    values[family.name] = {}
                samples = values[family.name]
                for sample in family.samples:
                    labels = dict(sample.labels)
                    key = (sample.name, tuple(sorted(labels.items())))
                    seen = samples.get(key)
                    if seen is None:
                        samples[key] = Sample(sample.name, labels, sample.value, None, sample.exemplar)
                    elif family.name in MIN_GAUGES:
                        samples[key] = seen._replace(value=min(seen.value, sample.value))
                    else:
                        samples[key] = seen._replace(value=seen.value + sample.value,
                                                     exemplar=seen.exemplar or sample.exemplar)
        for name, family in families.items():
            family.samples = list(values[name].values())
            yield family



class WithPid(Collector):
    """A registry's families, the process ones labelled with this process's pid."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        pid = str(os.getpid())
        for family in self.registry.collect():
            if family.name.startswith("process_"):
                family.samples = [sample._replace(labels={**sample.labels, "pid": pid}) for sample in family.samples]
            yield family
