"""Side by side with `vllm bench serve`, GuideLLM and NVIDIA AIPerf; the code is loadgen.bench.peers.

    .venv/bin/python scripts/bench_peers.py --quick             # first pass (~40 min on 2 busy cores)
    .venv/bin/python scripts/bench_peers.py                     # full: 3 rounds, longer runs and steps
    .venv/bin/python scripts/bench_peers.py --own-stack ...     # a private native stack on other ports
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.bench.peers import main

if __name__ == "__main__":
    sys.exit(main())
