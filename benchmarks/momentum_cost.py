"""Where a momentum auxiliary spends its memory and time: for each block of a compiled model,
the block itself against the parts of its MAN++ auxiliary (the trainable copy `lb`, the frozen
EMA copy `ema`, the head), each run forward and backward on its own.

    python benchmarks/momentum_cost.py                  # resnet101, 224x224, batch 32, K = 4
    python benchmarks/momentum_cost.py --model torchvision:resnet152 --blocks 8
    python benchmarks/momentum_cost.py --quick          # resnet18, 112x112, batch 8

The model is compiled with `auto: {blocks: K, balance: memory}` and `momentum` auxiliaries and
built as train.py builds it. Every part runs on the real activations (the blocks in a row on
one synthetic batch): "saved" is the most bytes autograd holds for that part's backward
(saved-tensor hooks, de-duplicated by storage, parameters and the part's input left out), "time"
the median of `--repeats` forward-and-backward passes, "params" the part's parameter bytes
(the trainable ones also get a gradient and SGD's momentum buffer). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from splitter.runtime.memory import PeakMemory


def measure(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, params: list[torch.Tensor], n: int
) -> tuple[int, float]:
    """Saved bytes and median forward+backward seconds of `fn` on a fresh leaf copy of `x`."""
    times, saved = [], 0
    for _ in range(n):
        leaf = x.detach().requires_grad_()
        memory = PeakMemory(torch.device("cpu"), [*params, leaf])
        began = time.perf_counter()
        with memory.watch():
            out = fn(leaf)
        out.backward(torch.ones_like(out) if out.dim() else None)
        times.append(time.perf_counter() - began)
        saved = memory.peak_bytes
    return saved, statistics.median(times)


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="torchvision:resnet101")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="resnet18, 112x112, batch 8")
    args = parser.parse_args()
    if args.quick:
        args.model, args.size, args.batch_size = "torchvision:resnet18", 112, 8
    spec = {
        "version": 1,
        "model": {"ref": args.model, "input_shape": [3, args.size, args.size]},
        "partition": {"auto": {"blocks": args.blocks, "balance": "memory"}},
        "aux": {"default": {"kind": "momentum"}},
        "training": {"data": {"name": "synthetic"}, "batch_size": args.batch_size},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        options = ModelOptions(batch_size=args.batch_size)
        compile_package(None, str(path), options, out=str(Path(tmp) / "pkg"))
        with load_package(Path(tmp) / "pkg") as train:
            rows = parts_table(train.build(0), args)
    print(
        f"\n{args.model.removeprefix('torchvision:')}, {args.size}x{args.size}, batch "
        f"{args.batch_size}, fp32, K = {args.blocks}, momentum (MAN++, conv head); CPU, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| block | part | saved MiB | params MiB | forward+backward s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def parts_table(parts: Any, args: argparse.Namespace) -> list[tuple[str, ...]]:
    """One row per block and per part of its auxiliary."""
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    y = torch.randint(0, parts.num_classes, (args.batch_size,))
    image = torch.rand_like(x)
    rows: list[tuple[str, ...]] = []
    for k, block in enumerate(parts.blocks):
        with torch.no_grad():
            h = block(x)
        named = [("block", block, block, x)]
        if k < len(parts.blocks) - 1:
            aux = parts.auxiliaries[k]
            with torch.no_grad():
                mixed = aux.scale * aux.lb(h) + (2 - aux.scale) * aux.ema(h)
            named += [
                ("lb (trainable copy)", aux.lb, aux.lb, h),
                ("ema (frozen copy)", aux.ema, aux.ema, h),
                ("head", aux.head, lambda t, a=aux: a.head(t, y, image)[0], mixed),
            ]
        for name, module, fn, source in named:
            params = list(module.parameters())
            size = sum(p.numel() * p.element_size() for p in params)
            saved, seconds = measure(fn, source, params, args.repeats)
            rows.append((str(k), name, mib(saved), mib(size), f"{seconds:.2f}"))
        x = h
    return rows


if __name__ == "__main__":
    main()
