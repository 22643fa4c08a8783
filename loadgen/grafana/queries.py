"""Dashboard panels as Grafana would query them: the provisioned dashboards (grafana/dashboards/), their
template variables and $__rate_interval expanded, every panel target run against Prometheus, annotation
queries. Pure reading; the snapshot exporter, the panel drawer and scripts/check_queries.py build on it.
Imports loadgen.prom only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loadgen.prom import Prometheus
from loadgen.settings import ROOT

DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
MAX_POINTS = 600  # about one point per horizontal pixel of a panel, as Grafana chooses its step


class BadInput(ValueError):
    """A one-line, user-facing reason why the input cannot be used."""


@dataclass(frozen=True)
class Window:
    """A query range as Grafana would run it: start/end in seconds, step and $__rate_interval."""

    start: float
    end: float
    step: float
    rate_interval: float

    @classmethod
    def for_range(cls, start: float, end: float, scrape_interval: float, max_points: int = MAX_POINTS) -> Window:
        if end <= start:
            raise BadInput(f"the time range is empty: from {start} is not before to {end}")
        step = max(scrape_interval, math.ceil((end - start) / max_points))
        # Grafana: $__rate_interval = max($__interval + scrape interval, 4 * scrape interval).
        return cls(start, end, step, max(step + scrape_interval, 4 * scrape_interval))


@dataclass(frozen=True)
class Series:
    """One series a panel query returned: what Grafana would draw as one line."""

    ref_id: str
    name: str
    labels: dict[str, str]
    times: list[float]  # seconds
    values: list[float | None]


# --- reading dashboards ----------------------------------------------------------------------------


def load_dashboard(uid: str, directory: Path = DASHBOARDS_DIR) -> dict[str, Any]:
    path = directory / f"{uid}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.json"))) or "none"
        raise BadInput(f"no dashboard with uid {uid!r} in {directory} (known: {known})")
    model: dict[str, Any] = json.loads(path.read_text())
    return model


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data, rows unfolded (collapsed rows keep theirs inside)."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


# --- running panel queries -------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _duration(seconds: float) -> str:
    return f"{math.ceil(seconds)}s"


def expand(expr: str, variables: Mapping[str, str], window: Window) -> str:
    """Substitute Grafana's built-in and template variables into one query expression."""
    builtins = {
        "__rate_interval": _duration(window.rate_interval),
        "__interval": _duration(window.step),
        "__range": _duration(window.end - window.start),
    }

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in builtins:
            return builtins[name]
        if name not in variables:
            raise BadInput(f"query uses ${name}, which has no value: {expr}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def variable_values(dashboard: Mapping[str, Any], given: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each template variable's value: the given one, else its "All" value (Grafana's default here)."""
    given = dict(given or {})
    values: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var["name"]
        values[name] = given.pop(name, var.get("allValue") or ".*")
    if given:
        raise BadInput(f"the dashboard has no variable {', '.join(sorted(given))}")
    return values


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def _sample(raw: str) -> float | None:
    value = float(raw)
    return None if math.isnan(value) or math.isinf(value) else value


def run_target(prometheus: Prometheus, panel_target: Mapping[str, Any], variables: Mapping[str, str],
               window: Window) -> list[Series]:
    expr = expand(panel_target["expr"], variables, window)
    # Whole seconds print as "5s", not "5.0s", which Prometheus rejects as a step.
    step = int(window.step) if float(window.step).is_integer() else window.step
    result = prometheus.range(expr, window.start, window.end, step)
    series = []
    for item in result:
        labels = {k: v for k, v in item["metric"].items() if k != "__name__"}
        series.append(Series(
            ref_id=panel_target.get("refId", "A"), name=legend(panel_target.get("legendFormat", ""), labels),
            labels=labels, times=[float(t) for t, _ in item["values"]],
            values=[_sample(v) for _, v in item["values"]]))
    return series


def query_panels(dashboard: Mapping[str, Any], start: float, end: float, prometheus_url: str,
                 variables: Mapping[str, str] | None = None,
                 scrape_interval: float | None = None) -> dict[int, list[Series]]:
    """Panel id -> the series its queries return over [start, end], as Grafana would fetch them."""
    prometheus = Prometheus(prometheus_url)
    window = Window.for_range(start, end, scrape_interval or read_scrape_interval(prometheus))
    values = variable_values(dashboard, variables)
    return {
        panel["id"]: [s for t in panel.get("targets", []) if not t.get("hide")
                      for s in run_target(prometheus, t, values, window)]
        for panel in iter_panels(dashboard)
    }


def read_scrape_interval(prometheus: Prometheus) -> float:
    """The live Prometheus's global scrape interval (what Grafana's timeInterval mirrors)."""
    config = yaml.safe_load(prometheus._get("/api/v1/status/config", {})["yaml"])
    return parse_duration(config["global"]["scrape_interval"])


def parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise BadInput(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def query_annotations(dashboard: Mapping[str, Any], start: float, end: float, prometheus_url: str,
                      variables: Mapping[str, str] | None = None,
                      scrape_interval: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """Annotation name -> events, for the dashboard's Prometheus annotation queries: one region per
    stretch of consecutive non-null samples of each series (how Grafana turns them into regions)."""
    prometheus = Prometheus(prometheus_url)
    window = Window.for_range(start, end, scrape_interval or read_scrape_interval(prometheus))
    values = variable_values(dashboard, variables)
    events: dict[str, list[dict[str, Any]]] = {}
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("datasource", {}).get("type") != "prometheus" or not annotation.get("expr"):
            continue
        found: list[dict[str, Any]] = []
        for series in run_target(prometheus, {"expr": annotation["expr"],
                                              "legendFormat": annotation.get("titleFormat", "")}, values, window):
            for first, last in _stretches(series, window.step):
                found.append({"time": int(first * 1000), "timeEnd": int(last * 1000), "isRegion": last > first,
                              "title": series.name, "text": legend(annotation.get("textFormat", ""), series.labels),
                              "tags": [f"{k}:{v}" for k, v in sorted(series.labels.items())]})
        events[annotation["name"]] = found
    return events


def _stretches(series: Series, step: float) -> Iterator[tuple[float, float]]:
    """(first, last) timestamps of each run of non-null samples no more than one step apart."""
    first: float | None = None
    last = 0.0
    for t, v in zip(series.times, series.values, strict=True):
        if v is None:
            continue
        if first is not None and t - last > 1.5 * step:
            yield first, last
            first = None
        if first is None:
            first = t
        last = t
    if first is not None:
        yield first, last
