"""The exact min-max partitioner: K blocks, or the fewest blocks that fit a memory budget,
under the rules that make each block worth a local loss (`Rules`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from schemas import SplitSpec, show_size
from schemas.spec import AutoPartition, AuxSection
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
    warnings: list[str] = field(default_factory=list)
    """What the user should know about the split: fewer blocks than asked, no saving."""

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


@dataclass(frozen=True)
class Rules:
    """What every block of an automatic split respects (`partition.auto`'s keys of the same
    names): enough whole units and FLOPs to be worth a local loss, and the classifier tail
    kept in the last block; `slack` trades a little memory balance for compute balance."""

    min_units: int = 1
    min_block_flops: float = 0.01
    tail: Literal["last", "free"] = "last"
    slack: float = 0.02

    @classmethod
    def of(cls, auto: AutoPartition | None) -> Rules:
        if auto is None:
            return cls()
        return cls(auto.min_units, auto.min_block_flops, auto.tail, auto.slack)

    def without(self, name: str) -> Rules:
        """These rules with `name` switched off."""
        return replace(self, **{name: _OFF[name]})  # type: ignore[arg-type]

    @property
    def active(self) -> list[str]:
        return [name for name, off in _OFF.items() if getattr(self, name) != off]

    def describe(self, name: str) -> str:
        """The rule `name` and the key that loosens it."""
        if name == "min_units":
            return (
                f"every block holds at least {self.min_units} whole unit(s) with parameters "
                "(loosen `partition.auto.min_units`)"
            )
        if name == "min_block_flops":
            return (
                f"every block holds at least {self.min_block_flops:.1%} of the model's FLOPs "
                "(loosen `partition.auto.min_block_flops`)"
            )
        return (
            "the classifier after the global pooling stays in the last block "
            "(`partition.auto.tail: free` lets it be cut)"
        )


_OFF: dict[str, object] = {"min_units": 0, "min_block_flops": 0.0, "tail": "free"}
"""Each rule's value that switches it off."""


def partition_blocks(
    analysis: Analysis,
    blocks: int,
    settings: Settings,
    balance: Balance = "memory",
    rules: Rules | None = None,
) -> Partition:
    """The split into `blocks` blocks (or the most the rules allow, with a warning) whose
    largest block by `balance` is smallest; a warning too when it saves nothing."""
    if blocks < 1:
        raise SplitterError(f"blocks must be at least 1, got {blocks}")
    search = _Search(CostModel(analysis, settings), balance, rules or Rules())
    bounds, warnings = search.best(blocks)
    found = search.result(bounds)
    found.warnings = warnings + _no_saving(found, search)
    return found


def partition_budget(
    analysis: Analysis,
    budget: int,
    settings: Settings,
    balance: Balance = "memory",
    rules: Rules | None = None,
    unit: str | None = None,
) -> Partition:
    """The fewest blocks whose local peak fits `budget` bytes (sizes shown in `unit`)."""
    search = _Search(CostModel(analysis, settings), balance, rules or Rules())
    best: Partition | None = None
    for blocks in range(1, len(search.model.unit_ends) + 1):
        bounds, fewer = search.best(blocks)
        if fewer:
            break  # the rules allow no more blocks
        found = search.result(bounds)
        if found.local_peak_bytes <= budget:
            return found
        if best is None or found.local_peak_bytes < best.local_peak_bytes:
            best = found
    assert best is not None
    raise SplitterError(
        f"no partition fits the budget of {show_size(budget, unit)}: the best local peak is "
        f"{show_size(best.local_peak_bytes, unit)} with {len(best.blocks)} blocks (fixed part "
        f"{show_size(best.fixed_bytes, unit)}); raise the budget, lower the batch size or the "
        "precision"
    )


class _Search:
    """The min-max searches over one cost model, sharing its block costs."""

    def __init__(self, model: CostModel, balance: Balance, rules: Rules) -> None:
        self.model, self.balance, self.rules = model, balance, rules
        aux = model.settings.aux
        # Block costs depend on k only for the last block (no auxiliary), per-block auxiliary
        # overrides and AugLocal's depth schedule (which depends on K too).
        self.k_dependent = bool(aux.blocks) or aux.default.kind == "augmented"
        self.cache: dict[tuple[int, int, int, int], float] = {}
        self.total_flops = model.flops(0, model.boundaries)
        self.admissible = sum(1 for j in range(1, model.boundaries) if model.admissible(j))

    def cost(self, blocks: int, rules: Rules | None = None) -> Cost:
        """Block k's cost over boundaries i..j in a `blocks`-block split: infinite where the
        cut splits a unit, the rules forbid the block, it has no parameters, or its
        auxiliary cannot be built where it ends."""
        model, rules = self.model, rules or self.rules
        least_flops = rules.min_block_flops * self.total_flops
        tail = model.tail_start if rules.tail == "last" else model.boundaries

        def cost(k: int, i: int, j: int) -> float:
            if not model.admissible(j) or (k < blocks - 1 and j >= tail):
                return math.inf
            if model.units(i, j) < rules.min_units or model.flops(i, j) < least_flops:
                return math.inf
            return self._measure(k, i, j, blocks)

        return cost

    def _measure(self, k: int, i: int, j: int, blocks: int) -> float:
        key = (k, blocks, i, j) if self.k_dependent else (int(k == blocks - 1), 0, i, j)
        if key not in self.cache:
            try:
                block = self.model.block(k, i, j, blocks)
            except Unservable:  # its auxiliary cannot be built here: not a candidate
                self.cache[key] = math.inf
                return math.inf
            # A block without parameters has nothing for its local loss to train.
            self.cache[key] = float(_measure_of(block, self.balance)) if block.params else math.inf
        return self.cache[key]

    def split(self, blocks: int, rules: Rules | None = None) -> tuple[list[int], float]:
        """The min-max boundaries of a `blocks`-block split and its largest cost."""
        return min_max(self.cost(blocks, rules), self.model.boundaries, blocks)

    def feasible(self, blocks: int, rules: Rules | None = None) -> bool:
        return blocks <= self.admissible + 1 and not math.isinf(self.split(blocks, rules)[1])

    def best(self, blocks: int) -> tuple[list[int], list[str]]:
        """The boundaries of the largest feasible split into at most `blocks` blocks (with
        `slack`, the compute-balanced one among the nearly memory-optimal), and a warning
        when it has fewer blocks than asked."""
        for k in range(min(blocks, self.admissible + 1), 0, -1):
            bounds, value = self.split(k)
            if not math.isinf(value):
                break
        else:
            raise SplitterError(
                "the model has no parameters for a block to train: local learning needs some"
            )
        if self.balance == "memory" and self.rules.slack > 0 and k > 1:
            bounds = self._compute_balanced(k, value * (1 + self.rules.slack))
        return bounds, [] if k == blocks else [self._fewer(blocks, k)]

    def _compute_balanced(self, blocks: int, limit: float) -> list[int]:
        """Among the splits whose every block costs at most `limit`, the one whose largest
        block has the fewest FLOPs."""
        memory = self.cost(blocks)

        def flops(k: int, i: int, j: int) -> float:
            return math.inf if memory(k, i, j) > limit else float(self.model.flops(i, j))

        return min_max(flops, self.model.boundaries, blocks)[0]

    def _fewer(self, asked: int, found: int) -> str:
        """Why `asked` blocks are not possible, and what is done instead."""
        rules = self.rules
        cuts = (
            f"the model has {self.admissible} admissible cuts (single-tensor cuts that keep "
            "every unit whole)"
        )
        if asked > self.admissible + 1:
            why = [cuts]
        else:
            why = [
                rules.describe(name)
                for name in rules.active
                if self.feasible(asked, rules.without(name))
            ]
        if not why and self.feasible(asked, replace(rules, **_OFF)):  # type: ignore[arg-type]
            why = ["the rules together: " + "; ".join(rules.describe(n) for n in rules.active)]
        if not why:
            why = [
                f"{cuts}, too few for {asked} blocks that each hold parameters and an auxiliary "
                "that can be built where they end (`splitter inspect` lists them)"
            ]
        instead = "1 block: train end to end" if found == 1 else f"{found} blocks instead"
        return f"{asked} blocks are not possible: {'; or '.join(why)}; {instead}"

    def result(self, bounds: Sequence[int]) -> Partition:
        return _result(self.model, self.balance, bounds)


def _no_saving(found: Partition, search: _Search) -> list[str]:
    """A warning when the split's local peak exceeds end to end's, naming the best
    alternative found: fewer blocks, or `linear` auxiliaries."""
    blocks = len(found.blocks)
    if found.local_peak_bytes <= found.e2e_peak_bytes or blocks < 2:
        return []
    options: list[tuple[int, str]] = []
    for fewer in range(blocks - 1, 1, -1):
        bounds, _ = search.best(fewer)
        options.append((search.result(bounds).local_peak_bytes, f"{fewer} blocks"))
    settings = search.model.settings
    if settings.aux.blocks or settings.aux.default.kind != "linear":
        linear = AuxSection.model_validate({"default": {"kind": "linear"}})
        model = CostModel(search.model.analysis, replace(settings, aux=linear))
        other = _Search(model, search.balance, search.rules)
        bounds, _ = other.best(blocks)
        options.append((other.result(bounds).local_peak_bytes, "`linear` auxiliaries"))
    warning = (
        f"the local peak, {show_size(found.local_peak_bytes)}, exceeds end to end's "
        f"{show_size(found.e2e_peak_bytes)}: this split saves no memory"
    )
    if options:
        peak, what = min(options)
        above = ", still above end to end: train end to end" if peak >= found.e2e_peak_bytes else ""
        warning += f"; the best alternative found: {what}, {show_size(peak)}{above}"
    return [warning]


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
    return Settings(aux_section, chosen, base.training.optimizer_scope, base.task)
