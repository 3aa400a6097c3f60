"""Scale-out: blocks grouped onto several devices (a wavefront in one process) and onto the
ranks of a torch.distributed job (gloo on loopback). With per-block optimizers the weights
after N steps are exactly those of the sequential run; a `momentum` auxiliary whose source is
on the next rank sees it one step late, exactly; a killed rank stops the others with an error
naming it, and `--resume` continues to the uninterrupted run's weights."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitter.api import compile_package
from splitter.frontend.modelref import ModelOptions
from splitter.package import load_package
from splitter.runtime import pipeline

FIXTURE = Path(__file__).parent / "fixtures" / "pipenet.py"
SPEC = """\
version: 1
model: {{input_shape: [3, 16, 16], kwargs: {kwargs}}}
partition: {{cuts: [units.0, units.1, units.3, units.4]}}
aux: {{default: {aux}}}
training:
  optimizer: {{name: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}}
  schedule: {{name: constant, warmup_epochs: 0}}
  batch_size: 16
  data: {{name: synthetic}}
  optimizer_scope: {scope}
"""
COMMON = ["--data", "synthetic", "--threads", "1", "--eval-batches", "2", "--log-every", "1000"]


def compile_pipenet(
    root: Path, name: str, aux: str = "{kind: conv, width: 16, hidden: 32}", **options: Any
) -> Path:
    spec = root / f"{name}.yaml"
    kwargs = options.get("kwargs", "{}")
    spec.write_text(SPEC.format(aux=aux, kwargs=kwargs, scope=options.get("scope", "block")))
    out = root / name
    compile_package(str(FIXTURE), str(spec), ModelOptions(), out=str(out))
    return out


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scaleout")
    return {
        "conv": compile_pipenet(root, "conv"),
        "momentum": compile_pipenet(
            root, "momentum", "{kind: momentum, decay: 0.9, head: {kind: linear}}"
        ),
        "plain": compile_pipenet(
            root, "plain", "{kind: linear}", kwargs="{norm: false, dropout: 0.0}"
        ),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ranks(package: Path, world: int, args: list[str]) -> list[subprocess.Popen[str]]:
    """`world` processes of train.py joined by gloo on loopback, as torchrun would start them."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "train.py", *COMMON, *args],
                cwd=package,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def finish(procs: list[subprocess.Popen[str]], timeout: float = 240) -> list[tuple[int, str]]:
    found = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        found.append((p.returncode, out + err))
    return found


def run_ranks(package: Path, world: int, args: list[str]) -> None:
    results = finish(start_ranks(package, world, args))
    for rank, (code, output) in enumerate(results):
        assert code == 0, f"rank {rank}:\n{output}"


def run_one(package: Path, args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "train.py", *COMMON, *args],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr


def trained(package: Path, out: Path, world: int, *args: str) -> dict[str, torch.Tensor]:
    """The exported weights of a run in `world` processes (1: a plain process), its
    checkpoint and metrics in `out`."""
    flags = [*args, "--out", str(out), "--export", str(out.with_suffix(".pt"))]
    if world == 1:
        run_one(package, flags)
    else:
        run_ranks(package, world, flags)
    return weights(out.with_suffix(".pt"))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)  # type: ignore[no-any-return]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- grouping and refusals


def test_balance_examples() -> None:
    assert pipeline.balance([1, 1, 1, 1], 2) == [range(0, 2), range(2, 4)]
    assert pipeline.balance([5, 1, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 6)]
    assert pipeline.balance([1, 2, 3], 3) == [range(0, 1), range(1, 2), range(2, 3)]
    assert pipeline.balance([4, 4], 1) == [range(0, 2)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=8), st.integers(1, 8))
def test_balance_is_optimal_and_contiguous(costs: list[int], groups: int) -> None:
    groups = min(groups, len(costs))
    found = pipeline.balance(costs, groups)
    assert len(found) == groups and found[0].start == 0 and found[-1].stop == len(costs)
    assert all(g.stop == h.start and len(g) > 0 for g, h in itertools.pairwise(found))
    best = min(
        max(sum(costs[i:j]) for i, j in itertools.pairwise([0, *cut, len(costs)]))
        for cut in itertools.combinations(range(1, len(costs)), groups - 1)
    )
    assert max(sum(costs[g.start : g.stop]) for g in found) == best


def test_schedule_refuses_what_it_cannot_run_with_the_fix() -> None:
    with pytest.raises(pipeline.ScheduleError) as error:
        pipeline.schedule([1, 1, 1], 4, "global", [1, 1, 1], "stages")
    text = str(error.value)
    assert "4 stages for 3 blocks" in text and "--stages" in text
    assert "optimizer_scope: global" in text and "optimizer_scope: block" in text
    with pytest.raises(pipeline.ScheduleError, match=r"block 2's `mlaan` window \(blocks 1..2\)"):
        pipeline.schedule([1, 1, 1, 1], 2, "block", [1, 1, 2, 1], "devices")
    assert pipeline.schedule([1, 1, 1, 1], 2, "block", [1, 2, 1, 1]) == [range(2), range(2, 4)]
    with pytest.raises(pipeline.ScheduleError, match="data parallelism"):
        pipeline.schedule([1, 1, 1, 1], 2, "block", [1, 2, 1, 1], "stages", replicas=2)


def test_a_world_the_stages_do_not_divide_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(pipeline.ScheduleError, match="3 processes cannot run 2 stages"):
        pipeline.layout_from_environment(2)
    layout = pipeline.Layout(rank=3, world=4, stages=2)
    assert (layout.stage, layout.replica, layout.previous, layout.next) == (1, 1, 1, None)
    assert layout.ranks_of(layout.stage) == [2, 3]


def test_ranks_refuse_the_global_scope_with_the_fix(tmp_path: Path) -> None:
    package = compile_pipenet(tmp_path, "global", scope="global")
    results = finish(start_ranks(package, 2, ["--steps", "2", "--out", str(tmp_path / "r")]))
    for code, output in results:
        assert code == 1 and "optimizer_scope: block" in output, output
    done = subprocess.run(
        [sys.executable, "train.py", *COMMON, "--steps", "1", "--device", "cpu", "cpu"],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "2 devices working on different batches" in done.stderr


# ---------------------------------------------------------------- exact equivalence


def test_wavefront_and_pipelines_give_the_sequential_weights(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    """Per-block optimizers, conv auxiliaries, BatchNorm and dropout: after 12 steps (across
    a checkpoint at step 5 and an epoch end with its evaluation at step 10), the wavefront on
    three devices and pipelines of 2 and 3 gloo processes hold exactly the sequential run's
    weights, auxiliaries included, and evaluate to the same test accuracy."""
    package = packages["conv"]
    steps = ["--steps", "12", "--batch-size", "96", "--save-every", "5"]
    runs = {
        "sequential": [],
        "wavefront": ["--device", "cpu", "cpu", "cpu"],
        "two": None,
        "three": None,
    }
    for name, extra in runs.items():
        args = [*steps, "--out", str(tmp_path / name), "--export", str(tmp_path / f"{name}.pt")]
        if extra is None:
            run_ranks(package, 2 if name == "two" else 3, args)
        else:
            run_one(package, [*args, *extra])
    reference = weights(tmp_path / "sequential.pt")
    reference_aux = torch.load(tmp_path / "sequential" / "checkpoint.pt", weights_only=False)
    evaluations = json.loads((tmp_path / "sequential" / "metrics.json").read_text())["evaluations"]
    assert [e["step"] for e in evaluations] == [10, 12]
    for name in ("wavefront", "two", "three"):
        assert same(weights(tmp_path / f"{name}.pt"), reference), name
        found = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)
        assert same(found["auxiliaries"], reference_aux["auxiliaries"]), name
        assert found["step"] == 12
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["evaluations"] == evaluations, name
    with load_package(package) as train:
        assert not same(train.build(0).model.state_dict(), reference)  # it trained


def test_momentum_across_ranks_is_exactly_one_step_stale(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    """The wavefront reads every EMA source as the sequential run does. Across processes the
    EMA at step t reads its source after step t-2: the weights equal a sequential run given
    exactly that staleness, and differ from the fresh run."""
    package, steps = packages["momentum"], ["--steps", "5", "--no-checkpoint"]
    for name, extra in {"sequential": [], "wavefront": ["--device", "cpu", "cpu"]}.items():
        run_one(
            package,
            [*steps, *extra, "--out", str(tmp_path), "--export", str(tmp_path / f"{name}.pt")],
        )
    run_ranks(package, 2, [*steps, "--out", str(tmp_path), "--export", str(tmp_path / "two.pt")])
    fresh, two = weights(tmp_path / "sequential.pt"), weights(tmp_path / "two.pt")
    assert same(weights(tmp_path / "wavefront.pt"), fresh)
    assert not same(two, fresh)
    assert same(two, stale_reference(package, 5, stage_boundary(package, 2)))


def stale_reference(package: Path, steps: int, boundary: int) -> dict[str, torch.Tensor]:
    """The sequential run in this process, except that the EMA of block `boundary - 1` reads
    its source unit's parameters as they were before the previous step's update."""
    torch.set_num_threads(1)
    with load_package(package) as train:
        args = train.parse_args([*COMMON, "--steps", str(steps), "--no-checkpoint"])
        s, placement = train.prepare(args)
        schedule = train.make_schedule(s, args, placement)
        aux = s.parts.auxiliaries[boundary - 1]
        source = aux.source
        seen = [p.detach().clone() for p in source]  # after step t-2: the initial weights
        aux.source = tuple(p.detach().clone() for p in source)  # what the EMA reads
        runner = schedule.run(0, steps, [])
        for _ in range(steps):
            before = [p.detach().clone() for p in source]  # after step t-1
            for t, value in zip(aux.source, seen, strict=True):
                t.copy_(value)
            next(runner)  # step t
            seen = before
        return {k: v.clone() for k, v in s.parts.model.state_dict().items()}


def stage_boundary(package: Path, stages: int) -> int:
    """The first block of stage 1, as train.py groups the blocks."""
    import yaml

    lock = yaml.safe_load((package / "spec.lock.yaml").read_text())
    return pipeline.balance(lock["package"]["block_flops"], stages)[1].start


# ---------------------------------------------------------------- failures and resuming


def start_long_run(
    package: Path, world: int, out: Path, timeout: int
) -> list[subprocess.Popen[str]]:
    """Ranks training far longer than a test, once their first checkpoint is on disk."""
    flags = ["--steps", "100000", "--save-every", "10", "--timeout", str(timeout)]
    procs = start_ranks(package, world, [*flags, "--out", str(out)])
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.02)
    return procs


@pytest.mark.slow  # several processes: CI runs it (`pytest -m slow`)
def test_a_killed_rank_stops_the_others_and_resume_reaches_the_same_weights(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    """Three ranks train for a long time; rank 1 is killed once a checkpoint exists. Ranks 0
    and 2 exit within the timeout with an error naming the lost rank. Resuming from the
    checkpoint to step 30 gives the weights of an uninterrupted 30-step run."""
    package, out = packages["conv"], tmp_path / "killed"
    procs = start_long_run(package, 3, out, timeout=60)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    results = finish(procs, timeout=90)
    assert time.monotonic() - killed < 60
    for rank in (0, 2):
        code, output = results[rank]
        assert code == 1, output
        assert f"error: rank {rank} (stage {rank}) lost contact with" in output, output
        assert "--resume" in output
    saved = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    assert saved % 10 == 0 and 10 <= saved < 30
    run_ranks(
        package,
        3,
        ["--steps", "30", "--resume", "--out", str(out), "--export", str(tmp_path / "resumed.pt")],
    )
    run_one(
        package,
        ["--steps", "30", "--out", str(tmp_path / "whole"), "--export", str(tmp_path / "whole.pt")],
    )
    assert same(weights(tmp_path / "resumed.pt"), weights(tmp_path / "whole.pt"))


@pytest.mark.slow  # several processes: CI runs it (`pytest -m slow`)
def test_resuming_a_momentum_pipeline_sees_the_same_stale_sources(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    """A checkpoint keeps the source copy in flight to the rank before: a 2-rank momentum run
    stopped at step 3 and resumed to step 6 ends where an uninterrupted 6-step run does."""
    package = packages["momentum"]
    run_ranks(
        package,
        2,
        [
            "--steps",
            "6",
            "--no-checkpoint",
            "--out",
            str(tmp_path / "a"),
            "--export",
            str(tmp_path / "whole.pt"),
        ],
    )
    run_ranks(package, 2, ["--steps", "3", "--out", str(tmp_path / "b")])
    run_ranks(
        package,
        2,
        [
            "--steps",
            "6",
            "--resume",
            "--out",
            str(tmp_path / "b"),
            "--export",
            str(tmp_path / "resumed.pt"),
        ],
    )
    assert same(weights(tmp_path / "resumed.pt"), weights(tmp_path / "whole.pt"))


# ---------------------------------------------------------------- torchrun and data parallelism


def test_torchrun_starts_the_pipeline(packages: dict[str, Path], tmp_path: Path) -> None:
    package = packages["conv"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(free_port()),
            "train.py",
            *COMMON,
            "--steps",
            "4",
            "--no-checkpoint",
            "--out",
            str(tmp_path / "t"),
            "--export",
            str(tmp_path / "t.pt"),
        ],
        cwd=package,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    single = trained(package, tmp_path / "s", 1, "--steps", "4", "--no-checkpoint")
    assert same(weights(tmp_path / "t.pt"), single)
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["schedule"] == "pipeline" and len(metrics["ranks"]) == 2
    assert len(metrics["block_losses"]) == 5 and metrics["samples_per_s"] > 0


@pytest.mark.slow  # several processes: CI runs it (`pytest -m slow`)
def test_data_parallel_replicas_average_their_gradients(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    """Four processes, two stages of two DDP replicas, each replica on half of every batch:
    without BatchNorm or dropout the averaged gradient is the whole batch's, so the weights
    match the sequential run's up to float rounding."""
    package, steps = packages["plain"], ("--steps", "4", "--no-checkpoint")
    ddp = trained(package, tmp_path / "d", 4, "--stages", "2", *steps)
    single = trained(package, tmp_path / "s", 1, *steps)
    assert all(torch.allclose(ddp[k], single[k], atol=1e-5) for k in ddp)
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert len(metrics["ranks"]) == 4


@pytest.mark.slow  # several processes: CI runs it (`pytest -m slow`)
def test_a_hung_rank_times_out_the_others(packages: dict[str, Path], tmp_path: Path) -> None:
    """A rank that stops answering (SIGSTOP) is given `--timeout` seconds, then its peer
    exits with an error naming it."""
    procs = start_long_run(packages["conv"], 2, tmp_path / "hung", timeout=5)
    procs[1].send_signal(signal.SIGSTOP)
    try:
        code, output = finish(procs[:1], timeout=60)[0]
    finally:
        procs[1].kill()
        procs[1].communicate()
    assert code == 1 and "error: rank 0 (stage 0) lost contact with rank 1" in output, output
    assert "Timed out" in output


@pytest.mark.slow  # three runs of four processes: about 30 s
def test_data_parallel_resume_restores_every_replicas_generators(
    packages: dict[str, Path], tmp_path: Path
) -> None:
    """Two stages of two replicas with dropout: each replica draws its own masks, and a
    checkpoint keeps every replica's generators, so 3 steps + a resume to 6 equal 6 steps."""
    package, stages = packages["conv"], ["--stages", "2"]
    whole = ["--steps", "6", "--no-checkpoint", "--out", str(tmp_path / "a")]
    run_ranks(package, 4, [*stages, *whole, "--export", str(tmp_path / "whole.pt")])
    run_ranks(package, 4, [*stages, "--steps", "3", "--out", str(tmp_path / "b")])
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert set(saved["replica_rng"]) == {1} and set(saved["replica_rng"][1]) == set(range(5))
    assert not torch.equal(saved["replica_rng"][1][0]["cpu"], saved["block_rng"][0]["cpu"])
    resumed = ["--steps", "6", "--resume", "--out", str(tmp_path / "b")]
    run_ranks(package, 4, [*stages, *resumed, "--export", str(tmp_path / "resumed.pt")])
    assert same(weights(tmp_path / "resumed.pt"), weights(tmp_path / "whole.pt"))
