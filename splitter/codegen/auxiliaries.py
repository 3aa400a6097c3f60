"""The expression that builds each block's auxiliary in the emitted package, and the classes of
the model units that auxiliaries copy (momentum's next unit, AugLocal's sampled units)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

from schemas.auxiliary import (
    AugmentedAux,
    ConvAux,
    InfoProAux,
    LinearAux,
    MlaanAux,
    MomentumAux,
    first_trained_by_cascade,
    loss_windows,
)
from splitter.analysis.costs import CostModel
from splitter.analysis.lambdas import loss_weights
from splitter.analysis.layouts import (
    InfoProDecoder,
    Layout,
    LayoutError,
    default_layout,
    infer_layout,
)
from splitter.analysis.sampling import auglocal_depth, augmented_units
from splitter.analysis.task import Task, unserved
from splitter.codegen.source import Imports, ModuleSource, ShapeText, module_source
from splitter.errors import AuxiliaryError
from splitter.partitioning.partitioner import settings_from
from splitter.partitioning.plan import Plan
from splitter.runtime.auglocal import is_resnet_block
from splitter.runtime.auxiliary import LAYOUTS, channels
from splitter.transform.surgery import extra_inputs, span_graph

AUX_CLASSES = (
    "Adapter", "Augmented", "Classifier", "ConvHead", "InfoPro", "InfoProDecoder", "InfoProHead",
    "LinearHead", "Momentum",
)  # fmt: skip
_WHAT = {"nchw": "an image map", "nhwc": "an image map", "ncl": "a sequence (NCL)"}
_WHAT |= {"nlc": "a token sequence", "nc": "a feature vector"}
_WHAT |= {"ncdhw": "a video map", "ndhwc": "a video map"}


@dataclass(frozen=True)
class AuxView:
    """One auxiliary in `build_auxiliaries`: comment lines and the expression that builds it."""

    comments: list[str]
    expression: str


def aux_config(plan: Plan, k: int) -> Any:
    return plan.spec.spec.aux.of(k)


class AuxiliaryViews:
    """Every block's auxiliary, in boundary indices: 0 the input, 1..n-1 the model's legal
    cuts, n the output (the cost model's numbering)."""

    def __init__(
        self, plan: Plan, imports: Imports, batch: int, shapes: ShapeText | None = None
    ) -> None:
        self.plan, self.imports, self.batch = plan, imports, batch
        self.shapes = shapes or ShapeText(batch)
        self.analysis = plan.analysis
        self.costs = CostModel(self.analysis, settings_from(plan.spec.spec, None, None))
        cuts = list(self.analysis.cuts.cuts)
        self.bounds = [0, *(cuts.index(c) + 1 for c in plan.cuts), self.costs.boundaries]
        self.units: dict[tuple[int, int], ModuleSource] = {}
        self.loss_weights = loss_weights(self.costs, plan.spec.spec.aux, self.bounds)
        self.task: Task = self.costs.task

    @property
    def task_expression(self) -> str | None:
        """What builds the task the auxiliaries train on, when it is not cross entropy over
        classes (`Task("next_token", "cross_entropy")`): then `task` is passed to them."""
        if self.task.targets == "class" and self.task.loss == "cross_entropy":
            return None
        return f'Task("{self.task.targets}", "{self.task.loss}")'

    @property
    def _task(self) -> str:
        return ", task" if self.task_expression else ""

    @property
    def configs(self) -> list[Any]:
        """The auxiliary settings of blocks 0..K-2."""
        return [aux_config(self.plan, k) for k in range(len(self.bounds) - 2)]

    @property
    def task_window(self) -> int:
        """How many blocks the task loss trains (MLAAN's last two, else the last alone)."""
        return loss_windows(self.configs)[-1]

    def views(self) -> list[AuxView]:
        return [self.auxiliary(k) for k in range(len(self.bounds) - 2)]

    def auxiliary(self, k: int) -> AuxView:
        config, j = aux_config(self.plan, k), self.bounds[k + 1]
        comments = [f"block {k} ends at `{self.name(j)}`: {self.shape_text(j)}"]
        problem = unserved(config, self.task)
        if problem is not None:
            raise AuxiliaryError(f"block {k}'s auxiliary: {problem}")
        if isinstance(config, MomentumAux):
            end = min(self.costs.first_unit_end(j), self.bounds[k + 2])
            unit = self.unit(j, end, f"block {k}'s momentum auxiliary copies it")
            options = f"decay={config.decay}, learnable_scale={config.learnable_scale}"
            if not config.recompute:
                options += ", recompute=False"
            head = self.head(config.head, end, k)
            expression = f'Momentum({unit}(model), {head}, {options}, init="{config.init}")'
            comments.append(
                f"a trainable and an EMA copy of the next unit (up to `{self.name(end)}`)"
            )
            return AuxView(comments, expression)
        if isinstance(config, AugmentedAux):
            return AuxView(comments, self.augmented(config, k, j))
        if k == 0 and first_trained_by_cascade(self.configs):
            comments.append("no loss of its own: block 1's loss recomputes and trains it (MLAAN)")
            return AuxView(comments, "Unsupervised()")
        if isinstance(config, MlaanAux):
            window = config.cascade(k)
            comments.append(f"its cascaded loss recomputes blocks {k - window + 1}..{k}")
            return AuxView(comments, self.mlaan(config, k, j, window))
        return AuxView(comments, self.head(config, j, k))

    # ---------------------------------------------------------------- heads

    def head(self, config: Any, b: int, k: int) -> str:
        """A `linear`, `conv` or `infopro` auxiliary on the tensor at boundary b."""
        layout, sample = self.layout(config, b, k), self.shape(b)[1:]
        dense = self.task.dense
        if isinstance(config, LinearAux):
            return f"Classifier({_linear(sample, layout, dense=dense)}{self._task})"
        if isinstance(config, ConvAux):
            conv = _conv(sample, layout, config, self.name(b), dense, self.task.causal)
            return f"Classifier({conv}{self._task})"
        if isinstance(config, InfoProAux):
            return self.infopro(config, sample, layout, k, b)
        raise AuxiliaryError(
            f"block {k}: `{config.kind}` cannot be the head of a momentum auxiliary; use "
            "`linear`, `conv` or `infopro`"
        )

    def infopro(
        self, config: InfoProAux, sample: tuple[int, ...], layout: Layout, k: int, b: int
    ) -> str:
        image = tuple(self.analysis.target_input.shape)
        try:
            InfoProDecoder.check(layout, image)
        except ValueError:
            raise AuxiliaryError(
                f"block {k}'s `infopro` auxiliary reconstructs images, but `{self.name(b)}` "
                f"carries {_WHAT[layout]} {self.shape_text(b)} and the input is {list(image)}; "
                "use `linear`, `conv`, `momentum` or `augmented` there"
            ) from None
        weights = self.loss_weights[k]
        lambda1, lambda2 = weights.lambda1, weights.lambda2
        decoder = f'InfoProDecoder({sample}, "{layout}", {image}, width={config.width})'
        return (
            f"InfoPro({decoder}, {_infopro_classifier(sample, layout, config)}, "
            f"lambda1={lambda1:g}, lambda2={lambda2:g})"
        )

    # ---------------------------------------------------------------- AugLocal

    def augmented(self, config: AugmentedAux, k: int, j: int) -> str:
        """The layers AugLocal's rule samples after boundary j, then pooling, BatchNorm1d at
        depth 1, and Linear: ResNet-style blocks built anew at the sampled widths (AugLocal's
        own), else fresh copies of the units with adapters where consecutive shapes differ."""
        blocks = len(self.bounds) - 1
        depth = auglocal_depth(k, blocks, config.depth, config.tau)
        norm = depth <= 1 and not self.task.causal  # BatchNorm mixes in later tokens
        rebuilt = self.resnet_blocks(k, j, config)
        dense = self.task.dense
        if rebuilt is not None:
            layers, sample, sampled = rebuilt
            head = _linear(sample, "nchw", norm, dense)
        else:
            layers, current, sampled = self.leap(k, j, config.depth, config.tau)
            layout = self.layout(config, current, k)
            head = _linear(self.shape(current)[1:], layout, norm, dense)
        return f"Augmented([{', '.join(layers)}], {head}, sampled={tuple(sampled)}{self._task})"

    def resnet_blocks(
        self, k: int, j: int, config: AugmentedAux
    ) -> tuple[list[str], tuple[int, ...], list[int]] | None:
        """AugLocal's blocks after boundary j when every sampled unit is one ResNet-style block
        of an NCHW map whose width never shrinks: each built anew from the width so far to the
        sampled one, at stride 2 once per doubling of the width (None otherwise). The layers,
        the last one's output shape per sample, and the indices of the sampled units."""
        features = self.costs.feature_unit_ends
        blocks = len(self.bounds) - 1
        picked = augmented_units(features, j, k, blocks, config.depth, config.tau)
        shape = self.shape(j)[1:]
        if not picked or len(shape) != 3 or self.layout(config, j, k) != "nchw":
            return None
        modules = dict(self.analysis.target.named_modules())
        layers, inplanes, size, pools = [], shape[0], list(shape[1:]), 0.0
        for end in picked:
            path, out = self.name(end), self.shape(end)[1:]
            module = modules.get(path)
            if module is None or not is_resnet_block(module) or len(out) != 3:
                return None
            width = out[0]
            if width < inplanes or width % inplanes:
                return None
            pools += math.log2(width // inplanes)
            stride = 2 if pools >= 1 else 1
            pools -= 1 if stride == 2 else 0
            layers.append(f'resnet_block(model, "{path}", {inplanes}, {width}, {stride})')
            inplanes, size = width, [(s + stride - 1) // stride for s in size]
        return layers, (inplanes, *size), [features.index(end) for end in picked]

    def leap(self, k: int, j: int, depth: int, tau: float) -> tuple[list[str], int, list[int]]:
        """AugLocal's units after boundary j as class expressions, with adapters where the
        shapes differ; the boundary the last one ends at, and the indices of the units."""
        features = self.costs.feature_unit_ends
        picked = augmented_units(features, j, k, len(self.bounds) - 1, depth, tau)
        layers, current = self.copies(k, j, picked)
        return layers, current, [features.index(end) for end in picked]

    def copies(self, k: int, j: int, picked: list[int]) -> tuple[list[str], int]:
        """Fresh copies of the units ending at `picked` after boundary j, with adapters where
        the shapes differ; the boundary the last one ends at."""
        layers, current = [], j
        for end in picked:
            start = self.costs.unit_start(end)
            if self.shape(start) != self.shape(current):
                layers.append(self.adapter(current, start, k))
            layers.append(f"{self.unit(start, end, f'block {k} copies it')}(model)")
            current = end
        return layers, current

    def mlaan(self, config: MlaanAux, k: int, j: int, window: int) -> str:
        """The independent head (pooling and Linear), the window's blocks, leap copies (the
        first one EMA-coupled to its source unit), pooling and Linear."""
        sample, layout = self.shape(j)[1:], self.layout(config, j, k)
        if config.leap is None:
            layers, current, _ = self.leap(k, j, MlaanAux.LEAP_DEPTH, MlaanAux.LEAP_TAU)
        else:
            layers, current = self.copies(k, j, [self.leap_end(name, j, k) for name in config.leap])
        units = [i for i, layer in enumerate(layers) if layer.startswith("Unit")]
        source = layers[units[0]] if units else "None"
        blocks = ", ".join(f"blocks[{i}]" for i in range(k - window + 1, k + 1))
        head = _linear(self.shape(current)[1:], self.layout(None, current, k))
        updated = config.ema == "every" or k == len(self.bounds) - 3  # the last auxiliary
        options = f"weights={tuple(config.weights)}, decay={config.decay}"
        options += f", coupled={units[0] if units else 0}, update_ema={updated}"
        independent = _linear(sample, layout)
        return (
            f"Mlaan([{blocks}], {independent}, [{', '.join(layers)}], {source}, {head}, {options})"
        )

    def leap_end(self, name: str, j: int, k: int) -> int:
        """The boundary where the unit named in `leap` ends: one after boundary j."""
        ends = [b for b in self.costs.unit_ends if j < b < self.costs.boundaries]
        found = [b for b in ends if name in self.costs.cuts[b - 1].names]
        if not found:
            known = ", ".join(f"`{self.name(b)}`" for b in ends) or "none"
            raise AuxiliaryError(
                f"block {k}'s `mlaan` auxiliary has `leap` unit `{name}`, which is not a unit end "
                f"after `{self.name(j)}`; use units after the block: {known}"
            )
        return found[0]

    def adapter(self, source: int, target: int, k: int) -> str:
        src, dst = self.shape(source)[1:], self.shape(target)[1:]
        a, b = self.layout(None, source, k), self.layout(None, target, k)
        return f'Adapter({src}, "{a}", {dst}, "{b}")'

    # ---------------------------------------------------------------- units and boundaries

    def unit(self, start: int, end: int, use: str) -> str:
        """The class of the model's span (start, end]; made once, named in order."""
        if (start, end) not in self.units:
            name = f"Unit{len(self.units)}"
            graph = span_graph(self.gm, self.node(start), self.node(end))
            reads = extra_inputs(graph)
            if reads:
                raise AuxiliaryError(
                    f"{use[0].upper()}{use[1:]}: the span after `{self.name(start)}` up to "
                    f"`{self.name(end)}` reads the model's input `{reads[0]}`, which an "
                    "auxiliary is not given; choose an auxiliary kind that copies no layers "
                    "(`linear`, `conv`, `infopro`) for that block, or cut before the span"
                )
            doc = f"The model after `{self.name(start)}` up to `{self.name(end)}`: {use}."
            self.units[(start, end)] = module_source(
                name, doc, {"train": graph}, self.analysis.target, self.imports, self.shapes
            )
        return self.units[(start, end)].name

    @property
    def gm(self) -> Any:
        return self.costs.gm

    def node(self, b: int) -> str | None:
        if b in (0, self.costs.boundaries):
            return None
        return str(self.costs.nodes[self.costs.position[b]].name)

    def name(self, b: int) -> str:
        if b == 0:
            return "input"
        return "output" if b == self.costs.boundaries else self.costs.cuts[b - 1].name

    def shape(self, b: int) -> tuple[int, ...]:
        if b == 0:
            return (self.batch, *self.analysis.target_input.shape)
        return self.costs.shape(b)

    def shape_text(self, b: int) -> str:
        return "(" + ", ".join(["B", *map(str, self.shape(b)[1:])]) + ")"

    def layout(self, config: Any, b: int, k: int) -> Layout:
        """The layout at boundary b: the auxiliary's `layout:`, else inferred; checked."""
        chosen = getattr(config, "layout", "auto")
        shape = self.shape(b)
        node = self.costs.nodes[self.costs.position[b]] if b else None
        kind = f"`{config.kind}` auxiliary" if config is not None else "auxiliary"
        try:
            if chosen != "auto":
                layout = cast(Layout, chosen)
            elif node is not None:
                layout = infer_layout(self.gm, node, shape)
            else:
                layout = default_layout(shape)
        except LayoutError as e:
            raise AuxiliaryError(
                f"block {k}'s {kind} cannot serve `{self.name(b)}`: {e}; cut where the tensor "
                "has at most 4 axes after the batch"
            ) from None
        if len(shape) != len(layout):
            fits = LAYOUTS.get(len(shape) - 1, ())
            fix = "use `layout: auto`" + "".join(f" or `{f}`" for f in fits)
            raise AuxiliaryError(
                f"block {k}'s {kind} has `layout: {layout}`, but the tensor at "
                f"`{self.name(b)}` is {self.shape_text(b)}, which is not {_WHAT[layout]}; "
                + (fix if fits else "cut where the tensor has at most 4 axes after the batch")
            )
        return layout


def _linear(sample: tuple[int, ...], layout: str, norm: bool = False, dense: bool = False) -> str:
    options = (", norm=True" if norm else "") + (", dense=True" if dense else "")
    return f'LinearHead({sample}, "{layout}", num_classes{options})'


def _infopro_classifier(sample: tuple[int, ...], layout: Layout, config: InfoProAux) -> str:
    options = f'"{config.classifier}", feature_dim={config.feature_dim}, loss="{config.loss}"'
    if config.loss == "supcon":
        options += f", temperature={config.temperature!r}"
    return f'InfoProHead({sample}, "{layout}", num_classes, {options})'


def _conv(
    sample: tuple[int, ...],
    layout: Layout,
    config: ConvAux,
    where: str,
    dense: bool = False,
    causal: bool = False,
) -> str:
    if config.variant != "default":
        if layout != "nchw":
            raise AuxiliaryError(
                f"`conv` with `variant: {config.variant}` takes image maps (NCHW), but the "
                f"boundary `{where}` is {layout.upper()}; use `variant: default`, which serves "
                "every layout"
            )
        return f'dgl_head("{config.variant}", {sample}, num_classes)'
    width = config.width or 2 * channels(sample, layout)
    options = f"depth={config.depth}, width={width}, hidden={config.hidden}"
    options += ", causal=True" if causal else ", dense=True" if dense else ""
    return f'ConvHead({sample}, "{layout}", num_classes, {options})'
