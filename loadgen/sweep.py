"""The sweep: one k6 step after the other (closed loop by users, or open loop by arrival rate for a
`mode: rate` plan: loadgen/rate_mode.py), chosen by the knee search, each measured from the client (k6)
and from the server (Prometheus) over the same steady window.

Everything measured goes to RUN_DIR/results.json after every step, so Ctrl-C, a k6 crash or
Prometheus going away loses only the step in progress, and --resume continues from the file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
from tqdm import tqdm

from loadgen import knee, rate_mode, stats, workload
from loadgen.grafana.annotate import Annotator
from loadgen.k6_runner import StepRun, StepSpec, run_step
from loadgen.plan import Plan
from loadgen.prom import Prometheus, PrometheusDown, collect_step, generation_rate, step_queries
from loadgen.report import diagnosis
from loadgen.results import RESULTS, SCHEMA_VERSION, RunResults, Step, StepSlo

SCRAPE_SLACK_S = 6.0  # Prometheus scrapes every 5 s: wait one more scrape past the window's end


class SweepStopped(Exception):
    """The sweep cannot go on (k6 crashed, Prometheus went away); finished steps are kept."""


@dataclass
class Sweep:
    run_dir: Path
    plan: Plan
    target: str
    model: str
    slo: dict[str, dict[str, Any]]
    prometheus: Prometheus | None
    remote_write_url: str | None
    annotator: Annotator
    ttfb_is_ttft: bool
    provenance: dict[str, Any]
    api_key: str | None = None
    results: RunResults = field(default_factory=lambda: RunResults())
    # Runs one closed-loop step: k6 here (k6_runner.run_step), or a k6-operator TestRun on a cluster
    # (k8s_executor.step_runner, `--executor k8s`); both return the same records.
    step_runner: Callable[..., StepRun] = run_step

    # ---------------------------------------------------------------- results.json
    def init_results(self, run_id: str, probe: dict[str, Any], command: list[str]) -> None:
        self.results = {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_id, "created": time.time(), "target": self.target, "model": self.model,
            "plan": self.plan.to_dict(), "slo": self.slo, "probe": probe, "ttfb_is_ttft": self.ttfb_is_ttft,
            "provenance": self.provenance, "command": command, "steps": [], "status": "running", "missing": [],
            "notes": [], "prometheus_url": self.prometheus.url if self.prometheus else None,
        }

    def save(self) -> Path:
        path = self.run_dir / RESULTS
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        tmp.replace(path)
        return path

    def done_steps(self) -> list[Step]:
        return [s for s in self.results["steps"] if s["status"] == "done"]

    def climb_limit(self) -> int:
        """The knee search's bound from the server (diagnosis.server_climb_limit), on the run so far."""
        return diagnosis.server_climb_limit(self.results)

    def outcomes(self) -> list[knee.Outcome]:
        return [knee.Outcome(s["concurrency"], s["slo"]["ok"], s.get("hard_stop"), (s.get("client") or {}).get(
            "output_tok_s")) for s in self.done_steps()]


    # ---------------------------------------------------------------- one step
    def _watchdog(self, bar: tqdm[Any], started: float, length: float) -> Any:
        floor = self.plan.stop.min_host_mem_available_gib * 2**30
        local = urlparse(self.target).hostname in ("127.0.0.1", "localhost", "::1")
        state = {"next": 0.0}

        def check() -> str | None:
            now = time.time()
            bar.set_postfix_str(f"{min(now - started, length):.0f}/{length:.0f} s", refresh=True)
            if now < state["next"]:
                return None
            state["next"] = now + 2.0
            available: float | None = None
            if self.prometheus is not None:
                try:
                    available = self.prometheus.scalar(step_queries()["watchdog"]["mem_available_bytes"])
                except PrometheusDown:
                    available = None
            if available is None and local:
                available = float(psutil.virtual_memory().available)
            if available is not None and available < floor:
                return (f"host memory available {available / 2**30:.1f} GiB fell under the floor "
                        f"{floor / 2**30:.1f} GiB")
            return None

        return check

    def steady_for(self) -> float:
        """The plan's steady window, lengthened to hold two requests per user when the last step's
        requests took longer (long answers), up to the plan's max_steady_s."""
        e2e = [value for s in self.done_steps() if (value := (s.get("client") or {}).get("e2e_p95_s"))]
        wanted = 2 * e2e[-1] if e2e else 0.0
        return max(self.plan.steady_s, min(self.plan.max_steady_s, wanted))

    def run_one(self, concurrency: float, bar: tqdm[Any]) -> Step:
        plan = self.plan
        steady = self.steady_for()
        length = plan.warmup_s + steady
        if rate_mode.is_rate(plan):
            return self.run_rate(concurrency, bar, steady)
        # With a request mix, each user's next request is the next of the mix's draws (loadgen/workload.py).
        extra, max_tokens = (workload.closed_loop_settings(plan, self.results["run_id"]) if plan.mix is not None
                             else ({}, plan.profile.max_tokens))
        spec = StepSpec(run_id=self.results["run_id"], step=concurrency, vus=int(concurrency), duration_s=length,
                        target=self.target, model=self.model, prompt_words=plan.profile.prompt_words,
                        max_tokens=max_tokens, ignore_eos=workload.mix_of(plan).ignore_eos,
                        request_timeout_s=plan.request_timeout_s, remote_write_url=self.remote_write_url,
                        api_key=self.api_key, extra=extra)
        started = time.time()
        run = self.step_runner(spec, self.run_dir / "raw", watchdog=self._watchdog(bar, started, length))
        step = self.measure(concurrency, started, run, steady)
        if plan.mix is not None and step.get("steady_start") is not None:
            step["lengths"] = workload.lengths(self.prometheus, self.model, started, time.time())
        if self.step_runner is not run_step:  # --executor k8s
            step["replicas"] = run.ready_replicas
        return step

    def run_rate(self, rate: float, bar: tqdm[Any], steady: float) -> Step:
        """An open-loop step at `rate` requests/s (loadgen/rate_mode.py)."""
        length = self.plan.warmup_s + steady
        spec = rate_mode.step_spec(self.plan, self.results["run_id"], rate, length, self.target, self.model,
                                   self.remote_write_url, self.api_key, self.run_dir / "raw")
        sampler = rate_mode.QueueSampler(rate_mode.vllm_metrics_url(self.prometheus), self.model)
        slow = rate_mode.slow_readers_for(spec, self.run_dir / "raw")
        started = time.time()
        run = run_step(spec, self.run_dir / "raw", watchdog=sampler.wrap(self._watchdog(bar, started, length),
                                                                         first=slow.start))
        slow_records = slow.join()
        run, dropped = rate_mode.split(run)
        step = self.measure(rate, started, run, steady)
        step["mode"] = "rate"
        if step.get("steady_start") is not None:
            step["rate"] = rate_mode.rate_figures(self.plan, rate, run.records, dropped, step["steady_start"],
                                                  step["steady_end"])
            step["lengths"] = workload.lengths(self.prometheus, self.model, started, time.time())
            step["queue"] = rate_mode.queue_figures(sampler, self.plan, rate_mode.schedule_zero(run.records + dropped))
            step["slow_readers"] = rate_mode.slow_figures(slow_records, step["steady_start"], step["steady_end"])
            check = step.get("throughput_check")
            if check and slow_records:  # vLLM's counter holds the slow readers' tokens too
                check["slow_readers_tok_s"] = stats.client_rate_over(slow_records, *check["span"])
                check["client_over_vllm"] = ((check["client_tok_s"] + check["slow_readers_tok_s"]) / check["vllm_tok_s"]
                                             if check["vllm_tok_s"] else None)
            if slow.note:
                step["missing"].append(slow.note)
            if "slo" in step:
                rate_mode.judge_drops(step, self.plan)
        return step

    def measure(self, concurrency: float, started: float, run: StepRun, steady: float) -> Step:
        plan = self.plan
        step: Step = {"concurrency": concurrency, "started": started, "ended": time.time(),
                                "status": "done", "missing": [], "hard_stop": None}
        if not run.records and not run.aborted:
            step["status"] = "failed"
            step["missing"].append(f"k6 wrote no request records (exit code {run.exit_code}: "
                                   f"{' | '.join(run.stderr_tail)[-300:]})")
            return step
        first_start = min(r["start_ms"] for r in run.records) / 1000 if run.records else started
        steady_start = first_start + plan.warmup_s
        steady_end = steady_start + steady
        if run.aborted:
            step["hard_stop"] = run.aborted
            steady_end = min(steady_end, time.time())
            steady_start = min(steady_start, first_start + (steady_end - first_start) / 2)
        elif run.exit_code not in (0, 99):  # 99: k6 thresholds crossed (none are set, kept for safety)
            step["status"] = "failed"
            step["missing"].append(f"k6 exited with code {run.exit_code}: {' | '.join(run.stderr_tail)[-300:]}")
        step["steady_start"], step["steady_end"] = steady_start, steady_end
        step["client"] = stats.client_step_stats(run.records, steady_start, steady_end, concurrency)
        step["k6"] = {"cpu_s": run.k6_cpu_s, "wall_s": run.wall_s, "cpu_cores": run.k6_cpu_s / max(run.wall_s, 1e-9),
                      "exit_code": run.exit_code, "requests_total": len(run.records),
                      "summary": _summary_digest(run.summary)}
        step["server"], step["throughput_check"] = self._server_side(steady_start, steady_end, run.records, step)
        step["slo"] = self.judge(step)
        if step["client"]["error_ratio"] > plan.stop.error_ratio:
            step["hard_stop"] = step["hard_stop"] or (
                f"error ratio {step['client']['error_ratio']:.1%} over the stop limit {plan.stop.error_ratio:.1%}")
        if step["hard_stop"]:
            step["slo"]["ok"] = False
            step["slo"]["broken"].append(step["hard_stop"])
        return step

    def _server_side(self, start: float, end: float, records: list[dict[str, Any]],
                     step: Step) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        if self.prometheus is None:
            step["missing"].append("server-side metrics: no Prometheus")
            return None, None
        wait = end + SCRAPE_SLACK_S - time.time()
        if wait > 0:
            time.sleep(wait)
        try:
            server = collect_step(self.prometheus, self.model, start, end)
            # The longest span between two counter samples inside the whole k6 run; the client's tokens
            # are counted over exactly that span, so the two figures are directly comparable.
            rate = generation_rate(self.prometheus, self.model, step["started"], step["ended"])
        except PrometheusDown as error:
            step["status"] = "incomplete"
            step["missing"].append(f"server-side metrics: {error}")
            return None, None
        check = None
        if rate is not None:
            vllm_rate, span_start, span_end = rate
            client_rate = stats.client_rate_over(records, span_start, span_end)
            check = {"vllm_tok_s": vllm_rate, "client_tok_s": client_rate, "span": [span_start, span_end],
                     "client_over_vllm": client_rate / vllm_rate if vllm_rate else None}
        return server, check

    def judge(self, step: Step) -> StepSlo:
        """SLO verdict for a step; TTFT from the client when its TTFB is TTFT, else from vLLM."""
        client, server = step["client"], step.get("server") or {}
        vllm, collector = server.get("vllm") or {}, server.get("collector") or {}
        observed = {
            "ttft_p95_s": (client["ttft_p95_s"], "client") if self.ttfb_is_ttft else (vllm.get("ttft_p95_s"), "vLLM"),
            "e2e_p95_s": (client["e2e_p95_s"], "client"),
            "error_ratio": (client["error_ratio"], "client"),
            "itl_p95_s": ((collector.get("itl_p95_s"), "collector") if collector.get("itl_p95_s") is not None
                          else (vllm.get("itl_p95_s"), "vLLM")),
            "min_user_tok_s": (client["user_tok_s_p50"], "client"),
        }
        broken: list[str] = []
        checked: dict[str, Any] = {}
        for key, limit in self.slo.items():
            value, source = observed[key]
            checked[key] = {"value": value, "limit": limit["value"], "source": source}
            if value is None:
                continue
            over = value < limit["value"] if key == "min_user_tok_s" else value > limit["value"]
            if over:
                broken.append(f"{key} {_fmt(key, value)} {'<' if key == 'min_user_tok_s' else '>'} "
                              f"{_fmt(key, limit['value'])} ({source})")
        if client["ok"] == 0:
            broken.append("no request of the steady window succeeded")
        return {"ok": not broken, "broken": broken, "checked": checked}

    # ---------------------------------------------------------------- the loop
    def run(self) -> str:
        """Runs steps until the knee search is done; returns the final status."""
        plan = self.plan
        total = plan.search.max_steps if plan.search.enabled else len(plan.steps)
        bar = tqdm(total=total, initial=len(self.done_steps()), unit="step", dynamic_ncols=True,
                   desc="sweep", leave=True)
        status = "complete"
        try:
            while (concurrency := (rate_mode.next_rate(plan, self.outcomes()) if rate_mode.is_rate(plan) else
                                   knee.next_concurrency(plan, self.outcomes(),
                                                         self.climb_limit()))) is not None:
                bar.set_description(f"step {concurrency:>4} {'req/s' if rate_mode.is_rate(plan) else 'users'}")
                self.results["steps"] = [s for s in self.results["steps"] if s["concurrency"] != concurrency]
                step = self.run_one(concurrency, bar)
                self.results["steps"].append(step)
                self.save()
                bar.update(1)
                self._annotate(step)
                verdict = "ok" if step.get("slo", {}).get("ok") else "SLO broken"
                if step["status"] != "done":  # the console must not call a step ok that the report drops
                    verdict = f"{step['status']}, not kept: " + "; ".join(step["missing"])[:160]
                bar.write(_step_line(step, verdict))
                if step["status"] != "done":
                    raise SweepStopped(f"step {concurrency}: " + "; ".join(step["missing"]))
                if self.prometheus is not None and not self.prometheus.reachable():
                    raise SweepStopped("Prometheus stopped answering; server-side metrics would be missing")
        except KeyboardInterrupt:
            status = "partial"
            self.results["missing"].append("interrupted (Ctrl-C or SIGTERM) during a step; that step was not kept")
        except SweepStopped as error:
            status = "partial"
            self.results["missing"].append(str(error))
        finally:
            bar.close()
            self.results["status"] = status
            self.results["finished"] = time.time()
            self.save()
        return status

    def _annotate(self, step: Step) -> None:
        client = step.get("client") or {}
        level = f"{step['concurrency']:g} req/s" if step.get("mode") == "rate" else f"{step['concurrency']} users"
        text = (f"loadgen {self.results['run_id']}: {level}, "
                f"{client.get('output_tok_s', 0):.0f} tok/s, SLO {'ok' if step.get('slo', {}).get('ok') else 'broken'}")
        self.annotator.step(self.results["run_id"], step["concurrency"], step["started"], step["ended"], text)


def _summary_digest(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The k6 end-of-test summary's headline metrics (the full file stays in raw/)."""
    if summary is None:
        return None
    metrics = summary.get("metrics", {})
    keep = ("http_req_waiting", "http_req_duration", "llm_ttft", "llm_e2e", "llm_output_tokens", "llm_request_ok",
            "http_reqs", "iterations", "data_received")
    return {name: metrics[name].get("values") for name in keep if name in metrics}


def _fmt(key: str, value: float) -> str:
    if key.endswith("_s"):
        return f"{value:.3g} s"
    if key == "error_ratio":
        return f"{value:.1%}"
    return f"{value:.3g}"


def _step_line(step: Step, verdict: str) -> str:
    client = step.get("client") or {}
    ttft = client.get("ttft_p95_s")
    e2e = client.get("e2e_p95_s")
    unit = "req/s" if step.get("mode") == "rate" else "users"
    dropped = f"  dropped {step['rate']['dropped']}" if step.get("rate") else ""
    return (f"  {step['concurrency']:>4} {unit}: {client.get('output_tok_s', 0):8.0f} tok/s  "
            f"p95 TTFT {'-' if ttft is None else f'{ttft:.3f}'} s  p95 total {'-' if e2e is None else f'{e2e:.2f}'} s"
            f"  errors {client.get('errors', 0)}{dropped}  {verdict}"
            + (f"  [{'; '.join(step['slo']['broken'])}]" if step.get("slo", {}).get("broken") else ""))
