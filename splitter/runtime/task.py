"""The task: what a prediction is compared with, the loss, and the test metrics.

Every loss here takes predictions channels first, as `F.cross_entropy` does: `(B, C)` for
`class` targets `(B,)`, `(B, V, T)` for token targets `(B, T)` (`next_token`: each position's
next token; `per_token`: a label per position), `(B, C, h, w)` for `pixel` targets `(B, H, W)`,
where a head's coarser map is resized to the targets' (bilinear) before the loss. A language
model's own output `(B, T, V)` is moved to channels first by `Task.channels_first`.

`cross_entropy` is the negative log-likelihood of the target class; `mse` and `bce` compare the
predictions with the targets one-hot over the classes (`bce` on logits: a sigmoid per class);
`file.py:function` is the user's function of (prediction, targets), its file copied into the
package: it is given predictions as the model gives them (tokens `(B, T, V)`, pixels resized to
the targets), by the model and by every head.

`Score` adds up a test set's figures in one tensor, so that pipeline stages can sum it across
ranks: right and seen targets for every task, the summed cross entropy for tokens (perplexity
is its exponential), the per-class intersection and union for pixels (mean IoU over the classes
present in the targets or the predictions)."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import torch
import torch.nn.functional as F

Targets = Literal["class", "next_token", "per_token", "pixel", "boxes"]


@dataclass(frozen=True)
class Task:
    """The target kind and the loss."""

    targets: Targets = "class"
    loss: str = "cross_entropy"

    @property
    def dense(self) -> bool:
        """Whether a prediction is made per token or per pixel, not per sample."""
        return self.targets != "class"

    @property
    def tokens(self) -> bool:
        return self.targets in ("next_token", "per_token")

    def channels_first(self, out: torch.Tensor) -> torch.Tensor:
        """The model's own output as the losses take it: `(B, T, V)` tokens to `(B, V, T)`."""
        return out.movedim(-1, 1) if self.tokens and out.dim() == 3 else out

    @property
    def pixels(self) -> bool:
        """Predictions per pixel: of `pixel` targets, or of `boxes` (the class of the box over
        each pixel, which the blocks' heads learn)."""
        return self.targets in ("pixel", "boxes")

    def fitted(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predictions at the targets' size: a coarser map of pixel logits resized to them."""
        if self.pixels and tuple(logits.shape[2:]) != tuple(y.shape[1:]):
            return F.interpolate(logits, size=tuple(y.shape[1:]), mode="bilinear")
        return logits

    def __call__(self, logits: torch.Tensor, y: Any) -> torch.Tensor:
        """The loss of channels-first `logits` against the targets `y` (for `boxes`, against
        the class of the box over each pixel, by cross entropy)."""
        y = masks_of(y)
        logits = self.fitted(logits, y)
        if self.loss == "model":
            return F.cross_entropy(logits, y)
        if ".py:" in self.loss:  # the user's function, on predictions as the model gives them
            given = logits.movedim(1, -1) if self.tokens else logits
            loss: torch.Tensor = function(self.loss)(given, y)
            return loss
        if self.loss == "cross_entropy":
            return F.cross_entropy(logits, y)
        hot = F.one_hot(y, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        if self.loss == "mse":
            return F.mse_loss(logits, hot)
        return F.binary_cross_entropy_with_logits(logits, hot)

    def accuracy(self, logits: torch.Tensor, y: Any) -> torch.Tensor:
        """The share of targets the logits predict; NaN without logits (a SupCon head, a
        detection model's loss dict)."""
        y = masks_of(y)
        if logits.numel() == 0:
            return torch.tensor(float("nan"), device=y.device)
        with torch.no_grad():
            right: torch.Tensor = self.fitted(logits.detach(), y).argmax(dim=1) == y
            return right.float().mean()

    def score(self, classes: int) -> Score:
        return Score(self, classes)


@cache
def function(loss: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The function `NAME` of `file.py:NAME`, from the copy of the file beside train.py."""
    file, _, name = loss.rpartition(":")
    found: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    found = getattr(importlib.import_module(file.removesuffix(".py").split("/")[-1]), name)
    return found


def masks_of(y: Any) -> torch.Tensor:
    """The targets as a tensor: a batch of boxes (taskdata.Boxes) as its per-pixel classes."""
    found: torch.Tensor = y if isinstance(y, torch.Tensor) else y.masks
    return found


CLASSES = Task()
"""Classification with cross entropy: every auxiliary's task unless it is given another."""


class Score:
    """A test set's figures, added batch by batch into `totals`."""

    def __init__(self, task: Task, classes: int) -> None:
        self.task, self.classes = task, classes
        size = 3 if task.tokens else 2 + 2 * classes if task.targets == "pixel" else 2
        self.totals = torch.zeros(size, dtype=torch.float64)

    def add(self, out: Any, y: Any) -> None:
        """One batch: the model's selected output (with `loss: model`, its loss dict) and the
        targets."""
        if self.task.loss == "model":  # the loss, weighted by the batch's samples
            loss = sum(v.detach().double().cpu() for v in out.values())
            self.totals += torch.stack([loss * len(y), torch.tensor(float(len(y)))])
            return
        logits = self.task.fitted(self.task.channels_first(out.detach()), y.to(out.device))
        y = y.to(out.device)
        guess = logits.argmax(dim=1)
        figures = [(guess == y).sum(), torch.tensor(y.numel())]
        if self.task.tokens:
            figures.append(F.cross_entropy(logits.float(), y, reduction="sum"))
        elif self.task.targets == "pixel":
            hit = F.one_hot(guess.flatten(), self.classes).bool()
            true = F.one_hot(y.flatten(), self.classes).bool()
            figures += [*(hit & true).sum(0), *(hit | true).sum(0)]
        self.totals += torch.stack([f.double().cpu() for f in figures])

    def summary(self) -> dict[str, float]:
        """`test_accuracy` (of samples, tokens or pixels), with `test_loss` and
        `test_perplexity` for tokens and `test_pixel_accuracy` and `test_miou` for pixels;
        `test_loss` alone with `loss: model` (the model's own loss dict, summed)."""
        t = self.totals
        seen = max(float(t[1]), 1.0)
        if self.task.loss == "model":
            return {"test_loss": float(t[0]) / seen}
        found = {"test_accuracy": float(t[0]) / seen}
        if self.task.tokens:
            loss = float(t[2]) / seen
            found |= {"test_loss": loss, "test_perplexity": math.exp(min(loss, 700.0))}
        elif self.task.targets == "pixel":
            inter, union = t[2 : 2 + self.classes], t[2 + self.classes :]
            present = union > 0
            iou = (inter[present] / union[present]).mean() if bool(present.any()) else t[0] * 0
            found |= {"test_pixel_accuracy": found["test_accuracy"], "test_miou": float(iou)}
        return found


def headline(scores: dict[str, float]) -> str:
    """`test accuracy 0.9812`, `test perplexity 3.41 (accuracy 0.52)` or `test mean IoU 0.61
    (pixel accuracy 0.93)`."""
    if "test_perplexity" in scores:
        return (
            f"test perplexity {scores['test_perplexity']:.3f} "
            f"(accuracy {scores['test_accuracy']:.4f})"
        )
    if "test_miou" in scores:
        return (
            f"test mean IoU {scores['test_miou']:.4f} "
            f"(pixel accuracy {scores['test_pixel_accuracy']:.4f})"
        )
    if "test_accuracy" not in scores:
        return f"test loss {scores['test_loss']:.4f}"
    return f"test accuracy {scores['test_accuracy']:.4f}"
