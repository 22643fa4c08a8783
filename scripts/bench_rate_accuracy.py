#!/usr/bin/env python3
"""Open-loop accuracy: a loadgen rate step against `vllm bench serve --request-rate`, same rate and lengths.

    .venv/bin/python scripts/bench_rate_accuracy.py [--rate 4] [--arrivals constant,poisson] [--rounds 2]

The code is loadgen.bench.rate_accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.bench.rate_accuracy import main

if __name__ == "__main__":
    raise SystemExit(main())
