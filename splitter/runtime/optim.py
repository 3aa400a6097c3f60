"""Optimizers and the learning-rate schedule, as the spec's `training` section sets them."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def optimizer(config: dict[str, Any], params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over `params`, from `training.optimizer`."""
    if config["name"] == "adamw":
        betas = (float(config["betas"][0]), float(config["betas"][1]))
        return torch.optim.AdamW(
            params, lr=config["lr"], betas=betas, weight_decay=config["weight_decay"]
        )
    return torch.optim.SGD(
        params,
        lr=config["lr"],
        momentum=config["momentum"],
        nesterov=config["nesterov"] and config["momentum"] > 0,
        weight_decay=config["weight_decay"],
    )


def trainable(*modules: nn.Module) -> list[nn.Parameter]:
    """The parameters that get gradients (EMA copies do not), each once."""
    params = (p for m in modules for p in m.parameters() if p.requires_grad)
    return list({id(p): p for p in params}.values())


def lr_factor(
    schedule: dict[str, Any], step: int, total: int, steps_per_epoch: int, lr: float = 1.0
) -> float:
    """The multiple of the base learning rate `lr` at `step` of `total`: a linear warm-up over
    `warmup_epochs` from `warmup_start_lr` (0: from nothing), then cosine annealing to 0, step
    decay, or constant."""
    warmup = min(int(schedule["warmup_epochs"]) * steps_per_epoch, total - 1)
    if step < warmup:
        start = float(schedule.get("warmup_start_lr", 0.0)) / lr
        if start == 0:
            return (step + 1) / (warmup + 1)
        return start + (1 - start) * step / warmup  # the start lr exactly at the first step
    if schedule["name"] == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    if schedule["name"] == "step":
        return float(schedule["gamma"]) ** (step // steps_per_epoch // int(schedule["step_size"]))
    return 1.0
