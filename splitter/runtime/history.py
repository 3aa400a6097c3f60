"""The per-step history of a run: `metrics.jsonl` in `--out`, one JSON object per training step.

    {"step": 12, "epoch": 0, "lr": 0.05, "block_losses": [2.29, 0.62, 1.9, 2.1],
     "block_accuracy": [0.09, 0.41, 0.3, 0.2], "step_time_s": 0.081,
     "peak_memory_bytes": 12650496, "peak_tensor_bytes": 19292160, "peak_rss_bytes": 752812032}

`step` counts the steps done (1-based), `epoch` is the step's epoch (0-based), `lr` the
learning rate it trained at; `block_losses` and `block_accuracy` are each block's on the step's
batch (one entry, the model's, with `--mode e2e`); `step_time_s` is the step's wall time (a
wavefront's: its tick's); the peaks are the run's so far (as in metrics.json; null where
unknown). The losses stay on the device until a progress line, the end of a segment, or the
end of the run, when the rows are written in one go. A resumed run keeps the rows up to its
checkpoint's step and appends the rest, so the file holds each step once.

Under torchrun each rank holds only its own blocks: rank 0 writes `metrics.jsonl`, rank R
`metrics.rank<R>.jsonl`; each row also has `rank`, and `block_losses` and `block_accuracy` are
keyed by block index, e.g. `{"2": 0.62, "3": 1.9}` (a data-parallel replica's on its slice of
the batch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from placement import Placement
    from step import Step

NAME = "metrics.jsonl"
PEAKS = ("peak_memory_bytes", "peak_tensor_bytes", "peak_rss_bytes")
Stats = dict[int, tuple[torch.Tensor, torch.Tensor]]
"""A step's loss and accuracy by block (tensors, where the step left them)."""


def file_name(rank: int) -> str:
    return NAME if rank == 0 else f"metrics.rank{rank}.jsonl"


class History:
    """The rows of this process's steps, kept as tensors until `flush` writes them."""

    def __init__(self, out: Path, s: Step, placement: Placement, start: int) -> None:
        layout = placement.layout
        self.s, self.path = s, out / file_name(layout.rank if layout else 0)
        self.where = {"rank": layout.rank} if layout else {}
        self.pending: list[tuple[dict[str, Any], Stats, dict[str, Any]]] = []
        s.stats = {}  # the steps record their losses from now on
        kept = self.rows_until(start) if start else []
        self.path.write_text("".join(kept))

    def rows_until(self, step: int) -> list[str]:
        """The lines of an earlier run for steps 1..`step` (those a checkpoint holds)."""
        if not self.path.is_file():
            return []
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short when the run stopped
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line + "\n")
        return kept

    def add(self, step: int, step_time_s: float | None) -> Stats:
        """Step `step` (0-based) is done by every block of this process: its row, pending;
        its loss and accuracy by block."""
        s = self.s
        stats = s.stats.pop(step, {}) if s.stats is not None else {}
        head = {"step": step + 1, "epoch": step // s.per_epoch, "lr": s.lr(step), **self.where}
        figures = s.memory.figures()
        tail = {"step_time_s": step_time_s, **{key: figures[key] for key in PEAKS}}
        self.pending.append((head, stats, tail))
        return stats

    def flush(self) -> None:
        """Write the pending rows (the losses come off the device here)."""
        if not self.pending:
            return
        lines = []
        for head, stats, tail in self.pending:
            by_block = {
                key: {k: float(stats[k][i]) for k in sorted(stats)}
                for i, key in enumerate(("block_losses", "block_accuracy"))
            }
            values: dict[str, Any] = by_block  # under torchrun; one process: lists
            if not self.where:
                values = {key: list(found.values()) for key, found in by_block.items()}
            row = {**head, **values, **tail}
            lines.append(json.dumps(row) + "\n")
        with self.path.open("a") as f:
            f.write("".join(lines))
        self.pending.clear()
