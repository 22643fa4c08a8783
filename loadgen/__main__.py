"""python -m loadgen SUBCOMMAND: smoke (the seed checklist)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import requests

from loadgen import smoke


def served_model(target: str) -> str:
    """The first model the target serves; a one-line error when the target does not answer."""
    try:
        response = requests.get(f"{target}/v1/models", timeout=10)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (requests.RequestException, KeyError, IndexError, ValueError) as error:
        raise SystemExit(f"error: {target} does not serve an OpenAI-compatible model list ({error})") from None


def cmd_smoke(args: argparse.Namespace) -> int:
    model = args.model or served_model(args.target)
    records = asyncio.run(smoke.run_smoke(args.target, model, args.max_tokens))
    print(smoke.summary_table(records))
    path = smoke.write_results(records, Path(args.out) / time.strftime("smoke-%Y%m%d-%H%M%S"))
    print(f"results: {path}")
    return 0 if all(r.ok for r in records) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadgen")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("smoke", help="1, then 5, then 20 concurrent streaming chat requests")
    p.add_argument("--target", default="http://127.0.0.1:8001", help="collector (or vLLM) base URL")
    p.add_argument("--model", help="model name (default: the first the target serves)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", default="var/reports", help="folder for results")
    p.set_defaults(func=cmd_smoke)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
