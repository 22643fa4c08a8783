"""The Grafana dashboards, as code: `python grafana/dashboards.py [--check]` writes grafana/dashboards/*.json.

The generator is loadgen.grafana.dashboards; edit it there, then run this.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.grafana.dashboards import main

if __name__ == "__main__":
    sys.exit(main())
