"""loadgen: drive the stack with rising concurrency and write the service-envelope report; and the repo's
Python library besides the collector (settings, processes, native mode, benchmarks).

    settings       the one settings reader (compose/.env(.example) + environment) and service URLs
    procs          free port, start/wait/stop a process group, process-tree CPU
    native_stack   native mode (scripts/local); alert_webhook, slo_rules: its alert receiver, the SLO rule writer
    results        results.json typed (RunResults, Step, schema version); load_run(dir) is the one reader
    sweep, plan, knee, k6_runner, stats, prom, probe, provenance, rate_mode, arrivals, thresholds, smoke
                   the sweep engine (python -m loadgen sweep | capstone | smoke)
    report/        what a run says and its rendering (python -m loadgen report)
    grafana/       dashboard queries, panel images, snapshots, annotations (python -m loadgen snapshot)
    bench/         the benchmarks behind scripts/bench_*.py and scripts/check_queries.py
    mixin, kubernetes, k8s_executor
                   one source, two renderings: rules and dashboards rewritten for many pods, and the Kubernetes
                   objects of compose/kubernetes/ (scripts/render_kubernetes.py); a sweep step as a k6-operator TestRun

Dependencies point one way: bench -> report, grafana, engine -> results, settings, procs; report -> engine's
pure modules and grafana.panels; grafana -> prom, settings; the sweep -> report.diagnosis, grafana.annotate;
kubernetes -> mixin, grafana.dashboards; k8s_executor -> kubernetes.
settings and results import nothing of the repo; nothing in loadgen imports bench, scripts/ or tests/.
"""
