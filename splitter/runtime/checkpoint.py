"""Checkpoints (modules, optimizers, the gradient scaler, every block's random generators), each
file written whole; the model fingerprint they belong to."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn


def fingerprint(model: nn.Module) -> str:
    """A digest of the names and shapes of the model's state_dict: what `splitter compile`
    writes to spec.lock.yaml and train.py checks at start-up."""
    lines = "\n".join(f"{k}:{list(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


class CheckpointError(ValueError):
    """A checkpoint that cannot resume this run; the message names the file and the fix."""


def write(path: Path, state: dict[str, Any]) -> None:
    """Save a checkpoint whole: a temporary file, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save(state, partial)
    partial.replace(path)


def read(path: Path, optimizers: int) -> dict[str, Any]:
    """A checkpoint for a run with this many optimizers."""
    if not path.is_file():
        raise CheckpointError(
            f"--resume: no checkpoint at `{path}`; pass the checkpoint.pt of a run"
        )
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if "block_rng" not in state:
        raise CheckpointError(
            f"`{path}` was written by an older train.py (no per-block generators); resume it "
            "with the package that wrote it"
        )
    if len(state["optimizers"]) != optimizers:
        raise CheckpointError(
            f"`{path}` has {len(state['optimizers'])} optimizers and this run {optimizers}: "
            "it was saved in another --mode or optimizer scope; resume it with those"
        )
    return state
