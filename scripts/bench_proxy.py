"""Side-by-side proxy benchmark (direct, nginx, the collector); the code is loadgen.bench.proxy.

    .venv/bin/python scripts/bench_proxy.py --upstream scripted   # 1, 64, 256 streams, no model, ~3 minutes
    .venv/bin/python scripts/bench_proxy.py                       # the same against a CPU vLLM server
    .venv/bin/python scripts/bench_proxy.py --soak 600            # then 10 minutes at 256 streams (RSS)
    .venv/bin/python scripts/bench_proxy.py --repeats 0 --soak 600  # the soak alone
    .venv/bin/python scripts/bench_proxy.py --workers 2           # the collector with COLLECTOR_WORKERS=2
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.bench.proxy import main

if __name__ == "__main__":
    raise SystemExit(main())
