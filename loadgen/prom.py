"""Prometheus HTTP API reads for one step window: instant queries, raw counter samples, ranges."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

QUERIES_FILE = Path(__file__).resolve().parent / "step-queries.yaml"


class PrometheusDown(RuntimeError):
    """Prometheus did not answer (or answered with an error)."""


def step_queries() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = yaml.safe_load(QUERIES_FILE.read_text())
    return data


def render(expr: str, **values: str) -> str:
    # str.format would trip over PromQL's braces; only our own placeholders are replaced.
    for key, value in values.items():
        expr = expr.replace("{" + key + "}", value)
    return expr


@dataclass(frozen=True)
class Prometheus:
    url: str
    timeout_s: float = 15.0

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        try:
            response = requests.get(f"{self.url}{path}", params=params, timeout=self.timeout_s)
            body = response.json()
        except (requests.RequestException, ValueError) as error:
            raise PrometheusDown(f"Prometheus at {self.url} did not answer ({type(error).__name__})") from None
        if body.get("status") != "success":
            raise PrometheusDown(f"Prometheus query failed: {body.get('error', 'unknown error')}")
        return body["data"]

    def reachable(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def vector(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        result: list[dict[str, Any]] = self._get("/api/v1/query", params)["result"]
        return result

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        """First value of an instant query; None when it returns nothing or NaN."""
        result = self.vector(expr, at)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) or math.isinf(value) else value

    def raw_samples(self, selector: str, start: float, end: float) -> list[list[tuple[float, float]]]:
        """Raw (timestamp, value) samples of every series matching selector within [start, end]."""
        window = max(1, math.ceil(end - start))
        data = self._get("/api/v1/query", {"query": f"{selector}[{window}s]", "time": f"{end:.3f}"})
        return [[(float(t), float(v)) for t, v in series["values"]] for series in data["result"]]

    def range(self, expr: str, start: float, end: float, step_s: float = 5.0) -> list[dict[str, Any]]:
        data = self._get("/api/v1/query_range",
                         {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}s"})
        result: list[dict[str, Any]] = data["result"]
        return result


def counter_rate(series: list[list[tuple[float, float]]]) -> tuple[float, float, float] | None:
    """(rate per second, span start, span end) from raw counter samples summed over series.

    Uses the first and last sample inside the window, so the span is exact (no extrapolation);
    a counter reset (server restart) within the window makes the figure unusable: None.
    """
    total = 0.0
    spans: list[tuple[float, float]] = []
    for samples in series:
        if len(samples) < 2:
            continue
        values = [v for _, v in samples]
        if any(b < a for a, b in itertools.pairwise(values)):
            return None
        total += values[-1] - values[0]
        spans.append((samples[0][0], samples[-1][0]))
    if not spans:
        return None
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    if end <= start:
        return None
    return total / (end - start), start, end


QUANTILES = {"p50": 0.50, "p95": 0.95}


def bucket_of(buckets: list[tuple[float, float]], q: float) -> tuple[float, float] | None:
    """[lower, upper] bound of the bucket holding quantile q, from cumulative (le, count) pairs.

    histogram_quantile interpolates linearly inside that bucket; when the bucket is the first one
    (lower bound 0) the interpolated figure says nothing beyond "at most the upper bound"."""
    ordered = sorted(buckets)
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower = 0.0
    for le, count in ordered:
        if count >= rank:
            return lower, le
        lower = le
    return None


def collect_step(prom: Prometheus, model: str, start: float, end: float) -> dict[str, dict[str, Any]]:
    """Every server-side and proxy-side figure of step-queries.yaml for the window [start, end]."""
    seconds = max(10, math.ceil(end - start))
    values = {"model": model, "window": f"{seconds}s", "window_s": str(seconds)}
    out: dict[str, dict[str, Any]] = {}
    queries_by_group = step_queries()
    for group, queries in queries_by_group.items():
        if group in ("counters", "watchdog", "k6", "timeline", "buckets", "labelled", "lengths"):
            continue
        out[group] = {name: prom.scalar(render(expr, **values), at=end) for name, expr in queries.items()}
    for name, expr in queries_by_group["labelled"].items():
        vector = prom.vector(render(expr, **values), at=end)
        out[name] = {next(iter(r["metric"].values()), ""): float(r["value"][1]) for r in vector}
    for key, expr in queries_by_group["buckets"].items():
        group, metric = key.split(".")
        pairs = [(float(r["metric"]["le"]), float(r["value"][1])) for r in prom.vector(render(expr, **values), at=end)]
        for name, q in QUANTILES.items():
            bounds = bucket_of(pairs, q)
            if group in out:
                out[group][f"{metric}_{name}_bucket_s"] = list(bounds) if bounds else None
    return out


def generation_rate(prom: Prometheus, model: str, start: float, end: float) -> tuple[float, float, float] | None:
    selector = render(step_queries()["counters"]["generation_tokens"], model=model)
    return counter_rate(prom.raw_samples(selector, start, end))


def timeline(prom: Prometheus, model: str, start: float, end: float) -> dict[str, list[tuple[float, float]]]:
    """The server's series over the whole sweep, at the scrape interval."""
    out: dict[str, list[tuple[float, float]]] = {}
    for name, expr in step_queries()["timeline"].items():
        result = prom.range(render(expr, model=model), start, end)
        out[name] = [(float(t), float(v)) for t, v in result[0]["values"]] if result else []
    return out
