"""Snapshot export and the Prometheus-drawn panel fallback, on real query results from the live
Prometheus (node exporter and vLLM series always exist there, traffic or not).

What cannot run here: a Grafana server and its image renderer. The payload is checked against the
shape Grafana's snapshot viewer reads (panels' snapshotData as data frames, no queries left); the
HTTP calls are checked against a stand-in that records what it receives and answers like Grafana's
API does (/api/health, POST /api/snapshots, /render/d-solo/...). That proves what is sent, not that
a real Grafana draws it.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from loadgen.grafana import panels, queries
from loadgen.grafana import snapshot as gs
from loadgen.grafana.images import draw_panels, format_value
from loadgen.procs import free_port
from loadgen.results import RunResults
from tests.support.stack import Stack

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WINDOW_S = 300.0


# --- pure pieces ------------------------------------------------------------------------------------


def test_expand_substitutes_builtins_and_variables() -> None:
    window = queries.Window.for_range(1000, 1600, 5)
    expr = 'rate(x{model=~"$model", i=~"${instance}"}[$__rate_interval]) [$__interval] $__range'
    assert queries.expand(expr, {"model": "m", "instance": ".*"}, window) == (
        'rate(x{model=~"m", i=~".*"}[20s]) [5s] 600s')
    with pytest.raises(queries.BadInput, match=r"\$nope"):
        queries.expand("x{a=~\"$nope\"}", {}, window)


def test_variable_values_default_to_all_and_reject_unknown_names() -> None:
    serving = queries.load_dashboard("serving")
    assert queries.variable_values(serving) == {"model": ".*", "instance": ".*"}
    assert queries.variable_values(serving, {"model": "m"})["model"] == "m"
    with pytest.raises(queries.BadInput, match="no variable gpu"):
        queries.variable_values(serving, {"gpu": "0"})


def test_parse_time_and_duration() -> None:
    assert gs.parse_time("now-30m", now=10_000) == 8_200
    assert gs.parse_time("1700000000") == 1_700_000_000
    assert gs.parse_time("2026-01-01T00:00:00Z") == 1_767_225_600
    assert queries.parse_duration("1m30s") == 90
    for bad in ("yesterday", "now-5x"):
        with pytest.raises(queries.BadInput):
            gs.parse_time(bad)


def test_legend_format() -> None:
    assert queries.legend("vLLM {{ finished_reason }}", {"finished_reason": "length"}) == "vLLM length"
    assert queries.legend("", {"b": "2", "a": "1"}) == '{a="1", b="2"}'


def test_units_read_like_grafana() -> None:
    assert format_value(0.0123, "s") == "12.3 ms"
    assert format_value(2, "s") == "2 s"
    assert format_value(0.905, "percentunit") == "90.5%"
    assert format_value(3 * 2**30, "bytes") == "3 GiB"
    assert format_value(1470, "suffix: tok/s") == "1.47k tok/s"
    assert format_value(0, "reqps") == "0 req/s"
    assert format_value(0, "s") == "0"


# --- on real query results ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_results(stack: Stack) -> tuple[dict[str, Any], dict[int, list[queries.Series]], float, float]:
    end = time.time()
    start = end - WINDOW_S
    dashboard = queries.load_dashboard("gpu-host")
    return dashboard, queries.query_panels(dashboard, start, end, stack.prometheus), start, end


@pytest.mark.stack
def test_payload_panels_carry_the_query_results_as_data_frames(
        real_results: tuple[dict[str, Any], dict[int, list[queries.Series]], float, float], stack: Stack) -> None:
    dashboard, series_by_panel, start, end = real_results
    payload = gs.build_snapshot_payload(dashboard, series_by_panel, start, end)
    json.dumps(payload, allow_nan=False)  # Grafana's JSON decoder rejects NaN
    model = payload["dashboard"]
    assert payload["expires"] == 0 and payload["name"].startswith("GPU and host")
    assert model["snapshot"]["timestamp"] and model["uid"] is None and "id" not in model
    assert model["time"]["from"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(start)))
    panels = {p["id"]: p for p in queries.iter_panels(model)}
    assert panels.keys() == series_by_panel.keys()
    for panel_id, panel in panels.items():
        assert panel["targets"] == [] and panel["datasource"] is None
        assert len(panel["snapshotData"]) == len(series_by_panel[panel_id])
        for frame in panel["snapshotData"]:
            time_field, value_field = frame["fields"]
            assert (time_field["type"], value_field["type"]) == ("time", "number")
            assert len(time_field["values"]) == len(value_field["values"]) > 0
            assert time_field["values"] == sorted(time_field["values"])
            assert start * 1000 - 1 <= time_field["values"][0] and time_field["values"][-1] <= end * 1000 + 1
    # Node exporter answers on every machine: the host memory panel must hold real numbers.
    memory = next(p for p in panels.values() if p["title"] == "Host memory")
    frames = {f["name"]: f for f in memory["snapshotData"]}
    available = next(f for name, f in frames.items() if name.startswith("available"))
    latest = available["fields"][1]["values"][-1]
    direct = stack.prom_value("sum(node_memory_MemAvailable_bytes)")
    assert direct is not None and latest is not None and math.isclose(latest, direct, rel_tol=0.2)
    # The DCGM panels hold no frames here (no GPU): they keep their "no data" text instead.
    gpu = next(p for p in panels.values() if p["title"] == "GPU utilisation")
    assert gpu["snapshotData"] == [] and "DCGM" in gpu["fieldConfig"]["defaults"]["noValue"]


@pytest.mark.stack
def test_payload_freezes_variables_and_keeps_annotation_events(
        real_results: tuple[dict[str, Any], dict[int, list[queries.Series]], float, float]) -> None:
    dashboard, series_by_panel, start, end = real_results
    events = {"Sweep steps (k6)": [{"time": int(start * 1000), "timeEnd": int(end * 1000), "title": "step 1",
                                    "text": "", "tags": [], "isRegion": True}]}
    payload = gs.build_snapshot_payload(dashboard, series_by_panel, start, end, annotations=events,
                                        variables={"instance": "127.0.0.1:9100", "gpu": ".*"})
    variables = {v["name"]: v for v in payload["dashboard"]["templating"]["list"]}
    assert variables["instance"]["current"]["value"] == "127.0.0.1:9100"
    assert all(v["query"] == "" and v["refresh"] == 0 for v in variables.values())
    assert payload["dashboard"]["annotations"]["list"] == [
        {"name": "Sweep steps (k6)", "enable": True, "iconColor": "purple", "snapshotData": events["Sweep steps (k6)"]}]
    assert dashboard["panels"][1]["targets"], "the input dashboard is left untouched"


@pytest.mark.stack
def test_payload_refuses_missing_panel_results(
        real_results: tuple[dict[str, Any], dict[int, list[queries.Series]], float, float]) -> None:
    dashboard, series_by_panel, start, end = real_results
    partial = dict(list(series_by_panel.items())[1:])
    with pytest.raises(queries.BadInput, match="no query results given for panels"):
        gs.build_snapshot_payload(dashboard, partial, start, end)


@pytest.mark.stack
def test_draw_panels_writes_one_png_per_panel(stack: Stack, tmp_path: Path) -> None:
    end = time.time()
    dashboard = queries.load_dashboard("gpu-host")
    paths = draw_panels(dashboard, end - WINDOW_S, end, stack.prometheus, tmp_path)
    assert len(paths) == len(list(queries.iter_panels(dashboard)))
    for path in paths:
        assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 5_000, path.name
    by_name = {p.name: p.stat().st_size for p in paths}
    # A panel with data draws lines, axes and a legend; a DCGM panel here draws only its no-data text.
    host_memory = next(size for name, size in by_name.items() if name.endswith("-host-memory.png"))
    gpu_utilisation = next(size for name, size in by_name.items() if name.endswith("-gpu-utilisation.png"))
    assert host_memory > 2 * gpu_utilisation


# --- the command line --------------------------------------------------------------------------------


@dataclass
class StandInGrafana:
    """Answers like Grafana's HTTP API and records every request (method, path, query, headers, body)."""

    port: int
    png: bytes
    requests: list[dict[str, Any]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # dashboards whose panels it will not render (500)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def stand_in_grafana(tmp_path: Path) -> Iterator[StandInGrafana]:
    sample = tmp_path / "sample.png"
    from matplotlib.figure import Figure

    Figure(figsize=(1, 1)).savefig(sample)
    grafana = StandInGrafana(port=free_port(), png=sample.read_bytes())

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _record(self) -> tuple[str, dict[str, list[str]]]:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            grafana.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                     "auth": self.headers.get("Authorization"),
                                     "json": json.loads(body) if body else None})
            return url.path, parse_qs(url.query)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path, _ = self._record()
            if path == "/api/health":
                self._send(200, b'{"database":"ok","version":"11.6.0"}', "application/json")
            elif path.startswith("/render/d-solo/") and path.split("/")[3] in grafana.refuse:
                self._send(500, b'{"message":"rendering failed"}', "application/json")
            elif path.startswith("/render/d-solo/") and path.split("/")[3] in {"serving", "gpu-host", "load-test"}:
                self._send(200, grafana.png, "image/png")
            else:
                self._send(404, b'{"message":"not found"}', "application/json")

        def do_POST(self) -> None:
            path, _ = self._record()
            if path == "/api/snapshots":
                self._send(200, b'{"key":"k1","url":"http://grafana/dashboard/snapshot/k1"}', "application/json")
            else:
                self._send(404, b'{"message":"not found"}', "application/json")

    server = ThreadingHTTPServer(("127.0.0.1", grafana.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield grafana
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.stack
def test_cli_posts_a_snapshot_with_data_and_fetches_each_panel_png(
        stack: Stack, stand_in_grafana: StandInGrafana, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GRAFANA_ADMIN_PASSWORD", "s3cret")
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    out = tmp_path / "out"
    code = gs.main(["--dashboard", "gpu-host", "--from", "now-5m", "--to", "now", "--out", str(out),
                    "--grafana-url", stand_in_grafana.url, "--prometheus-url", stack.prometheus,
                    "--var", "instance=.*"])
    assert code == 0, capsys.readouterr().err
    posted = [r for r in stand_in_grafana.requests if r["method"] == "POST"]
    assert [r["path"] for r in posted] == ["/api/snapshots"]
    assert posted[0]["auth"] == "Basic " + base64.b64encode(b"admin:s3cret").decode()
    snapshot = posted[0]["json"]["dashboard"]
    memory = next(p for p in queries.iter_panels(snapshot) if p["title"] == "Host memory")
    assert memory["snapshotData"] and memory["snapshotData"][0]["fields"][1]["values"]
    renders = [r for r in stand_in_grafana.requests if r["path"].startswith("/render/d-solo/gpu-host/")]
    panel_ids = [p["id"] for p in queries.iter_panels(queries.load_dashboard("gpu-host"))]
    assert sorted(int(r["query"]["panelId"][0]) for r in renders) == sorted(panel_ids)
    assert all(abs(int(r["query"]["to"][0]) - int(r["query"]["from"][0]) - 300_000) <= 1 for r in renders)
    pngs = sorted(out.glob("gpu-host-*.png"))
    assert len(pngs) == len(panel_ids) and all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    assert json.loads((out / "snapshot.json").read_text())["dashboard"]["snapshot"]
    assert "snapshot: http://grafana/dashboard/snapshot/k1" in capsys.readouterr().out


@pytest.mark.stack
def test_cli_without_grafana_says_so_in_one_line_and_keeps_the_payload(
        stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = gs.main(["--dashboard", "serving", "--from", "now-5m", "--out", str(tmp_path),
                    "--grafana-url", f"http://127.0.0.1:{free_port()}", "--prometheus-url", stack.prometheus])
    err = capsys.readouterr().err
    assert code == gs.EXIT_NO_GRAFANA
    assert err.count("\n") == 1 and err.startswith("Grafana not reachable at http://127.0.0.1:"), err
    payload = json.loads((tmp_path / "snapshot.json").read_text())
    assert all("snapshotData" in p for p in queries.iter_panels(payload["dashboard"]))
    drawn = sorted(tmp_path.glob("serving-*.png"))
    assert len(drawn) == len(payload["dashboard"]["panels"]) - sum(
        p["type"] == "row" for p in payload["dashboard"]["panels"])
    assert f"{len(drawn)} panel PNGs drawn from Prometheus" in err


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--dashboard", "nope", "--from", "now-5m"], gs.EXIT_BAD_INPUT, "no dashboard with uid 'nope'"),
    (["--dashboard", "serving", "--from", "yesterday"], gs.EXIT_BAD_INPUT, "not a time: 'yesterday'"),
    (["--dashboard", "serving", "--from", "now", "--to", "now-5m"], gs.EXIT_BAD_INPUT, "time range is empty"),
    (["--dashboard", "serving", "--from", "now-5m", "--var", "gpu=0"], gs.EXIT_BAD_INPUT, "no variable gpu"),
    (["--dashboard", "serving", "--from", "now-5m", "--var", "model"], gs.EXIT_BAD_INPUT, "NAME=VALUE"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(
        args: list[str], code: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert gs.main([*args, "--out", str(out), "--prometheus-url", "http://127.0.0.1:1"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_cli_without_prometheus_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = gs.main(["--dashboard", "serving", "--from", "now-5m", "--out", str(tmp_path / "out"),
                    "--prometheus-url", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == gs.EXIT_NO_PROMETHEUS and err.count("\n") == 1 and "did not answer" in err, err


def test_rendering_failure_is_a_one_line_refusal(stand_in_grafana: StandInGrafana, tmp_path: Path) -> None:
    from grafana_client.api import GrafanaApi

    api = GrafanaApi.from_url(stand_in_grafana.url)
    broken = {"uid": "missing", "panels": [{"id": 1, "type": "timeseries", "title": "x", "targets": []}]}
    with pytest.raises(gs.GrafanaRefused, match="answered 404 for panel 1"):
        gs.render_panels(api, broken, 0, 60, tmp_path, {})
    assert requests.get(f"{stand_in_grafana.url}/api/health", timeout=5).json()["database"] == "ok"


@pytest.mark.stack
def test_report_images_come_from_grafana_when_it_answers_else_from_prometheus(
        stack: Stack, stand_in_grafana: StandInGrafana, tmp_path: Path) -> None:
    end = time.time()
    rendered, source = gs.export_panel_images("load-test", end - WINDOW_S, end, tmp_path / "a",
                                              grafana_url=stand_in_grafana.url, prometheus_url=stack.prometheus)
    assert source == "grafana" and rendered and all(p.read_bytes() == stand_in_grafana.png for p in rendered)
    drawn, source = gs.export_panel_images("load-test", end - WINDOW_S, end, tmp_path / "b",
                                           grafana_url=f"http://127.0.0.1:{free_port()}",
                                           prometheus_url=stack.prometheus)
    assert source == "prometheus" and len(drawn) == len(rendered)
    assert all(p.read_bytes().startswith(PNG_MAGIC) and p.read_bytes() != stand_in_grafana.png for p in drawn)


@pytest.mark.stack
def test_the_reports_panels_are_rendered_by_grafana_and_drawn_where_it_refuses(
        stack: Stack, stand_in_grafana: StandInGrafana, tmp_path: Path) -> None:
    """loadgen.grafana.panels.export (the report's panels) through the one choice, snapshot.panel_images."""
    end = time.time()
    results: RunResults = {"model": stack.model, "run_id": "r1",
                           "steps": [{"started": end - WINDOW_S, "ended": end, "steady_start": end - WINDOW_S / 2}]}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    note = panels.export(results, tmp_path / "a", stand_in_grafana.url, stack.prometheus)
    rendered = sorted((tmp_path / "a" / "panels").glob("*.png"))
    assert note.startswith(f"Panel images: {len(rendered)} panels of the 'serving', 'load-test' dashboards rendered "
                           "by Grafana"), note
    assert rendered and all(p.read_bytes() == stand_in_grafana.png for p in rendered)
    stand_in_grafana.refuse = {"load-test"}  # e.g. a renderer that fails on one dashboard: the rest are drawn
    note = panels.export(results, tmp_path / "b", stand_in_grafana.url, stack.prometheus)
    images = sorted((tmp_path / "b" / "panels").glob("*.png"))
    by_grafana = [p for p in images if p.read_bytes() == stand_in_grafana.png]
    assert by_grafana and len(by_grafana) < len(images) == len(rendered)
    assert note.startswith(f"Panel images: {len(by_grafana)} rendered by Grafana, "), note
    assert "drawn from Prometheus data with matplotlib (Grafana's rendering failed: GrafanaRefused" in note
    assert (tmp_path / "b" / "grafana-snapshot-load-test.json").exists()


@pytest.mark.stack
def test_threshold_line_style_survives_grafana_11_dropping_ref_ids(stack: Stack) -> None:
    end = time.time()
    dashboard = queries.load_dashboard("serving")
    panel = next(p for p in queries.iter_panels(dashboard) if p["title"] == "KV cache usage")
    results = queries.query_panels({"panels": [panel], "templating": dashboard["templating"]}, end - WINDOW_S, end,
                              stack.prometheus)
    payload = gs.build_snapshot_payload({"title": "t", "panels": [panel]}, results, end - WINDOW_S, end)
    snap = payload["dashboard"]["panels"][0]
    assert panel["fieldConfig"]["overrides"][0]["matcher"] == {"id": "byFrameRefID", "options": "B"}
    assert [o["matcher"] for o in snap["fieldConfig"]["overrides"]] == [{"id": "byName", "options": "threshold"}]
    names = {f["fields"][1]["config"]["displayNameFromDS"] for f in snap["snapshotData"]}
    assert names == {"KV cache used", "threshold"}
