"""Checkpoints: modules, optimizers, the gradient scaler and the random generators, each file
written whole (a temporary file, then a rename); the model fingerprint they belong to."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn


def fingerprint(model: nn.Module) -> str:
    """A digest of the names and shapes of the model's state_dict: what `splitter compile`
    writes to spec.lock.yaml and train.py checks at start-up."""
    lines = "\n".join(f"{k}:{list(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


class CheckpointError(ValueError):
    """A checkpoint that cannot resume this run; the message names the file and the fix."""


def save(
    path: Path,
    step: int,
    modules: Mapping[str, nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        **{name: module.state_dict() for name, module in modules.items()},
        "optimizers": [o.state_dict() for o in optimizers],
        "scaler": scaler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    partial = path.with_suffix(".tmp")
    torch.save(state, partial)
    partial.replace(path)


def load(
    path: Path,
    modules: Mapping[str, nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
) -> int:
    """Restore everything `save` wrote; the step to continue from."""
    if not path.is_file():
        raise CheckpointError(
            f"--resume: no checkpoint at `{path}`; pass the checkpoint.pt of a run"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    if len(state["optimizers"]) != len(optimizers):
        raise CheckpointError(
            f"`{path}` has {len(state['optimizers'])} optimizers and this run {len(optimizers)}: "
            "it was saved in another --mode or optimizer scope; resume it with those"
        )
    for name, module in modules.items():
        module.load_state_dict(state[name])
    for optimizer, saved in zip(optimizers, state["optimizers"], strict=True):
        optimizer.load_state_dict(saved)
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])
