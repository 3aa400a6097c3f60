"""MLAAN's auxiliaries (Zhang et al., AAAI 2025), as its CIFAR code trains them
(`resnetMLAAN.py`, commit 70effbe): a cascaded loss over a window of blocks and copies of later
layers, and module 0 trained only through module 1's cascade. Both are auxiliaries as
`auxiliary.Auxiliary` describes them."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from auxiliary import ema_update


class Mlaan(nn.Module):
    """MLAAN: `weights[0]` times an independent loss (a head on the block's output) plus
    `weights[1]` times a cascaded loss: the blocks of the window recomputed from the detached
    input of its first block (so their gradients cross boundaries inside the window), then
    trainable copies of leap units (MLAAN's lists or AugLocal's rule), the first coupled to an EMA
    copy of its source unit (`z = leap(z) + ema(z)`), then pooling and Linear."""

    def __init__(
        self,
        window: Sequence[nn.Module],
        independent: nn.Module,
        leap: Sequence[nn.Module],
        source: nn.Module | None,
        head: nn.Module,
        weights: tuple[float, float] = (0.001, 0.999),
        decay: float = 0.999,
        coupled: int = 0,
        update_ema: bool = True,
    ) -> None:
        super().__init__()
        self._blocks = tuple(window)  # real blocks, trained by their own optimizers
        self.window = len(self._blocks)
        self.independent, self.head = independent, head
        self.leap = nn.ModuleList(copy.deepcopy(layer) for layer in leap)
        self.ema = copy.deepcopy(source).requires_grad_(False) if source is not None else None
        self.source = tuple(source.parameters()) if source is not None else ()
        self.weights, self.decay, self.coupled = weights, decay, coupled
        self.update_ema = update_ema  # MLAAN's CIFAR code updates only the last auxiliary's

    def forward(
        self,
        h: torch.Tensor,
        target: torch.Tensor,
        image: torch.Tensor,
        history: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        own = F.cross_entropy(self.independent(h), target)
        z = history[-self.window]
        for block in self._blocks:
            z = block(z)
        for i, layer in enumerate(self.leap):
            z = layer(z) + self.ema(z) if i == self.coupled and self.ema is not None else layer(z)
        logits: torch.Tensor = self.head(z)
        loss = self.weights[0] * own + self.weights[1] * F.cross_entropy(logits, target)
        return loss, logits

    @torch.no_grad()
    def after_backward(self) -> None:
        if self.ema is not None and self.update_ema:
            ema_update(self.ema, self.source, self.decay)


class Unsupervised(nn.Module):
    """No loss of its own: MLAAN's CIFAR code trains module 0 only through module 1's cascaded
    loss, which recomputes it from the image. The block's step has nothing to backward, so
    its forward runs without a graph (`has_loss`): a graph never backwarded would also outlive
    the step, its saved outputs packed by the memory tracker's hooks referring to their own
    nodes."""

    window = 1
    has_loss = False

    def forward(
        self,
        h: torch.Tensor,
        target: torch.Tensor,
        image: torch.Tensor,
        history: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return h.new_zeros(()), h.new_empty(0)

    def after_backward(self) -> None:
        """Nothing to update."""
