"""Report figures (matplotlib, Agg): throughput and latency against concurrency with the knee marked,
TTFT three ways, and the server's timeline over the sweep."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadgen.report.analysis import Analysis
from loadgen.results import RunResults

COLORS = {"client": "#1f77b4", "collector": "#ff7f0e", "vllm": "#2ca02c", "slo": "#d62728", "knee": "#9467bd"}


def _values(values: list[float | None], scale: float = 1.0) -> list[float]:
    """matplotlib draws NaN as a gap; None (not measured) becomes one."""
    return [math.nan if v is None else v * scale for v in values]


def _mark_knee(ax: Any, analysis: Analysis) -> None:
    """Knee as a dashed line; the stretch where the SLO breaks (knee .. first bad) and beyond shaded."""
    if analysis.knee.concurrency:
        ax.axvline(analysis.knee.concurrency, color=COLORS["knee"], linestyle="--", linewidth=1.5,
                   label=f"knee: {analysis.knee.concurrency:g} {'req/s' if _is_rate(analysis) else 'users'}")
    if analysis.knee.first_bad:
        highest = max(r.concurrency for r in analysis.rows)
        ax.axvspan(analysis.knee.concurrency or analysis.knee.first_bad / 2, analysis.knee.first_bad,
                   color="#ffbf7f", alpha=0.18, label="SLO breaks in here")
        ax.axvspan(analysis.knee.first_bad, max(highest * 1.25, analysis.knee.first_bad * 1.25), color=COLORS["slo"],
                   alpha=0.10, label="SLO broken")


def _mark_peak(ax: Any, analysis: Analysis) -> None:
    """The throughput knee: the peak, and the fitted Universal Scalability Law curve where it fits."""
    peak = analysis.throughput_knee
    if peak is None:
        return
    label = (f"throughput peak: {peak.peak_tok_s:,.0f} tok/s at {peak.peak_concurrency:g} "
             + ("req/s" if _is_rate(analysis) else "users"))
    if peak.collapse:
        c, _, change = peak.collapse[-1]
        label += f" ({change:+.0%} at {c})"
    ax.scatter([peak.peak_concurrency], [peak.peak_tok_s], marker="*", s=260, color="#e377c2", zorder=6, label=label)
    usl = analysis.usl
    if usl is not None and usl.fits and usl.lam and usl.sigma is not None and usl.kappa is not None:
        top = max(r.concurrency for r in analysis.rows)
        grid = [1 + i * (top - 1) / 200 for i in range(201)]
        fitted = [usl.lam * n / (1 + usl.sigma * (n - 1) + usl.kappa * n * (n - 1)) for n in grid]
        ax.plot(grid, fitted, "-", color="#7f7f7f", linewidth=1, alpha=0.7, label="Universal Scalability Law fit")


def _mark_broken(ax: Any, analysis: Analysis, values: list[float]) -> None:
    bad = [(r.concurrency, v) for r, v in zip(analysis.rows, values, strict=True) if not r.slo_ok]
    if bad:
        ax.scatter([c for c, _ in bad], [v for _, v in bad], s=140, facecolors="none", edgecolors=COLORS["slo"],
                   linewidths=1.8, zorder=5)


def _spaced(xs: list[float], log: bool, min_gap: float = 0.06) -> list[float]:
    """The ticks to label: no two closer than min_gap of the axis span (320/368/416/512 overlap)."""
    if len(xs) < 2:
        return xs
    pos = [math.log2(x) if log else float(x) for x in xs]
    span = (max(pos) - min(pos)) or 1.0
    kept = [0]
    for i in range(1, len(xs)):
        if (pos[i] - pos[kept[-1]]) / span >= min_gap:
            kept.append(i)
        elif i == len(xs) - 1:  # keep the highest step labelled; drop its crowding neighbour
            kept[-1] = i
    return [xs[i] for i in kept]


def _is_rate(analysis: Analysis) -> bool:
    """A rate sweep's steps are offered rates (floats, requests/s), a closed loop's are users (ints)."""
    return any(isinstance(r.concurrency, float) for r in analysis.rows)


def _concurrency_axis(ax: Any, analysis: Analysis) -> None:
    xs = sorted({r.concurrency for r in analysis.rows})
    log = bool(xs) and max(xs) / max(min(xs), 1) >= 8
    if log:
        ax.set_xscale("log", base=2)
    labelled = _spaced(xs, log)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) if x in labelled else "" for x in xs])
    ax.minorticks_off()
    ax.set_xlabel("offered rate, requests/s (open loop)" if _is_rate(analysis) else "concurrent users (closed loop)")
    ax.grid(True, alpha=0.3)


def _value_axis(ax: Any, values: list[float]) -> None:
    """Log scale when values span more than 30x (a queueing tail next to sub-second TTFTs), else from 0."""
    positive = [float(v) for v in values if float(v) > 0]
    if positive and max(positive) / min(positive) > 30:
        ax.set_yscale("log")
        ax.set_ylabel(f"{ax.get_ylabel() or 'value'} (log scale)")
    else:
        ax.set_ylim(bottom=0)


def throughput(analysis: Analysis, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    rows = analysis.rows
    xs = [r.concurrency for r in rows]
    ax.plot(xs, _values([r.output_tok_s for r in rows]), "o-", color=COLORS["client"],
            label="aggregate output tok/s (k6)")
    if any(r.vllm_tok_s is not None for r in rows):
        ax.plot(xs, _values([r.vllm_tok_s for r in rows]), "s:", color=COLORS["vllm"], label="vLLM counter tok/s")
    ax.set_ylabel("output tokens / s (all users)")
    right = ax.twinx()
    right.plot(xs, _values([r.user_tok_s for r in rows]), "^--", color="#8c564b", label="per-user tok/s (p50)")
    right.set_ylabel("tokens / s per user")
    right.set_ylim(bottom=0)
    ax.set_ylim(bottom=0)
    _mark_knee(ax, analysis)
    _mark_peak(ax, analysis)
    _concurrency_axis(ax, analysis)
    _mark_broken(ax, analysis, _values([r.output_tok_s for r in rows]))
    handles, labels = (a + b for a, b in zip(ax.get_legend_handles_labels(), right.get_legend_handles_labels(),
                                             strict=True))
    # Three columns: the peak's label is long, and four overran the figure's edges (seen in Chromium).
    legend_rows = math.ceil(len(labels) / 3)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    ax.set_title(f"Throughput vs {'offered rate' if _is_rate(analysis) else 'concurrency'} (red rings: SLO broken)")
    fig.tight_layout(rect=(0, 0.02 + 0.045 * legend_rows, 1, 1))
    fig.savefig(path, bbox_inches="tight")  # never clip a label, whatever its length
    plt.close(fig)
    return path


def latency(analysis: Analysis, slo: dict[str, dict[str, Any]], path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    rows = analysis.rows
    xs = [r.concurrency for r in rows]
    source = rows[0].ttft_source if rows else "client"
    left.plot(xs, _values([r.ttft_p50_s for r in rows]), "o-", color=COLORS["client"], label=f"p50 TTFT ({source})")
    left.plot(xs, _values([r.ttft_p95_s for r in rows]), "o--", color="#17becf", label=f"p95 TTFT ({source})")
    if "ttft_p95_s" in slo:
        left.axhline(slo["ttft_p95_s"]["value"], color=COLORS["slo"], linestyle=":",
                     label=f"SLO p95 TTFT {slo['ttft_p95_s']['value']:g} s")
    left.set_ylabel("seconds")
    right.set_ylabel("seconds")
    left.set_title("Time to first token")
    right.plot(xs, _values([r.e2e_p95_s for r in rows]), "o-", color="#e377c2", label="p95 total latency (k6)")
    if "e2e_p95_s" in slo:
        right.axhline(slo["e2e_p95_s"]["value"], color=COLORS["slo"], linestyle=":",
                      label=f"SLO p95 total {slo['e2e_p95_s']['value']:g} s")
    right.set_title("Total request latency")
    _mark_broken(left, analysis, _values([r.ttft_p95_s for r in rows]))
    _mark_broken(right, analysis, _values([r.e2e_p95_s for r in rows]))
    for ax in (left, right):
        _mark_knee(ax, analysis)
        _concurrency_axis(ax, analysis)
        _value_axis(ax, [v for line in ax.get_lines() for v in line.get_ydata() if v == v])
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def ttft_three_ways(analysis: Analysis, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    rows = analysis.ttft_three_ways
    labels = [str(r["concurrency"]) for r in rows]
    width = 0.26
    for ax, q in zip(axes, ("p50", "p95"), strict=True):
        for i, (who, name) in enumerate((("client", "k6 client"), ("collector", "collector"), ("vllm", "vLLM"))):
            values = [(r[f"{who}_{q}_s"] or 0) * 1000 for r in rows]
            ax.bar([x + (i - 1) * width for x in range(len(rows))], values, width, label=name, color=COLORS[who])
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels)
        ax.set_xlabel("offered requests/s" if _is_rate(analysis) else "concurrent users")
        ax.set_ylabel("milliseconds")
        _value_axis(ax, [p.get_height() for p in ax.patches])
        ax.set_title(f"{q} time to first token, three ways")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def timeline(results: RunResults, path: Path) -> Path | None:
    """vLLM's running/waiting requests, KV-cache usage and output tok/s over the sweep, steps shaded."""
    series = results.get("timeline") or {}
    if not any(series.get(k) for k in ("running", "waiting", "kv_cache", "generation_tok_s")):
        return None
    start = results.get("created", 0)
    fig, axes = plt.subplots(3, 1, figsize=(10, 6.5), dpi=110, sharex=True)

    def plot(ax: Any, key: str, label: str, scale: float = 1.0, color: str | None = None) -> None:
        points = series.get(key) or []
        if points:
            ax.plot([(t - start) / 60 for t, _ in points], [v * scale for _, v in points], label=label, color=color)

    plot(axes[0], "running", "running", color=COLORS["vllm"])
    plot(axes[0], "waiting", "waiting", color=COLORS["slo"])
    axes[0].set_ylabel("requests")
    plot(axes[1], "kv_cache", "KV cache usage %", 100, color=COLORS["knee"])
    axes[1].set_ylabel("KV cache %")
    axes[1].set_ylim(0, 105)
    plot(axes[2], "generation_tok_s", "vLLM output tok/s", color=COLORS["client"])
    axes[2].set_ylabel("tok/s")
    axes[2].set_xlabel("minutes since the sweep started")
    for step in results.get("steps", []):
        if step.get("steady_start"):
            for ax in axes:
                ax.axvspan((step["steady_start"] - start) / 60, (step["steady_end"] - start) / 60, color="#999999",
                           alpha=0.12)
            axes[0].annotate(str(step["concurrency"]), ((step["steady_start"] - start) / 60, 1.0),
                             xycoords=("data", "axes fraction"), fontsize=8, va="top")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a series Prometheus never returned draws no line
            ax.legend(fontsize=8, loc="upper left")
    axes[0].set_title("Server over the sweep (grey: steady windows, labelled with concurrency)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
