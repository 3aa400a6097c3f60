"""Every `splitter` command the README shows runs as written (placeholders aside)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

README = Path(__file__).parent.parent / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("splitter ") and "path/to" not in line]


def test_readme_opens_with_exactly_two_commands() -> None:
    text = README.read_text()
    assert text.startswith("# splitter\n\n")
    head = text.split("\n## ", 1)[0]
    assert len(re.findall(r"```bash\n(.*?)```", head, flags=re.S)) == 2


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each command runs in a fresh folder holding the repository's examples, so what it
    writes (`build/...`) lands there."""
    if "timm:" in command and importlib.util.find_spec("timm") is None:
        pytest.skip("timm not installed")
    (tmp_path / "examples").symlink_to(README.parent / "examples")
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command.split(">")[0])[1:]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.stderr


def test_there_are_readme_commands() -> None:
    assert len(readme_commands()) >= 6
