"""Dashboard panel images for the report: Grafana's own rendering when Grafana is reachable (the
snapshot exporter), else the same panels drawn from Prometheus data (the matplotlib fallback)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from loadgen.results import RunResults

# Dashboards in the report, with the template variables that pick this run out.
DASHBOARDS = (("serving", "model"), ("load-test", "run"))


def _variables(snapshot: Any, dashboard: dict[str, Any], key: str, results: RunResults) -> dict[str, str]:
    value = results.get("model") if key == "model" else results.get("run_id")
    given: dict[str, str] = snapshot.variable_values(dashboard, {key: str(value)} if value else {})
    return given


def export(results: RunResults, run_dir: Path, grafana_url: str | None, prometheus_url: str | None) -> str:
    """Writes run_dir/panels/*.png; returns a one-line note on where they came from (or why none)."""
    steps = [s for s in results.get("steps", []) if s.get("steady_start")]
    if not steps:
        return "Panel images: no finished step to show."
    if not prometheus_url:
        return "Panel images: none (no Prometheus to read the panels' data from)."
    start, end = min(s["started"] for s in steps), max(s["ended"] for s in steps)
    out_dir = run_dir / "panels"
    out_dir.mkdir(exist_ok=True)
    try:
        snapshot = importlib.import_module("loadgen.grafana.snapshot")
    except ImportError as error:
        return f"Panel images: none (the Grafana exporter loadgen.grafana.snapshot is not available: {error})."
    names = ", ".join(f"'{uid}'" for uid, _ in DASHBOARDS)
    why: str | None = "no Grafana URL configured"
    counts = {"grafana": 0, "prometheus": 0}
    try:
        api = snapshot.grafana_api(grafana_url) if grafana_url else None
        why = snapshot.grafana_reachable(api) if api is not None else why
        for uid, key in DASHBOARDS:
            dashboard = snapshot.load_dashboard(uid)
            variables = _variables(snapshot, dashboard, key, results)
            series = snapshot.query_panels(dashboard, start, end, prometheus_url, variables)
            payload = snapshot.build_snapshot_payload(dashboard, series, start, end, variables=variables)
            (run_dir / f"grafana-snapshot-{uid}.json").write_text(json.dumps(payload) + "\n")
            paths, source, failed = snapshot.panel_images(api if why is None else None, dashboard, start, end,
                                                          out_dir, variables, prometheus_url)
            counts[source] += len(paths)
            why = why or failed
    except ImportError as error:
        return f"Panel images: none (the matplotlib fallback is not available: {error})."
    except Exception as error:  # a bad dashboard or Prometheus gone: reported, the report is not lost
        return f"Panel images: none (exporting them failed: {type(error).__name__}: {str(error)[:160]})."
    if not counts["prometheus"]:
        return (f"Panel images: {counts['grafana']} panels of the {names} dashboards rendered by Grafana at "
                f"{grafana_url}.")
    grafana = f"Grafana at {grafana_url} not reachable ({why})" if grafana_url and " " not in str(why) else str(why)
    rendered = f"{counts['grafana']} rendered by Grafana, " if counts["grafana"] else ""
    return (f"Panel images: {rendered}{counts['prometheus']} panels of the {names} dashboards drawn from Prometheus "
            f"data with matplotlib ({grafana}); grafana-snapshot-*.json beside this report can be imported into "
            "Grafana later.")
