"""Metrics: a run's metrics.json (under torchrun, every rank's) and its summary line."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterator
from typing import Any

from history import NAME as HISTORY
from placement import Placement
from schedules import Pipeline, Schedule
from step import TASK, Step


def report(
    args: argparse.Namespace,
    s: Step,
    placement: Placement,
    evaluations: list[dict[str, Any]],
    times: list[float],
    trained: tuple[int, float],
    schedule: Schedule,
) -> dict[str, Any]:
    """The metrics of a run (the keys of metrics.json); under torchrun, of every rank.
    `trained`: the steps this run trained and the seconds its loop took (evaluation and
    checkpoints left out); `times`: per step, or per wavefront tick. `history`: the per-step
    file (metrics.jsonl); `groups`: the first and last block of each device's group (one
    process) or each pipeline stage (torchrun); `ranks`: under torchrun, each rank's own
    figures (its blocks, device, losses, memory, times), else empty."""
    layout = placement.layout
    stats = dict(enumerate(s.latest))
    mine = {
        "rank": layout.rank if layout else 0,
        "replica": layout.replica if layout else 0,
        "blocks": list(placement.owned),
        "device": ", ".join(str(d) for d in placement.devices[: 1 if layout else None]),
        "block_losses": {k: float(v[0]) for k, v in stats.items() if v is not None},
        "block_accuracy": {k: float(v[1]) for k, v in stats.items() if v is not None},
        **s.memory.figures(),
        "step_time_s": statistics.median(times) if times else None,
        "training_s": trained[1],
    }
    ranks = schedule.gather_report(mine) if isinstance(schedule, Pipeline) else [mine]
    firsts = [r for r in ranks if r["replica"] == 0]  # a replica's losses are on its slice
    losses = {k: v for r in firsts for k, v in r["block_losses"].items()}
    accs = {k: v for r in firsts for k, v in r["block_accuracy"].items()}
    slowest = max(r["training_s"] for r in ranks)
    metrics = {
        "mode": args.mode,
        "data": args.data,
        "steps": s.total,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": ", ".join(r["device"] for r in ranks),
        "precision": args.precision,
        "block_losses": [losses[k] for k in sorted(losses)],
        "block_accuracy": [accs[k] for k in sorted(accs)],
        "task": {"targets": TASK.targets, "loss": TASK.loss},
        "test_accuracy": evaluations[-1].get("test_accuracy") if evaluations else None,
        **{k: v for k, v in (evaluations[-1] if evaluations else {}).items() if k != "step"},
        "evaluations": evaluations,
        **{
            key: max_or_none(r[key] for r in ranks)
            for key in ("peak_memory_bytes", "peak_tensor_bytes", "peak_rss_bytes")
        },
        "peak_memory_method": mine["peak_memory_method"],
        "peak_tensor_method": mine["peak_tensor_method"],
        "malloc": s.allocator.mode,
        "step_time_s": max_or_none(r["step_time_s"] for r in ranks),
        "samples_per_s": args.batch_size * trained[0] / slowest if slowest > 0 else None,
        "schedule": type(schedule).__name__.lower(),
        "history": HISTORY,
        "groups": [[g.start, g.stop - 1] for g in placement.groups],
        "ranks": ranks if len(ranks) > 1 else [],
    }
    return metrics


def max_or_none(values: Iterator[Any]) -> Any:
    found = [v for v in values if v is not None]
    return max(found) if found else None


def memory_line(metrics: dict[str, Any]) -> str:
    """`peak memory 303.6 MiB (saved_tensor_bytes), tensors 350.2 MiB, RSS 1,203.5 MiB`."""
    saved, method = metrics["peak_memory_bytes"], metrics["peak_memory_method"]
    parts = [] if saved is None else [f"peak memory {saved / 2**20:,.1f} MiB ({method})"]
    if metrics["peak_tensor_bytes"] is not None and metrics["peak_tensor_method"] != method:
        parts.append(f"tensors {metrics['peak_tensor_bytes'] / 2**20:,.1f} MiB")
    line = ", ".join(parts) or f"peak memory unmeasured ({method})"
    if metrics["peak_rss_bytes"] is not None:
        line += f", RSS {metrics['peak_rss_bytes'] / 2**20:,.1f} MiB"
    return line
