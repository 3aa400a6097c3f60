"""The memory cost of local training (DESIGN 1.5): a fixed part, and a variable part per block.

On one device every block's parameters and optimizer state stay resident (the fixed part); while
block k trains, its saved activations, its auxiliary's saved activations and their parameter
gradients come and go (the variable part). The local peak is `fixed + max_k variable_k`.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Literal, cast

import torch
from torch import nn

from schemas.auxiliary import AugmentedAux, ConvAux, InfoProAux, LinearAux, MomentumAux
from schemas.spec import AuxSection, OptimizerConfig
from schemas.task import TaskSection
from splitter.analysis.layouts import (
    ConvHead,
    InfoProDecoder,
    InfoProHead,
    Layout,
    LayoutError,
    LinearHead,
    infer_layout,
)
from splitter.analysis.model import Analysis
from splitter.analysis.sampling import augmented_units
from splitter.analysis.task import Task, resolve_task, unserved
from splitter.errors import SplitterError
from splitter.frontend.annotate import NodeCost, annotate, node_cost, output_shape
from splitter.frontend.inputs import InputSpec
from splitter.frontend.modelref import Precision
from splitter.frontend.trace import trace
from splitter.runtime.dgl import dgl_head

Balance = Literal["memory", "flops", "params", "units"]
Scope = Literal["block", "global"]


@dataclass(frozen=True)
class Settings:
    """What the cost depends on besides the model: auxiliaries and optimizer."""

    aux: AuxSection = field(default_factory=AuxSection)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scope: Scope = "block"
    task: TaskSection = field(default_factory=TaskSection)


@dataclass(frozen=True)
class AuxCost:
    """An auxiliary network at one boundary: what it saves, holds and trains."""

    saved_bytes: int
    param_bytes: int
    trainable_bytes: int


@dataclass(frozen=True)
class BlockCost:
    """One block of a partition, in bytes (FLOPs and counts where named)."""

    start: int
    end: int
    activation_bytes: int
    aux_activation_bytes: int
    grad_bytes: int
    param_bytes: int
    params: int
    flops: int
    units: int

    @property
    def variable_bytes(self) -> int:
        return self.activation_bytes + self.aux_activation_bytes + self.grad_bytes


class CostModel:
    """Costs of every candidate block of one analysed model, each in O(1) after set-up.
    Boundaries are numbered 0 (the input), 1..n-1 (the legal cuts), n (the output)."""

    def __init__(self, analysis: Analysis, settings: Settings) -> None:
        self.analysis, self.settings = analysis, settings
        self.gm = analysis.traced.graph("train")
        self.nodes = list(self.gm.graph.nodes)
        self.costs = [node_cost(n) for n in self.nodes]
        self.cuts = list(analysis.cuts.cuts)
        self.position = [-1, *(c.index for c in self.cuts), len(self.nodes) - 1]
        self.sums: dict[str, list[int]] = {
            key: list(itertools.accumulate((int(getattr(c, key)) for c in self.costs), initial=0))
            for key in ("saved_bytes", "param_bytes", "params", "flops")
        }
        self._first_save, self._saves_at = _save_index(self.costs)
        self._aux: dict[tuple[int, int], AuxCost] = {}
        self.unit_ends = self._unit_ends()

    @property
    def boundaries(self) -> int:
        return len(self.position) - 1

    def _sum(self, key: str, i: int, j: int) -> int:
        values = self.sums[key]
        return values[self.position[j] + 1] - values[self.position[i] + 1]

    def flops(self, i: int, j: int) -> int:
        """The forward FLOPs of the nodes between boundaries i and j."""
        return self._sum("flops", i, j)

    def block(self, k: int, i: int, j: int, blocks: int) -> BlockCost:
        """Block k of `blocks` spanning boundaries i..j."""
        last = k == blocks - 1
        aux = AuxCost(0, 0, 0) if last else self.aux_cost(k, j, blocks)
        param_bytes = self._sum("param_bytes", i, j)
        grads = param_bytes + aux.trainable_bytes if self.settings.scope == "block" else 0
        return BlockCost(
            start=i,
            end=j,
            activation_bytes=self._sum("saved_bytes", i, j) + self._boundary_bytes(i, j),
            aux_activation_bytes=aux.saved_bytes,
            grad_bytes=grads,
            param_bytes=param_bytes,
            params=self._sum("params", i, j),
            flops=self.flops(i, j),
            units=sum(1 for end in self.unit_ends if i < end <= j) or 1,
        )

    def _boundary_bytes(self, i: int, j: int) -> int:
        """The input tensor, when this block saves it but an earlier node saved it first, and
        the output tensor, which stays alive for the next block, when nothing saved it."""
        extra = 0
        if i > 0:
            node = self.costs[self.position[i]]
            first = self._first_save.get(node.storage, math.inf)
            resaved = any(
                self.position[i] < at <= self.position[j]
                for at in self._saves_at.get(node.storage, ())
            )
            extra += node.out_bytes if first <= self.position[i] and resaved else 0
        if j < self.boundaries:
            out = self.costs[self.position[j]]
            held = self._first_save.get(out.storage, math.inf) > self.position[j]
            extra += out.out_bytes if held else 0
        return extra

    # ---------------------------------------------------------------- auxiliaries

    def aux_cost(self, k: int, j: int, blocks: int) -> AuxCost:
        """The auxiliary of block k, which ends at boundary j."""
        config = self.settings.aux.of(k)
        key = (j, k if isinstance(config, AugmentedAux) else -1)
        if key not in self._aux:
            self._aux[key] = self._aux_cost(config, k, j, blocks)
        return self._aux[key]

    def _aux_cost(self, config: object, k: int, j: int, blocks: int) -> AuxCost:
        problem = unserved(config, self.task)
        if problem is not None:
            raise Unservable(problem)
        if isinstance(config, MomentumAux):  # the head is on the copied unit's output
            end = self.first_unit_end(j)
            unit_params = self._sum("param_bytes", j, end)
            head = self._head_cost(config.head, self.shape(end), self.layout(config.head, end))
            # Both copies run on the block's output with gradients to it: each saves the unit's
            # activations (the frozen copy's weights get no gradient, but autograd saves the
            # same tensors for the gradient to the input). With `recompute` the frozen copy's
            # are made again in the backward once the trainable copy's are freed: one copy's.
            copies = 1 if config.recompute else 2
            return AuxCost(
                saved_bytes=copies * self._sum("saved_bytes", j, end) + head.saved_bytes,
                param_bytes=2 * unit_params + head.param_bytes,
                trainable_bytes=unit_params + head.trainable_bytes,
            )
        if isinstance(config, AugmentedAux):
            return self._augmented_cost(config, k, j, blocks)
        return self._head_cost(config, self.shape(j), self.layout(config, j))

    def _head_cost(self, config: object, shape: tuple[int, ...], layout: Layout) -> AuxCost:
        classes, precision, dense = self.num_classes, self.precision, self.task.dense
        if isinstance(config, LinearAux):
            linear = partial(LinearHead, shape[1:], layout, classes, dense=dense)
            return _measure(linear, shape, precision)
        if isinstance(config, ConvAux) and config.variant != "default":
            if layout != "nchw":
                raise Unservable(
                    f"`variant: {config.variant}` takes image maps (NCHW), not {layout.upper()}"
                )
            return _measure(partial(dgl_head, config.variant, shape[1:], classes), shape, precision)
        if isinstance(config, ConvAux):
            options = (config.depth, config.width, config.hidden)
            causal = self.task.causal
            conv = partial(ConvHead, shape[1:], layout, classes, *options, dense, causal)
            return _measure(conv, shape, precision)
        if isinstance(config, InfoProAux):
            image = self.analysis.target_input.shape
            try:
                InfoProDecoder.check(layout, image)
            except ValueError as e:
                raise Unservable(str(e)) from None
            settings = (config.classifier, config.feature_dim, config.loss)  # positional: the key
            classifier = partial(InfoProHead, shape[1:], layout, classes, *settings)
            head = _measure(classifier, shape, precision)
            decoder = partial(InfoProDecoder, shape[1:], layout, image, config.width)
            dec = _measure(decoder, shape, precision)
            return AuxCost(*(a + b for a, b in zip(_fields(head), _fields(dec), strict=True)))
        kind = getattr(config, "kind", config)
        if kind == "augmented":
            raise SplitterError(
                "`augmented` cannot be the head of a `momentum` auxiliary; use `conv`, `linear` "
                "or `infopro` as its head"
            )
        raise SplitterError(
            f"the cost model has no `{kind}` auxiliary yet: its cascaded loss recomputes earlier "
            "blocks; partition with `--aux augmented` (the same leap units) and set "
            f"`{kind}` in the spec afterwards"
        )

    def _augmented_cost(self, config: AugmentedAux, k: int, j: int, blocks: int) -> AuxCost:
        """AugLocal: fresh copies of sampled later units (DESIGN 3) and a linear head."""
        picked = augmented_units(self.feature_unit_ends, j, k, blocks, config.depth, config.tau)
        spans = [(self.unit_start(end), end) for end in picked]
        saved = sum(self._sum("saved_bytes", a, b) for a, b in spans)
        params = sum(self._sum("param_bytes", a, b) for a, b in spans)
        last = picked[-1] if picked else j
        shape = self.shape(last)
        layout, classes = self.layout(config, last), self.num_classes
        head = partial(LinearHead, shape[1:], layout, classes, dense=self.task.dense)
        cost = _measure(head, shape, self.precision)
        return AuxCost(
            saved + cost.saved_bytes, params + cost.param_bytes, params + cost.trainable_bytes
        )

    def shape(self, j: int) -> tuple[int, ...]:
        shape = self.costs[self.position[j]].shape
        if shape is None and j == self.boundaries:
            shape = self._output_shape()  # a tuple or dict: the first output
        if shape is None:
            raise SplitterError(f"boundary {j} carries no single tensor")
        return shape

    def layout(self, config: object, j: int) -> Layout:
        """The layout at boundary j: the auxiliary's `layout:`, else inferred; a tensor that no
        layout describes (more than 4 axes after the batch) is Unservable."""
        chosen = getattr(config, "layout", "auto")
        shape = self.shape(j)
        try:
            if chosen != "auto":
                return cast(Layout, chosen)
            return infer_layout(self.gm, self.nodes[self.position[j]], shape)
        except LayoutError as e:
            raise Unservable(str(e)) from None

    @property
    def precision(self) -> Precision:
        return self.analysis.model.precision

    @cached_property
    def task(self) -> Task:
        """The task in force: its targets decide whether heads predict per token or pixel."""
        return resolve_task(self.analysis, self.settings.task)

    @property
    def num_classes(self) -> int:
        return self.task.classes

    def _output_shape(self) -> tuple[int, ...] | None:
        return output_shape(self.gm.graph)

    # ---------------------------------------------------------------- units

    def _unit_ends(self) -> list[int]:
        """Boundaries where a unit ends: the first admissible cut (or the output) at or after
        each span with parameters, so that a unit keeps the normalisation, activation and
        pooling that close it; parameter-free spans after it join the next unit."""
        whole = [j for j in range(1, self.boundaries) if self.cuts[j - 1].admissible]
        whole.append(self.boundaries)
        spans = [j for j in range(1, self.boundaries + 1) if self._sum("params", j - 1, j) > 0]
        return sorted({next(w for w in whole if w >= j) for j in spans}) or [self.boundaries]

    def admissible(self, j: int) -> bool:
        """Whether boundary j keeps every unit whole (the input and output always do)."""
        return j in (0, self.boundaries) or self.cuts[j - 1].admissible

    def units(self, i: int, j: int) -> int:
        """The whole units with parameters between boundaries i and j."""
        return bisect.bisect_right(self.unit_ends, j) - bisect.bisect_right(self.unit_ends, i)

    @cached_property
    def tail_start(self) -> int:
        """Where the classifier tail begins: the end of the last unit whose output is maps or a
        sequence, before global pooling, flattening and the classifier. A cut there or later
        would leave the tail a block of its own. The output when the output is itself maps or
        a sequence (segmentation, language models) or no unit makes maps (an MLP)."""
        output = self.costs[self.position[self.boundaries]].shape
        if output is None or len(output) >= 3:
            return self.boundaries
        maps = [e for e in self.unit_ends if e < self.boundaries and self._rank(e) >= 3]
        return maps[-1] if maps else self.boundaries

    def _rank(self, j: int) -> int:
        return len(self.costs[self.position[j]].shape or ())

    def first_unit_end(self, j: int) -> int:
        return next((end for end in self.unit_ends if end > j), self.boundaries)

    def unit_start(self, end: int) -> int:
        before = [e for e in self.unit_ends if e < end]
        return before[-1] if before else 0

    @cached_property
    def feature_unit_ends(self) -> list[int]:
        """Units before the global pooling: their outputs are maps or token sequences."""
        return [e for e in self.unit_ends if e < self.boundaries and len(self.shape(e)) >= 3]

    # ---------------------------------------------------------------- totals

    def fixed_bytes(self, bounds: Sequence[int]) -> int:
        """Parameters and optimizer state of the model and of every auxiliary (and every
        gradient, with one global optimizer step)."""
        blocks = len(bounds) - 1
        aux = [self.aux_cost(k, bounds[k + 1], blocks) for k in range(blocks - 1)]
        params = self._sum("param_bytes", 0, self.boundaries)
        trainable = params + sum(a.trainable_bytes for a in aux)
        fixed = params + sum(a.param_bytes for a in aux) + self.state_per_param * trainable
        return fixed + (trainable if self.settings.scope == "global" else 0)

    @property
    def state_per_param(self) -> int:
        opt = self.settings.optimizer
        return 2 if opt.name == "adamw" else (1 if opt.momentum > 0 else 0)

    def e2e_peak_bytes(self) -> int:
        """End-to-end training: all parameters, gradients and optimizer state, and every
        saved activation at once."""
        params = self._sum("param_bytes", 0, self.boundaries)
        return params * (2 + self.state_per_param) + self._sum("saved_bytes", 0, self.boundaries)


class Unservable(SplitterError):
    """The auxiliary cannot be built at this boundary (InfoPro's decoder after the global
    pooling): the partitioner passes over such cuts; a spec that names one is refused."""


def _save_index(costs: Sequence[NodeCost]) -> tuple[dict[int, int], dict[int, list[int]]]:
    first: dict[int, int] = {}
    every: dict[int, list[int]] = {}
    for index, cost in enumerate(costs):
        for storage in cost.saves:
            first.setdefault(storage, index)
            every.setdefault(storage, []).append(index)
    return first, every


def _fields(cost: AuxCost) -> tuple[int, int, int]:
    return cost.saved_bytes, cost.param_bytes, cost.trainable_bytes


_MEASURED: dict[tuple[str, tuple[object, ...], str], AuxCost] = {}


def _measure(
    make: Callable[[], nn.Module], shape: tuple[int, ...], precision: Precision
) -> AuxCost:
    """Saved bytes (without its input, which the block holds anyway) and parameter bytes of a
    head at the boundary shape, from the same fake-tensor annotation as the model. The head is
    built on the meta device and given uninitialised memory: its values never matter here."""
    assert isinstance(make, partial)
    settings = (shape[0], *make.args, *sorted(make.keywords.items()))
    key = (getattr(make.func, "__name__", ""), settings, precision)
    if key not in _MEASURED:
        try:
            with torch.device("meta"):
                head = make()
        except LayoutError as e:  # `layout:` set to one this boundary's rank cannot have
            raise Unservable(str(e)) from None
        head = head.to_empty(device="cpu")
        gm = trace(head).graph("train")
        annotate(gm, InputSpec(shape[1:], torch.float32), shape[0], precision)
        costs = [node_cost(n) for n in gm.graph.nodes]
        input_storage = costs[0].storage
        saved = sum(c.saved_bytes for c in costs)
        if any(input_storage in c.saves for c in costs):
            saved -= costs[0].out_bytes
        size = sum(p.numel() * p.element_size() for p in head.parameters())
        _MEASURED[key] = AuxCost(saved, size, size)
    return _MEASURED[key]
