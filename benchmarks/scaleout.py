"""Throughput of the scale-out schedules against the single-process run, K = 4 blocks.

    python benchmarks/scaleout.py                # ResNet-32, K = 4, batch 64, 60 steps, 3 rounds
    python benchmarks/scaleout.py --aux momentum # MAN++ auxiliaries (one EMA source crosses ranks)
    python benchmarks/scaleout.py --quick        # 1 round of 20 steps

The bundled CIFAR ResNet-32 at InfoPro's K = 4 cuts is compiled once; every run is a fresh
process of the emitted train.py on synthetic 32x32 data with per-block optimizers:
- `sequential`, one process at 1 thread, and at every core (`--threads`);
- `pipeline`, 2 and 4 processes started as torchrun starts them (gloo on loopback), each at
  1 thread (torchrun's OMP_NUM_THREADS=1), each owning a contiguous stage of blocks grouped by
  the cost model's FLOPs;
- `wavefront` over the visible GPUs and an NCCL pipeline, when CUDA is present.
Throughput is samples per second of the training loop (evaluation and checkpoints left out;
for a pipeline, the slowest rank's loop, fill and drain included); the median over rounds,
rounds interleaved so drift in the machine's speed hits every schedule alike. Prints markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from digits_accuracy import spec_text

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions

AUX = {"linear": {"kind": "linear"}, "momentum": {"kind": "momentum"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(package: Path, out: Path, world: int, args: list[str], threads: int) -> dict:
    """train.py in `world` processes (1: a plain process) and the metrics rank 0 wrote."""
    common = ["--data", "synthetic", "--no-checkpoint", "--eval-batches", "1", "--log-every",
              "100000", "--out", str(out / package.name), *args]  # fmt: skip
    port, procs = free_port(), []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if world > 1:
            env |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                    "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port)}  # fmt: skip
        command = [sys.executable, "train.py", *common, "--threads", str(threads)]
        procs.append(
            subprocess.Popen(
                command, cwd=package, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=3600)
        if p.returncode:
            raise SystemExit(f"train.py failed:\n{err.decode()[-2000:]}")
    return json.loads((out / package.name / "metrics.json").read_text())  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--aux", choices=sorted(AUX), default="linear")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round of 20 steps")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 1, 20
    cores = os.cpu_count() or 1
    schedules: dict[str, tuple[int, list[str], int]] = {
        "sequential, 1 thread": (1, [], 1),
        f"sequential, {cores} threads": (1, [], cores),
        "pipeline, 2 processes x 1 thread": (2, [], 1),
        "pipeline, 4 processes x 1 thread": (4, [], 1),
    }
    gpus = torch.cuda.device_count()
    if gpus:
        schedules["sequential, cuda:0"] = (1, ["--device", "cuda:0"], 1)
        if gpus > 1:
            devices = [f"cuda:{i}" for i in range(min(gpus, 4))]
            schedules[f"wavefront, {len(devices)} GPUs"] = (1, ["--device", *devices], 1)
            schedules[f"pipeline, {len(devices)} GPUs (NCCL)"] = (len(devices), [], 1)
    found: dict[str, list[dict]] = {name: [] for name in schedules}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = folder / "spec.yaml"
        spec.write_text(spec_text(4, AUX[args.aux]))
        package = folder / "pkg"
        compile_package(None, str(spec), ModelOptions(), out=str(package))
        flags = ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        for _ in range(args.rounds):
            for name, (world, extra, threads) in schedules.items():
                print(f"{name} ...", file=sys.stderr, flush=True)
                found[name].append(run(package, folder / "out", world, [*flags, *extra], threads))
    base = statistics.median(m["samples_per_s"] for m in found["sequential, 1 thread"])
    every = statistics.median(m["samples_per_s"] for m in found[f"sequential, {cores} threads"])
    print(f"ResNet-32, K = 4 ({args.aux} auxiliaries), batch {args.batch_size}, {args.steps} "
          f"steps, median of {args.rounds} rounds; {platform.processor() or platform.machine()}, "
          f"{cores} cores, torch {torch.__version__}\n")  # fmt: skip
    print("| schedule | groups (blocks) | samples/s | vs 1 thread | vs all cores | step ms |")
    print("|---|---|---:|---:|---:|---:|")
    for name, runs in found.items():
        rate = statistics.median(m["samples_per_s"] for m in runs)
        step = statistics.median(m["step_time_s"] for m in runs) * 1000
        groups = " ".join(f"{a}-{b}" for a, b in runs[0]["groups"])
        print(f"| {name} | {groups} | {rate:,.1f} | {rate / base:.2f}x | {rate / every:.2f}x | "
              f"{step:,.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
