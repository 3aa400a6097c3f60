"""Train the model as gradient-isolated blocks, each on its own local loss.

    python train.py                          # the data and settings of spec.lock.yaml
    python train.py --data synthetic --steps 3
    python train.py --mode e2e               # the unsplit model: same data, optimizer, schedule
    python train.py --data cifar10 --data-root ~/data --epochs 100 --out runs/cifar10
    python train.py --resume runs/checkpoint.pt --export trained.pt

Every setting not given as a flag comes from spec.lock.yaml beside this file. Block k trains on
the detached output of block k-1 and its auxiliary's loss; its backward runs (and, with the
`block` optimizer scope, its optimizer steps) before block k+1 starts. The last block trains on
the task loss. `--out` receives checkpoint.pt and metrics.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:
    import yaml
except ImportError:  # torch does not depend on it
    sys.exit("train.py reads spec.lock.yaml with PyYAML: `pip install pyyaml`")

import blocks
import checkpoint
import data
import model as model_file
import optim
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
    p.add_argument("--device", default=TRAINING["devices"][0])
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
    reach: int = 1
    """The most blocks one auxiliary's loss trains: how many block inputs a step keeps."""


def build(seed: int) -> Parts:
    torch.manual_seed(seed)
    spec = LOCK["model"]
    net = getattr(model_file, PACKAGE["builder"])(**spec["kwargs"])
    check_fingerprint(net)
    split = blocks.build_blocks(net)
    num_classes = PACKAGE["num_classes"]
    auxiliaries = blocks.build_auxiliaries(net, split, num_classes)
    reach = max((int(getattr(a, "window", 1)) for a in auxiliaries), default=1)
    return Parts(net, split, auxiliaries, num_classes, reach)


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


# ---------------------------------------------------------------- one training step


@dataclass
class Step:
    """Everything a training step needs."""

    parts: Parts
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    memory: Usage
    allocator: Allocator
    autocast: Any
    dataset: data.Data
    losses: list[list[float]] = field(default_factory=list)
    accuracy: list[list[float]] = field(default_factory=list)


def local_step(s: Step, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Each block on the detached output of the one before, its backward at once."""
    image, inputs = s.dataset.unnormalise(x), [x]
    stats: list[tuple[torch.Tensor, ...]] = []
    last = len(s.parts.blocks) - 1
    for k, block in enumerate(s.parts.blocks):
        with s.memory.saved.watch(), s.autocast():
            out = block(inputs[-1])
            if k < last:
                loss, logits = s.parts.auxiliaries[k](out, y, image, inputs)
            else:
                logits = select_output(out)
                loss = F.cross_entropy(logits, y)
        s.scaler.scale(loss).backward()
        s.memory.saved.release()
        if k < last:
            s.parts.auxiliaries[k].after_backward()  # type: ignore[operator]
            inputs = (
                [*inputs[-s.parts.reach + 1 :], out.detach()]
                if s.parts.reach > 1
                else [out.detach()]
            )
        if len(s.optimizers) > 1:
            step_optimizer(s, s.optimizers[k])
        stats.append((loss.detach(), accuracy(logits, y)))
        s.allocator.release()  # what this block freed goes back before the next one runs
    if len(s.optimizers) == 1:
        step_optimizer(s, s.optimizers[0])
    s.scaler.update()
    return stats


def e2e_step(s: Step, x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The unsplit model on the task loss, one backward through everything."""
    with s.memory.saved.watch(), s.autocast():
        logits = select_output(s.parts.model(x))
        loss = F.cross_entropy(logits, y)
    s.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
    s.memory.saved.release()
    step_optimizer(s, s.optimizers[0])
    s.scaler.update()
    s.allocator.release()
    return [(loss.detach(), accuracy(logits, y))]


def step_optimizer(s: Step, optimizer: torch.optim.Optimizer) -> None:
    s.scaler.step(optimizer)
    optimizer.zero_grad(set_to_none=True)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=1) == y).float().mean()


@torch.no_grad()
def evaluate(net: nn.Module, s: Step, args: argparse.Namespace, device: torch.device) -> float:
    """Test accuracy of the model (the chained blocks share its modules)."""
    net.eval()
    correct = seen = 0
    batches = s.dataset.test_batches(args.batch_size)
    for x, y in itertools.islice(batches, args.eval_batches):
        logits = select_output(net(x.to(device)))
        correct += int((logits.argmax(dim=1).cpu() == y).sum())
        seen += len(y)
    net.train()
    return correct / max(1, seen)


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, step: int, s: Step) -> None:
    modules = {"model": s.parts.model, "auxiliaries": s.parts.auxiliaries}
    checkpoint.save(path, step, modules, s.optimizers, s.scaler)


def load_checkpoint(path: Path, s: Step) -> int:
    modules = {"model": s.parts.model, "auxiliaries": s.parts.auxiliaries}
    return int(checkpoint.load(path, modules, s.optimizers, s.scaler))


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


def prepare(args: argparse.Namespace) -> tuple[Step, torch.device]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    parts = build(args.seed)
    dataset = load_dataset(args, parts.num_classes)
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    for module in (parts.model, parts.auxiliaries):
        module.to(device)
        module.to(memory_format=memory_format)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    optimizers = make_optimizers(parts, args.mode)
    trained = [parts.model] if args.mode == "e2e" else [parts.model, parts.auxiliaries]
    tensors = [t for m in trained for t in itertools.chain(m.parameters(), m.buffers())]
    usage = Usage(device, tensors, live=not args.compile)
    allocator = Allocator(args.malloc, device)
    step = Step(parts, optimizers, scaler, usage, allocator, autocast, dataset)
    if args.compile:
        parts.blocks = nn.ModuleList([torch.compile(b) for b in parts.blocks])  # type: ignore[misc]
    return step, device


def batches(s: Step, args: argparse.Namespace, start: int, total: int) -> Iterator[tuple[int, Any]]:
    per_epoch = s.dataset.steps_per_epoch(args.batch_size)
    step = start
    while step < total:
        epoch, skip = divmod(step, per_epoch)
        for x, y in s.dataset.train_batches(epoch, args.batch_size, args.seed, skip):
            yield step, (x, y)
            step += 1
            if step >= total:
                return


def train(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run training as the flags say; returns (and writes) the metrics."""
    args = parse_args(argv)
    s, device = prepare(args)
    per_epoch = s.dataset.steps_per_epoch(args.batch_size)
    total = args.steps if args.steps is not None else args.epochs * per_epoch
    out = Path(args.out)
    start = (
        load_checkpoint(Path(args.resume or out / "checkpoint.pt"), s)
        if args.resume is not None
        else 0
    )
    run_step = local_step if args.mode == "local" else e2e_step
    times: list[float] = []
    evaluations: list[dict[str, Any]] = []
    stats: list[tuple[torch.Tensor, ...]] = []
    for step, (x, y) in batches(s, args, start, total):
        lr = TRAINING["optimizer"]["lr"] * optim.lr_factor(
            TRAINING["schedule"], step, total, per_epoch
        )
        for group in (g for optimizer in s.optimizers for g in optimizer.param_groups):
            group["lr"] = lr
        began = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with s.memory.step((x, y), s.optimizers):
            stats = run_step(s, x, y)
        times.append(time.perf_counter() - began)
        if (step + 1) % args.log_every == 0 or step + 1 == total:
            progress(step + 1, total, stats)
        if (step + 1) % per_epoch == 0 or step + 1 == total:
            acc = evaluate(s.parts.model, s, args, device)
            evaluations.append({"step": step + 1, "test_accuracy": acc})
            print(f"step {step + 1}: test accuracy {acc:.4f}", file=sys.stderr)
        if saving(args, step + 1, per_epoch, total):
            save_checkpoint(out / "checkpoint.pt", step + 1, s)
    metrics = report(args, s, device, stats, evaluations, times, total)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if args.export:
        torch.save(s.parts.model.state_dict(), args.export)
    print(
        f"test accuracy {metrics['test_accuracy']}; {memory_line(metrics)}; {out / 'metrics.json'}"
    )
    return metrics


def report(
    args: argparse.Namespace,
    s: Step,
    device: torch.device,
    stats: list[tuple[torch.Tensor, ...]],
    evaluations: list[dict[str, Any]],
    times: list[float],
    total: int,
) -> dict[str, Any]:
    """The metrics of a run (the keys of metrics.json)."""
    return {
        "mode": args.mode,
        "data": args.data,
        "steps": total,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": str(device),
        "precision": args.precision,
        "block_losses": [float(loss) for loss, _ in stats],
        "block_accuracy": [float(acc) for _, acc in stats],
        "test_accuracy": evaluations[-1]["test_accuracy"] if evaluations else None,
        "evaluations": evaluations,
        **s.memory.figures(),
        "malloc": s.allocator.mode,
        "step_time_s": statistics.median(times) if times else None,
    }


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


def progress(step: int, total: int, stats: list[tuple[torch.Tensor, ...]]) -> None:
    losses = " ".join(f"{float(loss):.3f}" for loss, _ in stats)
    accs = " ".join(f"{float(acc):.2f}" for _, acc in stats)
    end = "\r" if sys.stderr.isatty() and step < total else "\n"
    print(f"step {step}/{total} | loss {losses} | acc {accs}", end=end, file=sys.stderr)


def main() -> None:
    try:
        train()
    except (ConfigError, data.DataError, checkpoint.CheckpointError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
