"""Writes prometheus/rules/slo-recording.yml; the code is loadgen.slo_rules.

    .venv/bin/python scripts/prometheus_slo_rules.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.slo_rules import main

if __name__ == "__main__":
    raise SystemExit(main())
