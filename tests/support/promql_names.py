"""Metric names in PromQL, and where they may come from: reusable by the rule and dashboard tests.

    metric_names(expr)            names a PromQL expression selects (Grafana variables allowed)
    rule_expressions(path)        every rule's expression in a rule file, with its line
    recorded_names(paths)         names the recording rules of those files produce
    exposed_names(text)           sample names in a /metrics exposition (text or OpenMetrics)
    dcgm_counter_names(path)      names in DCGM exporter's default-counters CSV
    unknown_metric_errors(...)    "file:line: ..." for every name no source provides
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import promql_parser
import yaml

# Series Prometheus makes itself, not scraped from any target.
PROMETHEUS_SYNTHETIC = frozenset({
    "up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
    "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE",
})

_GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]+\}|\w+)")
_DURATION_CONTEXT = re.compile(r"(?:\[|:|\boffset)\s*$")


class PromQLError(ValueError):
    """An expression that does not parse (message names the expression)."""


def _outside_strings(expr: str) -> list[tuple[bool, str]]:
    """Split into (is_string_literal, text) pieces; PromQL strings use ", ' or `."""
    pieces: list[tuple[bool, str]] = []
    i, start = 0, 0
    while i < len(expr):
        quote = expr[i]
        if quote in "\"'`":
            pieces.append((False, expr[start:i]))
            j = i + 1
            while j < len(expr) and expr[j] != quote:
                j += 2 if expr[j] == "\\" and quote != "`" else 1
            pieces.append((True, expr[i:j + 1]))
            i = start = j + 1
        else:
            i += 1
    pieces.append((False, expr[start:]))
    return pieces


def substitute_grafana_variables(expr: str) -> str:
    """Grafana's $__rate_interval, $var, ${var} outside strings -> a parseable duration or number."""
    out: list[str] = []
    for is_string, text in _outside_strings(expr):
        if is_string:
            out.append(text)
            continue
        out.append(_GRAFANA_VARIABLE.sub(
            lambda m: "5m" if _DURATION_CONTEXT.search(m.string[:m.start()]) else "1", text))
    return "".join(out)


def metric_names(expr: str) -> set[str]:
    """Every metric name `expr` selects: selector names and `__name__="..."` matchers."""
    try:
        tree = promql_parser.parse(substitute_grafana_variables(expr))
    except (ValueError, RuntimeError) as error:
        raise PromQLError(f"cannot parse {expr!r}: {error}") from error
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> bool:
        selector = node.vector_selector if isinstance(node, promql_parser.MatrixSelector) else node
        if isinstance(selector, promql_parser.VectorSelector):
            if selector.name:
                names.add(selector.name)
            for matcher in selector.matchers.matchers:
                if matcher.name == "__name__" and matcher.op == promql_parser.MatchOp.Equal:
                    names.add(matcher.value)
        return True

    promql_parser.walk(tree, pre_visit=visit)
    return names


@dataclass(frozen=True)
class RuleExpression:
    path: Path
    line: int  # 1-based line of the `expr:` key
    rule: str  # record name or alert name
    expr: str

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def rule_expressions(path: Path) -> list[RuleExpression]:
    """Each rule's expression with the line it starts on (YAML nodes keep their position)."""
    root = yaml.compose(path.read_text())
    found: list[RuleExpression] = []
    for group in _mapping(root).get("groups", yaml.SequenceNode("", [])).value:
        for rule in _mapping(group).get("rules", yaml.SequenceNode("", [])).value:
            fields = _mapping(rule)
            name_node = fields.get("record") or fields.get("alert")
            expr_node = fields.get("expr")
            if expr_node is None or name_node is None:
                continue
            line = expr_node.start_mark.line + 1
            found.append(RuleExpression(path, line, str(name_node.value), str(expr_node.value)))
    return found


def _mapping(node: yaml.Node | None) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {str(key.value): value for key, value in node.value}


def recorded_names(paths: Iterable[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            names.update(rule["record"] for rule in group.get("rules", []) if "record" in rule)
    return names


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)")
_TYPE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)")
# Series names each metric type exposes (a labelled metric shows only its TYPE line until used).
_SUFFIXES = {
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "counter": ("_total",),
}


def exposed_names(exposition: str) -> set[str]:
    """Series names (`foo_bucket`, `foo_count`, `bar_total`...) of a /metrics page, text or OpenMetrics."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if sample := _SAMPLE.match(line):
            names.add(sample.group(1))
        elif declared := _TYPE.match(line):
            name, kind = declared.groups()
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names


def dcgm_counter_names(path: Path) -> set[str]:
    """Metric names of a DCGM exporter counters CSV (`FIELD, type, help`; `label` rows are labels)."""
    names: set[str] = set()
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            field, kind = (part.strip() for part in line.split(",", 2)[:2])
            if kind != "label":
                names.add(field)
    return names


def unknown_metric_errors(expressions: Iterable[RuleExpression], known: set[str]) -> list[str]:
    """One 'file:line: rule R uses unknown metric M' per name that no source provides."""
    errors: list[str] = []
    for item in expressions:
        try:
            names = metric_names(item.expr)
        except PromQLError as error:
            errors.append(f"{item.where()}: rule {item.rule}: {error}")
            continue
        errors.extend(
            f"{item.where()}: rule {item.rule} uses unknown metric {name}" for name in sorted(names - known)
        )
    return errors
