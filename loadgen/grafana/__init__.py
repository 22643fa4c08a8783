"""Grafana: dashboard queries, snapshots, panel images and sweep-step annotations.

    queries   the provisioned dashboards' panel and annotation queries, run against Prometheus as Grafana would
    images    panels drawn from Prometheus data with matplotlib (native mode: no Grafana)
    snapshot  a snapshot payload with its data, Grafana's HTTP API (post, render panels), the CLI
              (`python -m loadgen snapshot`)
    panels    a run's panel images for the report: Grafana's rendering, else images' drawing
    annotate  one Grafana annotation per sweep step
    dashboards the provisioned dashboards as code (grafana/dashboards.py writes grafana/dashboards/*.json)

Dependencies point one way: images -> queries; snapshot -> queries (and images, lazily); panels ->
snapshot, images; annotate -> snapshot (lazily); dashboards -> annotate (its tag). All of them ->
loadgen.prom, loadgen.settings, loadgen.results; nothing here imports the sweep or the report.
"""
