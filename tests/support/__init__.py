"""Shared test helpers; test modules import from here and never from one another.

    stack               the live native stack as the tests see it (Stack; the fixture is in tests/conftest.py)
    collector           the real `python -m collector` as a process, its /metrics, SSE reads, an aiohttp app
                        or an OTLP receiver in a thread
    scripted_upstream   a scripted OpenAI-like upstream for the collector's failure paths
    compose             compose/ files read as Compose reads them (.env, interpolation, tags, merges)
    dashboards          the provisioned Grafana dashboards (their generator is loadgen.grafana.dashboards)
    promql_names        metric names in PromQL (rules, dashboards)
    prometheus_checks   rule files checked with promtool and against known metric names

Dependencies point one way: tests -> tests.support -> collector, loadgen. Free ports and process groups
come from loadgen.procs, settings from loadgen.settings.
"""
