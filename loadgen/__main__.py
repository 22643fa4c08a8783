"""python -m loadgen SUBCOMMAND

  sweep     the k6 concurrency sweep with an adaptive knee search, then the envelope report
  capstone  the seed checklist (1, 5, 20 concurrent users, short steps) and its envelope report
  report    re-render RUN_DIR's report from its raw data (no load is sent)
  smoke     the seed checklist as a quick table (no k6, no report)
  snapshot  a Grafana snapshot of one dashboard with its data, and its panels as PNGs
            (python -m loadgen snapshot --help)

Exit codes: 0 done, 2 bad input (nothing sent), 3 partial (finished steps and a partial report kept).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from loadgen import cold_start, k8s_executor, prom, provenance, rate_mode, smoke
from loadgen.grafana import panels
from loadgen.grafana.annotate import Annotator
from loadgen.k6_runner import K6Missing, k6_binary
from loadgen.plan import Plan, PlanError, builtin_profiles, load_plan, parse_plan, plan_from_dict
from loadgen.probe import TargetError, probe_target, served_model
from loadgen.report import render
from loadgen.results import RESULTS, ResultsError, load_run
from loadgen.settings import read_settings, service_url
from loadgen.sweep import Sweep
from loadgen.thresholds import ThresholdsError, load_thresholds, slo_for_run

EXIT_BAD_INPUT = 2
EXIT_PARTIAL = 3


def cmd_smoke(args: argparse.Namespace) -> int:
    try:
        model = args.model or served_model(args.target)
    except TargetError as error:
        raise SystemExit(f"error: {error}") from None
    records = asyncio.run(smoke.run_smoke(args.target, model, args.max_tokens))
    print(smoke.summary_table(records))
    path = smoke.write_results(records, Path(args.out) / time.strftime("smoke-%Y%m%d-%H%M%S"))
    print(f"results: {path}")
    return 0 if all(r.ok for r in records) else 1


def _override(plan: Plan, args: argparse.Namespace) -> Plan:
    """CLI settings win over the plan file (validated the same way)."""
    data = plan.to_dict()
    data["steps"] = list(data["steps"])
    if args.steps:
        try:
            data["steps"] = [int(x) for x in args.steps.split(",")]
        except ValueError:
            raise PlanError(f"--steps: must be comma-separated integers, got {args.steps!r}") from None
    if args.rates:
        try:
            data["rates"] = [float(x) for x in args.rates.split(",")]
        except ValueError:
            raise PlanError(f"--rates: must be comma-separated requests/s, got {args.rates!r}") from None
    for key in ("warmup_s", "steady_s", "max_steady_s", "request_timeout_s"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    if args.steady_s is not None and args.max_steady_s is None:
        data["max_steady_s"] = max(data["max_steady_s"], args.steady_s)
    if args.profile:
        data["profile"] = args.profile
    if args.max_tokens is not None:
        profile = builtin_profiles()[data["profile"]] if isinstance(data["profile"], str) else data["profile"]
        name = data["profile"] if isinstance(data["profile"], str) else profile.get("name", "custom")
        data["profile"] = {**profile, "max_tokens": args.max_tokens, "name": f"{name}-{args.max_tokens}"}
    if args.max_concurrency is not None:
        data["search"] = {**data["search"], "max_concurrency": args.max_concurrency}
    if args.no_search:
        data["search"] = {**data["search"], "enabled": False}
    if args.bandwidth_gb_s is not None:
        data["hardware"] = {**data["hardware"], "memory_bandwidth_gb_s": args.bandwidth_gb_s}
    return parse_plan(data, "command line")


def _prometheus(url: str | None) -> tuple[prom.Prometheus | None, str | None]:
    if not url:
        return None, "Prometheus: no URL configured; server-side sections will be empty"
    client = prom.Prometheus(url)
    if not client.reachable():
        return None, f"Prometheus at {url} not reachable: server-side sections will be empty, no remote write"
    return client, None


def cmd_sweep(args: argparse.Namespace, default_plan: str = "default") -> int:
    settings = read_settings()
    try:
        if args.resume:
            run_dir = Path(args.resume)
            if not (run_dir / RESULTS).exists():
                raise PlanError(f"--resume {run_dir}: no {RESULTS} there")
            try:
                previous = load_run(run_dir)
            except ResultsError as error:
                raise PlanError(f"--resume {error}") from None
            plan = plan_from_dict(previous["plan"])
            target = previous["target"]
        else:
            plan = _override(load_plan(args.plan or default_plan), args)
            target = args.target
        if args.executor == "k8s" and rate_mode.is_rate(plan):
            raise PlanError("--executor k8s: runs closed-loop (users) plans only; rate plans need the local "
                            "open-loop sender")
        thresholds = load_thresholds()
        if args.executor == "local":
            k6_binary()  # on a cluster the runner pods bring their own
        probe = probe_target(target, args.model or (previous["model"] if args.resume else None), args.api_key)
    except (PlanError, ThresholdsError, TargetError, K6Missing) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    prometheus, prom_note = _prometheus(args.prometheus or service_url(settings, "PROMETHEUS_PORT"))
    annotator = Annotator.connect(args.grafana or service_url(settings, "GRAFANA_PORT"))
    notes = [n for n in (prom_note, annotator.note) if n]
    if probe.verdict == "headers before first token":
        notes.append(f"{target} sends response headers {probe.headers_s * 1000:.0f} ms after the request but the first "
                     f"token at {probe.first_token_s * 1000:.0f} ms: k6's time to first byte is not time to first "
                     "token here (point --target at the collector); the SLO uses vLLM's own TTFT instead.")
    elif not probe.ttfb_is_ttft:
        notes.append(f"{target} sent its response headers and first token together in every probe round, and it does "
                     "not say that it holds the head (the collector does): whether k6's time to first byte is time to "
                     "first token is undetermined, so the SLO uses vLLM's own TTFT (point --target at the collector).")
    for note in notes:
        print(note, file=sys.stderr)
    remote_write = None if (prometheus is None or args.no_remote_write) else f"{prometheus.url}/api/v1/write"
    record = provenance.collect(target, service_url(settings, "VLLM_PORT"), prometheus, settings, args.api_key)
    slo = slo_for_run(thresholds, plan.slo)
    if args.resume:
        run_dir = Path(args.resume)
    else:
        run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{plan.name}"
        run_dir = Path(args.out) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    sweep = Sweep(run_dir=run_dir, plan=plan, target=target, model=probe.model, slo=slo, prometheus=prometheus,
                  remote_write_url=remote_write, annotator=annotator, ttfb_is_ttft=probe.ttfb_is_ttft,
                  provenance=record, api_key=args.api_key)
    if args.executor == "k8s":
        api = k8s_executor.KubeApi.from_environment(args.k8s_namespace)
        sweep.step_runner = k8s_executor.step_runner(api, replicas_selector=args.k8s_replicas_selector)
        notes.append(f"steps ran as k6-operator TestRuns in namespace {api.ns} (API {api.base}); k6 records from "
                     "every runner pod merged, the steady window and SLO judged here")
    probe_record = dataclasses.asdict(probe)
    if args.resume:
        sweep.results = previous
        sweep.results["status"], sweep.results["missing"] = "running", []
        sweep.results["slo"], sweep.results["ttfb_is_ttft"] = slo, probe.ttfb_is_ttft
        sweep.results["steps"] = sweep.done_steps()
        sweep.results.setdefault("notes", []).append(
            f"resumed {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with {len(sweep.results['steps'])} "
            "finished steps kept")
    else:
        sweep.init_results(run_dir.name, probe_record, ["python", "-m", "loadgen", *sys.argv[1:]])
    sweep.results["notes"] += notes
    sweep.save()
    print(f"run folder: {run_dir}", file=sys.stderr)
    # Ctrl-C and SIGTERM both end the sweep cleanly (finished steps kept, partial report), also when
    # the shell started us in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    status = sweep.run()
    finish(sweep, run_dir, args, settings)
    return 0 if status == "complete" else EXIT_PARTIAL


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def finish(sweep: Sweep, run_dir: Path, args: argparse.Namespace, settings: dict[str, str]) -> None:
    """Timeline and panel images while Prometheus still has the data, then the report."""
    results = sweep.results
    steps = [s for s in results["steps"] if s.get("steady_start")]
    if sweep.prometheus is not None and steps:
        try:
            results["timeline"] = prom.timeline(sweep.prometheus, sweep.model, min(s["started"] for s in steps),
                                                max(s["ended"] for s in steps))
        except prom.PrometheusDown as error:
            results["missing"].append(f"server timeline: {error}")
        results["cold_start"] = cold_start.measure(sweep.prometheus, sweep.model, min(s["started"] for s in steps))
        results["panels_note"] = (
            "Panel images: not exported (--no-panels)." if args.no_panels else
            panels.export(results, run_dir, args.grafana or service_url(settings, "GRAFANA_PORT"),
                          sweep.prometheus.url))
    else:
        results["panels_note"] = "Panel images: none (Prometheus not reachable)"
    sweep.save()
    md, html = render.render(run_dir)
    print(f"report: {md}\nreport: {html}")


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    try:
        load_run(run_dir)
        load_thresholds()
    except (ResultsError, ThresholdsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    md, html = render.render(run_dir)
    print(f"report: {md}\nreport: {html}")
    return 0


def add_sweep_args(p: argparse.ArgumentParser, settings: dict[str, str]) -> None:
    p.add_argument("--target", default=service_url(settings, "COLLECTOR_PORT"),
                   help="API base URL users call: the collector (default) or vLLM directly")
    p.add_argument("--plan", help="plan file or bundled plan name (default, capstone, bend-native; open loop: "
                   "rate-native, mix-native, burst-native)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted sweep in RUN_DIR")
    p.add_argument("--model", help="model name (default: the first the target serves)")
    p.add_argument("--out", default="var/reports", help="parent folder of the run folder")
    p.add_argument("--prometheus", help="Prometheus base URL (default from compose/.env settings)")
    p.add_argument("--grafana", help="Grafana base URL for annotations and panel images")
    p.add_argument("--no-panels", action="store_true", help="skip the dashboard panel images (faster)")
    p.add_argument("--no-remote-write", action="store_true", help="do not push k6 metrics to Prometheus")
    p.add_argument("--api-key", default=os.environ.get("LOADGEN_API_KEY"), help="bearer key (env LOADGEN_API_KEY)")
    p.add_argument("--steps", help="seed concurrencies, e.g. 1,5,20 (overrides the plan)")
    p.add_argument("--rates", help="a rate plan's seed rates in requests/s, e.g. 0.5,1,2 (overrides the plan)")
    p.add_argument("--profile", help="short-chat, long-prompt or long-answer (overrides the plan)")
    p.add_argument("--max-tokens", type=int, help="output length (overrides the profile)")
    p.add_argument("--warmup-s", dest="warmup_s", type=float)
    p.add_argument("--steady-s", dest="steady_s", type=float)
    p.add_argument("--max-steady-s", dest="max_steady_s", type=float,
                   help="longest steady window when requests are long (the window aims at two requests per user)")
    p.add_argument("--request-timeout-s", dest="request_timeout_s", type=float)
    p.add_argument("--max-concurrency", type=int)
    p.add_argument("--no-search", action="store_true", help="run only the seed steps")
    p.add_argument("--executor", choices=("local", "k8s"), default="local",
                   help="run each step with k6 here (local) or as a k6-operator TestRun on a cluster (k8s: in a pod "
                        "through its service account, else the API at KUBE_API_URL, e.g. kubectl proxy)")
    p.add_argument("--k8s-namespace", help="namespace of the TestRuns (default: the pod's, else 'default')")
    p.add_argument("--k8s-replicas-selector", help="label selector of the serving Deployment, to record its ready "
                   "replicas per step (e.g. app.kubernetes.io/component=serving-engine)")
    p.add_argument("--bandwidth-gb-s", type=float,
                   help="GPU memory bandwidth for the decode limit (default: from the GPU's name; GB10: 273)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["snapshot"]:  # its own parser, options and exit codes
        from loadgen.grafana.snapshot import main as snapshot_main

        return snapshot_main(argv[1:])
    settings = read_settings()
    parser = argparse.ArgumentParser(prog="python -m loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep", help="k6 concurrency sweep + knee search + envelope report")
    add_sweep_args(p, settings)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("capstone", help="the seed checklist: 1, 5, 20 users, short steps, envelope report")
    add_sweep_args(p, settings)
    p.set_defaults(func=lambda a: cmd_sweep(a, default_plan="capstone"))
    p = sub.add_parser("report", help="re-render a run folder's report from its raw data")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("smoke", help="1, then 5, then 20 concurrent streaming chat requests")
    p.add_argument("--target", default=service_url(settings, "COLLECTOR_PORT"), help="collector (or vLLM) base URL")
    p.add_argument("--model", help="model name (default: the first the target serves)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", default="var/reports", help="folder for results")
    p.set_defaults(func=cmd_smoke)
    sub.add_parser("snapshot", add_help=False, help="Grafana snapshot + panel PNGs of a dashboard (snapshot --help)")
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
