"""Train the model as gradient-isolated blocks, each on its own local loss.

    python train.py                          # the data and settings of spec.lock.yaml
    python train.py --data synthetic --steps 3
    python train.py --mode e2e               # the unsplit model: same data, optimizer, schedule
    python train.py --data cifar10 --data-root ~/data --epochs 100 --out runs/cifar10
    python train.py --resume runs/checkpoint.pt --export trained.pt
    python train.py --device cuda:0 cuda:1   # groups of blocks on two GPUs, as a wavefront
    torchrun --nproc-per-node 4 train.py     # a pipeline: each process trains a stage of blocks

Every setting not given as a flag comes from spec.lock.yaml beside this file. Block k trains on
the detached output of block k-1 and its auxiliary's loss; its backward runs (and, with the
`block` optimizer scope, its optimizer steps) before block k+1 starts. The last block trains on
the task loss. `--out` receives checkpoint.pt and metrics.json.

With several devices the blocks form contiguous groups balanced by their FLOPs, and group g
trains on batch t while group g+1 trains on batch t-1; the weights are those of the one-device
run. Under torchrun each rank owns a stage of blocks (`--stages`, default the world size; more
processes than stages make data-parallel replicas of each stage), activations and labels go
forward between ranks, and nothing goes back but the parameters a `momentum` auxiliary keeps an
EMA of when they live on the next rank: that EMA is one step staler than in one process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils import _pytree as pytree

try:
    import yaml
except ImportError:  # torch does not depend on it
    sys.exit("train.py reads spec.lock.yaml with PyYAML: `pip install pyyaml`")

import blocks
import checkpoint
import data
import model as model_file
import optim
import pipeline
from auxiliary import InfoPro, Momentum
from memory import Allocator, Usage

HERE = Path(__file__).resolve().parent
LOCK = yaml.safe_load((HERE / "spec.lock.yaml").read_text())
TRAINING, PACKAGE = LOCK["training"], LOCK["package"]


class ConfigError(ValueError):
    """A setting this run cannot honour; the message names it and the fix."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["local", "e2e"], default="local")
    p.add_argument("--data", choices=data.DATA_SETS, default=TRAINING["data"]["name"])
    p.add_argument("--data-root", default=TRAINING["data"]["root"])
    p.add_argument("--steps", type=int, default=None, help="train this many steps (not --epochs)")
    p.add_argument("--epochs", type=int, default=TRAINING["epochs"])
    p.add_argument("--batch-size", type=int, default=TRAINING["batch_size"])
    p.add_argument("--seed", type=int, default=TRAINING["seed"])
    p.add_argument(
        "--device",
        nargs="+",
        default=TRAINING["devices"],
        help="one device, or several for groups of blocks (under torchrun: one per local rank)",
    )
    p.add_argument("--stages", type=int, default=TRAINING["stages"], help="pipeline stages")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a rank waits for another")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=TRAINING["precision"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile every block")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default="runs", help="folder of checkpoint.pt and metrics.json")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH")
    p.add_argument("--export", default=None, metavar="PATH", help="save the model's state_dict")
    p.add_argument("--save-every", type=int, default=0, help="steps between checkpoints")
    p.add_argument("--no-checkpoint", action="store_true", help="write no checkpoint.pt")
    p.add_argument("--eval-batches", type=int, default=None, help="evaluate on this many batches")
    p.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    p.add_argument(
        "--malloc",
        choices=Allocator.CHOICES,
        default="trim",
        help="how freed memory goes back to the system (glibc): see memory.Allocator",
    )
    return p.parse_args(argv)


# ---------------------------------------------------------------- the model and its blocks


@dataclass
class Parts:
    """The user's model, the blocks sharing its modules, and the blocks' auxiliaries."""

    model: nn.Module
    blocks: nn.ModuleList
    auxiliaries: nn.ModuleList
    num_classes: int
    windows: list[int]
    """How many blocks each block's loss trains (more than 1 only for MLAAN)."""

    @property
    def reach(self) -> int:
        """The most blocks one auxiliary's loss trains: how many block inputs a step keeps."""
        return max(self.windows)

    @property
    def last(self) -> int:
        return len(self.blocks) - 1


def build(seed: int) -> Parts:
    torch.manual_seed(seed)
    spec = LOCK["model"]
    net = getattr(model_file, PACKAGE["builder"])(**spec["kwargs"])
    check_fingerprint(net)
    split = blocks.build_blocks(net)
    num_classes = PACKAGE["num_classes"]
    auxiliaries = blocks.build_auxiliaries(net, split, num_classes)
    windows = [int(getattr(a, "window", 1)) for a in auxiliaries] + [1]
    return Parts(net, split, auxiliaries, num_classes, windows)


def check_fingerprint(net: nn.Module) -> None:
    found = checkpoint.fingerprint(net)
    if found != PACKAGE["fingerprint"]:
        raise ConfigError(
            "model.py builds a model whose parameters differ from the one compiled (state_dict "
            f"fingerprint {found}, spec.lock.yaml says {PACKAGE['fingerprint']}); "
            "run `splitter compile` again for the changed model"
        )


def select_output(out: Any) -> torch.Tensor:
    """The output the task loss uses (`model.output` of the spec; default the first)."""
    key = LOCK["model"]["output"]
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out[key] if key is not None else next(iter(out.values()))  # type: ignore[no-any-return]
    if isinstance(key, str):
        return getattr(out, key)  # type: ignore[no-any-return]
    return out[key or 0]  # type: ignore[no-any-return]


class Local(nn.Module):
    """Block k and its auxiliary (none for the last block, which trains on the task loss):
    returns the block's output, its local loss and the logits the loss was computed on."""

    def __init__(self, block: nn.Module, auxiliary: nn.Module | None) -> None:
        super().__init__()
        self.block, self.auxiliary = block, auxiliary

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, image: torch.Tensor, history: list[torch.Tensor]
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        out = self.block(x)
        if self.auxiliary is None:
            logits = select_output(out)
            return out, F.cross_entropy(logits, y), logits
        loss, logits = self.auxiliary(out, y, image, history)
        return out, loss, logits


def needs_image(auxiliary: nn.Module) -> bool:
    """Whether an auxiliary reconstructs the un-normalised input (InfoPro's decoder)."""
    return any(isinstance(m, InfoPro) for m in auxiliary.modules())


# ---------------------------------------------------------------- optimizers


def make_optimizers(parts: Parts, mode: str) -> list[torch.optim.Optimizer]:
    """One optimizer per block (with its auxiliary), or one for everything."""
    config = TRAINING["optimizer"]
    if mode == "e2e":
        return [optim.optimizer(config, optim.trainable(parts.model))]
    if TRAINING["optimizer_scope"] == "global":
        return [optim.optimizer(config, optim.trainable(parts.blocks, parts.auxiliaries))]
    pairs = zip(parts.blocks, [*parts.auxiliaries, nn.Module()], strict=True)
    return [optim.optimizer(config, optim.trainable(block, aux)) for block, aux in pairs]


# ---------------------------------------------------------------- one block on one batch


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

    def to(self, device: torch.device) -> Flight:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        history = [move(t) for t in self.history]
        return Flight(self.step, history[-1], move(self.y), move(self.image), history)


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
    autocast: Any
    dataset: data.Data
    random: pipeline.BlockRandom
    lr: Callable[[int], float]
    """The learning rate at a step (the schedule)."""
    total: int
    """The steps of the run."""
    per_epoch: int
    latest: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)
    """Each block's loss and accuracy on the last batch it trained on."""
    before_ema: dict[int, Callable[[int | None], None]] = field(default_factory=dict)
    """What runs before block k's EMA update (receiving a source from another rank)."""

    @property
    def per_block(self) -> bool:
        return len(self.optimizers) > 1


def block_step(s: Step, k: int, f: Flight) -> None:
    """Block k on the detached output of the block before: forward, local loss, backward at
    once, its auxiliary's EMA update, and (per-block optimizers) its optimizer step."""
    with s.random.use(k), s.memory.saved.watch(), s.autocast():
        out, loss, logits = s.locals[k](f.x, f.y, f.image, f.history)
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
    s.latest[k] = (loss.detach(), accuracy(logits, f.y))
    s.allocator.release()  # what this block freed goes back before the next one runs


def local_step(
    s: Step, x: torch.Tensor, y: torch.Tensor, step: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every block on one batch, in order (the sequential schedule); each block's loss and
    accuracy. `step` sets the learning rate by the schedule (None: as the optimizers have it)."""
    f = Flight(step, x, y, s.dataset.unnormalise(x), [x])
    for k in range(len(s.parts.blocks)):
        block_step(s, k, f)
    if not s.per_block:
        step_optimizer(s, s.optimizers[0], step)
    s.scaler.update()
    return [v for v in s.latest if v is not None]


def e2e_step(
    s: Step, x: torch.Tensor, y: torch.Tensor, step: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The unsplit model on the task loss, one backward through everything."""
    with s.memory.saved.watch(), s.autocast():
        logits = select_output(s.parts.model(x))
        loss = F.cross_entropy(logits, y)
    s.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
    s.memory.saved.release()
    step_optimizer(s, s.optimizers[0], step)
    s.scaler.update()
    s.allocator.release()
    s.latest = [(loss.detach(), accuracy(logits, y))]
    return s.latest  # type: ignore[return-value]


def step_optimizer(s: Step, optimizer: torch.optim.Optimizer, step: int | None) -> None:
    if step is not None:
        for group in optimizer.param_groups:
            group["lr"] = s.lr(step)
    s.scaler.step(optimizer)
    optimizer.zero_grad(set_to_none=True)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=1) == y).float().mean()


# ---------------------------------------------------------------- schedules


class Sequential:
    """One device: every block on batch t, in order, before batch t+1."""

    def __init__(self, s: Step, args: argparse.Namespace, device: torch.device) -> None:
        self.s, self.args, self.device = s, args, device

    def run(self, a: int, b: int, times: list[float]) -> Iterator[int]:
        """Train on steps a..b-1; yields each step once every block has trained on it."""
        s = self.s
        for step, (x, y) in batches(s, self.args, a, b):
            began = time.perf_counter()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with s.memory.step((x, y), s.optimizers):
                (e2e_step if self.args.mode == "e2e" else local_step)(s, x, y, step)
            times.append(time.perf_counter() - began)
            yield step

    def evaluate(self, test: Iterator[Any]) -> float:
        """Test accuracy of the model (the blocks share its modules)."""
        correct = seen = 0
        for x, y in test:
            logits = self.forward(x.to(self.device))
            correct += int((logits.argmax(dim=1).cpu() == y).sum())
            seen += len(y)
        return correct / max(1, seen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_output(self.s.parts.model(x))

    def close(self) -> None:
        """Nothing is in flight."""


class Wavefront(Sequential):
    """Contiguous groups of blocks on several devices: at each tick group g trains on batch
    t - g, so the devices work at once. Groups are issued last first, so every block sees the
    batches in order and a block's EMA source has made exactly the updates it has in one
    process: the weights are the sequential run's."""

    def __init__(
        self, s: Step, args: argparse.Namespace, groups: list[range], devices: list[torch.device]
    ) -> None:
        super().__init__(s, args, devices[0])
        self.groups, self.devices = groups, devices

    def flight(self, step: int, x: torch.Tensor, y: torch.Tensor) -> Flight:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return Flight(step, x, y, self.s.dataset.unnormalise(x), [x])

    def run(self, a: int, b: int, times: list[float]) -> Iterator[int]:
        s, width = self.s, len(self.groups)
        steps = batches(s, self.args, a, b)
        waiting: list[Flight | None] = [None] * width  # waiting[g]: the batch group g trains on
        more = True
        while more or any(f is not None for f in waiting):
            began = time.perf_counter()
            following = next(steps, None)
            more = following is not None
            if following is not None:
                step, (x, y) = following
                waiting[0] = self.flight(step, x, y)
            batch = [t for f in waiting if f is not None for t in (f.x, f.y)]
            done = None
            with s.memory.step(batch, s.optimizers):
                for g in reversed(range(width)):
                    f, waiting[g] = waiting[g], None
                    if f is None:
                        continue
                    for k in self.groups[g]:
                        block_step(s, k, f)
                    if g + 1 < width:
                        waiting[g + 1] = f.to(self.devices[g + 1])
                    else:
                        done = f.step
                s.scaler.update()
            times.append(time.perf_counter() - began)
            if done is not None:
                yield done

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for group, device in zip(self.groups, self.devices, strict=True):
            x = x.to(device, non_blocking=True)
            for k in group:
                x = self.s.parts.blocks[k](x)
        return select_output(x)


class Pipeline:
    """One stage of a torchrun pipeline: receive a batch's activations and labels from the
    previous stage (the first stage reads the data), train this stage's blocks on it, send the
    output on. A `momentum` auxiliary whose source unit is on the next stage gets that unit's
    parameters from it once per step (`pipeline.SourceSender`)."""

    def __init__(
        self,
        s: Step,
        args: argparse.Namespace,
        layout: pipeline.Layout,
        groups: list[range],
        device: torch.device,
        channels: pipeline.Groups,
    ) -> None:
        self.s, self.args, self.layout, self.device = s, args, layout, device
        self.mine, self.channels, self.start = groups[layout.stage], channels, 0
        before, after = layout.previous, layout.next
        self.before = pipeline.Link(layout, before, device) if before is not None else None
        self.after = pipeline.Link(layout, after, device) if after is not None else None
        auxiliaries = s.parts.auxiliaries
        later = range(self.mine.stop, s.parts.last)
        self.send_image = any(needs_image(auxiliaries[k]) for k in later)
        self.sender: pipeline.SourceSender | None = None
        self.mirror: pipeline.SourceMirror | None = None
        last, first = self.mine[-1], self.mine[0]
        if after is not None and isinstance(auxiliaries[last], Momentum):
            link = pipeline.Link(layout, after, device, channels.source(layout.rank, after))
            self.mirror = pipeline.SourceMirror(link, auxiliaries[last].source, device)
            auxiliaries[last].source = self.mirror.tensors
            s.before_ema[last] = self.receive_source
        if before is not None and isinstance(auxiliaries[first - 1], Momentum):
            link = pipeline.Link(layout, before, device, channels.source(layout.rank, before))
            self.sender = pipeline.SourceSender(link, auxiliaries[first - 1].source)

    def receive_source(self, step: int | None) -> None:
        if step is not None and step > self.start and self.mirror is not None:
            self.mirror.receive(step)

    def sources(self) -> dict[int, torch.Tensor]:
        """The source copy this stage last sent back, by the block whose EMA reads it."""
        return {self.mine[0] - 1: self.sender.last} if self.sender is not None else {}

    def resume(self, state: dict[str, Any]) -> None:
        self.start = int(state["step"])
        if self.mirror is not None:
            self.mirror.restore(state["sources"].get(self.mine[-1]))

    def share(self, t: torch.Tensor) -> torch.Tensor:
        """This replica's slice of a batch."""
        share: torch.Tensor = t.tensor_split(self.layout.replicas)[self.layout.replica]
        return share

    def flight(self, step: int, steps: Iterator[tuple[int, Any]]) -> Flight:
        if self.before is None:
            _, (x, y) = next(steps)
            x, y = self.share(x).to(self.device), self.share(y).to(self.device)
            return Flight(step, x, y, self.s.dataset.unnormalise(x), [x])
        x, y, *image = self.before.receive(f"receiving the activations of step {step}")
        if self.args.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return Flight(step, x, y, image[0] if image else x.new_empty(0), [x])

    def run(self, a: int, b: int, times: list[float]) -> Iterator[int]:
        s = self.s
        steps = batches(s, self.args, a, b) if self.before is None else iter(())
        for step in range(a, b):
            began = time.perf_counter()
            if self.sender is not None:
                self.sender.send(step, needed=step + 1 < s.total)
            f = self.flight(step, steps)
            with s.memory.step((f.x, f.y), s.optimizers):
                for k in self.mine:
                    block_step(s, k, f)
                s.scaler.update()
            if self.after is not None:
                message = [f.x, f.y, f.image] if self.send_image else [f.x, f.y]
                self.after.send(message, f"sending the activations of step {step}")
            times.append(time.perf_counter() - began)
            yield step

    def evaluate(self, test: Iterator[Any]) -> float:
        """The test batches flow through the stages like training batches; the last stage
        counts what its replica got right, and every rank learns the total."""
        counts = torch.zeros(2, dtype=torch.int64)
        while (message := self.next_test(test)) is not None:
            x, y = message
            for k in self.mine:
                x = self.s.parts.blocks[k](x)
            if self.after is not None:
                self.after.send([x, y], "sending test activations")
            else:
                right = int((select_output(x).argmax(dim=1) == y).sum())
                counts += torch.tensor([right, len(y)])
        if self.after is not None:
            self.after.send([], "ending the test stream")
        with pipeline.guard(self.layout, "the other ranks", "adding up the test accuracy"):
            dist.all_reduce(counts, group=self.channels.objects)
        return int(counts[0]) / max(1, int(counts[1]))

    def next_test(self, test: Iterator[Any]) -> list[torch.Tensor] | None:
        if self.before is None:
            batch = next(test, None)
            return None if batch is None else [self.share(t).to(self.device) for t in batch]
        message = self.before.receive("receiving test activations")
        return message or None

    def gather(self, step: int, model_only: bool = False) -> dict[str, Any] | None:
        """Every stage's part of a checkpoint (or only of the model's state_dict), merged on
        rank 0 (None elsewhere). The replicas of a stage hold the same weights; only their
        random generators differ."""
        layout, s = self.layout, self.s
        part: dict[str, Any] | None = None
        if layout.replica == 0:
            part = stage_state(s, step, self.mine, self.sources(), layout.stage, model_only)
        elif not model_only:
            part = {"replica_rng": {layout.replica: {k: s.random.state(k) for k in self.mine}}}
        parts = self.collect(part, "gathering a checkpoint")
        return merge([p for p in parts if p is not None]) if parts is not None else None

    def gather_report(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank's metrics (on rank 0; elsewhere only this rank's)."""
        return self.collect(mine, "gathering the metrics") or [mine]

    def collect(self, value: Any, what: str) -> list[Any] | None:
        found: list[Any] | None = [None] * self.layout.world if self.layout.rank == 0 else None
        with pipeline.guard(self.layout, "the other ranks", what):
            dist.gather_object(value, found, dst=0, group=self.channels.objects)
        return found

    def close(self) -> None:
        """Wait for the last sends."""
        for link in (self.after, self.sender.link if self.sender else None):
            if link is not None:
                link.wait("finishing the last send")


def segments(args: argparse.Namespace, start: int, total: int, per_epoch: int) -> list[int]:
    """The steps after which the run evaluates or saves: epoch ends, every `--save-every`, the
    last; a wavefront or pipeline drains at each."""
    ends = {total, *range(per_epoch, total, per_epoch)}
    if args.save_every and not args.no_checkpoint:
        ends |= set(range(args.save_every, total, args.save_every))
    return sorted(end for end in ends if end > start)


def batches(s: Step, args: argparse.Namespace, start: int, total: int) -> Iterator[tuple[int, Any]]:
    step = start
    while step < total:
        epoch, skip = divmod(step, s.per_epoch)
        for x, y in s.dataset.train_batches(epoch, args.batch_size, args.seed, skip):
            yield step, (x, y)
            step += 1
            if step >= total:
                return


Schedule = Sequential | Pipeline  # a Wavefront is a Sequential


# ---------------------------------------------------------------- checkpoints


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
    state: dict[str, Any] = {"model": model}
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
    checkpoint.write(path, merge([stage_state(s, step, range(len(s.parts.blocks)), {})]))


def load_checkpoint(
    path: Path, s: Step, layout: pipeline.Layout | None = None, owned: range | None = None
) -> dict[str, Any]:
    """Restore the modules, optimizers (under torchrun: this stage's), gradient scaler and
    generators (a data-parallel replica's own); the checkpoint's contents."""
    state: dict[str, Any] = checkpoint.read(path, len(s.optimizers))
    s.parts.model.load_state_dict(state["model"])
    s.parts.auxiliaries.load_state_dict(state["auxiliaries"])
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


# ---------------------------------------------------------------- the run


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
    return torch.device(name)


def load_dataset(args: argparse.Namespace, num_classes: int) -> data.Data:
    model_spec = LOCK["model"]
    dataset = data.load_data(
        args.data,
        tuple(model_spec["input_shape"]),
        getattr(torch, model_spec["input_dtype"]),
        num_classes=TRAINING["data"]["num_classes"]
        or (num_classes if args.data == "synthetic" else None),
        root=args.data_root,
        seed=args.seed,
    )
    if dataset.num_classes > num_classes:
        raise ConfigError(
            f"`{args.data}` has {dataset.num_classes} classes (labels 0..{dataset.num_classes - 1})"
            f" but the model outputs {num_classes} logits; build the model with num_classes="
            f"{dataset.num_classes} (e.g. `model.kwargs: {{num_classes: {dataset.num_classes}}}` "
            "in the spec) and compile again"
        )
    return dataset


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


def place(args: argparse.Namespace, parts: Parts) -> Placement:
    """Group the blocks by their FLOPs (the cost model's, from spec.lock.yaml) onto the devices
    or the stages, refusing what the schedule cannot honour."""
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


def prepare(args: argparse.Namespace) -> tuple[Step, Placement]:
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = build(args.seed)
    placement = place(args, parts)
    layout, device = placement.layout, placement.devices[0]
    if layout is not None:
        pipeline.start(device, args.timeout)
        crossing = [
            stage
            for stage, group in enumerate(placement.groups[:-1])
            if isinstance(parts.auxiliaries[group[-1]], Momentum)
        ]
        placement.channels = pipeline.Groups.make(layout, crossing)
    dataset = load_dataset(args, parts.num_classes)
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    if layout is None and len(placement.groups) == 1:
        moved: list[tuple[nn.Module, torch.device]] = [
            (parts.model, device),
            (parts.auxiliaries, device),
        ]
    else:
        moved = [(parts.blocks[k], placement.device_of(k)) for k in placement.owned]
        moved += [
            (parts.auxiliaries[k], placement.device_of(k))
            for k in placement.owned
            if k < parts.last
        ]
    for module, where in moved:
        module.to(where)
        module.to(memory_format=memory_format)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    per_epoch = dataset.steps_per_epoch(args.batch_size)
    total = args.steps if args.steps is not None else args.epochs * per_epoch

    def lr(step: int) -> float:
        factor = optim.lr_factor(TRAINING["schedule"], step, total, per_epoch)
        return float(TRAINING["optimizer"]["lr"] * factor)

    optimizers = make_optimizers(parts, args.mode)
    trained = [parts.model] if args.mode == "e2e" else [module for module, _ in moved]
    tensors = [t for m in trained for t in itertools.chain(m.parameters(), m.buffers())]
    usage = Usage(device, tensors, live=not args.compile)
    allocator = Allocator(args.malloc, device)
    locals_: list[nn.Module] = [
        Local(
            torch.compile(block) if args.compile else block,  # type: ignore[arg-type]
            parts.auxiliaries[k] if k < parts.last else None,
        )
        for k, block in enumerate(parts.blocks)
    ]
    if placement.channels is not None and placement.channels.stage is not None:
        ids = [device.index] if device.type == "cuda" else None
        for k in placement.owned:  # DDP over the stage's replicas
            locals_[k] = DistributedDataParallel(
                locals_[k],
                device_ids=ids,
                process_group=placement.channels.stage,
                find_unused_parameters=True,  # e.g. an auxiliary classifier the loss ignores
            )
    devices = [placement.device_of(k) for k in range(len(parts.blocks))]
    random = pipeline.BlockRandom(
        args.seed, len(parts.blocks), devices, layout.replica if layout else 0
    )
    step = Step(
        parts,
        locals_,
        optimizers,
        scaler,
        usage,
        allocator,
        autocast,
        dataset,
        random,
        lr,
        total,
        per_epoch,
    )
    step.latest = [None] * len(parts.blocks)
    return step, placement


def make_schedule(s: Step, args: argparse.Namespace, placement: Placement) -> Schedule:
    if placement.layout is not None and placement.channels is not None:
        layout, channels = placement.layout, placement.channels
        return Pipeline(s, args, layout, placement.groups, placement.devices[0], channels)
    if len(placement.groups) > 1:
        return Wavefront(s, args, placement.groups, placement.devices)
    return Sequential(s, args, placement.devices[0])


@torch.no_grad()
def evaluate(schedule: Schedule, s: Step, args: argparse.Namespace) -> float:
    """Test accuracy of the model (the chained blocks share its modules)."""
    s.parts.model.eval()
    try:
        return schedule.evaluate(
            itertools.islice(s.dataset.test_batches(args.batch_size), args.eval_batches)
        )
    finally:
        s.parts.model.train()


def train(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run training as the flags say; returns (and writes) the metrics."""
    args = parse_args(argv)
    s, placement = prepare(args)
    schedule = make_schedule(s, args, placement)
    layout = placement.layout
    lead = layout is None or layout.rank == 0
    out = Path(args.out)
    start = 0
    if args.resume is not None:
        where = Path(args.resume or out / "checkpoint.pt")
        state = load_checkpoint(where, s, placement.layout, placement.owned)
        start = int(state["step"])
        if isinstance(schedule, Pipeline):
            schedule.resume(state)
    times: list[float] = []
    evaluations: list[dict[str, Any]] = []
    training_s, a = 0.0, start
    for b in segments(args, start, s.total, s.per_epoch):
        began = time.perf_counter()
        for step in schedule.run(a, b, times):
            if (step + 1) % args.log_every == 0 or step + 1 == s.total:
                progress(step + 1, s, placement)
        training_s += time.perf_counter() - began
        if b % s.per_epoch == 0 or b == s.total:
            acc = evaluate(schedule, s, args)
            evaluations.append({"step": b, "test_accuracy": acc})
            if lead:
                print(f"step {b}: test accuracy {acc:.4f}", file=sys.stderr)
        if saving(args, b, s.per_epoch, s.total):
            save(out / "checkpoint.pt", b, s, schedule)
        a = b
    schedule.close()
    trained = (s.total - start, training_s)
    metrics = report(args, s, placement, evaluations, times, trained, schedule)
    if isinstance(schedule, Pipeline) and args.export:
        whole = schedule.gather(s.total, model_only=True)
        if whole is not None:
            torch.save(whole["model"], args.export)
    elif args.export:
        torch.save(s.parts.model.state_dict(), args.export)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(
            f"test accuracy {metrics['test_accuracy']}; {memory_line(metrics)}; "
            f"{out / 'metrics.json'}"
        )
    if layout is not None:
        dist.barrier()  # no rank leaves (taking its connections) while another still talks
        dist.destroy_process_group()
    return metrics


def save(path: Path, step: int, s: Step, schedule: Schedule) -> None:
    if isinstance(schedule, Pipeline):
        whole = schedule.gather(step)
        if whole is not None:
            checkpoint.write(path, whole)
    else:
        save_checkpoint(path, step, s)


def report(
    args: argparse.Namespace,
    s: Step,
    placement: Placement,
    evaluations: list[dict[str, Any]],
    times: list[float],
    trained: tuple[int, float],
    schedule: Schedule,
) -> dict[str, Any]:
    """The metrics of a run (the keys of metrics.json); under torchrun, of every rank.
    `trained`: the steps this run trained and the seconds its loop took (evaluation and
    checkpoints left out); `times`: per step, or per wavefront tick."""
    layout = placement.layout
    stats = dict(enumerate(s.latest))
    mine = {
        "rank": layout.rank if layout else 0,
        "replica": layout.replica if layout else 0,
        "blocks": list(placement.owned),
        "device": ", ".join(str(d) for d in placement.devices[: 1 if layout else None]),
        "block_losses": {k: float(v[0]) for k, v in stats.items() if v is not None},
        "block_accuracy": {k: float(v[1]) for k, v in stats.items() if v is not None},
        **s.memory.figures(),
        "step_time_s": statistics.median(times) if times else None,
        "training_s": trained[1],
    }
    ranks = schedule.gather_report(mine) if isinstance(schedule, Pipeline) else [mine]
    firsts = [r for r in ranks if r["replica"] == 0]  # a replica's losses are on its slice
    losses = {k: v for r in firsts for k, v in r["block_losses"].items()}
    accs = {k: v for r in firsts for k, v in r["block_accuracy"].items()}
    slowest = max(r["training_s"] for r in ranks)
    metrics = {
        "mode": args.mode,
        "data": args.data,
        "steps": s.total,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": ", ".join(r["device"] for r in ranks),
        "precision": args.precision,
        "block_losses": [losses[k] for k in sorted(losses)],
        "block_accuracy": [accs[k] for k in sorted(accs)],
        "test_accuracy": evaluations[-1]["test_accuracy"] if evaluations else None,
        "evaluations": evaluations,
        **{
            key: max_or_none(r[key] for r in ranks)
            for key in ("peak_memory_bytes", "peak_tensor_bytes", "peak_rss_bytes")
        },
        "peak_memory_method": mine["peak_memory_method"],
        "peak_tensor_method": mine["peak_tensor_method"],
        "malloc": s.allocator.mode,
        "step_time_s": max_or_none(r["step_time_s"] for r in ranks),
        "samples_per_s": args.batch_size * trained[0] / slowest if slowest > 0 else None,
        "schedule": type(schedule).__name__.lower(),
        "groups": [[g.start, g.stop - 1] for g in placement.groups],
        "ranks": ranks if len(ranks) > 1 else [],
    }
    return metrics


def max_or_none(values: Iterator[Any]) -> Any:
    found = [v for v in values if v is not None]
    return max(found) if found else None


def memory_line(metrics: dict[str, Any]) -> str:
    """`peak memory 303.6 MiB (saved_tensor_bytes), tensors 350.2 MiB, RSS 1,203.5 MiB`."""
    saved, method = metrics["peak_memory_bytes"] / 2**20, metrics["peak_memory_method"]
    line = f"peak memory {saved:,.1f} MiB ({method})"
    if (
        metrics["peak_tensor_bytes"] is not None
        and metrics["peak_tensor_method"] != metrics["peak_memory_method"]
    ):
        line += f", tensors {metrics['peak_tensor_bytes'] / 2**20:,.1f} MiB"
    if metrics["peak_rss_bytes"] is not None:
        line += f", RSS {metrics['peak_rss_bytes'] / 2**20:,.1f} MiB"
    return line


def saving(args: argparse.Namespace, step: int, per_epoch: int, total: int) -> bool:
    """Checkpoints: after every epoch, at the end, and every `--save-every` steps."""
    if args.no_checkpoint:
        return False
    every = bool(args.save_every) and step % args.save_every == 0
    return every or step % per_epoch == 0 or step == total


def progress(step: int, s: Step, placement: Placement) -> None:
    stats = [v for v in s.latest if v is not None]
    losses = " ".join(f"{float(loss):.3f}" for loss, _ in stats)
    accs = " ".join(f"{float(acc):.2f}" for _, acc in stats)
    layout = placement.layout
    where = ""
    if layout is not None:
        blocks = placement.owned
        where = f"rank {layout.rank} stage {layout.stage} blocks {blocks[0]}-{blocks[-1]} | "
    end = "\r" if sys.stderr.isatty() and step < s.total and layout is None else "\n"
    print(f"{where}step {step}/{s.total} | loss {losses} | acc {accs}", end=end, file=sys.stderr)


def main() -> None:
    try:
        train()
    except (
        ConfigError,
        data.DataError,
        checkpoint.CheckpointError,
        pipeline.ScheduleError,
    ) as error:
        sys.exit(f"error: {error}")
    except pipeline.PipelineError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        os._exit(1)  # the process group cannot shut down cleanly without its peer


if __name__ == "__main__":
    main()
