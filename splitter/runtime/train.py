"""Train the model as gradient-isolated blocks, each on its own local loss.

    python train.py                                # the data and settings of spec.lock.yaml
    python train.py --data synthetic --steps 3
    python train.py --mode e2e --out runs/e2e      # the unsplit model, the same recipe
    python train.py --mode e2e --checkpoint        # ... with activation checkpointing
    python train.py --data cifar10 --data-root ~/data --epochs 100 --out runs/cifar10
    python train.py --resume --export trained.pt   # continue from the checkpoint in --out
    python train.py --steps 0 --export initial.pt  # the initial weights only
    python train.py --device cuda:0 cuda:1         # groups of blocks on two GPUs, a wavefront
    torchrun --nproc-per-node 4 train.py           # a pipeline: each process trains a stage

Every setting not given as a flag comes from spec.lock.yaml beside this file. Block k trains on
the detached output of block k-1 and its auxiliary's loss; its backward runs (and, with the
`block` optimizer scope, its optimizer steps) before block k+1 starts. The last block trains on
the task loss.

`--out` (default runs/<this folder's name>, under the working folder) receives run.json (the
package and spec that wrote the run: another package's run is not overwritten unless
`--resume`), checkpoint.pt (after every epoch, every `--save-every` steps and at the end),
metrics.jsonl (one row per step: see history.py) and metrics.json, the run's summary: its
settings, each block's last loss and accuracy, the test accuracy after every epoch
(`evaluations`), the memory peaks and speed, `history` (the name of the per-step file),
`groups` (the first and last block each device trains, one group per device or pipeline
stage) and `ranks` (under torchrun: each rank's own figures, its blocks, device, losses and
memory; empty in one process). Flags are checked, and `--out` made and stamped, before anything
is built; a refused flag is one `error:` line and exit status 2, a failure while running exit
status 1. Progress goes to stderr (see progress.py), the summary line to stdout.

With several devices the blocks form contiguous groups balanced by their FLOPs, and group g
trains on batch t while group g+1 trains on batch t-1; the weights are those of the one-device
run. Under torchrun each rank owns a stage of blocks (`--stages`, default the world size; more
processes than stages make data-parallel replicas of each stage), activations and labels go
forward between ranks, and nothing goes back but the parameters a `momentum` auxiliary keeps an
EMA of when they live on the next rank: that EMA is one step staler than in one process. Rank 0
writes run.json, the checkpoint, metrics.json and its blocks' metrics.jsonl; rank R its own
blocks' rows to metrics.rank<R>.jsonl.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import blocks
import checkpoint
import data
import flags
import model as model_file
import optim
import pipeline
from checkpoint import load_checkpoint, save_checkpoint
from history import History
from memory import Allocator, Usage
from metrics import memory_line, report
from placement import Placement, connect, place
from progress import Progress, announce
from root import Around
from runfolder import check_file, open_run
from schedules import Pipeline, Schedule, Sequential, Wavefront, evaluate, segments
from schedules import batches as batches  # re-exported: scripts and tests drive these too
from settings import LOCK, PACKAGE, TRAINING, ConfigError, FlagError
from step import TASK, Local, Parts, Step
from step import local_step as local_step  # re-exported
from task import headline

# ---------------------------------------------------------------- settings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags, each value checked (`FlagError`) before anything is built."""
    args: argparse.Namespace = flags.parse_args(argv, __doc__.split("\n\nEvery setting")[0])
    return args


# ---------------------------------------------------------------- build


def build(seed: int) -> Parts:
    """The model as model.py builds it (seeded), its blocks and their auxiliaries."""
    torch.manual_seed(seed)
    spec = LOCK["model"]
    net = getattr(model_file, PACKAGE["builder"])(**spec["kwargs"])
    check_fingerprint(net)
    around = Around(net, spec["root"]) if spec.get("root") else None
    target = around.root if around else net  # the module the blocks split
    split = blocks.build_blocks(target)
    num_classes = PACKAGE["num_classes"]
    auxiliaries = blocks.build_auxiliaries(target, split, num_classes)
    windows = [int(getattr(a, "window", 1)) for a in auxiliaries]
    windows.append(int(getattr(blocks, "TASK_WINDOW", 1)))
    inputs = tuple(getattr(blocks, "INPUTS", ("x",)))
    return Parts(net, split, auxiliaries, num_classes, windows, inputs, around)


def check_fingerprint(net: nn.Module) -> None:
    found = checkpoint.fingerprint(net)
    if found != PACKAGE["fingerprint"]:
        raise ConfigError(
            "model.py builds a model whose parameters differ from the one compiled (state_dict "
            f"fingerprint {found}, spec.lock.yaml says {PACKAGE['fingerprint']}); "
            "run `splitter compile` again for the changed model"
        )


def make_optimizers(parts: Parts, mode: str) -> list[torch.optim.Optimizer]:
    """One optimizer per block (with its auxiliary), or one for everything."""
    config = TRAINING["optimizer"]
    if mode == "e2e":
        return [optim.optimizer(config, optim.trainable(parts.model))]
    rest = [p for p in parts.around.rest if p.requires_grad] if parts.around else []
    if TRAINING["optimizer_scope"] == "global":  # with a root, what runs after it too
        everything = optim.trainable(parts.blocks, parts.auxiliaries) + rest
        return [optim.optimizer(config, list({id(p): p for p in everything}.values()))]
    pairs = zip(parts.blocks, [*parts.auxiliaries, nn.Module()], strict=True)
    found = [optim.trainable(block, aux) for block, aux in pairs]
    found[-1] += rest  # the task loss trains what runs after the root, too
    return [optim.optimizer(config, params) for params in found]


def load_dataset(args: argparse.Namespace, num_classes: int) -> data.Data:
    model_spec = LOCK["model"]
    inputs = model_spec.get("inputs") or [
        {"shape": model_spec["input_shape"], "dtype": model_spec["input_dtype"]}
    ]
    dataset = data.load_data(
        args.data,
        tuple(inputs[0]["shape"]),
        getattr(torch, inputs[0]["dtype"]),
        more_inputs=[(tuple(i["shape"]), getattr(torch, i["dtype"])) for i in inputs[1:]],
        num_classes=TRAINING["data"]["num_classes"]
        or (num_classes if args.data == "synthetic" or TASK.dense else None),
        root=args.data_root,
        padding=TRAINING["data"].get("padding", "zero"),
        flip=TRAINING["data"].get("flip", True),
        seed=args.seed,
        targets=TASK.targets,
    )
    if dataset.num_classes > num_classes:
        raise ConfigError(
            f"`{args.data}` has {dataset.num_classes} classes (labels 0..{dataset.num_classes - 1})"
            f" but the model outputs {num_classes} logits; build the model with num_classes="
            f"{dataset.num_classes} (e.g. `model.kwargs: {{num_classes: {dataset.num_classes}}}` "
            "in the spec) and compile again"
        )
    return dataset


def make_locals(parts: Parts, placement: Placement, compiled: bool) -> list[nn.Module]:
    """Each block with its auxiliary; under torchrun with several replicas of a stage, this
    stage's wrapped in DDP over them."""
    locals_: list[nn.Module] = [
        Local(
            torch.compile(block) if compiled else block,
            parts.auxiliaries[k] if k < parts.last else None,
            parts.blocks[k - parts.windows[k] + 1 : k] if k == parts.last else (),
            parts.around if k == parts.last else None,
        )
        for k, block in enumerate(parts.blocks)
    ]
    channels, device = placement.channels, placement.devices[0]
    if channels is not None and channels.stage is not None:
        ids = [device.index] if device.type == "cuda" else None
        for k in placement.owned:  # DDP over the stage's replicas
            locals_[k] = DistributedDataParallel(
                locals_[k],
                device_ids=ids,
                process_group=channels.stage,
                find_unused_parameters=True,  # e.g. an auxiliary classifier the loss ignores
            )
    return locals_


def prepare(args: argparse.Namespace) -> tuple[Step, Placement]:
    """The model built and placed (under torchrun: this rank's stage, the process group
    joined), the data, and everything a step needs."""
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = build(args.seed)
    placement = place(args, parts)
    layout, device = placement.layout, placement.devices[0]
    if layout is not None:
        connect(placement, parts, args.timeout)
    dataset = load_dataset(args, parts.num_classes)
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    moved = placement.modules(parts)
    for module, where in moved:
        module.to(where)
        module.to(memory_format=memory_format)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    per_epoch = dataset.steps_per_epoch(args.batch_size)
    total = args.steps if args.steps is not None else args.epochs * per_epoch

    def lr(step: int) -> float:
        base = TRAINING["optimizer"]["lr"]
        return float(base * optim.lr_factor(TRAINING["schedule"], step, total, per_epoch, base))

    trained = [parts.model] if args.mode == "e2e" else [module for module, _ in moved]
    tensors = [t for m in trained for t in itertools.chain(m.parameters(), m.buffers())]
    devices = [placement.device_of(k) for k in range(len(parts.blocks))]
    made = Step(  # made in this order, as ever (Usage resets the memory peaks)
        parts=parts,
        scaler=torch.amp.GradScaler(device.type, enabled=args.precision == "fp16"),
        optimizers=make_optimizers(parts, args.mode),
        memory=Usage(device, tensors, live=not args.compile, seen=saves_seen(parts, args)),
        allocator=Allocator(args.malloc, device),
        locals=make_locals(parts, placement, args.compile),
        random=pipeline.BlockRandom(
            args.seed, len(parts.blocks), devices, layout.replica if layout else 0
        ),
        autocast=functools.partial(
            torch.autocast, device.type, dtype=dtype, enabled=dtype is not None
        ),
        dataset=dataset,
        lr=lr,
        total=total,
        per_epoch=per_epoch,
        checkpointed=args.checkpoint,
    )
    return made, placement


def saves_seen(parts: Parts, args: argparse.Namespace) -> Literal["all", "partly", "none"]:
    """How much of autograd's saves the saved-tensor count sees: none under `--checkpoint`,
    not the recomputed EMA copies of momentum auxiliaries in local training."""
    if args.checkpoint:
        return "none"
    recomputing = any(getattr(m, "recompute", False) for m in parts.auxiliaries.modules())
    return "partly" if args.mode == "local" and recomputing else "all"


def make_schedule(s: Step, args: argparse.Namespace, placement: Placement) -> Schedule:
    """This rank's pipeline stage, a wavefront over several devices, or one device's run."""
    several = len(s.parts.inputs) > 1
    if several and (len(placement.groups) > 1 or placement.layout is not None):
        raise ConfigError(
            f"the model takes {len(s.parts.inputs)} inputs ({', '.join(s.parts.inputs)}), which "
            "train on one device for now: give one --device and run without torchrun"
        )
    around = s.parts.around
    if around is not None and (len(placement.groups) > 1 or placement.layout is not None):
        raise ConfigError(
            f"`model.root: {around.path}`: a split root trains on one device for now; give one "
            "--device and run without torchrun"
        )
    if around is not None and args.checkpoint:
        raise ConfigError(
            f"--checkpoint recomputes the blocks of a model split whole, not of its root "
            f"`{around.path}`; run --mode e2e without --checkpoint"
        )
    if placement.layout is not None and placement.channels is not None:
        layout, channels = placement.layout, placement.channels
        return Pipeline(s, args, layout, placement.groups, placement.devices[0], channels)
    if len(placement.groups) > 1:
        return Wavefront(s, args, placement.groups, placement.devices)
    return Sequential(s, args, placement.devices[0])


# ---------------------------------------------------------------- the loop


def train(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run training as the flags say; returns (and writes) the metrics."""
    args = parse_args(argv)
    lead = not pipeline.launched() or os.environ.get("RANK", "0") == "0"
    if args.steps == 0:
        return export_initial(args, lead)
    out = open_run(args, lead)  # checked and stamped before anything is built
    if lead:
        announce(args, out)
    s, placement = prepare(args)
    schedule = make_schedule(s, args, placement)
    layout = placement.layout
    start = 0
    if args.resume is not None:
        where = Path(args.resume or out / "checkpoint.pt")
        state = load_checkpoint(where, s, layout, placement.owned)
        start = int(state["step"])
        if isinstance(schedule, Pipeline):
            schedule.resume(state)
    history = History(out, s, placement, start)
    shown = Progress(s, placement, args, start, lead)
    times: list[float] = []
    evaluations: list[dict[str, Any]] = []
    training_s, a = 0.0, start
    for b in segments(args, start, s.total, s.per_epoch):
        began = time.perf_counter()
        for step in schedule.run(a, b, times):
            if shown.after(step, history.add(step, times[-1] if times else None)):
                history.flush()
        training_s += time.perf_counter() - began
        history.flush()  # every row up to a checkpoint is written before it
        if b % s.per_epoch == 0 or b == s.total:
            scores = evaluate(schedule, s, args)
            evaluations.append({"step": b, **scores})
            shown.evaluated(b, scores)
        if saving(args, b, s.per_epoch, s.total):
            save(out / "checkpoint.pt", b, s, schedule)
        a = b
    shown.close()
    schedule.close()
    trained = (s.total - start, training_s)
    metrics: dict[str, Any] = report(args, s, placement, evaluations, times, trained, schedule)
    if args.export:
        export(args.export, s, schedule)
    if lead:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        scores = metrics["evaluations"][-1] if metrics["evaluations"] else None
        shown_scores = headline(scores) if scores else "test accuracy None"
        print(f"{shown_scores}; {memory_line(metrics)}; {out / 'metrics.json'}")
    if layout is not None:
        dist.barrier()  # no rank leaves (taking its connections) while another still talks
        dist.destroy_process_group()
    return metrics


def export_initial(args: argparse.Namespace, lead: bool) -> dict[str, Any]:
    """`--steps 0 --export PATH`: the model's state_dict before any step (seeded as a run's),
    and nothing else written."""
    check_file(Path(args.export), "--export")
    if lead:
        Path(args.export).parent.mkdir(parents=True, exist_ok=True)
        torch.save(build(args.seed).model.state_dict(), args.export)
        print(f"initial weights (before any step): {args.export}")
    return {"steps": 0, "export": args.export}


# ---------------------------------------------------------------- saving and reporting


def save(path: Path, step: int, s: Step, schedule: Schedule) -> None:
    """A checkpoint after `step` steps (under torchrun: gathered from every rank, written by
    rank 0)."""
    if isinstance(schedule, Pipeline):
        whole = schedule.gather(step)
        if whole is not None:
            checkpoint.write(path, whole)
    else:
        save_checkpoint(path, step, s)


def saving(args: argparse.Namespace, step: int, per_epoch: int, total: int) -> bool:
    """Checkpoints: after every epoch, at the end, and every `--save-every` steps."""
    if args.no_checkpoint:
        return False
    every = bool(args.save_every) and step % args.save_every == 0
    return every or step % per_epoch == 0 or step == total


def export(path: str, s: Step, schedule: Schedule) -> None:
    """The model's state_dict (under torchrun: gathered from every stage, saved by rank 0)."""
    if isinstance(schedule, Pipeline):
        whole = schedule.gather(s.total, model_only=True)
        if whole is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            torch.save(whole["model"], path)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(s.parts.model.state_dict(), path)


def main() -> None:
    try:
        train()
    except FlagError as error:  # a refused flag: argparse's status
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    except (
        ConfigError,
        data.DataError,
        checkpoint.CheckpointError,
        pipeline.ScheduleError,
    ) as error:  # a failure while running
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(1)
    except pipeline.PipelineError as error:
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        os._exit(1)  # the process group cannot shut down cleanly without its peer


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    main()
