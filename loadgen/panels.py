"""Dashboard panel images for the report: Grafana's own rendering when Grafana is reachable (the
snapshot exporter), else the same panels drawn from Prometheus data (the matplotlib fallback)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

DASHBOARD = "serving"


def export(results: dict[str, Any], run_dir: Path, grafana_url: str | None, prometheus_url: str | None) -> str:
    """Writes run_dir/panels/*.png; returns a one-line note on where they came from (or why none)."""
    steps = [s for s in results.get("steps", []) if s.get("steady_start")]
    if not steps:
        return "Panel images: no finished step to show."
    if not prometheus_url:
        return "Panel images: none (no Prometheus to read the panels' data from)."
    start = min(s["started"] for s in steps)
    end = max(s["ended"] for s in steps)
    out_dir = run_dir / "panels"
    out_dir.mkdir(exist_ok=True)
    try:
        snapshot = importlib.import_module("loadgen.grafana_snapshot")
    except ImportError:
        snapshot = None
    grafana_why = "no Grafana URL configured"
    if snapshot is not None and grafana_url:
        try:
            dashboard = snapshot.load_dashboard(DASHBOARD)
            variables = snapshot.variable_values(dashboard, {"model": results.get("model", ".*")})
            series = snapshot.query_panels(dashboard, start, end, prometheus_url, variables)
            payload = snapshot.build_snapshot_payload(dashboard, series, start, end, variables=variables)
            (run_dir / "grafana-snapshot.json").write_text(json.dumps(payload) + "\n")
            api = snapshot.grafana_api(grafana_url)
            why = snapshot.grafana_reachable(api)
            if why is None:
                paths = snapshot.render_panels(api, dashboard, start, end, out_dir, variables)
                return (f"Panel images: {len(paths)} panels of the '{DASHBOARD}' dashboard rendered by Grafana at "
                        f"{grafana_url}.")
            grafana_why = f"Grafana at {grafana_url} not reachable ({why})"
        except Exception as error:  # the exporter's errors (bad dashboard, renderer down) must not lose the report
            grafana_why = f"the Grafana exporter failed ({type(error).__name__}: {str(error)[:120]})"
    try:
        fallback = importlib.import_module("loadgen.panel_images")
    except ImportError:
        return (f"Panel images: none ({grafana_why}; the matplotlib fallback loadgen.panel_images is not installed). "
                "The server timeline below is drawn from Prometheus data.")
    try:
        dashboard_arg: Any = DASHBOARD
        paths = fallback.draw_panels(dashboard_arg, start, end, prometheus_url, out_dir)
    except Exception as error:  # same: a broken fallback is reported, not fatal
        return (f"Panel images: none ({grafana_why}; drawing them from Prometheus failed: "
                f"{type(error).__name__}: {error})")
    return (f"Panel images: {len(paths)} panels of the '{DASHBOARD}' dashboard drawn from Prometheus data "
            f"({grafana_why}).")
