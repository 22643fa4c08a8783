"""The benchmarks' one markdown-table helper and its cell formatting. Imports nothing of the repo."""

from __future__ import annotations


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def fmt_int(value: int | None) -> str:
    return "-" if value is None else str(value)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table; a pipe inside a cell would split it, so it becomes a slash."""
    cells = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells)
