"""The emitted train.py as a newcomer meets it: refused flags are one `error:` line before
anything is built, each package runs into its own folder, every step is in metrics.jsonl, the
progress is labelled, and `--steps 0 --export` saves the initial weights."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from tests.conftest import Killed, stopped_at_a_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "pipenet.py"
SPEC = """\
version: 1
model: {input_shape: [3, 16, 16], kwargs: {dropout: 0.0}}
partition: {cuts: [units.0, units.1, units.3, units.4]}
aux: {default: {kind: linear}, blocks: {1: {kind: conv}}}
training:
  schedule: {name: constant, warmup_epochs: 0}
  batch_size: 128
  data: {name: synthetic}
"""
FAST = ["--threads", "1", "--eval-batches", "1"]
"""Synthetic data: 1024 samples, so 8 steps an epoch at the spec's batch size of 128."""
ROW_KEYS = {"step", "epoch", "lr", "block_losses", "block_accuracy", "step_time_s",
            "peak_memory_bytes", "peak_tensor_bytes", "peak_rss_bytes"}  # fmt: skip
BLOCKS = 5


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same small CNN compiled into two folders of different names: two packages."""
    root = tmp_path_factory.mktemp("train_script")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    made = {}
    for name in ("alpha", "beta"):
        compile_package(str(FIXTURE), str(spec), ModelOptions(), out=str(root / name))
        made[name] = root / name
    return made


@pytest.fixture
def alpha(
    packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[ModuleType]:
    """Package `alpha`'s train module, run from an empty working folder."""
    monkeypatch.chdir(tmp_path)
    with load_package(packages["alpha"]) as train:
        yield train


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_main(train: ModuleType, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """train.py's entry point as the command line runs it; its exit status."""
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    try:
        train.main()
    except SystemExit as done:
        return int(done.code or 0)
    return 0


# ---------------------------------------------------------------- misuse


def not_built(*_: Any) -> None:
    raise AssertionError("train.py built the model before refusing its flags")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (["--steps", "0"], "--steps 0 trains nothing"),
        (["--steps", "-3"], "--steps -3 is negative"),
        (["--out", "{file}/runs"], "is a file, not a folder"),
        (["--out", "{foreign}"], "holds a run of package beta"),
    ],
    ids=["steps-0", "steps-negative", "unwritable-out", "another-packages-out"],
)
def test_a_refused_flag_is_one_error_line_with_status_2_before_anything_is_built(
    alpha: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path, case: list[str], message: str,
) -> None:  # fmt: skip
    (tmp_path / "file").write_text("not a folder")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "run.json").write_text(json.dumps({"package": "beta", "fingerprint": "0"}))
    args = [a.format(file=tmp_path / "file", foreign=foreign) for a in case]
    monkeypatch.setattr(alpha, "prepare", not_built)
    monkeypatch.setattr(alpha, "build", not_built)
    assert run_main(alpha, monkeypatch, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert "; " in err  # what is wrong; the fix
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "foreign", "run.json"]


def test_resuming_a_file_that_is_not_a_checkpoint_is_one_error_line_with_status_1(
    alpha: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    code = run_main(alpha, monkeypatch, *FAST, "--resume", "notes.txt", "--out", "r")
    err = capsys.readouterr().err
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert "`notes.txt` is not a checkpoint" in errors[0] and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["run.json"]  # no step ran


def test_an_unwritable_out_fails_in_seconds_without_a_traceback(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    """A real process (the torch import included), with 50 epochs of digits to come."""
    (tmp_path / "file").write_text("not a folder")
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(packages["alpha"] / "train.py"), "--data", "digits",
         "--epochs", "50", "--out", str(tmp_path / "file" / "runs")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert time.monotonic() - began < 10
    assert done.returncode == 2 and done.stderr.startswith("error: --out "), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_every_flag_has_help_and_help_shows_the_defaults(
    alpha: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = alpha.flags.parser("")
    assert all(action.help for action in parser._actions)
    with pytest.raises(SystemExit):
        alpha.parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default: runs/alpha)" in shown and "(default: 128)" in shown


# ---------------------------------------------------------------- run folders


def test_a_second_packages_run_does_not_touch_the_first(
    packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    """Both with the default --out, from one working folder: runs/alpha and runs/beta."""
    monkeypatch.chdir(tmp_path)
    args = [*FAST, "--steps", "2"]
    with load_package(packages["alpha"]) as train:
        train.train(args)
    first = {p.name: p.read_bytes() for p in (tmp_path / "runs" / "alpha").iterdir()}
    assert {"run.json", "checkpoint.pt", "metrics.json", "metrics.jsonl"} <= set(first)
    with load_package(packages["beta"]) as train:
        train.train(args)
        capsys.readouterr()
        refused = run_main(train, monkeypatch, *args, "--out", "runs/alpha")
    assert refused == 2 and "holds a run of package alpha" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["alpha", "beta"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "runs" / "alpha").iterdir()} == first
    for name in ("alpha", "beta"):
        record = json.loads((tmp_path / "runs" / name / "run.json").read_text())
        lock = (packages[name] / "spec.lock.yaml").read_text()
        assert record["package"] == name and record["fingerprint"] in lock


def test_resuming_another_packages_run_warns_in_one_line_and_proceeds(
    packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with load_package(packages["alpha"]) as train:
        train.train([*FAST, "--steps", "2"])
    capsys.readouterr()
    with load_package(packages["beta"]) as train:
        train.train([*FAST, "--steps", "3", "--resume", "runs/alpha/checkpoint.pt"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "package alpha" in warnings[0], warnings
    assert [r["step"] for r in rows(tmp_path / "runs" / "beta" / "metrics.jsonl")] == [3]


# ---------------------------------------------------------------- what a run writes and shows


def test_metrics_jsonl_has_one_row_per_step_with_every_key(
    alpha: ModuleType, tmp_path: Path
) -> None:
    metrics = alpha.train([*FAST, "--steps", "10", "--log-every", "4"])
    found = rows(tmp_path / "runs" / "alpha" / "metrics.jsonl")
    assert [r["step"] for r in found] == list(range(1, 11))
    assert all(set(r) == ROW_KEYS for r in found)
    assert [r["epoch"] for r in found] == [0] * 8 + [1] * 2  # 8 steps an epoch
    assert all(len(r["block_losses"]) == len(r["block_accuracy"]) == BLOCKS for r in found)
    assert found[-1]["block_losses"] == pytest.approx(metrics["block_losses"])
    assert found[0]["block_losses"] != found[1]["block_losses"]  # each row its own step
    assert all(r["lr"] == 0.05 and r["step_time_s"] > 0 for r in found)
    assert all(r["peak_memory_bytes"] > 0 for r in found)
    assert metrics["history"] == "metrics.jsonl"


def test_a_resumed_run_holds_every_step_once(
    alpha: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Stopped right after its checkpoint at step 3, with a row of step 4 that no checkpoint
    holds; resumed to step 6: rows 1..6, each once, the 4th of the resumed run."""
    with stopped_at_a_checkpoint(alpha, monkeypatch), pytest.raises(Killed, match="3"):
        alpha.train([*FAST, "--steps", "6", "--save-every", "3"])
    history = tmp_path / "runs" / "alpha" / "metrics.jsonl"
    assert [r["step"] for r in rows(history)] == [1, 2, 3]
    with history.open("a") as f:
        f.write(json.dumps({"step": 4, "epoch": 0, "lost": True}) + "\n")
    alpha.train([*FAST, "--steps", "6", "--resume"])
    found = rows(history)
    assert [r["step"] for r in found] == [1, 2, 3, 4, 5, 6]
    assert all(set(r) == ROW_KEYS for r in found)


def test_progress_lines_are_labelled_per_block_and_epochs_are_named(
    alpha: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    alpha.train([*FAST, "--steps", "10", "--log-every", "5"])
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(
        "alpha: 5 blocks, linear, conv auxiliaries; data synthetic, 10 steps"
    )
    assert "batch size 128; device cpu; out runs/alpha" in lines[0]
    block = r" \| ".join(rf"block{k} loss \d+\.\d+ acc \d\.\d\d" for k in range(BLOCKS))
    steps = [line for line in lines if line.startswith("step ") and "|" in line]
    assert [line.split(" |")[0] for line in steps] == ["step 1/10", "step 5/10", "step 10/10"]
    assert all(re.fullmatch(rf"step \d+/10 \| {block}", line) for line in steps), steps
    epochs = [line for line in lines if line.startswith("epoch")]
    assert len(epochs) == 1
    assert re.fullmatch(r"epoch 1/2 done \(step 8\): test accuracy \d\.\d{4}", epochs[0])
    assert re.fullmatch(r"step 10: test accuracy \d\.\d{4}", lines[-1]), lines


def test_e2e_progress_and_history_name_the_model(
    alpha: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    alpha.train([*FAST, "--steps", "2", "--mode", "e2e", "--no-checkpoint"])
    err = capsys.readouterr().err
    assert "the unsplit model end to end" in err.splitlines()[0]
    assert re.search(r"^step 2/2 \| model loss \d+\.\d+ acc \d\.\d\d$", err, flags=re.M), err
    found = rows(tmp_path / "runs" / "alpha" / "metrics.jsonl")
    assert [len(r["block_losses"]) for r in found] == [1, 1]


def test_the_first_line_comes_before_anything_is_built(
    alpha: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def stop(*_: Any) -> None:
        raise Killed("building")

    monkeypatch.setattr(alpha, "prepare", stop)
    with pytest.raises(Killed):
        alpha.train(["--epochs", "3", "--batch-size", "32", "--data", "digits"])
    line = capsys.readouterr().err
    assert line.startswith("alpha: 5 blocks, linear, conv auxiliaries; data digits, 3 epochs, ")
    assert "batch size 32; device cpu" in line and line.count("\n") == 1


def test_steps_0_exports_the_initial_weights_and_writes_nothing_else(
    alpha: ModuleType, tmp_path: Path
) -> None:
    for seed in ("0", "3"):
        alpha.train(["--steps", "0", "--seed", seed, "--export", f"w{seed}.pt"])
        saved = torch.load(tmp_path / f"w{seed}.pt", weights_only=True)
        initial = alpha.build(int(seed)).model.state_dict()
        assert saved.keys() == initial.keys()
        assert all(torch.equal(saved[k], initial[k]) for k in saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w0.pt", "w3.pt"]
    alpha.train([*FAST, "--steps", "1", "--export", "w1.pt", "--no-checkpoint"])
    trained = torch.load(tmp_path / "w1.pt", weights_only=True)
    initial = torch.load(tmp_path / "w0.pt", weights_only=True)
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)  # a step changes it


def test_plot_run_draws_a_local_and_an_e2e_run_side_by_side(
    alpha: ModuleType, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    alpha.train([*FAST, "--steps", "4", "--no-checkpoint", "--out", "local"])
    alpha.train([*FAST, "--steps", "4", "--no-checkpoint", "--out", "e2e", "--mode", "e2e"])
    result = CliRunner().invoke(app, ["plot-run", "local", "e2e", "-o", "curves.svg"])
    assert result.exit_code == 0, result.stderr
    svg = (tmp_path / "curves.svg").read_text()
    for label in ("block0, local (local)", "block4, local (local)", "model, e2e (e2e)"):
        assert label in svg
    again = CliRunner().invoke(app, ["plot-run", "local", "-o", "curves.svg"])
    assert again.exit_code == 2 and "-o `curves.svg` exists; pass --force" in again.stderr
