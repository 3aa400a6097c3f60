"""Shared fixtures: a fixed seed for every test, the CLI runner, real saved-bytes measurement."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
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


def measure_saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Ground truth: bytes autograd saves on a real forward, de-duplicated by storage,
    parameters and buffers not counted (the same hooks the estimate uses)."""
    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(n for ptr, n in seen.items() if ptr not in state)
