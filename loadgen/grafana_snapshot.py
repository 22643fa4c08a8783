"""`python -m loadgen.grafana_snapshot`: the snapshot exporter's first command line, kept as an entry point;
the same as `python -m loadgen snapshot`. The code is loadgen.grafana.snapshot."""

from __future__ import annotations

from loadgen.grafana.snapshot import main

if __name__ == "__main__":
    raise SystemExit(main())
