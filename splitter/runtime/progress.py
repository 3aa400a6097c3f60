"""What a run shows on stderr while it trains: a first line saying what runs, progress lines
labelled by block (where stderr is a terminal and tqdm is installed, above a progress bar), and
each evaluation, named by its epoch:

    resnet_cifar: 4 blocks, momentum auxiliaries; data digits, 30 steps, batch size 128; ...
    step 10/30 | block0 loss 2.29 acc 0.09 | block1 loss 0.621 acc 0.41 | ...
    epoch 1/3 done (step 12): test accuracy 0.0778   (tokens: test perplexity 5.210 ...)
    step 30: test accuracy 0.1016

Under torchrun each rank prints its own blocks' lines, after `rank R stage S | `."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from history import Stats
from settings import HERE, LOCK, PACKAGE
from task import headline

if TYPE_CHECKING:
    from placement import Placement
    from step import Step


def announce(args: argparse.Namespace, out: Path) -> None:
    """The first line, printed before anything slow: the blocks and their auxiliaries, the
    data, how long, the batch size, the devices and the run folder."""
    count = len(PACKAGE.get("block_flops") or []) or len(LOCK["partition"]["cuts"]) + 1
    if args.mode == "e2e":
        what = "the unsplit model end to end (--mode e2e)"
        if args.checkpoint:
            what += f", activations recomputed from its {count} block inputs (--checkpoint)"
    else:
        aux = LOCK["aux"]
        given = {int(k): v for k, v in (aux.get("blocks") or {}).items()}  # keys: '1' or 1
        chosen = [given.get(k) or aux["default"] for k in range(count - 1)]
        kinds = ", ".join(dict.fromkeys(str(c["kind"]) for c in chosen))
        what = f"{count} blocks, {kinds} auxiliar{'y' if count == 2 else 'ies'}"
    length = f"{args.steps} steps" if args.steps is not None else f"{args.epochs} epochs"
    devices = " ".join(resolve(name) for name in args.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        devices += f" ({world} processes)"
    print(
        f"{HERE.name}: {what}; data {args.data}, {length}, batch size {args.batch_size}; "
        f"device {devices}; out {out}",
        file=sys.stderr,
        flush=True,
    )


def resolve(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class Progress:
    """The progress of this process's steps: a line every `--log-every` steps (and after the
    first and the last), and where stderr is a terminal a bar updated every step below."""

    def __init__(
        self, s: Step, placement: Placement, args: argparse.Namespace, start: int, lead: bool
    ) -> None:
        self.s, self.every, self.start, self.lead = s, args.log_every, start, lead
        layout = placement.layout
        self.where = f"rank {layout.rank} stage {layout.stage} | " if layout else ""
        self.model = args.mode == "e2e"
        self.epochs = math.ceil(s.total / s.per_epoch)
        self.bar = bar(s.total, start) if layout is None and sys.stderr.isatty() else None

    def after(self, step: int, stats: Stats) -> bool:
        """Step `step` (0-based) is done, with these losses and accuracies by block: show them
        when a line is due; whether one was."""
        done = step + 1
        due = done == self.start + 1 or done % self.every == 0 or done == self.s.total
        if self.bar is not None:
            self.bar.update(1)
        if due:  # above the bar, if there is one
            self.write(f"{self.where}step {done}/{self.s.total} | {self.labelled(stats)}")
        return due

    def labelled(self, stats: Stats) -> str:
        """`block0 loss 2.29 acc 0.09 | block1 loss 0.621 acc 0.41` (e2e: `model loss ...`)."""
        return " | ".join(
            f"{'model' if self.model else f'block{k}'} loss {float(loss):.3f} acc {float(acc):.2f}"
            for k, (loss, acc) in sorted(stats.items())
        )

    def evaluated(self, step: int, scores: dict[str, float]) -> None:
        """The test figures after `step` steps (an epoch's end, or the run's)."""
        if not self.lead:
            return
        if step % self.s.per_epoch == 0:
            epoch = step // self.s.per_epoch
            self.write(f"epoch {epoch}/{self.epochs} done (step {step}): {headline(scores)}")
        else:
            self.write(f"step {step}: {headline(scores)}")

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def bar(total: int, start: int) -> Any:
    """A tqdm bar on stderr, or None without tqdm (the package does not need it)."""
    try:
        tqdm = importlib.import_module("tqdm")
    except ImportError:
        return None
    return tqdm.tqdm(total=total, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True)
