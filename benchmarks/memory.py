"""Peak training memory and step time of local learning against end-to-end training, plain and
with activation checkpointing, and the cost model's estimates against measured figures; every
run is a fresh process running the emitted `train.py` as a user would (`python train.py ...`).

    python benchmarks/memory.py                   # both tables below
    python benchmarks/memory.py --table local-vs-e2e --models torchvision:resnet101 --blocks 4
    python benchmarks/memory.py --table local-vs-e2e --malloc mmap default
    python benchmarks/memory.py --table estimate
    python benchmarks/memory.py --quick           # resnet18 112x112 batch 16, K = 2 4; two models

local-vs-e2e: resnet101 and resnet152, 224x224, batch 32, K = 2, 4, 8. For each model, K and
auxiliary (`linear`; `momentum`, MAN++; `infopro+momentum`, InfoPro's heads on MAN++'s copies)
the model is compiled with `auto: {blocks: K, balance: memory}` and trained `--steps` steps on
synthetic data (SGD with momentum). In the same sitting: the unsplit model (`--mode e2e`), and
the unsplit model checkpointed at each K's block boundaries (`--mode e2e --checkpoint`, the
`linear` package's blocks); and, at `--lever-blocks`, momentum with its EMA copy held instead of
recomputed (`recompute: false`), the lever's effect. `--malloc mmap default` adds runs with
train.py's other allocator settings (its default is `trim`). Reported per run (train.py's
metrics.json): the tensor-level peak (the most bytes of live tensor storages at once:
parameters, gradients, optimizer state, activations, temporaries), the resident-memory peak
(VmHWM) above the idle baseline (a process that has only imported torch and torchvision),
autograd's saved bytes (unmeasured under --checkpoint, whose own hooks take the saves), the cost
model's estimate of the local peak, and the median step time, each against e2e's.
estimate: resnet18/50/101 and vit_b_16 (224x224, batch 32) and the CIFAR ResNet-32 and
ResNet-110 (batch 128) at K = 4: the cost model's saved activations and peaks against the
measured ones. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.report.tables import plan_partition

RESNET_CIFAR = Path(__file__).resolve().parent.parent / "examples" / "resnet_cifar" / "model.py"
IDLE = (
    "import re, torch, torchvision\n"
    "s = open('/proc/self/status').read()\n"
    "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', s).group(1)) * 1024)\n"
)


def idle_baseline() -> int:
    """Peak RSS of a Python process that has only imported torch and torchvision (median of 3)."""
    runs = sorted(int(subprocess.check_output([sys.executable, "-c", IDLE])) for _ in range(3))
    return runs[1]


AUX: dict[str, dict[str, Any]] = {
    "linear": {"kind": "linear"},
    "momentum": {"kind": "momentum"},
    "infopro+momentum": {"kind": "momentum", "head": {"kind": "infopro"}},
}
LEVER = ("momentum, EMA held", {"kind": "momentum", "recompute": False})
"""Momentum without its one memory lever: the EMA copy's activations held, not recomputed."""


def compile_for(
    model: str,
    size: int,
    blocks: int,
    batch: int,
    folder: Path,
    kwargs: dict[str, int],
    aux: dict[str, Any] = AUX["linear"],
) -> tuple[Path, Any]:
    spec = {
        "version": 1,
        "model": {"ref": model, "input_shape": [3, size, size], "kwargs": kwargs},
        "partition": {"auto": {"blocks": blocks, "balance": "memory"}},
        "aux": {"default": aux},
        "training": {"data": {"name": "synthetic"}, "batch_size": batch},
    }
    slug = "".join(c if c.isalnum() else "-" for c in json.dumps(aux))
    path = folder / f"spec-{blocks}-{slug}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = folder / f"pkg-{blocks}-{slug}"
    compiled = compile_package(None, str(path), ModelOptions(batch_size=batch), out=str(out))
    return out, plan_partition(compiled.plan)


def run(package: Path, mode: str, steps: int, batch: int, extra: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, str(package / "train.py"), "--mode", mode, "--data", "synthetic",
            "--steps", str(steps), "--batch-size", str(batch), "--no-checkpoint",
            "--eval-batches", "1", "--log-every", "1000", "--out", out, *extra,
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return json.loads((Path(out) / "metrics.json").read_text())  # type: ignore[no-any-return]


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def off(measured: float, estimated: float) -> str:
    return f"{estimated / measured - 1:+.1%}"


ESTIMATED = [  # (model, input size, batch, model arguments)
    ("torchvision:resnet18", 224, 32, {}),
    ("torchvision:resnet50", 224, 32, {}),
    ("torchvision:resnet101", 224, 32, {}),
    ("torchvision:vit_b_16", 224, 32, {}),
    (str(RESNET_CIFAR), 32, 128, {}),
    (str(RESNET_CIFAR), 32, 128, {"depth": 110}),
]


def estimate_table(models: list[tuple[str, int, int, dict[str, int]]], steps: int) -> None:
    """The cost model against a real run, K = 4: saved activations (e2e: the whole graph;
    local: the most held between two backwards) and the tensor-level peak."""
    print(
        "\n| model (K=4, linear) | batch | e2e saved MiB: est. / measured | local saved MiB: "
        "est. / measured | e2e peak MiB: est. / measured | local peak MiB: est. / measured |"
    )
    print("|---|---|---|---|---|---|")
    for model, size, batch, kwargs in models:
        with tempfile.TemporaryDirectory() as tmp:
            package, part = compile_for(model, size, 4, batch, Path(tmp), kwargs)
            e2e = run(package, "e2e", steps, batch, [])
            local = run(package, "local", steps, batch, [])
        saved = max(b.activation_bytes + b.aux_activation_bytes for b in part.blocks)
        pairs = [
            (part.analysis.total_activation_bytes, e2e["peak_memory_bytes"]),
            (saved, local["peak_memory_bytes"]),
            (part.e2e_peak_bytes, e2e["peak_tensor_bytes"]),
            (part.local_peak_bytes, local["peak_tensor_bytes"]),
        ]
        name = model.removeprefix("torchvision:")
        if not model.startswith("torchvision:"):
            name = f"ResNet-{kwargs.get('depth', 32)} (CIFAR)"
        cells = " | ".join(f"{mib(e)} / {mib(m)} ({off(m, e)})" for e, m in pairs)
        print(f"| {name} | {batch} | {cells} |", flush=True)


Row = tuple[str, str, dict[str, Any], dict[str, Any], int | None]
"""A run's name, K, metrics, the e2e metrics it is set against, and the cost model's peak."""


def local_vs_e2e_table(args: argparse.Namespace, model: str, idle: int) -> None:
    variants = [("", [])] + [(f" (--malloc {m})", ["--malloc", m]) for m in args.malloc]
    chosen = [(name, AUX[name], args.blocks) for name in args.aux]
    if "momentum" in args.aux and args.lever_blocks:
        chosen.append((LEVER[0], LEVER[1], args.lever_blocks))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        packages = {
            (name, k): compile_for(model, args.size, k, args.batch_size, Path(tmp), {}, aux)
            for name, aux, blocks in chosen
            for k in blocks
        }
        linear = {k: packages[name, k] for name, k in packages if name == "linear"}
        first = next(iter(packages.values()))
        for label, extra in variants:
            e2e = run(first[0], "e2e", args.steps, args.batch_size, extra)
            rows.append((f"e2e{label}", "-", e2e, e2e, first[1].e2e_peak_bytes))
            for k, (package, _) in linear.items():
                flags = ["--checkpoint", *extra]
                checkpointed = run(package, "e2e", args.steps, args.batch_size, flags)
                rows.append((f"e2e --checkpoint{label}", str(k), checkpointed, e2e, None))
            for (name, k), (package, part) in packages.items():
                local = run(package, "local", args.steps, args.batch_size, extra)
                rows.append((f"local, {name}{label}", str(k), local, e2e, part.local_peak_bytes))
    print(
        f"\n{model.removeprefix('torchvision:')}, {args.size}x{args.size}, batch "
        f"{args.batch_size}, fp32, {args.steps} steps, SGD; idle baseline {mib(idle)} MiB RSS\n"
    )
    print(
        "| run | K | tensor peak MiB | / e2e | RSS peak above idle MiB | / e2e | "
        "saved activations MiB | estimated peak MiB | step s | / e2e |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, k, m, e2e, estimate in rows:
        rss, rss_e2e = m["peak_rss_bytes"] - idle, e2e["peak_rss_bytes"] - idle
        saved = "-" if m["peak_memory_bytes"] is None else mib(m["peak_memory_bytes"])
        print(
            f"| {name} | {k} | {mib(m['peak_tensor_bytes'])} | "
            f"{m['peak_tensor_bytes'] / e2e['peak_tensor_bytes']:.2f} | {mib(rss)} | "
            f"{rss / rss_e2e:.2f} | {saved} | {'-' if estimate is None else mib(estimate)} | "
            f"{m['step_time_s']:.1f} | {m['step_time_s'] / e2e['step_time_s']:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", choices=["local-vs-e2e", "estimate", "both"], default="both")
    parser.add_argument(
        "--models", nargs="+", default=["torchvision:resnet101", "torchvision:resnet152"]
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--aux", nargs="+", default=list(AUX), choices=list(AUX))
    parser.add_argument(
        "--lever-blocks",
        type=int,
        nargs="*",
        default=[4],
        help="K at which momentum also runs with its EMA copy held (none: skip)",
    )
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument(
        "--malloc", nargs="*", default=[], choices=["mmap", "default"], help="also run with these"
    )
    parser.add_argument("--quick", action="store_true", help="resnet18 112x112 batch 16; K 2 4")
    args = parser.parse_args()
    estimated = ESTIMATED
    if args.quick:
        args.models, args.size, args.batch_size, args.blocks = (
            ["torchvision:resnet18"],
            112,
            16,
            [2, 4],
        )
        estimated = [("torchvision:resnet18", 112, 16, {}), (str(RESNET_CIFAR), 32, 64, {})]
    if args.table in ("local-vs-e2e", "both"):
        idle = idle_baseline()
        for model in args.models:
            local_vs_e2e_table(args, model, idle)
    if args.table in ("estimate", "both"):
        estimate_table(estimated, args.steps)


if __name__ == "__main__":
    main()
