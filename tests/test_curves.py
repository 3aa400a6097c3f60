"""`splitter plot-run`: training curves read from run folders and drawn with labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from splitter.errors import SplitterError
from splitter.report.curves import plot_runs, read_run, smooth


def fake_run(folder: Path, mode: str, blocks: int, steps: int, rank_files: bool = False) -> Path:
    """A run folder as train.py writes it: the summary and one history row per step."""
    folder.mkdir(parents=True)
    evaluations = [{"step": s, "test_accuracy": s / (2 * steps)} for s in (steps // 2, steps)]
    summary = {"mode": mode, "evaluations": evaluations, "history": "metrics.jsonl"}
    (folder / "metrics.json").write_text(json.dumps(summary))
    rows = [
        {
            "step": s,
            "epoch": 0,
            "lr": 0.1,
            "block_losses": [2.3 / s + k for k in range(blocks)],
            "block_accuracy": [min(1.0, s / steps) for _ in range(blocks)],
            "step_time_s": 0.01,
            "peak_memory_bytes": None,
        }
        for s in range(1, steps + 1)
    ]
    if rank_files:  # a two-rank pipeline: block 0 on rank 0, the others on rank 1
        for name, keep in (("metrics.jsonl", {0}), ("metrics.rank1.jsonl", set(range(1, blocks)))):
            lines = [
                json.dumps(
                    {**row, **{key: {k: row[key][k] for k in keep} for key in ("block_losses", "block_accuracy")}}
                )
                for row in rows
            ]
            (folder / name).write_text("\n".join(lines) + "\n")
    else:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_run_reads_every_block_at_every_step(tmp_path: Path) -> None:
    run = read_run(fake_run(tmp_path / "local", "local", blocks=3, steps=12))
    assert run.steps == list(range(1, 13)) and sorted(run.losses) == [0, 1, 2]
    assert run.losses[2][0] == pytest.approx(2.3 + 2) and run.tests == [(6, 0.25), (12, 0.5)]


def test_pipeline_rank_files_merge_into_one_run(tmp_path: Path) -> None:
    whole = read_run(fake_run(tmp_path / "one", "local", blocks=3, steps=5))
    ranks = read_run(fake_run(tmp_path / "two", "local", blocks=3, steps=5, rank_files=True))
    assert ranks.losses == whole.losses and ranks.accuracy == whole.accuracy


def test_local_and_e2e_curves_are_drawn_with_labels(tmp_path: Path) -> None:
    local = fake_run(tmp_path / "local", "local", blocks=3, steps=80)
    e2e = fake_run(tmp_path / "e2e", "e2e", blocks=1, steps=80)
    svg = tmp_path / "curves.svg"
    plot_runs([local, e2e], svg)
    text = svg.read_text()
    for label in ("block0, local (local)", "block2, local (local)", "model, e2e (e2e)"):
        assert label in text
    assert "training loss (mean of 2 steps)" in text and "test accuracy" in text


def test_the_html_page_is_self_contained(tmp_path: Path) -> None:
    page = tmp_path / "curves.html"
    plot_runs([fake_run(tmp_path / "r", "local", blocks=2, steps=10)], page)
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "0.2500" not in text
    assert "<td>0.5000</td>" in text and "src=" not in text and "<script" not in text


def test_a_folder_without_a_history_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SplitterError, match=r"`.*empty` holds no run of train.py.*--out"):
        read_run(tmp_path / "empty")


def test_smoothing_is_a_trailing_mean() -> None:
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert all(not math.isnan(v) for v in smooth([0.5] * 5, 10))
