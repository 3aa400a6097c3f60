"""What `splitter compile` spends its time on, phase by phase, for large torchvision models.

    python benchmarks/compile_time.py            # the five models below
    python benchmarks/compile_time.py --quick    # resnet152 only

Each model at its default input, batch 32, fp32, K = 4 memory-balanced blocks with momentum
auxiliaries (the default plan), in this process after a warm-up on resnet18: build, trace (train
and eval) and annotate on fake tensors; partition (cost model and exact DP); surgery (the blocks
and their graphs); emit (generate, format with ruff, write). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from schemas import parse_spec
from splitter.analysis.model import analyze
from splitter.codegen.emit import GENERATED, package_files
from splitter.codegen.modelsource import model_source
from splitter.codegen.writer import write_package
from splitter.frontend.modelref import ModelOptions
from splitter.partitioning.partitioner import partition_blocks, settings_from
from splitter.partitioning.plan import plan_for

MODELS = ["resnet152", "vit_l_16", "densenet201", "efficientnet_v2_l", "maxvit_t"]


def phases(name: str, blocks: int, folder: Path) -> dict[str, float]:
    ref, seconds = f"torchvision:{name}", {}
    start = time.perf_counter()
    analysis = analyze(ref, ModelOptions(batch_size=32))
    seconds["analyse"] = time.perf_counter() - start
    start = time.perf_counter()
    part = partition_blocks(analysis, blocks, settings_from(None, "momentum", None))
    seconds["partition"] = time.perf_counter() - start
    cuts = json.dumps([c.name for c in part.cuts])
    loaded = parse_spec(
        f"version: 1\npartition: {{cuts: {cuts}}}\naux: {{default: {{kind: momentum}}}}\n"
    )
    start = time.perf_counter()
    plan = plan_for(analysis, loaded)
    seconds["surgery"] = time.perf_counter() - start
    start = time.perf_counter()
    source = model_source(ref)
    files = package_files(plan, source, {"model": ref}, "bench", {})
    generated = [n for n in GENERATED if n in files and (n != "model.py" or not source.copied)]
    write_package(files, folder / name, force=True, generated=generated)
    seconds["emit"] = time.perf_counter() - start
    seconds["nodes"] = len(analysis.traced.graph("train").graph.nodes)
    seconds["input"] = analysis.target_input.shape[-1]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="resnet152 only")
    args = parser.parse_args()
    models = MODELS[:1] if args.quick else MODELS
    with tempfile.TemporaryDirectory() as tmp:
        phases("resnet18", 4, Path(tmp))  # warm-up: imports, first-call caches
        print(
            "| model (K=4, batch 32) | input | graph nodes | analyse s | partition s | "
            "surgery s | emit s | total s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in models:
            s = phases(name, 4, Path(tmp))
            total = s["analyse"] + s["partition"] + s["surgery"] + s["emit"]
            print(
                f"| {name} | {int(s['input'])} | {int(s['nodes']):,} | {s['analyse']:.2f} | "
                f"{s['partition']:.2f} | {s['surgery']:.2f} | {s['emit']:.2f} | {total:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
