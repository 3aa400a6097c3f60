"""Shared fixtures: a fixed seed for every test, the CLI runner; paths of fixtures and examples."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLES = Path(__file__).parent.parent / "examples"


def example_package(tmp_path: Path, **sections: str) -> Path:
    """The bundled ResNet-32 at InfoPro's K = 4 cuts, compiled with the spec sections given
    (`aux="{default: {kind: linear}}"`), into tmp_path/pkg."""
    from splitter.api import compile_package
    from splitter.frontend.modelref import ModelOptions

    spec = tmp_path / "spec.yaml"
    lines = [f"model: {{ref: {EXAMPLES / 'resnet_cifar' / 'model.py'}}}"]
    lines += ["partition: {cuts: [layer1.2, layer2.1, layer3.0]}"]
    spec.write_text(
        "version: 1\n"
        + "".join(f"{line}\n" for line in lines)
        + "".join(f"{key}: {value}\n" for key, value in sections.items())
    )
    out = tmp_path / "pkg"
    compile_package(None, str(spec), ModelOptions(), out=str(out))
    return out


def train_steps(train: ModuleType, out: Path, steps: int, *extra: str) -> dict[str, Any]:
    """`steps` steps of a loaded package's `train` on synthetic batches of 8, one test batch."""
    args = ["--data", "synthetic", "--steps", str(steps), "--batch-size", "8"]
    return train.train([*args, "--eval-batches", "1", "--out", str(out), *extra])  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)
    yield


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


class Killed(Exception):
    """The run was stopped from outside."""


@contextmanager
def stopped_at_a_checkpoint(train: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inside, a run of `train` stops with `Killed(step)` right after writing a checkpoint;
    afterwards the real `save_checkpoint` is back."""
    save = train.save_checkpoint

    def save_then_die(path: Path, step: int, s: Any) -> None:
        save(path, step, s)
        raise Killed(step)

    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    try:
        yield
    finally:
        monkeypatch.setattr(train, "save_checkpoint", save)
