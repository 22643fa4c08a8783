"""The dashboard's panels drawn with matplotlib from the same Prometheus queries Grafana runs.

The envelope report's fallback when no Grafana (or image renderer) is reachable:

    draw_panels(load_dashboard("serving"), start, end, prometheus_url, out_dir) -> [PNG paths]

Each PNG has the panel's title, its unit on the axis, a legend, the SLO thresholds (the
`envelope:*:threshold` series) as red dashed lines and the sweep steps as shaded regions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend
from matplotlib.ticker import FuncFormatter, MultipleLocator

from loadgen.grafana.queries import Series, iter_panels, query_annotations, query_panels

WIDTH_IN, HEIGHT_IN, DPI = 10.0, 4.2, 100
STAT_HEIGHT_IN = 2.6


# --- units ------------------------------------------------------------------------------------------


def _scaled(value: float, steps: Sequence[tuple[float, str]]) -> str:
    """value in the largest step whose size it reaches, e.g. 0.0123 s -> '12.3 ms'."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    size, suffix = steps[0]
    for step_size, step_suffix in steps:
        if magnitude >= step_size:
            size, suffix = step_size, step_suffix
    scaled = value / size
    digits = 0 if abs(scaled) >= 100 else 1 if abs(scaled) >= 10 else 2
    text = f"{scaled:.{digits}f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + suffix


def format_value(value: float, unit: str) -> str:
    """A value the way Grafana's unit shows it (the subset of units our dashboards use)."""
    if unit == "s":
        return _scaled(value, [(1e-6, " µs"), (1e-3, " ms"), (1.0, " s"), (60.0, " min")])
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "percent":
        return f"{value:.0f}%"
    if unit == "bytes":
        return _scaled(value, [(1.0, " B"), (2**10, " KiB"), (2**20, " MiB"), (2**30, " GiB"), (2**40, " TiB")])
    if unit == "decmbytes":
        return _scaled(value, [(1.0, " MB"), (1e3, " GB"), (1e6, " TB")])
    suffix = {"reqps": " req/s", "watt": " W", "celsius": " °C", "rotmhz": " MHz"}.get(unit)
    if suffix is None and unit.startswith("suffix:"):
        suffix = " " + unit.removeprefix("suffix:").strip()
    return _scaled(value, [(1.0, ""), (1e3, "k"), (1e6, "M")]) + (suffix or "")


def axis_label(unit: str) -> str:
    labels = {"s": "seconds", "percentunit": "percent", "percent": "percent", "bytes": "bytes",
              "decmbytes": "megabytes", "reqps": "requests / s", "watt": "watts", "celsius": "°C",
              "rotmhz": "MHz", "short": "count"}
    return labels.get(unit) or unit.removeprefix("suffix:").strip()


# --- drawing ------------------------------------------------------------------------------------------


# The x axis is unix seconds, labelled as UTC clock time.
CLOCK = FuncFormatter(lambda t, _: datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S"))


def _threshold_refs(panel: Mapping[str, Any]) -> set[str]:
    return {t["refId"] for t in panel.get("targets", []) if t["expr"].startswith("envelope:")}


def _no_data(ax: Any, panel: Mapping[str, Any]) -> None:
    text = panel.get("fieldConfig", {}).get("defaults", {}).get("noValue") or "No data"
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey", fontsize=13)
    ax.set_xticks([])
    ax.set_yticks([])


def _shade_steps(ax: Any, events: Sequence[Mapping[str, Any]]) -> None:
    for event in events:
        start, end = event["time"] / 1000, event["timeEnd"] / 1000
        ax.axvspan(start, end, color="tab:purple", alpha=0.07, lw=0)
        ax.text(start, 1.0, event["title"], transform=ax.get_xaxis_transform(), fontsize=7,
                color="tab:purple", va="bottom", clip_on=False)


def _step(series: Sequence[Series]) -> float:
    """The query step: the smallest spacing between samples of any series."""
    gaps = [b - a for s in series for a, b in zip(s.times, s.times[1:], strict=False) if b > a]
    return min(gaps, default=0.0)


def _broken_at_gaps(series: Series, step: float) -> tuple[list[float], list[float]]:
    """Times and values with a NaN wherever samples are missing, so the line breaks there (as
    Grafana's does) instead of joining the points on either side."""
    times: list[float] = []
    values: list[float] = []
    for t, v in zip(series.times, series.values, strict=True):
        if times and step and t - times[-1] > 1.5 * step:
            times.append(times[-1] + step)
            values.append(math.nan)
        times.append(t)
        values.append(math.nan if v is None else v)
    return times, values


def _binary_ticks(ax: Any, series: Sequence[Series]) -> None:
    """Byte axes ticked at round binary sizes (4 GiB, 8 GiB...) rather than at decimal ones."""
    top = max((v for s in series for v in s.values if v is not None), default=0.0)
    base = next((b for b in (2**40, 2**30, 2**20, 2**10) if top >= b), 1)
    raw = top / 5 / base
    nice = next((n for n in (0.25, 0.5, 1, 2, 2.5, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 256, 512)
                 if n >= raw), 1024)
    ax.yaxis.set_major_locator(MultipleLocator(nice * base))


def _draw_timeseries(ax: Any, panel: Mapping[str, Any], series: list[Series], events: Sequence[Any]) -> None:
    unit = panel["fieldConfig"]["defaults"]["unit"]
    step = _step(series)
    thresholds = _threshold_refs(panel)
    stacked = panel["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {}).get("mode") == "normal"
    drawn = 0
    if stacked and series:
        data = [s for s in series if s.ref_id not in thresholds and s.times]
        if data and all(s.times == data[0].times for s in data):
            ax.stackplot(data[0].times, *[[v or 0.0 for v in s.values] for s in data],
                         labels=[s.name for s in data], alpha=0.6)
            drawn = len(data)
            series = [s for s in series if s.ref_id in thresholds]
    for s in series:
        if not any(v is not None for v in s.values):
            continue
        times, values = _broken_at_gaps(s, step)
        if s.ref_id in thresholds:
            ax.plot(times, values, color="red", linestyle="--", linewidth=1.2, label=s.name)
        else:
            ax.plot(times, values, linewidth=1.4, label=s.name)
        drawn += 1
    if not drawn:
        _no_data(ax, panel)
        return
    _shade_steps(ax, events)
    ax.set_ylabel(axis_label(unit))
    if unit == "bytes":
        _binary_ticks(ax, series)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit)))
    ax.xaxis.set_major_formatter(CLOCK)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncol=min(4, drawn), framealpha=0.8)
    ax.set_xlabel("time (UTC)")


def _draw_stat(ax: Any, panel: Mapping[str, Any], series: list[Series]) -> None:
    unit = panel["fieldConfig"]["defaults"]["unit"]
    shown = [(s.name, last) for s in series if (last := next((v for v in reversed(s.values) if v is not None), None))
             is not None]
    if not shown:
        _no_data(ax, panel)
        return
    ax.axis("off")
    for i, (name, value) in enumerate(shown):
        x = (i + 0.5) / len(shown)
        ax.text(x, 0.55, format_value(value, unit), ha="center", va="center", fontsize=26, color="tab:blue",
                transform=ax.transAxes)
        ax.text(x, 0.15, name, ha="center", va="center", fontsize=10, color="dimgrey", transform=ax.transAxes)


def _bucket_bound(le: str) -> float:
    return math.inf if le == "+Inf" else float(le)


def _draw_heatmap(fig: Figure, ax: Any, panel: Mapping[str, Any], series: list[Series]) -> None:
    """Prometheus buckets are cumulative: each cell is a bucket's count minus the one below it."""
    rows = sorted((s for s in series if "le" in s.labels), key=lambda s: _bucket_bound(s.labels["le"]))
    if not rows or not any(v for s in rows for v in s.values if v):
        _no_data(ax, panel)
        return
    counts = [[v or 0.0 for v in s.values] for s in rows]
    cells = [counts[0]] + [[max(0.0, hi - lo) for hi, lo in zip(counts[i], counts[i - 1], strict=True)]
                           for i in range(1, len(counts))]
    bounds = [format_value(_bucket_bound(s.labels["le"]), "short") for s in rows[:-1]]
    labels = [f"≤ {b}" for b in bounds] + ([f"> {bounds[-1]}"] if bounds else ["all"])
    times = rows[0].times
    step = (times[1] - times[0]) if len(times) > 1 else 60.0
    edges = [*(t - step / 2 for t in times), times[-1] + step / 2]
    mesh = ax.pcolormesh(edges, range(len(rows) + 1), cells, cmap="Oranges", shading="flat")
    ax.set_yticks([i + 0.5 for i in range(len(rows))], labels, fontsize=7)
    ax.set_ylabel(axis_label(panel["fieldConfig"]["defaults"]["unit"]) + " per request")
    ax.xaxis.set_major_formatter(CLOCK)
    ax.set_xlabel("time (UTC)")
    fig.colorbar(mesh, ax=ax, label="requests per interval")


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def draw_panel(panel: Mapping[str, Any], series: list[Series], events: Sequence[Mapping[str, Any]],
               path: Path, span: tuple[float, float] | None = None) -> Path:
    """One panel as PNG; `span` (start, end) fixes the time axis so every panel lines up."""
    height = STAT_HEIGHT_IN if panel["type"] == "stat" else HEIGHT_IN
    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI)
    ax = fig.subplots()
    if panel["type"] == "stat":
        _draw_stat(ax, panel, series)
    elif panel["type"] == "heatmap":
        _draw_heatmap(fig, ax, panel, series)
    else:
        _draw_timeseries(ax, panel, series, events)
    if span and panel["type"] != "stat":
        ax.set_xlim(*span)
    fig.suptitle(panel["title"], fontsize=13, fontweight="bold", x=0.01, ha="left")
    fig.tight_layout()
    fig.savefig(path)
    return path


def draw_panels(dashboard: Mapping[str, Any], start: float, end: float, prometheus_url: str, out_dir: Path,
                variables: Mapping[str, str] | None = None) -> list[Path]:
    """One PNG per panel of the dashboard over [start, end], named <uid>-<panel id>-<title>.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    series_by_panel = query_panels(dashboard, start, end, prometheus_url, variables)
    events = [e for found in query_annotations(dashboard, start, end, prometheus_url, variables).values()
              for e in found]
    return [
        draw_panel(panel, series_by_panel[panel["id"]], events,
                   out_dir / f"{dashboard['uid']}-{panel['id']:02d}-{_slug(panel['title'])}.png", (start, end))
        for panel in iter_panels(dashboard)
    ]
