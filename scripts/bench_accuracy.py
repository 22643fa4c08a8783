#!/usr/bin/env python3
"""Accuracy of the loadgen sweep against `vllm bench serve`, side by side on the same server.

    .venv/bin/python scripts/bench_accuracy.py [--mode together|interleaved] [--concurrency 8] [--rounds 3]

The code is loadgen.bench.accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.bench.accuracy import main

if __name__ == "__main__":
    raise SystemExit(main())
