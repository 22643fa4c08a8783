#!/usr/bin/env python3
"""Collector overhead against direct access to vLLM, interleaved.

    python scripts/bench_overhead.py --direct http://127.0.0.1:8000 --collector http://127.0.0.1:8001 \\
        --model NAME [--concurrency 64 128 256] [--rounds 3] [--max-tokens 256] [--requests-per-stream 2] \\
        [--client-processes 4]

The code is loadgen.bench.overhead.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.bench.overhead import main

if __name__ == "__main__":
    raise SystemExit(main())
