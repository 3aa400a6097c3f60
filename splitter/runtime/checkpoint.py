"""Checkpoints (modules, optimizers, the gradient scaler, every block's random generators), each
file written whole; the model fingerprint they belong to."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

if TYPE_CHECKING:  # the library imports this module too: nothing beside it at run time
    import pipeline
    from step import Step


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
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError) as error:
        raise CheckpointError(
            f"--resume: `{path}` is not a checkpoint ({type(error).__name__}: "
            f"{first_line(error)}); pass the checkpoint.pt a run wrote into its --out"
        ) from None
    if not isinstance(state, dict) or not {"step", "model", "optimizers"} <= state.keys():
        what = "a state_dict (an --export?)" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"--resume: `{path}` holds {what}, not a checkpoint; pass the checkpoint.pt a run "
            "wrote into its --out"
        )
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


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "unreadable"


def stage_state(
    s: Step,
    step: int,
    owned: range,
    sources: dict[int, torch.Tensor],
    stage: int = 0,
    model_only: bool = False,
) -> dict[str, Any]:
    """What blocks `owned` contribute to a checkpoint, on the CPU. Stage 0 also gives the rest
    of the model (modules no block runs) and every auxiliary, which the owners' parts then
    overwrite."""
    whole = stage == 0
    blocks = s.parts.blocks
    model = (
        s.parts.model.state_dict()
        if whole
        else {key: v for k in owned for key, v in blocks[k].state_dict().items()}
    )  # a block's state_dict keys are the model's own
    state: dict[str, Any] = {"model": model, "copies": _copies(blocks, owned, s.parts.model)}
    if not model_only:
        prefixes = tuple(f"{k}." for k in owned)
        auxiliaries = s.parts.auxiliaries.state_dict().items()
        optimizers = owned if s.per_block else range(len(s.optimizers))
        state |= {
            "step": step,
            "auxiliaries": {k: v for k, v in auxiliaries if whole or k.startswith(prefixes)},
            "optimizers": {k: s.optimizers[k].state_dict() for k in optimizers},
            "block_rng": {k: s.random.state(k) for k in owned},
            "sources": sources,
            "scaler": {stage: s.scaler.state_dict()},
        }
    return pytree.tree_map_only(torch.Tensor, lambda t: t.detach().cpu(), state)  # type: ignore[no-any-return]


def _copies(blocks: nn.ModuleList, owned: range, model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters of blocks that are not the model's (`shared_params: replicate` copies), as
    `k:name`."""
    mine = {id(p) for p in model.parameters()}
    return {
        f"{k}:{name}": p
        for k in owned
        for name, p in blocks[k].named_parameters()
        if id(p) not in mine
    }


def merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One checkpoint from every rank's part, in the format of a single-process run, plus
    each stage's gradient scaler and the generators of data-parallel replicas beyond the
    first (`replica_rng`)."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key == "replica_rng":
                for replica, generators in value.items():
                    merged.setdefault(key, {}).setdefault(replica, {}).update(generators)
            elif isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged[key] = value
    if "optimizers" in merged:
        merged["optimizers"] = [merged["optimizers"][k] for k in sorted(merged["optimizers"])]
        merged["block_rng"] = [merged["block_rng"][k] for k in sorted(merged["block_rng"])]
        merged.setdefault("replica_rng", {})
        merged["rng"] = torch.get_rng_state()
        merged["cuda_rng"] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return merged


def save_checkpoint(path: Path, step: int, s: Step) -> None:
    """A one-process run's checkpoint after `step` steps."""
    write(path, merge([stage_state(s, step, range(len(s.parts.blocks)), {})]))


def load_checkpoint(
    path: Path, s: Step, layout: pipeline.Layout | None = None, owned: range | None = None
) -> dict[str, Any]:
    """Restore the modules, optimizers (under torchrun: this stage's), gradient scaler and
    generators (a data-parallel replica's own); the checkpoint's contents."""
    state: dict[str, Any] = read(path, len(s.optimizers))
    try:
        s.parts.model.load_state_dict(state["model"])
        s.parts.auxiliaries.load_state_dict(state["auxiliaries"])
    except RuntimeError as error:
        raise CheckpointError(
            f"`{path}` holds the weights of another model or split ({first_line(error)}); "
            "resume it with the package that wrote it"
        ) from None
    with torch.no_grad():
        for key, value in state.get("copies", {}).items():
            k, name = key.split(":", 1)
            if owned is None or int(k) in owned:
                dict(s.parts.blocks[int(k)].named_parameters())[name].copy_(value)
    mine = owned if owned is not None and s.per_block else range(len(s.optimizers))
    for k in mine:
        s.optimizers[k].load_state_dict(state["optimizers"][k])
    scalers = state["scaler"]
    s.scaler.load_state_dict(scalers.get(layout.stage if layout else 0, scalers[0]))
    for k, generators in enumerate(state["block_rng"]):
        s.random.load(k, generators)
    if layout is not None and layout.replica > 0:
        for k, generators in state["replica_rng"].get(layout.replica, {}).items():
            s.random.load(k, generators)
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state
