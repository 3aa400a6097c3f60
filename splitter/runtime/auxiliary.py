"""Auxiliary networks: each maps a block's output to its local loss."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

if __package__:  # imported by the library as `splitter.runtime.auxiliary`
    from .heads import (
        CHANNELS_LAST,
        LAYOUTS,
        ConvHead,
        Layout,
        LayoutError,
        LinearHead,
        channels,
        channels_first,
        channels_last_as,
        check_layout,
        pool,
        spatial,
    )  # fmt: skip
    from .infopro import InfoProDecoder, InfoProHead
    from .recompute import recomputed
    from .task import CLASSES, Task
else:  # a package's own module beside train.py
    from heads import (  # type: ignore[no-redef]
        CHANNELS_LAST,
        LAYOUTS,
        ConvHead,
        Layout,
        LayoutError,
        LinearHead,
        channels,
        channels_first,
        channels_last_as,
        check_layout,
        pool,
        spatial,
    )  # fmt: skip
    from infopro import InfoProDecoder, InfoProHead  # type: ignore[no-redef]
    from recompute import recomputed  # type: ignore[no-redef]
    from task import CLASSES, Task  # type: ignore[no-redef]

__all__ = [  # the heads are re-exported: emitted blocks import every class from here
    "CHANNELS_LAST", "LAYOUTS", "Adapter", "Augmented", "Auxiliary", "Classifier", "ConvHead",
    "InfoPro", "Layout", "LayoutError", "LinearHead", "Momentum", "channels", "channels_first",
    "channels_last_as", "check_layout", "ema_update", "fresh", "pool", "spatial",
]  # fmt: skip

# ---------------------------------------------------------------- auxiliaries (-> local loss)


class Auxiliary(nn.Module):
    """A block's auxiliary network: `aux(h, target, image, history)` returns the local loss and
    the logits it predicted (`image` is the un-normalised input; `history` the detached inputs
    of the last `window` blocks, this one's last); `after_backward()` runs once per step, right
    after the block's backward (an EMA update, for momentum and MLAAN)."""

    window = 1
    """How many blocks, this one included, its loss trains (more only for MLAAN)."""

    def after_backward(self) -> None:
        """Nothing to do after the backward."""


class Classifier(Auxiliary):
    """A head trained on the task's loss (cross entropy over classes unless `task` says
    otherwise) on the block's output (`linear`, `conv`)."""

    def __init__(self, head: nn.Module, task: Task = CLASSES) -> None:
        super().__init__()
        self.head, self.task = head, task

    def forward(
        self,
        h: torch.Tensor,
        target: torch.Tensor,
        image: torch.Tensor,
        history: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits: torch.Tensor = self.head(h)
        return self.task(logits, target), logits


class Momentum(Auxiliary):
    """MAN / MAN++: a trainable copy `lb` and a frozen EMA copy `ema` of the next block's first
    unit, mixed as `y = s * lb(h) + (2 - s) * ema(h)` (`s` learnable for MAN++, fixed at 1 for
    MAN), then the `head` auxiliary on `y`. After each local backward the EMA moves towards the
    source unit's parameters: `ema = decay * ema + (1 - decay) * source` (buffers are not
    averaged; the copies keep their own BatchNorm statistics).

    With `recompute` (the default) the frozen branch `(2 - s) * ema(h)` holds no activations
    between forward and backward: the backward runs it again (recompute.py), after the
    trainable copy's backward has freed that copy's, so the auxiliary holds about one copy's
    activations at a time instead of two, for one more forward of the copy. The values and
    gradients are the same either way."""

    def __init__(
        self,
        source: nn.Module,
        head: Auxiliary,
        decay: float = 0.995,
        learnable_scale: bool = True,
        init: Literal["copy", "fresh"] = "fresh",
        recompute: bool = True,
    ) -> None:
        super().__init__()
        self.lb, self.ema = copy.deepcopy(source), copy.deepcopy(source)
        self.head: Auxiliary = head
        self.decay, self.recompute = decay, recompute
        if init == "fresh":  # MAN and MAN++: independent random copies (the EMA converges)
            fresh(self.lb)
            fresh(self.ema)
        self.ema.requires_grad_(False)
        if learnable_scale:
            self.scale = nn.Parameter(torch.tensor(1.0))
        else:
            self.register_buffer("scale", torch.tensor(1.0))
        self.source = tuple(source.parameters())
        """The source unit's parameters (the next block's own: not registered here)."""

    def forward(
        self,
        h: torch.Tensor,
        target: torch.Tensor,
        image: torch.Tensor,
        history: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The frozen branch first: autograd runs later nodes first, so the trainable copy's
        # backward (freeing its activations) comes before the frozen one is recomputed.
        frozen = recomputed(self.ema, self.frozen, h) if self.recompute else self.frozen(h)
        y = self.scale * self.lb(h) + frozen
        loss, logits = self.head(y, target, image)
        return loss, logits

    def frozen(self, h: torch.Tensor) -> torch.Tensor:
        """The EMA copy's share of the mix, `(2 - s) * ema(h)`."""
        out: torch.Tensor = (2 - self.scale) * self.ema(h)
        return out

    @torch.no_grad()
    def after_backward(self) -> None:
        ema_update(self.ema, self.source, self.decay)
        self.head.after_backward()


class InfoPro(Auxiliary):
    """InfoPro: `lambda1` times the BCE of `decoder` reconstructing the un-normalised input from
    the block's output, plus `lambda2` times the task loss of `classifier` (cross entropy, or
    SupCon: then no logits come back and the loop's accuracy for the block is NaN). The BCE
    runs in float32 or wider with autocast off (CUDA autocast refuses it)."""

    def __init__(
        self,
        decoder: InfoProDecoder,
        classifier: InfoProHead,
        lambda1: float,
        lambda2: float,
    ) -> None:
        super().__init__()
        self.decoder, self.classifier = decoder, classifier
        self.lambda1, self.lambda2 = lambda1, lambda2

    def forward(
        self,
        h: torch.Tensor,
        target: torch.Tensor,
        image: torch.Tensor,
        history: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        task, logits = self.classifier.task_loss(self.classifier(h), target)
        rebuilt = self.decoder(h)
        dtype = torch.promote_types(rebuilt.dtype, torch.float32)
        with torch.autocast(h.device.type, enabled=False):
            recon = F.binary_cross_entropy(rebuilt.to(dtype), image.clamp(0, 1).to(dtype))
        return self.lambda1 * recon + self.lambda2 * task, logits


class Adapter(nn.Module):
    """A learned 1x1 projection (conv for maps, Linear for sequences and features) and average
    pooling, from one unit's output shape to the next sampled unit's input shape."""

    def __init__(
        self, source: tuple[int, ...], layout: Layout, target: tuple[int, ...], out: Layout
    ) -> None:
        super().__init__()
        check_layout(source, layout)
        check_layout(target, out)
        self.layout, self.out = layout, out
        self.size = spatial(target, out)
        self.proj = nn.Linear(channels(source, layout), channels(target, out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = channels_first(h, self.layout)
        x = self.proj(x.movedim(1, -1)).movedim(-1, 1)  # 1x1 convolution = Linear over channels
        if self.size and list(x.shape[2:]) != self.size:
            x = getattr(F, f"adaptive_avg_pool{len(self.size)}d")(x, tuple(self.size))
        return channels_last_as(x, self.out)


class Augmented(Auxiliary):
    """AugLocal: fresh copies of units sampled from the rest of the network (adapters where
    consecutive shapes differ), then pooling and a Linear classifier, trained on the task's
    loss."""

    def __init__(
        self,
        layers: list[nn.Module],
        head: nn.Module,
        sampled: tuple[int, ...],
        task: Task = CLASSES,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(copy.deepcopy(layer) for layer in layers))
        fresh(self.layers)
        self.head, self.sampled = head, sampled  # the model's feature units copied
        self.task = task

    def forward(
        self,
        h: torch.Tensor,
        target: torch.Tensor,
        image: torch.Tensor,
        history: Sequence[torch.Tensor] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits: torch.Tensor = self.head(self.layers(h))
        return self.task(logits, target), logits


def ema_update(ema: nn.Module, source: Sequence[torch.Tensor], decay: float) -> None:
    """`ema = decay * ema + (1 - decay) * source`, parameter by parameter (not buffers)."""
    params: list[torch.Tensor] = list(ema.parameters())
    if params:
        # a source on another device (blocks grouped onto several) is copied over first
        here = [s.to(p.device, non_blocking=True) for p, s in zip(params, source, strict=True)]
        torch._foreach_mul_(params, decay)
        torch._foreach_add_(params, here, alpha=1 - decay)


def fresh(module: nn.Module) -> None:
    """Re-initialise as the papers' CIFAR ResNets do: convolutions He-normal over their fan-out
    (`normal(0, sqrt(2 / (k * k * out_channels)))`), BatchNorm weight 1 and bias 0, every other
    layer by its `reset_parameters()`; warn about layers that keep the copied weights."""
    for sub in module.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
            if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
        elif sub._parameters and any(p is not None for p in sub._parameters.values()):
            warnings.warn(
                f"`{type(sub).__name__}` has no reset_parameters(): the momentum auxiliary "
                "keeps its copied weights (init: fresh)",
                stacklevel=3,
            )
