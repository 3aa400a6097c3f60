"""How fast `splitter inspect` is, and how little memory annotation takes.

Runs `splitter inspect MODEL --format json` in a fresh process per run (interpreter start and
imports included), and reports the median wall time, the process's peak RSS and the saved
activation bytes it reports; then compares the estimate with a real CPU forward.

    python benchmarks/inspect_speed.py            # full
    python benchmarks/inspect_speed.py --quick    # fewer models and repeats
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = ["resnet152", "resnet50", "vit_b_16", "densenet121", "efficientnet_b0"]


def run(argv: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS bytes and stdout of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024, out


def speed_table(models: list[str], repeats: int) -> None:
    base = [run([sys.executable, "-c", "import torch, torchvision"]) for _ in range(repeats)]
    print(
        f"Importing torch and torchvision alone: {statistics.median(b[0] for b in base):.2f} s, "
        f"peak RSS {statistics.median(b[1] for b in base) / 2**20:,.0f} MiB\n"
    )
    print(
        "| model (batch 32, 3x224x224, fp32) | wall s (median) | peak RSS MiB | "
        "reported saved activations MiB | cuts |"
    )
    print("|---|---|---|---|---|")
    for name in models:
        argv = [
            sys.executable,
            "-m",
            "cli",
            "inspect",
            f"torchvision:{name}",
            "--input-shape",
            "3,224,224",
            "--format",
            "json",
        ]
        runs = [run(argv) for _ in range(repeats)]
        report = json.loads(runs[0][2])
        print(
            f"| {name} | {statistics.median(r[0] for r in runs):.2f} | "
            f"{max(r[1] for r in runs) / 2**20:,.0f} | "
            f"{report['total_activation_bytes'] / 2**20:,.1f} | {len(report['cut_points'])} |"
        )


def accuracy_table(models: list[str], batch: int) -> None:
    import torch

    from splitter import ModelOptions, analyze
    from splitter.frontend.annotate import measure_saved_bytes

    print(
        f"\n| model (batch {batch}, 3x224x224) | estimated MiB (fake) | measured MiB "
        "(real CPU forward) | difference |"
    )
    print("|---|---|---|---|")
    for name in models:
        analysis = analyze(f"torchvision:{name}", ModelOptions(batch_size=batch))
        real = measure_saved_bytes(analysis.model.module, torch.randn(batch, 3, 224, 224))
        est = analysis.total_activation_bytes
        print(f"| {name} | {est / 2**20:,.2f} | {real / 2**20:,.2f} | {(est - real) / real:+.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two models, one repeat")
    args = parser.parse_args()
    speed_table(MODELS[:2] if args.quick else MODELS, 1 if args.quick else 3)
    accuracy_models = ["resnet18", "mobilenet_v2", "vit_b_16"]
    if not args.quick:
        accuracy_models += ["resnet50", "densenet121", "efficientnet_b0", "convnext_tiny"]
    accuracy_table(accuracy_models, 4)


if __name__ == "__main__":
    main()
