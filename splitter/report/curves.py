"""Training curves of an emitted package's runs (`splitter plot-run`): each block's loss and
accuracy per step from `metrics.jsonl`, and the test accuracy from `metrics.json`, with several
runs (local and e2e) side by side."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitter.errors import SplitterError
from splitter.report.plot import E2E, GREY, PALETTE, write_figure

STYLES = ("-", "--", ":", "-.")
"""One line style per run."""


@dataclass
class Run:
    """What one run folder recorded."""

    name: str
    mode: str
    steps: list[int] = field(default_factory=list)
    losses: dict[int, list[float]] = field(default_factory=dict)
    """Per block (one entry, 0, for an e2e run): the training loss at each of `steps`."""
    accuracy: dict[int, list[float]] = field(default_factory=dict)
    tests: list[tuple[int, float]] = field(default_factory=list)
    """(step, test accuracy) of each evaluation."""

    @property
    def label(self) -> str:
        return f"{self.name} ({self.mode})"

    def block_label(self, k: int) -> str:
        return "model" if self.mode == "e2e" else f"block{k}"


def read_run(folder: Path) -> Run:
    """The history (`metrics.jsonl`, and `metrics.rank<R>.jsonl` of other pipeline ranks) and
    the summary (`metrics.json`) a run of train.py wrote into `folder`."""
    summary_path = folder / "metrics.json"
    histories = sorted(folder.glob("metrics*.jsonl"))
    if not folder.is_dir() or not summary_path.is_file() or not histories:
        raise SplitterError(
            f"`{folder}` holds no run of train.py (metrics.json and metrics.jsonl); pass the "
            "folder a run wrote, its `--out` (by default runs/<package folder name>)"
        )
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    run = Run(folder.name, str(summary.get("mode", "local")))
    run.tests = [
        (int(e["step"]), float(e["test_accuracy"]))
        for e in summary["evaluations"]
        if e.get("test_accuracy") is not None  # a detection run reports its test loss alone
    ]
    rows: dict[int, dict[str, Any]] = {}
    for path in histories:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                _merge(rows, json.loads(line), path)
    run.steps = sorted(rows)
    for key, target in (("block_losses", run.losses), ("block_accuracy", run.accuracy)):
        blocks = sorted({k for row in rows.values() for k in row[key]})
        for k in blocks:
            target[k] = [rows[s][key].get(k, float("nan")) for s in run.steps]
    return run


def _merge(rows: dict[int, dict[str, Any]], row: dict[str, Any], path: Path) -> None:
    """Add a history row; blocks given as a list (one process) or by index (pipeline ranks)."""
    try:
        step = int(row["step"])
        found = rows.setdefault(step, {"block_losses": {}, "block_accuracy": {}})
        for key in ("block_losses", "block_accuracy"):
            values = row[key]
            items = enumerate(values) if isinstance(values, list) else values.items()
            found[key].update({int(k): float(v) for k, v in items})
    except (KeyError, TypeError, ValueError) as error:
        raise SplitterError(
            f"`{path}` has a row that is not a train.py history row ({error!r}: {row!r}); "
            "pass a folder written by train.py"
        ) from None


def smooth(values: list[float], window: int) -> list[float]:
    """The mean of each value and the `window - 1` before it."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def draw(runs: list[Run]) -> Any:
    """A Figure of three panels: training loss and accuracy of every block, test accuracy."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.8))
    loss, acc, test = figure.subplots(1, 3)
    longest = max((len(r.steps) for r in runs), default=1)
    window = max(1, longest // 40)
    for i, run in enumerate(runs):
        style = STYLES[i % len(STYLES)]
        for k in run.losses:
            colour = E2E if run.mode == "e2e" else PALETTE[k % len(PALETTE)]
            label = f"{run.block_label(k)}, {run.label}"
            loss.plot(run.steps, smooth(run.losses[k], window), style, color=colour, label=label)
            accuracy = smooth(run.accuracy.get(k, []), window)
            acc.plot(run.steps[: len(accuracy)], accuracy, style, color=colour, label=label)
        if run.tests:
            steps, values = zip(*run.tests, strict=True)
            test.plot(steps, values, style, marker="o", color=GREY, label=run.label)
    smoothing = f" (mean of {window} steps)" if window > 1 else ""
    for axes, title in (
        (loss, f"training loss{smoothing}"),
        (acc, f"training accuracy{smoothing}"),
        (test, "test accuracy"),
    ):
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    title = " vs ".join(r.label for r in runs)
    figure.suptitle(title, fontsize=11, weight="bold")
    figure.tight_layout()
    return figure


def page(runs: list[Run], svg: str) -> str:
    """One self-contained HTML file: the curves inline and each run's last figures."""
    body = svg[svg.index("<svg") :]
    head = "<tr><th>run</th><th>steps</th><th>last losses</th><th>test accuracy</th></tr>\n"
    rows = "".join(
        f"<tr><td>{html.escape(r.label)}</td><td>{r.steps[-1] if r.steps else 0}</td>"
        f"<td>{' '.join(f'{v[-1]:.3f}' for v in r.losses.values() if v)}</td>"
        f"<td>{f'{r.tests[-1][1]:.4f}' if r.tests else '-'}</td></tr>\n"
        for r in runs
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>splitter: training curves</title>\n<style>\n"
        "body { font-family: sans-serif; margin: 1.5em; color: #222; }\n"
        "svg { max-width: 100%; height: auto; }\n"
        "td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left; }\n"
        f"</style>\n</head>\n<body>\n{body}\n<table>\n{head}{rows}</table>\n</body>\n</html>\n"
    )


def plot_runs(folders: list[Path], path: Path) -> list[Run]:
    """Read the runs in `folders` and draw their curves into `path` (`.svg`, `.png`, `.html`)."""
    runs = [read_run(folder) for folder in folders]
    write_figure(path, lambda: draw(runs), lambda svg: page(runs, svg))
    return runs
