"""The envelope report: what a run's results.json says, and its rendering.

    diagnosis  what broke first, from server-side evidence (also asked by the sweep for its knee bound)
    analysis   the envelope table, the knee, the flags and the one paragraph, from a typed run (loadgen.results)
    plots      the report's figures (matplotlib)
    render     report.md and report.html from the templates in templates/

Dependencies point one way: render -> plots -> analysis -> diagnosis; all of them -> loadgen.results and the
sweep engine's pure modules (knee, plan, thresholds, rate_mode); render also -> loadgen.grafana.panels (which
dashboards the report shows). The sweep imports diagnosis only; nothing here imports the sweep or the
benchmarks.
"""
