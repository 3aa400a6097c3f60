"""Step time of local training with each auxiliary against end-to-end training, as ratios from
runs interleaved in one process (so drift in the machine's speed hits every method alike).

    python benchmarks/step_time.py               # ResNet-32, K = 4, batch 64, 5 rounds
    python benchmarks/step_time.py --quick       # 2 rounds, 10 steps each

Every method is compiled once (the bundled CIFAR ResNet-32 at InfoPro's K = 4 cuts, as in
digits_accuracy.py); each round then trains every method for `--steps` steps on synthetic
32x32 data, in a fresh order per round, and takes the median step time. Reported: the median
over rounds of each method's step time and of its ratio to e2e's in the same round, with the
lowest and highest ratio. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path

from digits_accuracy import METHODS, spec_text

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package


def step_time(package: Path, mode: str, steps: int, batch: int, out: Path) -> float:
    args = ["--mode", mode, "--data", "synthetic", "--steps", str(steps), "--batch-size",
            str(batch), "--no-checkpoint", "--eval-batches", "1", "--log-every", "100000",
            "--out", str(out / package.name)]  # fmt: skip
    with load_package(package) as train:
        return float(train.train(args)["step_time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=4, choices=[4, 8])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 10 steps")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 2, 10
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    ratios: dict[str, list[float]] = {m: [] for m in METHODS}
    order = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        packages = {}
        for method, aux in METHODS.items():
            spec = folder / f"{len(packages)}.yaml"
            spec.write_text(spec_text(args.blocks, aux))
            packages[method] = folder / f"pkg{len(packages)}"
            compile_package(None, str(spec), ModelOptions(), out=str(packages[method]))
        for _ in range(args.rounds):
            methods = list(METHODS)
            order.shuffle(methods)
            found = {}
            for method in methods:
                mode = "e2e" if METHODS[method] is None else "local"
                found[method] = step_time(
                    packages[method], mode, args.steps, args.batch_size, folder / "runs"
                )
            for method, seconds in found.items():
                times[method].append(seconds)
                ratios[method].append(seconds / found["e2e"])
    print(
        f"\nResNet-32, K = {args.blocks}, batch {args.batch_size}, synthetic 32x32, "
        f"{args.rounds} rounds of {args.steps} steps\n"
    )
    print("| method | step time ms (median) | / e2e (median) | / e2e (range) |")
    print("|---|---|---|---|")
    for method in METHODS:
        r = ratios[method]
        print(
            f"| {method} | {1000 * statistics.median(times[method]):.0f} | "
            f"{statistics.median(r):.2f} | {min(r):.2f}-{max(r):.2f} |"
        )


if __name__ == "__main__":
    main()
