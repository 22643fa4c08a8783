"""Writes compose/kubernetes/ (PrometheusRules, monitors, dashboard ConfigMaps); the code is loadgen.kubernetes.

    .venv/bin/python scripts/render_kubernetes.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.kubernetes import main

if __name__ == "__main__":
    raise SystemExit(main())
