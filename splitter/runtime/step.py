"""One training step: every block on one batch, each on its local loss (or e2e: the whole)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import data
import pipeline
from auxiliary import InfoPro
from memory import Allocator, Usage
from recompute import recomputed
from root import Around
from settings import LOCK
from task import Task

TASK = Task(**{k: v for k, v in (LOCK.get("task") or {}).items() if k in ("targets", "loss")})
"""The task of spec.lock.yaml: its targets and loss."""

Inputs = torch.Tensor | tuple[torch.Tensor, ...]
"""A batch's model input: one tensor, or one per input of a forward that takes several."""


def as_tuple(x: Inputs) -> tuple[torch.Tensor, ...]:
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


def tensors_of(y: Any) -> tuple[torch.Tensor, ...]:
    """The tensors of a batch's targets (a detection batch holds several)."""
    return (y,) if isinstance(y, torch.Tensor) else tuple(y.tensors())


def moved(x: Inputs, device: torch.device) -> Inputs:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    return tuple(t.to(device, non_blocking=True) for t in x)


def fed(block: nn.Module, x: torch.Tensor, others: dict[str, torch.Tensor]) -> Any:
    """Block `block` on `x` and the model's other inputs it reads (its `reads`)."""
    return block(x, *(others[name] for name in getattr(block, "reads", ())))


@dataclass
class Parts:
    """The user's model, the blocks sharing its modules, and the blocks' auxiliaries."""

    model: nn.Module
    blocks: nn.ModuleList
    auxiliaries: nn.ModuleList
    num_classes: int
    windows: list[int]
    """How many blocks each block's loss trains (more than 1 only for MLAAN)."""
    inputs: tuple[str, ...] = ("x",)
    """The model's inputs by name, in the forward's order (a batch's `x` is a tuple of them
    when there are several)."""
    around: Around | None = None
    """With `model.root`: the model around the root the blocks split."""

    def split_inputs(self, x: Inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A batch's first input, which block 0 is given, and the others by name."""
        if isinstance(x, torch.Tensor):
            return x, {}
        return x[0], dict(zip(self.inputs[1:], x[1:], strict=True))

    @property
    def reach(self) -> int:
        """The most blocks one auxiliary's loss trains: how many block inputs a step keeps."""
        return max(self.windows)

    @property
    def last(self) -> int:
        return len(self.blocks) - 1


def select_output(out: Any, key: int | str | None = None) -> torch.Tensor:
    """The output the task loss uses (`model.output` of the spec; default the first), or the
    output at `key`."""
    key = LOCK["model"]["output"] if key is None else key
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out[key] if key is not None else next(iter(out.values()))  # type: ignore[no-any-return]
    if isinstance(key, str):
        return getattr(out, key)  # type: ignore[no-any-return]
    return out[key or 0]  # type: ignore[no-any-return]


def model_args(inputs: Inputs, y: Any) -> tuple[Any, ...]:
    """What the model is called with: its inputs, and with `loss: model` the targets too (a
    detection model's boxes and labels per image, from which it computes its losses)."""
    found = as_tuple(inputs)
    return (*found, y.targets) if TASK.loss == "model" else found


def task_loss(out: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's loss on the selected output plus, where the model returns more outputs (in
    train mode), each other output's loss at its `task.aux_outputs` weight; the loss, and the
    logits (channels first) accuracy is measured on. With `loss: model`, the sum of the loss
    dict the model returned (no logits)."""
    if TASK.loss == "model":
        losses = list(out.values())
        return sum(losses[1:], losses[0]), losses[0].new_empty(0)
    logits = TASK.channels_first(select_output(out))
    loss = TASK(logits, y)
    if not isinstance(out, torch.Tensor):
        for key, weight in (LOCK.get("task") or {}).get("aux_outputs", {}).items():
            loss = loss + weight * TASK(TASK.channels_first(select_output(out, key)), y)
    return loss, logits


class Local(nn.Module):
    """Block k and its auxiliary (none for the last block, which trains on the task loss):
    returns the block's output, its local loss and the logits the loss was computed on. With
    `earlier` blocks (MLAAN's last block), the block runs on them, recomputed from the detached
    input of the first, so the loss trains them too."""

    def __init__(
        self,
        block: nn.Module,
        auxiliary: nn.Module | None,
        earlier: Sequence[nn.Module] = (),
        around: Around | None = None,
    ) -> None:
        super().__init__()
        self.block, self.auxiliary = block, auxiliary
        self._earlier = tuple(earlier)  # the real blocks, held (and trained) by their own Local
        self._around = around  # with `model.root` (the last block): the model around it

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        image: torch.Tensor,
        history: list[torch.Tensor],
        others: dict[str, torch.Tensor],
        inputs: Inputs | None = None,
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        if self._earlier:
            x = history[-len(self._earlier) - 1]
            for block in self._earlier:
                x = fed(block, x, others)
        out = fed(self.block, x, others)
        if self.auxiliary is None:
            whole = out
            if self._around is not None:  # the model around its root, on the batch's inputs
                assert inputs is not None, "the last block of a root needs the model's inputs"
                whole = self._around.output(model_args(inputs, y), out)
            loss, logits = task_loss(whole, y)
            return out, loss, logits
        loss, logits = self.auxiliary(out, y, image, history)
        return out, loss, logits


def needs_image(auxiliary: nn.Module) -> bool:
    """Whether an auxiliary reconstructs the un-normalised input (InfoPro's decoder)."""
    return any(isinstance(m, InfoPro) for m in auxiliary.modules())


@dataclass
class Flight:
    """One batch on its way through the blocks."""

    step: int | None
    x: torch.Tensor
    """The input of the next block."""
    y: torch.Tensor
    image: torch.Tensor
    """The un-normalised input, for auxiliaries that reconstruct it (else empty)."""
    history: list[torch.Tensor]
    """The detached inputs of the last blocks (MLAAN recomputes its window from them)."""
    others: dict[str, torch.Tensor] = field(default_factory=dict)
    """The model's other inputs, by name, for the blocks that read them."""
    inputs: Inputs | None = None
    """With `model.root`: the batch's model inputs, which the model around the root runs on."""

    def to(self, device: torch.device) -> Flight:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        history = [move(t) for t in self.history]
        others = {name: move(t) for name, t in self.others.items()}
        return Flight(self.step, history[-1], move(self.y), move(self.image), history, others)


@dataclass
class Step:
    """Everything a training step needs."""

    parts: Parts
    locals: list[nn.Module]
    """Block k with its auxiliary (wrapped in DDP for data-parallel replicas)."""
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    memory: Usage
    allocator: Allocator
    autocast: Callable[[], Any]
    """A fresh autocast context (disabled in fp32)."""
    dataset: data.Data
    random: pipeline.BlockRandom
    lr: Callable[[int], float]
    """The learning rate at a step (the schedule)."""
    total: int
    """The steps of the run."""
    per_epoch: int
    latest: list[tuple[torch.Tensor, torch.Tensor] | None] = field(init=False)
    """Each block's loss and accuracy on the last batch it trained on (None before one)."""
    before_ema: dict[int, Callable[[int | None], None]] = field(default_factory=dict)
    """What runs before block k's EMA update (receiving a source from another rank)."""
    stats: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] | None = None
    """While train() keeps a history: each step's loss and accuracy by block, until taken."""
    checkpointed: bool = False
    """e2e only: recompute each block's activations in the backward (`--checkpoint`)."""

    def __post_init__(self) -> None:
        self.latest = [None] * len(self.parts.blocks)

    @property
    def per_block(self) -> bool:
        return len(self.optimizers) > 1


def block_step(s: Step, k: int, f: Flight) -> None:
    """Block k on the detached output of the block before: forward, local loss, backward at
    once, its auxiliary's EMA update, and (per-block optimizers) its optimizer step."""
    graph = k == s.parts.last or getattr(s.parts.auxiliaries[k], "has_loss", True)
    with s.random.use(k), s.memory.saved.watch(), s.autocast(), torch.set_grad_enabled(graph):
        out, loss, logits = s.locals[k](f.x, f.y, f.image, f.history, f.others, f.inputs)
    if loss.requires_grad:  # MLAAN's block 0 has no loss of its own
        s.scaler.scale(loss).backward()
    s.memory.saved.release()
    if k < s.parts.last:
        if k in s.before_ema:
            s.before_ema[k](f.step)
        s.parts.auxiliaries[k].after_backward()  # type: ignore[operator]
        f.x = out.detach()
        f.history = [*f.history[1:], f.x] if len(f.history) >= s.parts.reach else [*f.history, f.x]
    if s.per_block:
        step_optimizer(s, s.optimizers[k], f.step)
    s.latest[k] = latest = (loss.detach(), accuracy(logits, f.y))
    if s.stats is not None and f.step is not None:
        s.stats.setdefault(f.step, {})[k] = latest
    s.allocator.release()  # what this block freed goes back before the next one runs


def local_step(
    s: Step, inputs: Inputs, y: Any, step: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every block on one batch, in order (the sequential schedule); each block's loss and
    accuracy. `step` sets the learning rate by the schedule (None: as the optimizers have it)."""
    if s.parts.around is None:
        x, others = s.parts.split_inputs(inputs)
        f = Flight(step, x, y, s.dataset.unnormalise(x), [x], others)
    else:  # block 0 trains on what the model gives its root; the last block on the model's
        x = s.parts.around.root_input(model_args(inputs, y))
        f = Flight(step, x, y, s.dataset.unnormalise(x), [x], inputs=inputs)
    for k in range(len(s.parts.blocks)):
        block_step(s, k, f)
    if not s.per_block:
        step_optimizer(s, s.optimizers[0], step)
    s.scaler.update()
    return [v for v in s.latest if v is not None]


def e2e_step(
    s: Step, inputs: Inputs, y: torch.Tensor, step: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The unsplit model on the task loss, one backward through everything (with
    `--checkpoint`, its blocks in a row, each but the last recomputed in the backward)."""
    with s.memory.saved.watch(), s.autocast():
        if s.checkpointed:
            out = checkpointed(s.parts.blocks, *s.parts.split_inputs(inputs))
        else:
            out = s.parts.model(*model_args(inputs, y))
        loss, logits = task_loss(out, y)
    s.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
    s.memory.saved.release()
    step_optimizer(s, s.optimizers[0], step)
    s.scaler.update()
    s.allocator.release()
    s.latest = [latest := (loss.detach(), accuracy(logits, y))]
    if s.stats is not None and step is not None:
        s.stats[step] = {0: latest}
    return s.latest  # type: ignore[return-value]


def checkpointed(
    blocks: nn.ModuleList, x: torch.Tensor, others: dict[str, torch.Tensor] | None = None
) -> Any:
    """The model's forward as its blocks in a row (the blocks compose to the model: `verify`
    checks it), each but the last under activation checkpointing: the backward keeps only the
    block inputs and recomputes one block's activations at a time (recompute.py: the same
    random state, the buffers put back, so the weights are plain e2e's)."""
    others = others or {}
    for block in blocks[:-1]:
        x = recomputed(block, fed, block, x, others)
    return fed(blocks[-1], x, others)


def step_optimizer(s: Step, optimizer: torch.optim.Optimizer, step: int | None) -> None:
    """An optimizer's step at the schedule's learning rate (`step` None: its own), then its
    gradients cleared."""
    if step is not None:
        for group in optimizer.param_groups:
            group["lr"] = s.lr(step)
    s.scaler.step(optimizer)
    optimizer.zero_grad(set_to_none=True)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The share of `y` (samples, tokens or pixels) the channels-first logits predict; NaN
    without logits (a SupCon head has none)."""
    found: torch.Tensor = TASK.accuracy(logits, y)
    return found
