"""How well each balancing criterion balances local-training memory, and what partitioning costs.

For each model (224x224, batch 32, fp32, K = 4, momentum auxiliaries, SGD): the largest block's
variable bytes (saved activations of the block and its auxiliary, and their gradients) when the
cuts balance `memory` (splitter's default, under the default rules of `partition.auto`: a whole
unit and 1% of the FLOPs in every block, the classifier in the last, 2% slack for compute
balance), `units` (equal unit counts, as DGL does) or `params` (as DeepSpeed's `parameters`
method does); for `memory` the largest over the mean of memory and of FLOPs, the smallest
block's share of the FLOPs, and the same with every rule off. Then the
bundled CIFAR ResNet-32 (batch 128, as the InfoPro paper trains it) against that paper's
hand-written K = 4 and K = 8 cuts, and the time the partitioner adds to tracing and annotation.

    python benchmarks/balance.py            # full
    python benchmarks/balance.py --quick    # two models
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from digits_accuracy import CUTS

from splitter import ModelOptions, analyze
from splitter.partitioning.partitioner import (
    Partition,
    Rules,
    evaluate,
    partition_blocks,
    settings_from,
)

RESNET32 = Path(__file__).resolve().parent.parent / "examples" / "resnet_cifar" / "model.py"
MODELS = ["resnet50", "resnet101", "resnet152", "vit_b_16", "densenet121", "efficientnet_b0"]


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}" if n >= 2**24 else f"{n / 2**20:,.1f}"


def balance_table(models: list[str], blocks: int) -> None:
    settings = settings_from(None, None, None)
    print(
        f"| model (K={blocks}) | memory: largest MiB | largest / mean | FLOPs: largest / mean | "
        "smallest block's FLOPs | rules off: largest MiB (/ mean) | units: largest MiB | "
        "params: largest MiB | e2e peak MiB | local peak MiB (memory) | saving |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in models:
        analysis = analyze(f"torchvision:{name}", ModelOptions(batch_size=32))
        parts = {
            b: partition_blocks(analysis, blocks, settings, b)
            for b in ("memory", "units", "params")
        }
        free = partition_blocks(analysis, blocks, settings, rules=Rules(0, 0.0, "free", 0.0))
        largest = {b: max(x.variable_bytes for x in p.blocks) for b, p in parts.items()}
        best = parts["memory"]
        flops = [x.flops for x in best.blocks]
        print(
            f"| {name} | {mib(largest['memory'])} | {spread(best, 'variable_bytes')} | "
            f"{spread(best, 'flops')} | {min(flops) / sum(flops):.1%} | "
            f"{mib(max(x.variable_bytes for x in free.blocks))} ({spread(free, 'variable_bytes')})"
            f" | {mib(largest['units'])} | {mib(largest['params'])} | "
            f"{mib(best.e2e_peak_bytes)} | {mib(best.local_peak_bytes)} | {best.saving:.1%} |"
        )
        for warning in best.warnings:
            print(f"<!-- {name}: {warning} -->")


def spread(part: Partition, key: str) -> str:
    """The largest block's `key` over the mean."""
    values = [getattr(x, key) for x in part.blocks]
    return f"{max(values) / (sum(values) / len(values)):.3f}"


def hand_split_table(batch: int = 128) -> None:
    """The bundled CIFAR ResNet-32 against the InfoPro paper's hand-written K = 4 and 8 cuts."""
    analysis = analyze(str(RESNET32), ModelOptions(batch_size=batch))
    settings = settings_from(None, None, None)
    print(
        f"\n| ResNet-32 (32x32, batch {batch}) | memory: largest MiB (/ mean) | units | params | "
        "InfoPro's hand split |"
    )
    print("|---|---|---|---|---|")
    for blocks, names in CUTS.items():
        found = {
            b: partition_blocks(analysis, blocks, settings, b)
            for b in ("memory", "units", "params")
        }
        cuts = [analysis.cuts.find(n) for n in names]
        found["hand"] = evaluate(analysis, [c for c in cuts if c is not None], settings)
        cells = []
        for part in found.values():
            variable = [x.variable_bytes for x in part.blocks]
            cells.append(f"{mib(max(variable))} ({max(variable) / (sum(variable) / blocks):.2f})")
        print(f"| K = {blocks} | {' | '.join(cells)} |")


def timing_table(name: str, blocks: int, repeats: int) -> None:
    print(f"\n| {name}, batch 32 | seconds (best of {repeats}) |")
    print("|---|---|")
    analyse, part = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        analysis = analyze(f"torchvision:{name}", ModelOptions(batch_size=32))
        analyse.append(time.perf_counter() - start)
        start = time.perf_counter()
        partition_blocks(analysis, blocks, settings_from(None, None, None))
        part.append(time.perf_counter() - start)
    print(f"| build, trace (train and eval) and annotate | {min(analyse):.2f} |")
    print(f"| partition into {blocks} blocks (cost model and exact DP) | {min(part):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two models, one repeat")
    args = parser.parse_args()
    balance_table(MODELS[:2] if args.quick else MODELS, 4)
    hand_split_table()
    timing_table("resnet152", 16, 1 if args.quick else 3)


if __name__ == "__main__":
    main()
