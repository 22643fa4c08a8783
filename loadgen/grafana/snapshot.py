"""Export a dashboard as a Grafana snapshot that keeps its data, plus one PNG per panel.

    python -m loadgen snapshot --dashboard serving --from now-30m --to now --out DIR
        [--grafana-url URL] [--prometheus-url URL] [--var model=qwen3-8b ...]

Grafana's snapshot API stores only what it is given: a dashboard posted without data shows empty
panels. So this runs every panel's queries against Prometheus itself (as Grafana would, with the
template variables and $__rate_interval substituted), puts the results into each panel's
`snapshotData`, posts that with grafana-client, and fetches each panel as PNG through the image
renderer (/render/d-solo/...). DIR always receives `snapshot.json` (the payload; importable later).
Without Grafana (native mode) the panels are drawn from Prometheus with matplotlib instead.

Exit codes: 0 done; 2 bad input (unknown dashboard, bad time or variable); 3 Grafana not reachable
(snapshot.json and matplotlib PNGs written, nothing posted); 4 Prometheus not reachable; 5 Grafana refused (credentials,
image renderer missing).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadgen.grafana.queries import (
    BadInput,
    Series,
    Window,
    iter_panels,
    load_dashboard,
    parse_duration,
    query_annotations,
    query_panels,
    variable_values,
)
from loadgen.prom import PrometheusDown
from loadgen.settings import read_settings, service_url

EXIT_BAD_INPUT = 2
EXIT_NO_GRAFANA = 3
EXIT_NO_PROMETHEUS = 4
EXIT_GRAFANA_REFUSED = 5


class GrafanaRefused(RuntimeError):
    """Grafana answered, but would not do what was asked (one line)."""


# --- the snapshot payload (pure) ---------------------------------------------------------------------


def data_frame(series: Series) -> dict[str, Any]:
    """A series as the DataFrame JSON Grafana keeps in a panel's snapshotData."""
    return {
        "refId": series.ref_id,
        "name": series.name,
        "fields": [
            {"name": "Time", "type": "time", "config": {}, "values": [int(t * 1000) for t in series.times]},
            {"name": "Value", "type": "number", "labels": series.labels,
             "config": {"displayNameFromDS": series.name}, "values": series.values},
        ],
    }


def _overrides_by_name(overrides: list[dict[str, Any]], series: list[Series]) -> list[dict[str, Any]]:
    """Overrides that match a query (byFrameRefID) rewritten to match its series by name: Grafana 11
    drops the refId when it loads snapshotData, and the threshold lines would lose their style."""
    rewritten = []
    for override in overrides:
        matcher = override.get("matcher", {})
        if matcher.get("id") != "byFrameRefID":
            rewritten.append(override)
            continue
        names = sorted({s.name for s in series if s.ref_id == matcher.get("options")})
        rewritten += [{**override, "matcher": {"id": "byName", "options": name}} for name in names]
    return rewritten


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def build_snapshot_payload(dashboard: Mapping[str, Any], series_by_panel: Mapping[int, list[Series]],
                           start: float, end: float, *, name: str | None = None,
                           annotations: Mapping[str, list[dict[str, Any]]] | None = None,
                           variables: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The body for POST /api/snapshots: the dashboard with every panel carrying its data.

    As Grafana's own "Share > Snapshot" does, queries and datasource references are removed (a
    snapshot shows only what it stores), template variables are frozen to the values used, and
    annotation queries are replaced by the events they returned. Series names travel in each
    field's config.displayNameFromDS, which Grafana 11 keeps when it converts snapshotData (it
    drops labels and refIds)."""
    model = copy.deepcopy(dict(dashboard))
    model.pop("id", None)
    model["uid"] = None  # the snapshot gets its own key; the dashboard's uid stays with the dashboard
    model["time"] = {"from": _iso(start), "to": _iso(end)}
    model["refresh"] = ""
    model["snapshot"] = {"timestamp": _iso(time.time())}
    missing = [p["id"] for p in iter_panels(model) if p["id"] not in series_by_panel]
    if missing:
        raise BadInput(f"no query results given for panels {missing}")
    for panel in iter_panels(model):
        panel["snapshotData"] = [data_frame(s) for s in series_by_panel[panel["id"]]]
        panel["targets"] = []
        panel["datasource"] = None
        panel["links"] = []
        if "fieldConfig" in panel:
            panel["fieldConfig"]["overrides"] = _overrides_by_name(panel["fieldConfig"].get("overrides", []),
                                                                   series_by_panel[panel["id"]])
    for var in model.get("templating", {}).get("list", []):
        value = (variables or {}).get(var["name"], var.get("allValue") or ".*")
        current = {"text": value, "value": value, "selected": True}
        var.update(query="", definition="", current=current, options=[current], refresh=0)
        var.pop("datasource", None)
    kept = []
    for annotation in model.get("annotations", {}).get("list", []):
        if annotations is not None and annotation["name"] in annotations:
            kept.append({"name": annotation["name"], "enable": True, "iconColor": annotation.get("iconColor"),
                         "snapshotData": annotations[annotation["name"]]})
    model["annotations"] = {"list": kept}
    return {"dashboard": model, "name": name or f"{dashboard.get('title', 'dashboard')} {_iso(start)}",
            "expires": 0}


# --- Grafana (thin HTTP) -----------------------------------------------------------------------------


def default_url(port_key: str) -> str:
    """A service's URL from the repo's settings (loadgen.settings)."""
    return service_url(read_settings(), port_key) or ""


def grafana_api(url: str) -> Any:
    """A grafana-client API. Credentials: GRAFANA_TOKEN, else the URL's user:password, else
    GRAFANA_ADMIN_USER/GRAFANA_ADMIN_PASSWORD from the environment or compose/.env."""
    from grafana_client.api import GrafanaApi

    credential: Any = os.environ.get("GRAFANA_TOKEN")
    settings = read_settings()
    password = os.environ.get("GRAFANA_ADMIN_PASSWORD") or settings.get("GRAFANA_ADMIN_PASSWORD")
    if credential is None and "@" not in url and password:
        credential = (os.environ.get("GRAFANA_ADMIN_USER") or settings.get("GRAFANA_ADMIN_USER") or "admin", password)
    return GrafanaApi.from_url(url, credential=credential, timeout=30.0)


def grafana_reachable(api: Any) -> str | None:
    """None when Grafana answers /api/health (no credentials needed), else why not (one line)."""
    try:
        api.client.GET("/health")
    except Exception as error:  # grafana-client raises niquests' and its own errors alike
        return type(error).__name__
    return None


def post_snapshot(api: Any, payload: Mapping[str, Any]) -> dict[str, Any]:
    from grafana_client.client import GrafanaException

    try:
        response: dict[str, Any] = api.snapshots.create_new_snapshot(
            dashboard=payload["dashboard"], name=payload["name"], expires=payload["expires"])
    except GrafanaException as error:
        raise GrafanaRefused(f"Grafana refused the snapshot ({error.status_code}: {error.message}); "
                             "check GRAFANA_ADMIN_PASSWORD or GRAFANA_TOKEN") from None
    return response


def render_panels(api: Any, dashboard: Mapping[str, Any], start: float, end: float, out_dir: Path,
                  variables: Mapping[str, str], width: int = 1000, height: int = 500) -> list[Path]:
    """Each panel as PNG through Grafana's image renderer, into out_dir/<uid>-<panel id>.png."""
    base = api.client.url.removesuffix("/api")
    uid = dashboard["uid"]
    paths = []
    for panel in iter_panels(dashboard):
        params: dict[str, Any] = {"orgId": 1, "panelId": panel["id"], "from": round(start * 1000),
                                  "to": round(end * 1000), "width": width, "height": height, "tz": "UTC"}
        params.update({f"var-{k}": v for k, v in variables.items() if v != ".*"})
        response = api.client.s.get(f"{base}/render/d-solo/{uid}/_", params=params, auth=api.client.auth,
                                    timeout=120)
        if response.status_code != 200 or not response.headers.get("Content-Type", "").startswith("image/png"):
            raise GrafanaRefused(f"the image renderer answered {response.status_code} for panel {panel['id']} "
                               f"({panel.get('title')}): is the grafana-image-renderer service up?")
        path = out_dir / f"{uid}-{panel['id']:02d}.png"
        path.write_bytes(response.content)
        paths.append(path)
    return paths


def panel_images(api: Any | None, dashboard: dict[str, Any], start: float, end: float, out_dir: Path,
                 values: Mapping[str, str], prometheus_url: str) -> tuple[list[Path], str, str | None]:
    """The one place that chooses how a dashboard's panels become PNGs: Grafana's image renderer when `api`
    (a Grafana that answered) is given, else (or when rendering fails, e.g. no image renderer installed) the
    same panels drawn from Prometheus with matplotlib. Returns (paths, "grafana" or "prometheus", why
    Grafana's rendering was not used when it was asked)."""
    why = None
    if api is not None:
        try:
            return render_panels(api, dashboard, start, end, out_dir, values), "grafana", None
        except Exception as error:  # refused or broken off: the report still gets its panels
            why = f"Grafana's rendering failed: {type(error).__name__}: {str(error)[:160]}"
    from loadgen.grafana.images import draw_panels  # matplotlib only when needed

    return draw_panels(dashboard, start, end, prometheus_url, out_dir, values), "prometheus", why


def export_panel_images(uid: str, start: float, end: float, out_dir: Path, *, grafana_url: str | None = None,
                        prometheus_url: str | None = None,
                        variables: Mapping[str, str] | None = None) -> tuple[list[Path], str]:
    """One PNG per panel of dashboard `uid` (panel_images, with Grafana when it answers).
    Returns (paths, "grafana" or "prometheus")."""
    dashboard = load_dashboard(uid)
    values = variable_values(dashboard, variables)
    out_dir.mkdir(parents=True, exist_ok=True)
    api = grafana_api(grafana_url or default_url("GRAFANA_PORT"))
    paths, source, _ = panel_images(api if grafana_reachable(api) is None else None, dashboard, start, end, out_dir,
                                    values, prometheus_url or default_url("PROMETHEUS_PORT"))
    return paths, source


# --- command line ---------------------------------------------------------------------------------------


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds, ISO 8601, `now` or `now-<duration>` (e.g. now-30m)."""
    now = time.time() if now is None else now
    text = text.strip()
    if text == "now":
        return now
    if text.startswith("now-"):
        return now - parse_duration(text[4:])
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"not a time: {text!r} (use unix seconds, ISO 8601, now or now-30m)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def parse_variables(pairs: list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise BadInput(f"--var wants NAME=VALUE, got {pair!r}")
        values[name] = value
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen.grafana_snapshot", description=__doc__.split("\n\n")[1]
                                     if __doc__ else None, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dashboard", required=True, help="dashboard uid: serving, gpu-host or load-test")
    parser.add_argument("--from", dest="start", required=True, help="unix seconds, ISO 8601, now-30m")
    parser.add_argument("--to", dest="end", default="now")
    parser.add_argument("--out", required=True, type=Path, help="folder for snapshot.json and panel PNGs")
    parser.add_argument("--grafana-url", default=os.environ.get("GRAFANA_URL") or default_url("GRAFANA_PORT"))
    parser.add_argument("--prometheus-url",
                        default=os.environ.get("PROMETHEUS_URL") or default_url("PROMETHEUS_PORT"))
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="template variable value (a regex); default: all")
    args = parser.parse_args(argv)
    try:
        start, end = parse_time(args.start), parse_time(args.end)
        Window.for_range(start, end, 1)  # an empty range is bad input, before any query
        dashboard = load_dashboard(args.dashboard)
        variables = variable_values(dashboard, parse_variables(args.var))
        series = query_panels(dashboard, start, end, args.prometheus_url, variables)
        events = query_annotations(dashboard, start, end, args.prometheus_url, variables)
        payload = build_snapshot_payload(dashboard, series, start, end, annotations=events, variables=variables)
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PrometheusDown as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NO_PROMETHEUS
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "snapshot.json").write_text(json.dumps(payload, indent=1) + "\n")
    api = grafana_api(args.grafana_url)
    why = grafana_reachable(api)
    if why is not None:
        from loadgen.grafana.images import draw_panels  # matplotlib only when needed

        drawn = draw_panels(dashboard, start, end, args.prometheus_url, args.out, variables)
        print(f"Grafana not reachable at {args.grafana_url} ({why}): posted nothing; wrote snapshot.json and "
              f"{len(drawn)} panel PNGs drawn from Prometheus to {args.out}", file=sys.stderr)
        return EXIT_NO_GRAFANA
    try:
        created = post_snapshot(api, payload)
        print(f"snapshot: {created.get('url')}")
        for path in render_panels(api, dashboard, start, end, args.out, variables):
            print(f"panel: {path}")
    except GrafanaRefused as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_GRAFANA_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
