"""Every dashboard panel query and every alert/recording rule evaluated against a live Prometheus (e.g. the
one beside a GPU server): which return data over the last window, which are empty, which fail. DCGM queries
are listed apart (they need NVIDIA's DCGM exporter).

    python scripts/check_queries.py --prometheus http://127.0.0.1:9090 [--minutes 30] [--model NAME]

Exit status 1 when a query fails to evaluate (a syntax or metric-type error), 0 otherwise.
"""

from __future__ import annotations

import argparse
import time

import yaml

from loadgen.grafana.queries import iter_panels, load_dashboard, query_panels, variable_values
from loadgen.prom import Prometheus, PrometheusDown
from loadgen.settings import ROOT

DASHBOARDS = ("serving", "gpu-host", "load-test")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--model", help="the served model (default: the first vLLM reports)")
    args = parser.parse_args(argv)
    prom = Prometheus(args.prometheus)
    end = time.time()
    start = end - args.minutes * 60
    model = args.model or next((r["metric"].get("model_name") for r in prom.vector("vllm:num_requests_running")),
                               None)
    failed = 0
    print(f"# Queries against {args.prometheus}, last {args.minutes:g} minutes, model {model}\n")
    print("| source | query | result |\n|---|---|---|")
    for uid in DASHBOARDS:
        dashboard = load_dashboard(uid)
        names = {v["name"] for v in dashboard["templating"]["list"]}
        given = {k: v for k, v in {"model": model or ""}.items() if k in names}
        try:
            results = query_panels(dashboard, start, end, args.prometheus, variable_values(dashboard, given))
        except PrometheusDown as error:
            print(f"| {uid} | (all) | FAILED: {error} |")
            failed += 1
            continue
        for panel in iter_panels(dashboard):
            for target in panel["targets"]:
                series = [s for s in results.get(panel["id"], []) if s.ref_id == target["refId"]]
                has_data = any(v is not None for s in series for v in s.values)
                kind = "needs the DCGM exporter" if "DCGM_FI_" in target["expr"] else ""
                verdict = "data" if has_data else ("empty: " + kind if kind else "empty")
                print(f"| {uid} / {panel['title']} / {target['refId']} | `{target['expr'][:90]}` | {verdict} |")
    for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml")):
        groups = (yaml.safe_load(path.read_text()) or {}).get("groups", [])
        for group in groups:
            for rule in group.get("rules", []):
                name = rule.get("alert") or rule.get("record")
                try:
                    result = prom.vector(str(rule["expr"]))
                    if rule.get("alert"):
                        verdict = (f"evaluates; condition true ({len(result)} series)" if result
                                   else "evaluates; condition false now")
                    else:
                        verdict = "data" if result else "empty"
                except PrometheusDown as error:
                    verdict = f"FAILED: {error}"
                    failed += 1
                if "DCGM_FI_" in str(rule["expr"]) and verdict in ("empty", "evaluates; condition false now"):
                    verdict += " (needs the DCGM exporter)"
                print(f"| {path.name} / {name} | `{' '.join(str(rule['expr']).split())[:90]}` | {verdict} |")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
