"""InfoPro's loss weights per block: `(lambda1, lambda2)` interpolated from `[first, last]` by
the auxiliary's index (InfoPro) or by the stage of the next unit (MAN), clamped where the
formula would give a negative weight or no loss at all."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from schemas.auxiliary import InfoProAux, MomentumAux
from schemas.spec import AuxSection, SplitSpec
from splitter.analysis.costs import CostModel, Settings
from splitter.analysis.cuts import CutPoint
from splitter.analysis.model import Analysis
from splitter.runtime.auxiliary import spatial


@dataclass(frozen=True)
class LossWeights:
    """Block k's resolved weights, and how they were found."""

    lambda1: float
    lambda2: float
    ratio: float
    """Where between `first` (0) and `last` (1) the block sits."""
    clamped: bool = False
    """The formula's ratio gave a negative weight or both weights zero: (K-3)/(K-2) instead."""

    @property
    def zero(self) -> bool:
        return self.lambda1 == 0 and self.lambda2 == 0


def infopro_config(section: AuxSection, k: int) -> InfoProAux | None:
    """Block k's InfoPro settings: its auxiliary's, or its momentum auxiliary's head's."""
    config = section.of(k)
    if isinstance(config, MomentumAux):
        config = config.head
    return config if isinstance(config, InfoProAux) else None


def for_cuts(
    analysis: Analysis, spec: SplitSpec, cuts: Sequence[CutPoint]
) -> dict[int, LossWeights]:
    """The weights of every block with an InfoPro loss when the spec's model is cut at `cuts`
    (without one, no cost model is built: plans, verify and inspect pay nothing for it)."""
    if not any(infopro_config(spec.aux, k) for k in range(len(cuts))):
        return {}
    costs = CostModel(analysis, Settings(spec.aux, spec.training.optimizer, "block"))
    position = {c.index: j + 1 for j, c in enumerate(analysis.cuts.cuts)}
    bounds = [0, *(position[c.index] for c in cuts), costs.boundaries]
    return loss_weights(costs, spec.aux, bounds)


def loss_weights(
    costs: CostModel, section: AuxSection, bounds: list[int]
) -> dict[int, LossWeights]:
    """The weights of every block with an InfoPro loss, by block (`bounds` as the partition's)."""
    blocks = len(bounds) - 1
    found = {}
    for k in range(blocks - 1):
        config = infopro_config(section, k)
        if config is not None:
            stage = stage_of(costs, costs.first_unit_end(bounds[k + 1]))
            found[k] = weights(config, k, blocks, stage)
    return found


def weights(config: InfoProAux, k: int, blocks: int, stage: int) -> LossWeights:
    """`first + (last - first) * ratio` for each weight, ratio k/(K-2) or stage/(K-2)."""
    span = blocks - 2
    position = k if config.schedule == "index" else stage
    ratio = position / span if span > 0 else 0.0
    found = LossWeights(*_pair(config, ratio), ratio)
    if (found.lambda1 < 0 or found.lambda2 < 0 or found.zero) and span > 1:
        return LossWeights(*_pair(config, (span - 1) / span), (span - 1) / span, clamped=True)
    return found


def _pair(config: InfoProAux, ratio: float) -> tuple[float, float]:
    def value(setting: float | tuple[float, float]) -> float:
        if isinstance(setting, (int, float)):
            return float(setting)
        return setting[0] + (setting[1] - setting[0]) * ratio

    return value(config.lambda1), value(config.lambda2)


def stage_of(costs: CostModel, end: int) -> int:
    """The stage (from 1) of the unit ending at boundary `end`: one more than the changes of
    resolution between consecutive units up to it."""
    sizes = [
        tuple(spatial(costs.shape(e)[1:], costs.layout(None, e)))
        for e in costs.unit_ends
        if e <= end
    ]
    return 1 + sum(1 for a, b in itertools.pairwise(sizes) if a != b)
