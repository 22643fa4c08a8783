"""Export a dashboard as a Grafana snapshot that keeps its data, plus one PNG per panel.

    python -m loadgen.grafana_snapshot --dashboard serving --from now-30m --to now --out DIR
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
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from loadgen.prom import Prometheus, PrometheusDown

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
SETTINGS_FILES = (ROOT / "compose" / ".env", ROOT / "compose" / ".env.example")
MAX_POINTS = 600  # about one point per horizontal pixel of a panel, as Grafana chooses its step

EXIT_BAD_INPUT = 2
EXIT_NO_GRAFANA = 3
EXIT_NO_PROMETHEUS = 4
EXIT_GRAFANA_REFUSED = 5


class BadInput(ValueError):
    """A one-line, user-facing reason why the input cannot be used."""


class GrafanaRefused(RuntimeError):
    """Grafana answered, but would not do what was asked (one line)."""


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


def _setting(key: str) -> str | None:
    for path in SETTINGS_FILES:
        if path.is_file():
            for line in path.read_text().splitlines():
                name, _, value = line.partition("=")
                if name.strip() == key:
                    return value.strip()
            return None
    return None


def default_url(port_key: str) -> str:
    return f"http://{_setting('BIND_ADDRESS') or '127.0.0.1'}:{_setting(port_key)}"


def grafana_api(url: str) -> Any:
    """A grafana-client API. Credentials: GRAFANA_TOKEN, else the URL's user:password, else
    GRAFANA_ADMIN_USER/GRAFANA_ADMIN_PASSWORD from the environment or compose/.env."""
    from grafana_client.api import GrafanaApi

    credential: Any = os.environ.get("GRAFANA_TOKEN")
    password = os.environ.get("GRAFANA_ADMIN_PASSWORD") or _setting("GRAFANA_ADMIN_PASSWORD")
    if credential is None and "@" not in url and password:
        credential = (os.environ.get("GRAFANA_ADMIN_USER") or _setting("GRAFANA_ADMIN_USER") or "admin", password)
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


def export_panel_images(uid: str, start: float, end: float, out_dir: Path, *, grafana_url: str | None = None,
                        prometheus_url: str | None = None,
                        variables: Mapping[str, str] | None = None) -> tuple[list[Path], str]:
    """One PNG per panel of dashboard `uid`, for the envelope report: rendered by Grafana's image
    renderer when Grafana answers, else drawn from Prometheus with matplotlib (panel_images).
    Returns (paths, "grafana" or "prometheus")."""
    dashboard = load_dashboard(uid)
    values = variable_values(dashboard, variables)
    out_dir.mkdir(parents=True, exist_ok=True)
    api = grafana_api(grafana_url or default_url("GRAFANA_PORT"))
    if grafana_reachable(api) is None:
        try:
            return render_panels(api, dashboard, start, end, out_dir, values), "grafana"
        except GrafanaRefused:
            pass  # e.g. no image renderer: draw them instead
    from loadgen.panel_images import draw_panels  # matplotlib only when needed

    return draw_panels(dashboard, start, end, prometheus_url or default_url("PROMETHEUS_PORT"), out_dir,
                       values), "prometheus"


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
        from loadgen.panel_images import draw_panels  # matplotlib only when needed

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
