"""Test accuracy, peak activation memory and step time of the compiled CIFAR ResNet-32 on
scikit-learn's digits: end-to-end training against local learning with each auxiliary.

    python benchmarks/digits_accuracy.py            # 10 epochs, seed 0
    python benchmarks/digits_accuracy.py --quick    # 2 epochs
    python benchmarks/digits_accuracy.py --seeds 0 1 2 --blocks 4 8 --epochs 5
    python benchmarks/digits_accuracy.py --blocks 4 --epochs 20 --methods "preset man" "preset dgl"

Every run compiles examples/resnet_cifar/model.py with `splitter compile` into a temporary
folder and trains the emitted package in this process (`splitter.package.load_package`).
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "resnet_cifar" / "model.py"
CUTS = {  # InfoPro's K = 4 and K = 8 for ResNet-32
    4: ["layer1.2", "layer2.1", "layer3.0"],
    8: ["layer1.0", "layer1.2", "layer1.4", "layer2.1", "layer2.3", "layer3.0", "layer3.2"],
}
METHODS: dict[str, dict[str, Any] | None] = {
    "e2e": None,
    "linear": {"kind": "linear"},
    "conv": {"kind": "conv"},
    "momentum (MAN)": {"kind": "momentum", "learnable_scale": False},
    "momentum (MAN++)": {"kind": "momentum"},
    "infopro": {"kind": "infopro"},
    "infopro+momentum": {"kind": "momentum", "head": {"kind": "infopro"}},
    "augmented": {"kind": "augmented"},
    "mlaan": {"kind": "mlaan"},
}
PRESETS = ("man", "man++", "infopro", "infopro+man", "dgl", "dgl+man++", "auglocal", "mlaan")
METHODS |= {f"preset {name}": {"preset": name} for name in PRESETS}
"""`aux: {preset: NAME}`: each paper's auxiliary as its CIFAR code sets it (the default recipe)."""


def spec_text(blocks: int, aux: dict[str, Any] | None) -> str:
    partition: dict[str, Any] = (
        {"cuts": CUTS[blocks]} if blocks in CUTS else {"auto": {"blocks": blocks}}
    )
    if aux and aux.get("preset") == "mlaan" and blocks == 8:
        partition = {"paper": {"name": "mlaan", "k": 8}}  # InfoPro's K = 8 cuts and its leap lists
    spec = {
        "version": 1,
        "model": {"ref": str(MODEL), "input_shape": [3, 32, 32]},
        "partition": partition,
        "aux": aux if aux and "preset" in aux else {"default": aux or {"kind": "linear"}},
        "training": {"data": {"name": "digits"}},
    }
    if aux and "mlaan" in (aux.get("kind"), aux.get("preset")):
        spec["training"]["optimizer_scope"] = "global"  # type: ignore[index]
    return yaml.safe_dump(spec, sort_keys=False)


def run(method: str, blocks: int, epochs: int, seed: int, folder: Path) -> dict[str, Any]:
    aux = METHODS[method]
    slug = "".join(c if c.isalnum() else "-" for c in method)
    spec = folder / f"{slug}-{blocks}.yaml"
    spec.write_text(spec_text(blocks, aux))
    out = folder / f"pkg-{slug}-{blocks}"
    if not out.exists():
        compile_package(None, str(spec), ModelOptions(), out=str(out))
    mode = "e2e" if aux is None else "local"
    args = ["--mode", mode, "--epochs", str(epochs), "--seed", str(seed), "--log-every", "1000"]
    began = time.perf_counter()
    with load_package(out) as train:
        metrics: dict[str, Any] = train.train([*args, "--out", str(folder / "runs" / out.name)])
    metrics["wall_s"] = time.perf_counter() - began
    return metrics


def cell(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.pstdev(values), fmt)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="2 epochs")
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    for blocks in args.blocks:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for method in args.methods:
                runs = []
                for seed in args.seeds:
                    runs.append(run(method, blocks, epochs, seed, Path(tmp)))
                    got = runs[-1]
                    print(
                        f"# {method}, K = {blocks}, seed {seed}: test accuracy "
                        f"{100 * got['test_accuracy']:.1f}%, tensor peak "
                        f"{got.get('peak_tensor_bytes', 0) / 2**20:.1f} MiB, "
                        f"{got['wall_s']:.0f} s",
                        flush=True,
                    )
                rows.append((method, runs))
        table(rows, blocks, epochs, args.seeds)


def table(
    rows: list[tuple[str, list[dict[str, Any]]]], blocks: int, epochs: int, seeds: list[int]
) -> None:
    print(f"\nResNet-32 on digits, K = {blocks}, {epochs} epochs, seeds {seeds}\n")
    print("| method | test accuracy | by seed | peak activation MiB | tensor peak MiB | step ms |")
    print("|---|---|---|---|---|---|")
    for method, runs in rows:
        acc = [100 * r["test_accuracy"] for r in runs]
        mib = [r["peak_memory_bytes"] / 2**20 for r in runs]
        tensors = [r.get("peak_tensor_bytes", 0) / 2**20 for r in runs]
        step = [1000 * r["step_time_s"] for r in runs]
        by_seed = ", ".join(f"{a:.1f}" for a in acc)
        print(
            f"| {method} | {cell(acc, '.1f')}% | {by_seed} | {cell(mib, '.1f')} | "
            f"{cell(tensors, '.1f')} | {cell(step, '.0f')} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
