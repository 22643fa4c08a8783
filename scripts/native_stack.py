"""Native mode's command line (`scripts/local up|down|status [SERVICE...]`); the code is loadgen.native_stack."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.native_stack import main

if __name__ == "__main__":
    raise SystemExit(main())
