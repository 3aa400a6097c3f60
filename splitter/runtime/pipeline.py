"""Scale-out: contiguous groups of blocks on several devices (a wavefront in one process) or on
the ranks of a `torchrun` job (a pipeline of stages), and every block's own random generator.

Local learning has no backward locking: block k can train on batch t while block k+1 trains on
batch t-1. Nothing goes backward between groups but the parameters a `momentum` auxiliary keeps
an EMA of when its source unit lives on the next rank (one step stale: see `SourceSender`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

if __package__:  # imported by the library as `splitter.runtime.pipeline`
    from .minmax import min_max
else:  # a module of an emitted package
    from minmax import min_max  # type: ignore[no-redef]


class ScheduleError(ValueError):
    """A layout the schedule cannot honour; the message names it and the fix."""


class PipelineError(RuntimeError):
    """A rank lost contact with another; the message says which and how to go on."""


# ---------------------------------------------------------------- grouping blocks


def balance(costs: Sequence[float], groups: int) -> list[range]:
    """Split blocks 0..n-1 into `groups` contiguous non-empty ranges whose largest summed cost
    is the smallest possible (of the optimal splits, each group starts as early as it can)."""
    n = len(costs)
    if not 1 <= groups <= n:
        raise ScheduleError(f"cannot put {n} blocks into {groups} groups")
    prefix = [0.0, *itertools.accumulate(float(c) for c in costs)]
    bounds, _ = min_max(lambda k, i, j: prefix[j] - prefix[i], n, groups, later=False)
    return [range(i, j) for i, j in itertools.pairwise(bounds)]


def schedule(
    costs: Sequence[float],
    groups: int,
    scope: str,
    windows: Sequence[int],
    what: str = "stages",
    replicas: int = 1,
) -> list[range]:
    """The blocks (one cost each) in `groups` balanced contiguous groups; refused, every problem
    at once, when the schedule cannot run them: more groups than blocks, one global optimizer
    step, an MLAAN window split across groups or under data parallelism. `windows[k]` is how
    many blocks block k's loss trains; `what` names the groups (stages or devices)."""
    blocks, one = len(costs), what[:-1]
    problems = []
    if groups > blocks:
        fix = "--stages" if what == "stages" else "--device"
        problems.append(
            f"{groups} {what} for {blocks} blocks: every {one} needs a block; use at most "
            f"{blocks} ({fix}), or compile with more blocks"
        )
    if groups > 1 and scope == "global":
        problems.append(
            f"`training.optimizer_scope: global` steps every block after the whole batch, which "
            f"{groups} {what} working on different batches cannot do; set "
            "`training.optimizer_scope: block` in the spec and compile again, or train on one "
            "device in one process"
        )
    placed = balance(costs, min(groups, blocks))
    where = {k: g for g, group in enumerate(placed) for k in group}
    for k, window in enumerate(windows):
        first = k - window + 1
        if window > 1 and where[first] != where[k]:
            problems.append(
                f"block {k}'s `mlaan` window (blocks {first}..{k}) is split between {what} "
                f"{where[first]} and {where[k]}: the cascaded loss needs those blocks in one "
                f"{one}; choose a number of {what} that keeps them together, or a smaller "
                "`window` for the auxiliary"
            )
        if window > 1 and replicas > 1:
            problems.append(
                f"block {k}'s `mlaan` window trains blocks {first}..{k} together, which data "
                f"parallelism ({replicas} replicas per stage) cannot synchronise; run as many "
                "processes as stages"
            )
    if problems:
        raise ScheduleError("cannot schedule this run:\n" + "\n".join(f"  {p}" for p in problems))
    return placed


# ---------------------------------------------------------------- random generators


class BlockRandom:
    """Every block's own random stream (dropout, stochastic depth): block k draws from a
    generator seeded by (seed, k, replica), so a block's draws do not depend on which other
    blocks share its process or in which order they run."""

    def __init__(self, seed: int, blocks: int, devices: Sequence[torch.device], replica: int = 0):
        self.devices = list(devices)
        self.cpu: list[torch.Tensor] = []
        self.cuda: list[torch.Tensor | None] = []
        for k in range(blocks):
            key = (seed * 1_000_003 + k) * 1_009 + replica
            self.cpu.append(torch.Generator().manual_seed(key).get_state())
            device = self.devices[k]
            if device.type == "cuda":
                generator = torch.Generator(device=device).manual_seed(key)
                self.cuda.append(generator.get_state())
            else:
                self.cuda.append(None)

    @contextmanager
    def use(self, k: int) -> Iterator[None]:
        """Run with block k's generators as the default ones, then keep their new state."""
        saved = torch.get_rng_state()
        torch.set_rng_state(self.cpu[k])
        device, state = self.devices[k], self.cuda[k]
        saved_cuda = torch.cuda.get_rng_state(device) if state is not None else None
        if state is not None:
            torch.cuda.set_rng_state(state, device)
        try:
            yield
        finally:
            self.cpu[k] = torch.get_rng_state()
            torch.set_rng_state(saved)
            if saved_cuda is not None:
                self.cuda[k] = torch.cuda.get_rng_state(device)
                torch.cuda.set_rng_state(saved_cuda, device)

    def state(self, k: int) -> dict[str, torch.Tensor | None]:
        return {"cpu": self.cpu[k], "cuda": self.cuda[k]}

    def load(self, k: int, state: dict[str, torch.Tensor | None]) -> None:
        cpu, cuda = state["cpu"], state["cuda"]
        assert cpu is not None
        self.cpu[k] = cpu
        if self.cuda[k] is not None and cuda is not None:
            self.cuda[k] = cuda


# ---------------------------------------------------------------- ranks and stages


@dataclass(frozen=True)
class Layout:
    """Where this process sits in a torchrun job: ranks `stage * replicas + replica`, so the
    replicas of a stage (data parallel, DDP) are neighbours and each replica is a pipeline."""

    rank: int
    world: int
    stages: int
    local_rank: int = 0

    @property
    def replicas(self) -> int:
        return self.world // self.stages

    @property
    def stage(self) -> int:
        return self.rank // self.replicas

    @property
    def replica(self) -> int:
        return self.rank % self.replicas

    @property
    def previous(self) -> int | None:
        return self.rank - self.replicas if self.stage > 0 else None

    @property
    def next(self) -> int | None:
        return self.rank + self.replicas if self.stage < self.stages - 1 else None

    def ranks_of(self, stage: int) -> list[int]:
        """The ranks of a stage's replicas."""
        return [stage * self.replicas + r for r in range(self.replicas)]


def launched() -> bool:
    """Whether torchrun (or an equivalent launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def layout_from_environment(stages: int | None) -> Layout:
    world = int(os.environ["WORLD_SIZE"])
    stages = stages or world
    if stages > world or world % stages:
        raise ScheduleError(
            f"{world} processes cannot run {stages} stages: the world size must be a multiple of "
            f"the stages (each stage gets world/stages data-parallel replicas); start "
            f"`torchrun --nproc-per-node {stages}` (or a multiple), or set `--stages`"
        )
    return Layout(int(os.environ["RANK"]), world, stages, int(os.environ.get("LOCAL_RANK", "0")))


def start(device: torch.device, timeout_s: float) -> None:
    """Join the process group: NCCL between GPUs, gloo on CPU. NCCL waits block (and time
    out) like gloo's, so a lost peer raises on every backend."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))


@dataclass
class Groups:
    """The process groups besides the default one (its point-to-point channel carries the
    activations): every rank creates them all, in the same order, as torch.distributed asks."""

    objects: Any
    """gloo over every rank: checkpoint and metrics gathering, the test-accuracy sum, on the
    CPU whatever the devices."""
    stage: Any | None
    """This stage's data-parallel replicas (DDP), when there are several."""
    sources: dict[tuple[int, int], Any]
    """Per pair of neighbouring ranks whose boundary has a `momentum` auxiliary, the channel of
    its source parameters: its own communicator, so on NCCL it is not queued behind the
    activations going the other way."""

    @staticmethod
    def make(layout: Layout, boundaries: Sequence[int]) -> Groups:
        """`boundaries`: the stages whose last block's auxiliary reads the next stage."""
        objects = dist.new_group(backend="gloo")
        replicas = layout.replicas
        stages = [
            dist.new_group(layout.ranks_of(st)) for st in range(layout.stages) if replicas > 1
        ]
        sources = {}
        for st in boundaries:
            for pair in zip(layout.ranks_of(st), layout.ranks_of(st + 1), strict=True):
                sources[pair] = dist.new_group(list(pair))
        return Groups(objects, stages[layout.stage] if stages else None, sources)

    def source(self, a: int, b: int) -> Any:
        return self.sources[(min(a, b), max(a, b))]


# ---------------------------------------------------------------- messages between stages

_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
]
_SLOTS = 8  # per tensor: dtype, ndim, up to 6 sizes
_MOST = 6  # tensors per message


class Link:
    """Point-to-point messages with one neighbouring rank. A message is a list of tensors,
    preceded by a header of their dtypes and shapes (an empty list ends a stream). At most one
    message is in flight: the next send waits for the previous one, so a lost peer shows up."""

    def __init__(
        self, layout: Layout, peer: int, device: torch.device, group: Any | None = None
    ) -> None:
        self.layout, self.peer, self.device, self.group = layout, peer, device, group
        self.pending: list[Any] = []
        self.keep: list[torch.Tensor] = []

    def send(self, tensors: Sequence[torch.Tensor], what: str) -> None:
        self.wait(what)
        header = torch.zeros(1 + _SLOTS * _MOST, dtype=torch.int64)
        if len(tensors) > _MOST:
            raise PipelineError(f"a message holds at most {_MOST} tensors, not {len(tensors)}")
        header[0] = len(tensors)
        for i, t in enumerate(tensors):
            if t.dtype not in _DTYPES or t.dim() > _SLOTS - 2:
                raise PipelineError(
                    f"{what}: a {t.dtype} tensor of shape {list(t.shape)} cannot go between "
                    f"ranks (at most {_SLOTS - 2} dimensions, dtypes {_DTYPES})"
                )
            slot = 1 + _SLOTS * i
            header[slot] = _DTYPES.index(t.dtype)
            header[slot + 1] = t.dim()
            header[slot + 2 : slot + 2 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
        self.keep = [header.to(self.device), *(t.detach().contiguous() for t in tensors)]
        with self.guard(what):
            self.pending = [dist.isend(t, self.peer, group=self.group) for t in self.keep]

    def wait(self, what: str) -> None:
        with self.guard(what):
            for work in self.pending:
                work.wait()
        self.pending, self.keep = [], []

    def receive(self, what: str) -> list[torch.Tensor]:
        """The tensors of the next message, contiguous (the sender's memory format is not
        sent: the receiver restores it)."""
        header = torch.zeros(1 + _SLOTS * _MOST, dtype=torch.int64, device=self.device)
        with self.guard(what):
            dist.recv(header, self.peer, group=self.group)
        values = header.tolist()
        found = []
        for i in range(int(values[0])):
            slot = 1 + _SLOTS * i
            shape = [int(v) for v in values[slot + 2 : slot + 2 + int(values[slot + 1])]]
            t = torch.empty(shape, dtype=_DTYPES[int(values[slot])], device=self.device)
            with self.guard(what):
                dist.recv(t, self.peer, group=self.group)
            found.append(t)
        return found

    def guard(self, what: str) -> Any:
        return guard(self.layout, f"rank {self.peer}", what)


@contextmanager
def guard(layout: Layout, peer: str, what: str) -> Iterator[None]:
    """Turn a failed transfer into an error that names both ends and what was moving."""
    try:
        yield
    except (RuntimeError, dist.DistError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        first = first.split(". This is typically")[0]  # gloo's advice, said better below
        raise PipelineError(
            f"rank {layout.rank} (stage {layout.stage}) lost contact with {peer} while {what}: "
            f"{first}. The run stopped; see the other ranks' output for the cause, then "
            "continue with `--resume` from the last checkpoint"
        ) from error


def flatten(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat copy of the parameters (what goes between ranks)."""
    return torch.cat([p.detach().reshape(-1) for p in params])


class SourceSender:
    """The owner of a `momentum` source unit sends its parameters to the rank before it once
    per step, at the start of the step (before this step's update): rank r receives at step
    t the parameters after step t-2, where a single process would read them after step t-1.
    The last copy sent is kept: a checkpoint holds it so a resumed run sees what it would
    have received."""

    def __init__(self, link: Link, params: Sequence[torch.Tensor]) -> None:
        self.link, self.params = link, list(params)
        self.last = flatten(self.params)

    def send(self, step: int, needed: bool) -> None:
        self.last = flatten(self.params)
        if needed:
            self.link.send([self.last], f"sending the momentum source parameters of step {step}")


class SourceMirror:
    """The receiving side: the auxiliary's EMA reads `tensors`, copies of the source unit's
    parameters on this rank, refreshed from the next rank before each EMA update."""

    def __init__(self, link: Link, params: Sequence[torch.Tensor], device: torch.device) -> None:
        self.link, self.params = link, list(params)
        self.tensors = tuple(p.detach().to(device, copy=True) for p in params)

    def receive(self, step: int) -> None:
        (flat,) = self.link.receive(f"receiving the momentum source parameters for step {step}")
        self.load(flat)

    def load(self, flat: torch.Tensor) -> None:
        at = 0
        for t in self.tensors:
            t.copy_(flat[at : at + t.numel()].view_as(t))
            at += t.numel()

    def restore(self, flat: torch.Tensor | None) -> None:
        """After a resume: the copy a checkpoint kept, or (a checkpoint of a single-process
        run has none) the source's parameters as loaded."""
        if flat is None:
            flat = flatten(self.params)
        self.load(flat.to(self.tensors[0].device))
