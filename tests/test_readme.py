"""The README's commands exist and start: every script it names is there and executable, every
`python -m` module it names answers --help, every file it names exists. (The two main commands
themselves are what CI runs: `scripts/test` directly, `scripts/demo`'s steps through the suite.)
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest

from loadgen.settings import APP_PYTHON, ROOT

README = (ROOT / "README.md").read_text()
CODE_BLOCKS = re.findall(r"```(?:bash|sh)\n(.*?)```", README, flags=re.S)
COMMAND_LINES = [
    line.split("#", 1)[0].strip()
    for block in CODE_BLOCKS
    for line in block.splitlines()
    if line.split("#", 1)[0].strip()
]


def _words() -> list[list[str]]:
    return [shlex.split(line) for line in COMMAND_LINES]


def test_readme_has_the_two_main_commands() -> None:
    assert "scripts/demo" in COMMAND_LINES
    assert "scripts/test" in COMMAND_LINES
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("exec scripts/test")


@pytest.mark.parametrize("script", sorted({w[0] for w in _words() if w[0].startswith("scripts/")}))
def test_every_script_the_readme_names_is_executable(script: str) -> None:
    path = ROOT / script
    assert path.is_file(), script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"


@pytest.mark.parametrize(
    "module",
    sorted({w[w.index("-m") + 1] for w in _words() if w[0].endswith("python") and "-m" in w}),
)
def test_every_python_module_the_readme_names_answers_help(module: str) -> None:
    result = subprocess.run(
        [str(APP_PYTHON), "-m", module, "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


def test_every_repo_file_the_readme_names_exists() -> None:
    named = set(re.findall(r"`((?:compose|prometheus|grafana|loadgen|collector|scripts|tests)/[\w./-]+)`", README))
    user_made = {"compose/.env"}  # copied from .env.example by the user
    missing = [n for n in sorted(named - user_made) if "<" not in n and not (ROOT / n).exists()]
    assert missing == []


def test_compose_commands_name_existing_files() -> None:
    for words in _words():
        if words[:2] == ["docker", "compose"]:
            files = [words[i + 1] for i, w in enumerate(words) if w == "-f"]
            assert all((ROOT / "compose" / f).is_file() for f in files), words


def test_readme_settings_exist_in_env_example() -> None:
    env_keys = {
        line.split("=", 1)[0]
        for line in (ROOT / "compose" / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    # Variables of other programs (pip, vLLM) and the snapshot command's own environment.
    foreign = {"PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "VLLM_CPU_KVCACHE_SPACE", "GRAFANA_TOKEN", "GRAFANA_URL",
               "PROMETHEUS_URL"}
    named = set(re.findall(r"`([A-Z][A-Z0-9_]{3,})`", README)) - foreign
    code = "".join(p.read_text() for d in ("collector", "loadgen", "scripts") for p in (ROOT / d).glob("*.py"))
    unknown = sorted(n for n in named if not n.endswith("_") and n not in env_keys and f'"{n}"' not in code)
    assert unknown == [], f"README names settings that neither .env.example nor the code defines: {unknown}"
