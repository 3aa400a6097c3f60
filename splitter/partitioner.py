"""The exact min-max partitioner: K blocks, or the fewest blocks that fit a memory budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from schemas import SplitSpec, load_spec, parse_size
from schemas.spec import AuxSection
from splitter.analysis import Analysis, analyze
from splitter.costs import Balance, BlockCost, CostModel, Settings
from splitter.cuts import CutPoint
from splitter.errors import SplitterError, UsageError
from splitter.modelref import ModelOptions, merge_options

Cost = Callable[[int, int, int], float]


def min_max(cost: Cost, n: int, blocks: int) -> tuple[list[int], float]:
    """Boundaries 0 = b_0 < b_1 < ... < b_K = n minimising max_k cost(k, b_k, b_k+1), exactly
    (dynamic programming, O(K n^2) cost calls). Among equal choices the later cut wins."""
    if not 1 <= blocks <= n:
        raise ValueError(f"{blocks} blocks need {blocks - 1} of the {n - 1} cuts")
    best = [[math.inf] * (n + 1) for _ in range(blocks + 1)]
    choice = [[0] * (n + 1) for _ in range(blocks + 1)]
    best[0][0] = 0.0
    for k in range(1, blocks + 1):
        last_j = n if k == blocks else n - (blocks - k)
        for j in range(k, last_j + 1):
            if k == blocks and j != n:
                continue
            for i in range(k - 1, j):
                value = max(best[k - 1][i], cost(k - 1, i, j))
                if value <= best[k][j]:
                    best[k][j], choice[k][j] = value, i
    bounds = [n]
    for k in range(blocks, 0, -1):
        bounds.append(choice[k][bounds[-1]])
    return bounds[::-1], best[blocks][n]


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
    if blocks > most:
        raise SplitterError(
            f"{blocks} blocks need {blocks - 1} cuts but the model has {most - 1} legal cuts; "
            f"use at most {most} blocks"
        )
    if blocks < 1:
        raise SplitterError(f"blocks must be at least 1, got {blocks}")
    bounds, value = min_max(_objective(model, blocks, balance), most, blocks)
    if math.isinf(value):
        raise SplitterError(
            f"{blocks} blocks would leave a block without parameters: the model has "
            f"{len(model.unit_ends)} units; use at most {len(model.unit_ends)} blocks"
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
        f"no partition fits the budget of {_gib(budget)}: the best local peak is "
        f"{_gib(best.local_peak_bytes)} with {len(best.blocks)} blocks (fixed part "
        f"{_gib(best.fixed_bytes)}); raise the budget, lower the batch size or the precision"
    )


def _objective(model: CostModel, blocks: int, balance: Balance) -> Cost:
    """Block costs, cached: they depend on k only for the last block (no auxiliary), per-block
    auxiliary overrides and AugLocal's depth schedule."""
    aux = model.settings.aux
    k_dependent = bool(aux.blocks) or aux.default.kind == "augmented"
    cache: dict[tuple[int, int, int], float] = {}

    def cost(k: int, i: int, j: int) -> float:
        key = (k if k_dependent or k == blocks - 1 else -1, i, j)
        if key not in cache:
            block = model.block(k, i, j, blocks)
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


def _gib(n: int) -> str:
    """A size in GiB, or in MiB below one GiB."""
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


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


def partition(
    model: str | None = None,
    *,
    blocks: int | None = None,
    budget: int | str | None = None,
    balance: Balance = "memory",
    aux: str | None = None,
    optimizer: str | None = None,
    spec: str | None = None,
    options: ModelOptions | None = None,
) -> Partition:
    """Analyse MODEL (else the spec's `model.ref`) and choose its cuts: `blocks` balanced
    blocks, or the fewest that fit `budget` (bytes, or `8GiB`/`8GB`). The auxiliary and
    optimizer come from the spec, else `momentum` and SGD; `aux` and `optimizer` override them.
    The result keeps the spec it started from (`Partition.spec`)."""
    from splitter.plan import spec_model_ref

    if (blocks is None) == (budget is None):
        raise UsageError("give exactly one of --blocks K and --budget SIZE")
    loaded = load_spec(spec) if spec else None
    if model is None:
        if spec is None:
            raise UsageError("pass MODEL, or --spec with a spec that sets `model.ref`")
        model = spec_model_ref(spec, loaded)
    options, notes = (
        merge_options(options or ModelOptions(), loaded.spec)
        if loaded
        else (options or ModelOptions(), [])
    )
    analysis = analyze(model, options, root=loaded.spec.model.root if loaded else None)
    analysis.model.warnings.extend(notes)
    settings = settings_from(loaded.spec if loaded else None, aux, optimizer)
    if blocks is not None:
        found = partition_blocks(analysis, blocks, settings, balance)
    else:
        try:
            size = parse_size(budget)  # type: ignore[arg-type]
        except ValueError as e:
            raise UsageError(f"--budget: {e}") from None
        found = partition_budget(analysis, size, settings, balance)
    found.spec = loaded.spec if loaded else None
    return found
