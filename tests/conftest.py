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
