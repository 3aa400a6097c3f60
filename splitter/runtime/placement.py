"""Placement: which blocks run on which device, in this process or on this torchrun rank."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch
from torch import nn

import pipeline
from auxiliary import Momentum
from settings import LOCK, PACKAGE, TRAINING, ConfigError
from step import Parts


@dataclass
class Placement:
    """Which blocks run where: one group per device (one process), or this rank's stage."""

    groups: list[range]
    devices: list[torch.device]
    """The device of each group (under torchrun: this rank's, for every group)."""
    layout: pipeline.Layout | None = None
    channels: pipeline.Groups | None = None
    """Under torchrun: the process groups besides the default one."""

    @property
    def owned(self) -> range:
        return self.groups[self.layout.stage] if self.layout else range(self.groups[-1].stop)

    def device_of(self, k: int) -> torch.device:
        return next(d for g, d in zip(self.groups, self.devices, strict=True) if k in g)

    def modules(self, parts: Parts) -> list[tuple[nn.Module, torch.device]]:
        """What this process trains, by device: on one device the whole model and every
        auxiliary, else each owned block and its auxiliary on its group's device."""
        if self.layout is None and len(self.groups) == 1:
            return [(parts.model, self.devices[0]), (parts.auxiliaries, self.devices[0])]
        moved: list[tuple[nn.Module, torch.device]]
        moved = [(parts.blocks[k], self.device_of(k)) for k in self.owned]
        moved += [(parts.auxiliaries[k], self.device_of(k)) for k in self.owned if k < parts.last]
        return moved


def place(args: argparse.Namespace, parts: Parts) -> Placement:
    """Group the blocks by their FLOPs (the cost model's, from spec.lock.yaml) onto the devices
    or the stages, refusing what the schedule cannot honour."""
    placement = _place(args, parts)
    check_shared(placement)
    return placement


def check_shared(placement: Placement) -> None:
    """A tensor shared by blocks under `shared_params: owner` or `sync` is one tensor in one
    process: the blocks that use it must run in one group."""
    policy = LOCK["partition"].get("shared_params", "error")
    for shared in PACKAGE.get("shared", []) if policy in ("owner", "sync") else []:
        groups = sorted(
            {i for i, g in enumerate(placement.groups) for k in shared["blocks"] if k in g}
        )
        if len(groups) > 1:
            where = "stages" if placement.layout else "devices"
            raise ConfigError(
                f"blocks {', '.join(map(str, shared['blocks']))} share `{shared['names'][0]}` "
                f"(`shared_params: {policy}`), which needs them on one device in one process, "
                f"but they run on {where} {', '.join(map(str, groups))}: compile with "
                "`partition.shared_params: replicate`, or use fewer " + where
            )


def _place(args: argparse.Namespace, parts: Parts) -> Placement:
    costs = PACKAGE.get("block_flops") or [1] * len(parts.blocks)
    scope = TRAINING["optimizer_scope"]
    if pipeline.launched():
        if args.mode == "e2e":
            raise ConfigError(
                "--mode e2e trains the unsplit model in one process: run it without torchrun"
            )
        layout = pipeline.layout_from_environment(args.stages)
        groups = pipeline.schedule(
            costs, layout.stages, scope, parts.windows, "stages", layout.replicas
        )
        return Placement(groups, [rank_device(args.device, layout)] * len(groups), layout)
    devices = [pick_device(name) for name in args.device]
    if len(devices) == 1 or args.mode == "e2e":
        return Placement([range(len(parts.blocks))], devices[:1])
    if len({d.type for d in devices}) > 1:
        raise ConfigError(
            f"--device {' '.join(args.device)}: a wavefront runs on devices of one kind (one "
            "autocast, one kind of copy between them); list only GPUs or only cpu"
        )
    return Placement(
        pipeline.schedule(costs, len(devices), scope, parts.windows, "devices"), devices
    )


def connect(placement: Placement, parts: Parts, timeout_s: float) -> None:
    """Under torchrun: join the process group and make the others, with a source channel at
    each stage boundary whose last block's `momentum` auxiliary reads the next stage."""
    assert placement.layout is not None
    pipeline.start(placement.devices[0], timeout_s)
    crossing = [
        stage
        for stage, group in enumerate(placement.groups[:-1])
        if isinstance(parts.auxiliaries[group[-1]], Momentum)
    ]
    placement.channels = pipeline.Groups.make(placement.layout, crossing)


def rank_device(names: list[str], layout: pipeline.Layout) -> torch.device:
    """This rank's device: `auto` or `cuda` is the GPU of its local rank (cpu without CUDA),
    a list gives one device per local rank; one named GPU for several processes is refused."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", layout.world))
    if len(names) > 1:
        if len(names) < local:
            raise ConfigError(
                f"--device lists {len(names)} devices for {local} processes on this machine; "
                "list one per process, or pass `--device cuda` (each its local rank's GPU)"
            )
        return pick_device(names[layout.local_rank])
    name = names[0]
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{layout.local_rank}"
    elif name.startswith("cuda:") and local > 1:
        raise ConfigError(
            f"--device {name} for {local} processes on this machine: NCCL needs a GPU per "
            "process; pass `--device cuda` (each its local rank's GPU) or one device per process"
        )
    return pick_device(name)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
    return torch.device(name)
