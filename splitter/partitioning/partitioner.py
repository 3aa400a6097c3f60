"""The exact min-max partitioner: K blocks, or the fewest blocks that fit a memory budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from schemas import SplitSpec, show_size
from schemas.spec import AuxSection
from splitter.analysis.costs import Balance, BlockCost, CostModel, Settings, Unservable
from splitter.analysis.cuts import CutPoint
from splitter.analysis.model import Analysis
from splitter.errors import SplitterError
from splitter.runtime.minmax import Cost, min_max


@dataclass
class Partition:
    """A partition of an analysed model with its costs."""

    analysis: Analysis
    settings: Settings
    balance: Balance
    bounds: list[int]
    blocks: list[BlockCost]
    fixed_bytes: int
    e2e_peak_bytes: int
    spec: SplitSpec | None = None
    """The spec the partition started from, if any."""

    @property
    def cuts(self) -> list[CutPoint]:
        return [self.analysis.cuts.cuts[b - 1] for b in self.bounds[1:-1]]

    @property
    def local_peak_bytes(self) -> int:
        return self.fixed_bytes + max(b.variable_bytes for b in self.blocks)

    @property
    def saving(self) -> float:
        """The fraction of the end-to-end peak that local training saves."""
        return 1 - self.local_peak_bytes / self.e2e_peak_bytes


def partition_blocks(
    analysis: Analysis, blocks: int, settings: Settings, balance: Balance = "memory"
) -> Partition:
    """The K-block partition whose largest block (by `balance`) is smallest."""
    model = CostModel(analysis, settings)
    most = model.boundaries
    admissible = sum(1 for j in range(1, most) if model.admissible(j))
    if blocks > admissible + 1:
        raise SplitterError(
            f"{blocks} blocks need {blocks - 1} cuts but the model has {admissible} admissible "
            f"cuts (legal cuts that keep every unit whole); use at most {admissible + 1} blocks"
        )
    if blocks < 1:
        raise SplitterError(f"blocks must be at least 1, got {blocks}")
    bounds, value = min_max(_objective(model, blocks, balance), most, blocks)
    if math.isinf(value):
        raise SplitterError(
            f"{blocks} blocks would leave a block without parameters or an auxiliary that "
            f"cannot be built where its block ends: the model has {len(model.unit_ends)} units;"
            f" use fewer blocks (at most {len(model.unit_ends)}) or another auxiliary kind"
        )
    return _result(model, balance, bounds)


def partition_budget(
    analysis: Analysis, budget: int, settings: Settings, balance: Balance = "memory"
) -> Partition:
    """The fewest blocks whose local peak fits `budget` bytes."""
    model = CostModel(analysis, settings)
    best: Partition | None = None
    for blocks in range(1, len(model.unit_ends) + 1):
        bounds, value = min_max(_objective(model, blocks, balance), model.boundaries, blocks)
        if math.isinf(value):
            break
        found = _result(model, balance, bounds)
        if found.local_peak_bytes <= budget:
            return found
        if best is None or found.local_peak_bytes < best.local_peak_bytes:
            best = found
    assert best is not None
    raise SplitterError(
        f"no partition fits the budget of {show_size(budget)}: the best local peak is "
        f"{show_size(best.local_peak_bytes)} with {len(best.blocks)} blocks (fixed part "
        f"{show_size(best.fixed_bytes)}); raise the budget, lower the batch size or the precision"
    )


def _objective(model: CostModel, blocks: int, balance: Balance) -> Cost:
    """Block costs, cached: they depend on k only for the last block (no auxiliary), per-block
    auxiliary overrides and AugLocal's depth schedule."""
    aux = model.settings.aux
    k_dependent = bool(aux.blocks) or aux.default.kind == "augmented"
    cache: dict[tuple[int, int, int], float] = {}

    def cost(k: int, i: int, j: int) -> float:
        if not model.admissible(j):
            return math.inf  # a cut between an operation and what closes it
        key = (k if k_dependent or k == blocks - 1 else -1, i, j)
        if key not in cache:
            try:
                block = model.block(k, i, j, blocks)
            except Unservable:  # its auxiliary cannot be built here: not a candidate
                cache[key] = math.inf
                return math.inf
            # A block without parameters has nothing for its local loss to train.
            cache[key] = float(_measure_of(block, balance)) if block.params else math.inf
        return cache[key]

    return cost


def _measure_of(block: BlockCost, balance: Balance) -> int:
    if balance == "memory":
        return block.variable_bytes
    if balance == "flops":
        return block.flops
    if balance == "params":
        return block.params
    return block.units


def _result(model: CostModel, balance: Balance, bounds: Sequence[int]) -> Partition:
    blocks = len(bounds) - 1
    costs = [model.block(k, bounds[k], bounds[k + 1], blocks) for k in range(blocks)]
    return Partition(
        analysis=model.analysis,
        settings=model.settings,
        balance=balance,
        bounds=list(bounds),
        blocks=costs,
        fixed_bytes=model.fixed_bytes(bounds),
        e2e_peak_bytes=model.e2e_peak_bytes(),
    )


def evaluate(analysis: Analysis, cuts: Sequence[CutPoint], settings: Settings) -> Partition:
    """The costs of a given split (the spec's cuts), as the partitioner sees them."""
    model = CostModel(analysis, settings)
    boundary = {c.index: i + 1 for i, c in enumerate(analysis.cuts.cuts)}
    bounds = [0, *(boundary[c.index] for c in cuts), model.boundaries]
    return _result(model, "memory", bounds)


def settings_from(spec: SplitSpec | None, aux: str | None, optimizer: str | None) -> Settings:
    """The spec's auxiliaries and optimizer, with `--aux KIND` and `--optimizer NAME` on top."""
    base = spec or SplitSpec.model_validate({"version": 1, "partition": {"cuts": ["-"]}})
    aux_section = base.aux
    if aux is not None:
        aux_section = AuxSection.model_validate({"default": {"kind": aux}})
    chosen = base.training.optimizer
    if optimizer is not None:
        chosen = chosen.model_copy(update={"name": optimizer})
    return Settings(aux_section, chosen, base.training.optimizer_scope)
