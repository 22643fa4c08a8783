#!/usr/bin/env python3
"""Every dashboard panel query and every alert/recording rule evaluated against a live Prometheus.

    python scripts/check_queries.py --prometheus http://127.0.0.1:9090 [--minutes 30] [--model NAME]

The code is loadgen.bench.queries.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.bench.queries import main

if __name__ == "__main__":
    raise SystemExit(main())
