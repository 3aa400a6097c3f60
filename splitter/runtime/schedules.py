"""Schedules: which block trains on which batch when, on one device, several, or a stage."""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

import pipeline
from auxiliary import Momentum
from checkpoint import merge, stage_state
from step import (
    TASK,
    Flight,
    Inputs,
    Step,
    as_tuple,
    block_step,
    e2e_step,
    local_step,
    model_args,
    moved,
    needs_image,
    select_output,
    tensors_of,
)


class Sequential:
    """One device: every block on batch t, in order, before batch t+1."""

    def __init__(self, s: Step, args: argparse.Namespace, device: torch.device) -> None:
        self.s, self.args, self.device = s, args, device

    def run(self, a: int, b: int, times: list[float]) -> Iterator[int]:
        """Train on steps a..b-1; yields each step once every block has trained on it."""
        s = self.s
        for step, (x, y) in batches(s, self.args, a, b):
            began = time.perf_counter()
            x, y = moved(x, self.device), y.to(self.device, non_blocking=True)
            with s.memory.step((*as_tuple(x), *tensors_of(y)), s.optimizers):
                (e2e_step if self.args.mode == "e2e" else local_step)(s, x, y, step)
            times.append(time.perf_counter() - began)
            yield step

    def evaluate(self, test: Iterator[Any]) -> dict[str, float]:
        """The model's test figures (the blocks share its modules): see task.Score."""
        score = TASK.score(self.s.parts.num_classes)
        for x, y in test:
            if TASK.loss == "model":
                score.add(self.losses(moved(x, self.device), y.to(self.device)), y)
            else:
                score.add(self.forward(moved(x, self.device)), y)
        found: dict[str, float] = score.summary()
        return found

    def losses(self, x: Inputs, y: Any) -> Any:
        """A detection model's loss dict on test data: in train mode, where it computes its
        losses, with its BatchNorm statistics kept as they are."""
        model = self.s.parts.model
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        try:
            return model(*model_args(x, y))
        finally:
            model.eval()

    def forward(self, x: Inputs) -> torch.Tensor:
        logits: torch.Tensor = select_output(self.s.parts.model(*as_tuple(x)))
        return logits

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
        logits: torch.Tensor = select_output(x)
        return logits


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

    def evaluate(self, test: Iterator[Any]) -> dict[str, float]:
        """The test batches flow through the stages like training batches; the last stage
        adds up its replica's figures, and every rank learns the totals."""
        score = TASK.score(self.s.parts.num_classes)
        while (message := self.next_test(test)) is not None:
            x, y = message
            for k in self.mine:
                x = self.s.parts.blocks[k](x)
            if self.after is not None:
                self.after.send([x, y], "sending test activations")
            else:
                score.add(select_output(x), y)
        if self.after is not None:
            self.after.send([], "ending the test stream")
        with pipeline.guard(self.layout, "the other ranks", "adding up the test figures"):
            dist.all_reduce(score.totals, group=self.channels.objects)
        found: dict[str, float] = score.summary()
        return found

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


Schedule = Sequential | Pipeline  # a Wavefront is a Sequential


def segments(args: argparse.Namespace, start: int, total: int, per_epoch: int) -> list[int]:
    """The steps after which the run evaluates or saves: epoch ends, every `--save-every`, the
    last; a wavefront or pipeline drains at each."""
    ends = {total, *range(per_epoch, total, per_epoch)}
    if args.save_every and not args.no_checkpoint:
        ends |= set(range(args.save_every, total, args.save_every))
    return sorted(end for end in ends if end > start)


@torch.no_grad()
def evaluate(schedule: Schedule, s: Step, args: argparse.Namespace) -> dict[str, float]:
    """The model's test figures (the chained blocks share its modules): `test_accuracy`, and
    the task's own (task.Score)."""
    s.parts.model.eval()
    try:
        return schedule.evaluate(
            itertools.islice(s.dataset.test_batches(args.batch_size), args.eval_batches)
        )
    finally:
        s.parts.model.train()


def batches(s: Step, args: argparse.Namespace, start: int, total: int) -> Iterator[tuple[int, Any]]:
    """Steps start..total-1 with their training batches (a resumed run starts mid-epoch)."""
    step = start
    while step < total:
        epoch, skip = divmod(step, s.per_epoch)
        for x, y in s.dataset.train_batches(epoch, args.batch_size, args.seed, skip):
            yield step, (x, y)
            step += 1
            if step >= total:
                return
