"""Compose files read without a Docker engine: `compose/.env.example` as Compose reads it, Compose's
interpolation (`${VAR}`, `${VAR:-default}`, `${VAR:?error}`, `$$`), its YAML tags (`!reset`,
`!override`) and its merge rules for overlays. Shared by the compose tests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loadgen.settings import ROOT, parse_env_file

COMPOSE_DIR = ROOT / "compose"
BASE = COMPOSE_DIR / "compose.yaml"
OVERLAYS = sorted(COMPOSE_DIR.glob("compose.*.yaml"))
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
# compose/.env.example leaves the secrets empty on purpose; validation runs with these set.
TEST_SECRETS = {"GRAFANA_ADMIN_PASSWORD": "test-only-password", "GRAFANA_RENDERER_TOKEN": "test-only-token"}
class InterpolationError(ValueError):
    """What Compose reports for `${VAR:?message}` when VAR is unset or empty."""


@dataclass(frozen=True)
class Reset:
    """YAML `!reset`: the overlay removes the key."""


@dataclass(frozen=True)
class Override:
    """YAML `!override`: the overlay replaces the value instead of merging it."""

    value: Any


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that knows Compose's `!reset` and `!override` tags."""


def _construct_reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    return Reset()


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _construct_reset)
ComposeLoader.add_constructor("!override", _construct_override)


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as Compose reads an env file (comments and blank lines skipped; anything else is
    an error)."""
    return parse_env_file(path, strict=True)


TEMPLATE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|\{(?P<braced>[^{}]*(?:\{[^{}]*\}[^{}]*)*)\})"
)
BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.S)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of one string: `$$`, `$VAR`, `${VAR}` and the -, ?, + forms."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = BRACED.fullmatch(match["braced"])
        if braced is None:
            raise InterpolationError(f"invalid interpolation format: ${{{match['braced']}}}")
        name, op, arg = braced["name"], braced["op"], braced["arg"]
        value = env.get(name)
        if op is None:
            return value or ""
        unset_or_empty = not value if op.startswith(":") else value is None
        if op in (":-", "-"):
            return interpolate(arg, env) if unset_or_empty else str(value)
        if op in (":?", "?"):
            if unset_or_empty:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return str(value)
        return "" if unset_or_empty else interpolate(arg, env)  # :+ and +

    return TEMPLATE.sub(substitute, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    """Interpolate every string value (not keys), as Compose does."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    if isinstance(node, Override):
        return Override(interpolate_tree(node.value, env))
    if isinstance(node, str):
        return interpolate(node, env)
    return node


# Sequences an overlay replaces; other sequences are merged (Compose's merge rules).
REPLACED_SEQUENCES = {"command", "entrypoint", "test"}


def volume_target(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry["target"])
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def merge(base: Any, overlay: Any, key: str = "") -> Any:
    if isinstance(overlay, Override):
        return strip_tags(overlay.value)
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for name, value in overlay.items():
            if isinstance(value, Reset):
                merged.pop(name, None)
            elif name in merged:
                merged[name] = merge(merged[name], value, name)
            else:
                merged[name] = strip_tags(value)
        return merged
    if isinstance(base, list) and isinstance(overlay, list) and key not in REPLACED_SEQUENCES:
        if key == "volumes":  # one mount per container path: the overlay's wins
            by_target = {volume_target(entry): entry for entry in base}
            by_target.update({volume_target(entry): entry for entry in overlay})
            return list(by_target.values())
        return base + [entry for entry in overlay if entry not in base]
    return strip_tags(overlay)


def strip_tags(node: Any) -> Any:
    if isinstance(node, Override):
        return strip_tags(node.value)
    if isinstance(node, dict):
        return {key: strip_tags(value) for key, value in node.items() if not isinstance(value, Reset)}
    if isinstance(node, list):
        return [strip_tags(value) for value in node]
    return node


def load_raw(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=ComposeLoader)
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def load_stack(files: tuple[Path, ...], env: dict[str, str]) -> dict[str, Any]:
    """The project as Compose sees it: each file interpolated, then merged in order."""
    merged: dict[str, Any] = {}
    for path in files:
        merged = merge(merged, interpolate_tree(load_raw(path), env))
    result = strip_tags(merged)
    assert isinstance(result, dict)
    return result


def env_example() -> dict[str, str]:
    return read_dotenv(ENV_EXAMPLE)


def env_with_secrets() -> dict[str, str]:
    return {**env_example(), **TEST_SECRETS}


def services_of(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = project["services"]
    return services


def container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(port).rsplit(":", 1)[-1]) for port in service.get("ports", [])}


def repo_mounts(service: dict[str, Any]) -> Iterator[tuple[Path, str]]:
    """(host path, container path) for each bind mount of a path inside the repository."""
    for entry in service.get("volumes", []):
        source, target = (entry["source"], entry["target"]) if isinstance(entry, dict) else str(entry).split(":")[:2]
        if source.startswith("."):
            yield (COMPOSE_DIR / source).resolve(), target
