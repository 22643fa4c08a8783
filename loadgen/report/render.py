"""The envelope report of one run folder: report.md, a self-contained report.html (inline CSS,
figures as data URIs), requests.csv and figures/, all from results.json and raw/ (re-renderable
without rerunning anything)."""

from __future__ import annotations

import base64
import csv
import json
import time
from pathlib import Path
from typing import Any

import jinja2
import yaml

from loadgen import cold_start, knee, rate_mode, workload
from loadgen.grafana.panels import DASHBOARDS
from loadgen.report import diagnosis, plots
from loadgen.report.analysis import Analysis, Row, analyse
from loadgen.results import RunResults, Step, done_steps, load_run

TEMPLATES = Path(__file__).resolve().parent / "templates"
CSV_FIELDS = ("step", "vu", "start_ms", "in_steady_window", "ttft_ms", "total_ms", "status", "output_tokens",
              "prompt_tokens", "error")
MIX_CSV_FIELDS = ("index", "turn", "attempt", "max_tokens", "finish_reason", "late_ms", "dropped")


def _s(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:,.1f}"


def _n(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def write_requests_csv(run_dir: Path, results: RunResults) -> Path:
    """Every request k6 recorded, one row each, flagged when it started in its step's steady window; a
    request mix's runs add which draw, turn and attempt each request was and its max_tokens."""
    windows = {s["concurrency"]: (s.get("steady_start"), s.get("steady_end")) for s in results["steps"]}
    records = []
    for raw in sorted((run_dir / "raw").glob("step-*-requests.jsonl")):
        for line in raw.read_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            start, end = windows.get(record.get("step"), (None, None))
            record["in_steady_window"] = bool(start and end and start <= record["start_ms"] / 1000 < end)
            records.append(record)
    fields = CSV_FIELDS + (MIX_CSV_FIELDS if any("turn" in r for r in records) else ())
    path = run_dir / "requests.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    return path


def envelope_table(rows: list[Row]) -> dict[str, Any]:
    source = rows[0].ttft_source if rows else "client"
    return {
        "headers": ["concurrency", "output tok/s (k6)", "output tok/s (vLLM)", "per-user tok/s (p50, streaming)",
                    f"p50 TTFT s ({source})", f"p95 TTFT s ({source})", "p95 total s", "requests", "errors", "SLO",
                    "what broke / signals"],
        "rows": [[str(r.concurrency), _n(r.output_tok_s), _n(r.vllm_tok_s) + (" †" if r.vllm_tok_s_whole_step else ""),
                  _n(r.user_tok_s, 1) + ("" if r.user_tok_s_source == "client" else " (vLLM)"), _s(r.ttft_p50_s),
                  _s(r.ttft_p95_s), _s(r.e2e_p95_s, 2), str(r.requests), str(r.errors),
                  "ok" if r.slo_ok else "BROKEN", "; ".join(r.broken + r.signals) or "none"] for r in rows],
        "bad": [not r.slo_ok for r in rows],
        "note": ("† vLLM's counter over the whole step (ramp-up and drain included; this run predates the "
                 "steady-window figure), so not comparable with k6's steady-window figure beside it."
                 if any(r.vllm_tok_s_whole_step for r in rows) else ""),
    }


def ttft_table(analysis: Analysis) -> dict[str, Any]:
    return {
        "headers": ["concurrency", "k6 client p50 ms", "collector p50 ms", "vLLM p50 ms", "k6 client p95 ms",
                    "collector p95 ms", "vLLM p95 ms"],
        "rows": [[str(r["concurrency"]), _ms(r["client_p50_s"]), r["collector_p50"].text_ms(),
                  r["vllm_p50"].text_ms(), _ms(r["client_p95_s"]), r["collector_p95"].text_ms(),
                  r["vllm_p95"].text_ms()]
                 for r in analysis.ttft_three_ways],
    }


def counted(step: Step) -> str:
    """The counted running / waiting means, or why they are left out (requests too long for the window)."""
    if not diagnosis.counted_means_usable(step):
        return "n/a (requests too long for the window)"
    v = diagnosis.engine_figures(step)
    text = f"{_n(v.get('running_mean_counted'), 1)} / {_n(v.get('waiting_mean_counted'), 1)}"
    # What the window's edges alone can move the counts by, where that is half a request or more (the H200
    # run's 320-user step counted 128.5 running, ±75, beside a gauge average of 210.8).
    error = diagnosis.counted_edge_error(step)
    return f"{text} (±{error:.1f})" if v.get("running_mean_counted") is not None and error >= 0.5 else text


def cold_start_text(results: RunResults, steps: list[Step]) -> str | None:
    cold = results.get("cold_start")
    if not cold:
        return None
    lowest = min(steps, key=lambda s: s["concurrency"], default=None)
    return cold_start.sentence(cold, diagnosis.get_path(lowest, "server", "vllm", "ttft_mean_s"))


def server_table(steps: list[Step]) -> dict[str, Any]:
    rows = []
    for s in steps:
        v = (s.get("server") or {}).get("vllm") or {}
        h = (s.get("server") or {}).get("host") or {}
        g = (s.get("server") or {}).get("gpu") or {}
        gpu = ("absent" if g.get("util_avg_pct") is None else f"{g['util_avg_pct']:.0f}% / "
               f"{_n(g.get('power_avg_w'))} W")
        rows.append([str(s["concurrency"]), f"{_n(v.get('running_avg'), 1)} / {_n(v.get('running_max'))}",
                     f"{_n(v.get('waiting_avg'), 1)} / {_n(v.get('waiting_max'))}",
                     counted(s),
                     _pct(v.get("kv_cache_usage_max")), _n(v.get("preemptions")),
                     diagnosis.server_quantile(v, "itl", "p50").text_ms(),
                     diagnosis.server_quantile(v, "itl", "p95").text_ms(),
                     diagnosis.server_quantile(v, "queue", "p95").text_ms(),
                     diagnosis.server_quantile(v, "e2e", "p95").text_s(),
                     _n((h.get("mem_available_min_bytes") or 0) / 2**30 or None, 1), _pct(h.get("cpu_busy_ratio")),
                     gpu])
    table: dict[str, Any] = {
        "headers": ["concurrency", "running avg / max (gauge)", "waiting avg / max (gauge)",
                    "running / waiting (counted)", "KV cache peak", "preemptions", "ITL p50 ms", "ITL p95 ms",
                    "queue p95 ms", "vLLM e2e p95 s", "host mem avail min GiB", "host CPU busy",
                    "GPU util / power (DCGM)"],
        "rows": rows}
    if any("replicas" in s for s in steps):  # --executor k8s: the serving Deployment's ready replicas
        table["headers"].insert(1, "ready replicas / users per replica")
        for step, row in zip(steps, rows, strict=True):
            replicas = step.get("replicas")
            row.insert(1, f"{replicas} / {step['concurrency'] / replicas:.1f}" if replicas else "n/a")
    return table


def throughput_table(steps: list[Step]) -> dict[str, Any]:
    rows = []
    for s in steps:
        check = s.get("throughput_check") or {}
        k6 = s.get("k6") or {}
        span = check.get("span")
        slow = check.get("slow_readers_tok_s")
        rows.append([str(s["concurrency"]),
                     _n(check.get("client_tok_s")) + (f" + {slow:,.0f} slow readers" if slow is not None else ""),
                     _n(check.get("vllm_tok_s")), _pct(check.get("client_over_vllm")) if check else "n/a",
                     f"{span[1] - span[0]:.0f} s" if span else "n/a", _n(k6.get("cpu_s"), 1),
                     _n(k6.get("cpu_cores"), 2), str(k6.get("requests_total", "n/a"))])
    return {"headers": ["concurrency", "k6 tok/s over span", "vLLM counter tok/s", "k6 / vLLM", "span",
                        "k6 CPU s", "k6 CPU cores", "requests (all)"], "rows": rows}


def wait_table(analysis: Analysis, steps: list[Step]) -> dict[str, Any]:
    """Little's law per step: what the client had open beside what vLLM held, and the front-ends' CPU."""
    by_c = {s["concurrency"]: s for s in steps}
    rows = []
    for w in analysis.waits:
        server = by_c[w.concurrency].get("server") or {}
        rows.append([str(w.concurrency), _n(w.client_in_flight, 1),
                     _n(diagnosis.collector_in_flight(by_c[w.concurrency]), 1), _n(w.engine_held, 1),
                     _n(w.engine_waiting, 1), _n(max(0.0, w.in_front), 1),
                     _n((server.get("vllm") or {}).get("api_server_cpu_cores"), 2),
                     _n((server.get("collector") or {}).get("cpu_cores"), 2),
                     w.verdict()])
    return {"headers": ["concurrency", "client in flight", "collector in flight", "vLLM running + waiting",
                        "of which waiting", "in front of the engine", "vLLM API server CPU (cores)",
                        "collector CPU (cores)", "where"], "rows": rows}


def checks_table(analysis: Analysis) -> dict[str, Any]:
    """One row per check: the steps where it held, and each step where it failed with its figures."""
    rows, bad = [], []
    for name in dict.fromkeys(c.name for c in analysis.checks):
        of_kind = [c for c in analysis.checks if c.name == name]
        passed = [str(c.concurrency) for c in of_kind if c.ok]
        failed = [c for c in of_kind if not c.ok]
        rows.append([name, ", ".join(passed) or "none", "; ".join(f"{c.concurrency}: {c.detail}" for c in failed)
                     or "none"])
        bad.append(bool(failed))
    return {"headers": ["check", "held at (users)", "FLAGGED at (users: figures)"], "rows": rows, "bad": bad}


def capacity_text(results: RunResults) -> str:
    """What the server says it can hold, and where the climb was bounded."""
    plan_cap = ((results.get("plan") or {}).get("search") or {}).get("max_concurrency")
    if (results.get("plan") or {}).get("mode") == "rate":
        return rate_mode.capacity_text(results)
    fill = diagnosis.kv_fill(results)
    if fill is None:
        text = "vLLM did not report its KV-cache capacity (cache_config_info), so no KV bound is known"
    else:
        text = (f"vLLM's KV cache holds {fill.kv_cache_tokens:,.0f} tokens; at ~{fill.tokens_per_request:,.0f} tokens "
                f"per request (prompt + output) it fills at about {fill.users:,.0f} concurrent users")
    limit = plan_cap or diagnosis.server_climb_limit(results)
    source = "the plan's max_concurrency" if plan_cap else (
        "twice that" if fill else f"a fallback of {knee.FALLBACK_LIMIT}")
    return (f"{text}. The climb was bounded at {limit:,} users ({source}); it also stops where the SLO breaks or "
            "throughput falls.")


def bend_text(analysis: Analysis) -> str:
    """Where throughput peaked and fell, and what the Universal Scalability Law makes of the steps."""
    peak = analysis.throughput_knee
    if peak is None:
        return "Fewer than two steps: no throughput curve."
    unit = "req/s" if isinstance(peak.peak_concurrency, float) else "users"  # a rate sweep's steps are rates
    text = f"Throughput peaked at {peak.peak_tok_s:,.0f} tok/s at {peak.peak_concurrency:g} {unit}"
    if peak.collapse:
        text += "; above it throughput fell: " + ", ".join(
            f"{t:,.0f} tok/s at {c:g} {unit} ({d:+.0%})" for c, t, d in peak.collapse) + "."
    else:
        highest = max(r.concurrency for r in analysis.rows)
        text += (" and did not fall at any higher step tested." if peak.peak_concurrency < highest else
                 ", the highest step tested: the peak may lie higher.")
    usl = analysis.usl
    if usl is not None:
        if usl.sigma is None:
            text += f" Universal Scalability Law: not fitted ({usl.reason})."
        else:
            fit = (f"contention sigma = {usl.sigma:.4f}, coherency kappa = {usl.kappa:.2e}"
                   + (f", predicted peak N* = {usl.peak_n:,.0f} users" if usl.peak_n else ""))
            residuals = ", ".join(f"{c}: {r:+.0%}" for c, r in usl.residuals or [])
            text += (f" Universal Scalability Law fit: {fit}; residuals (measured / fitted - 1) {residuals}. "
                     + ("The law describes these steps." if usl.fits else f"It does not fit: {usl.reason}."))
    return text


def slo_table(results: RunResults) -> dict[str, Any]:
    return {"headers": ["SLO", "limit", "source"],
            "rows": [[key, f"{v['value']:g}", v["source"]] for key, v in results.get("slo", {}).items()]}


def bandwidth_text(bw: dict[str, Any], results: RunResults) -> str:
    if bw.get("not_applicable"):
        return (f"Not applicable: {bw['not_applicable']}. A memory-bandwidth limit describes GPU decoding; set "
                "`hardware.memory_bandwidth_gb_s` in the plan to compare anyway.")
    if not bw.get("limit_tok_s"):
        return ("Not computed: the model's parameter count, dtype or the memory bandwidth is unknown (set "
                "`hardware.params_billion`, `hardware.bytes_per_param` and `hardware.memory_bandwidth_gb_s` in the "
                "plan).")
    text = (f"Weights: {bw['parameters'] / 1e6:,.1f} M parameters x {bw['bytes_per_param']:g} bytes = "
            f"{bw['weight_bytes'] / 1e6:,.1f} MB read per decoded token. At {bw['bandwidth_gb_s']:g} GB/s (from "
            f"{bw['bandwidth_source']}) the single-stream decode limit is {bw['limit_tok_s']:,.0f} tok/s.")
    if bw.get("single_stream_tok_s"):
        source = "" if bw.get("single_stream_source") == "client" else f", by {bw['single_stream_source']}"
        text += (f" Measured single-stream decode: {bw['single_stream_tok_s']:,.0f} tok/s{source} "
                 f"({bw['fraction']:.1%} of the limit).")
        if bw["fraction"] > 1.05:
            text += " Above the limit: this figure cannot be a decode speed (see the consistency checks)."
    else:
        text += " No single-user step ran, so there is no measured single-stream figure to compare."
    return text


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def panel_images(run_dir: Path) -> list[Path]:
    """Panel PNGs in dashboard order (serving first), then panel order."""
    order = [uid for uid, _ in DASHBOARDS]

    def key(path: Path) -> tuple[int, str]:
        uid = next((u for u in order if path.name.startswith(f"{u}-")), "")
        return (order.index(uid) if uid else len(order), path.name)

    return sorted((run_dir / "panels").glob("*.png"), key=key) if (run_dir / "panels").exists() else []


def render(run_dir: Path) -> tuple[Path, Path]:
    """Writes report.md and report.html (and figures, requests.csv) into run_dir from its raw data."""
    results = load_run(run_dir)
    analysis = analyse(results)
    steps = done_steps(results)
    figures_dir = run_dir / "figures"
    figures_dir.mkdir(exist_ok=True)
    figures: list[tuple[str, Path]] = []
    if analysis.rows:
        level = "offered rate" if (results.get("plan") or {}).get("mode") == "rate" else "concurrency"
        figures.append((f"Throughput vs {level}", plots.throughput(analysis, figures_dir / "throughput.png")))
        figures.append((f"Latency vs {level}",
                        plots.latency(analysis, results.get("slo", {}), figures_dir / "latency.png")))
        figures.append(("Time to first token, three ways", plots.ttft_three_ways(analysis, figures_dir / "ttft.png")))
    timeline_path = plots.timeline(results, figures_dir / "timeline.png")
    csv_path = write_requests_csv(run_dir, results)
    provenance = results.get("provenance") or {}
    missing = list(results.get("missing", []))
    for step in results["steps"]:
        missing += [f"step {step['concurrency']}: {m}" for m in step.get("missing", [])]
    if results.get("status") == "running":
        missing.append("the sweep did not finish (the process ended mid-step); resume with --resume")
    if missing:
        missing = list(dict.fromkeys(missing))  # a stop reason is recorded on the run and on its step
        missing.append("finished steps are kept; `python -m loadgen sweep --resume RUN_DIR` measures the rest")
    context = {
        "results": results, "analysis": analysis, "steps": steps, "missing": missing,
        "title": f"Service envelope: {results.get('model')} ({provenance.get('engine', '?')} "
                 f"{provenance.get('engine_version') or ''})",
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(results.get("created", 0))),
        "envelope_table": envelope_table(analysis.rows), "ttft_table": ttft_table(analysis),
        "server_table": server_table(steps), "throughput_table": throughput_table(steps),
        "slo_table": slo_table(results), "bandwidth": bandwidth_text(analysis.bandwidth, results),
        "wait_table": wait_table(analysis, steps), "checks_table": checks_table(analysis),
        "bend_text": bend_text(analysis) + " " + capacity_text(results),
        "figures": [(title, path.relative_to(run_dir).as_posix(), _data_uri(path)) for title, path in figures],
        "timeline": ((timeline_path.relative_to(run_dir).as_posix(), _data_uri(timeline_path))
                     if timeline_path else None),
        "panels": [(p.stem, p.relative_to(run_dir).as_posix(), _data_uri(p)) for p in panel_images(run_dir)],
        "panels_note": results.get("panels_note", "panel images: none recorded for this run"),
        "plan_yaml": yaml.safe_dump(results["plan"], sort_keys=False),
        "provenance_yaml": yaml.safe_dump(provenance, sort_keys=False),
        "csv_name": csv_path.name,
        "load": rate_mode.load_context(results, steps),  # None for a closed-loop (concurrency) run
        "closed_mix": workload.closed_loop_context(results.get("plan") or {}, steps),  # closed loop with a mix
        "cold_start": cold_start_text(results, steps),
    }
    if context["load"] is not None:  # a rate run's steps are offered rates, not users
        for value in context.values():
            if isinstance(value, dict) and value.get("headers") and value["headers"][0] == "concurrency":
                value["headers"][0] = "offered req/s"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html"]),
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    md = run_dir / "report.md"
    md.write_text(env.get_template("report.md.j2").render(**context))
    html = run_dir / "report.html"
    html.write_text(env.get_template("report.html.j2").render(**context))
    return md, html
