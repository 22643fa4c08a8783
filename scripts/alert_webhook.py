"""Alertmanager's default webhook receiver for native mode; the code is loadgen.alert_webhook.

    .venv/bin/python scripts/alert_webhook.py --host 127.0.0.1 --port 9095
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo, when run without an install

from loadgen.alert_webhook import main

if __name__ == "__main__":
    raise SystemExit(main())
