"""The task a model trains on: its kind of targets (given, or inferred from the output's shape
and the input's dtype), the loss and the number of classes a head predicts."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from schemas.task import Targets, TaskSection
from splitter.analysis.model import Analysis
from splitter.errors import SplitterError
from splitter.frontend.annotate import output_shape
from splitter.runtime import MODULES

RANKS: dict[Targets, int] = {"class": 2, "next_token": 3, "per_token": 3, "pixel": 4, "boxes": 0}
"""The rank of the output each target kind takes, batch included."""
OUTPUTS: dict[Targets, str] = {
    "class": "(B, C)", "next_token": "(B, T, V)", "per_token": "(B, T, C)",
    "pixel": "(B, C, H, W)", "boxes": "a loss dict (with `loss: model`)",
}  # fmt: skip
PACKAGE_LOSSES = ("cross_entropy", "mse", "bce", "file.py:function", "model")
"""The losses an emitted package computes (`file.py:function`: the user's function, its file
copied; `model`: the loss dict a detection model returns, with `boxes` targets)."""


class TaskError(SplitterError):
    """A task the model's output cannot serve; the message names both and the fix."""


@dataclass(frozen=True)
class Task:
    """The task in force: `targets`, `loss`, the classes a prediction ranges over, and how
    the targets were chosen (`why`)."""

    targets: Targets
    loss: str
    classes: int
    why: str

    @property
    def dense(self) -> bool:
        """A prediction per token or pixel."""
        return self.targets != "class"

    @property
    def causal(self) -> bool:
        """A head must not see the tokens after the one it predicts from."""
        return self.targets == "next_token"

    def sentence(self, root: str | None = None) -> str:
        """For the package's README: the targets, classes and loss (and the split root)."""
        text = f"`{self.targets}` targets over {self.classes} classes, loss `{self.loss}`"
        if root:
            text += (
                f"; the blocks split `{root}`, and the rest of the model runs around them and "
                "trains on the task loss with the last block"
            )
        return text

    @property
    def line(self) -> str:
        """`next_token targets, cross_entropy (inferred: int64 input (B, 64), output ...)`."""
        return f"{self.targets} targets over {self.classes} classes, {self.loss} ({self.why})"


def resolve_task(analysis: Analysis, section: TaskSection | None = None) -> Task:
    """The task of `section` on the analysed model: `targets` as given (checked against the
    output's rank) or inferred: a (B, C) output is `class`; (B, T, V) is `next_token` when the
    input is int64 token ids of the same T, else `per_token`; (B, C, H, W) after an image input
    is `pixel`. An output no rule knows stays `class` over its last axis (as before)."""
    section = section or TaskSection()
    if analysis.root:  # the whole model's output and input: the rest runs around the root
        shape, given = analysis.output_shape, analysis.model.inputs[0]
    else:
        shape, given = output_shape(analysis.traced.graph("train").graph), analysis.target_input
    inputs = f"{str(given.dtype).removeprefix('torch.')} input {_text(given.shape)}"
    out = f"output {_text(shape[1:])}" if shape is not None else "output of unknown shape"
    if section.loss == "model" or section.targets == "boxes":
        return _boxes(analysis, section, inputs)
    targets: Targets
    if section.targets is not None:
        targets = section.targets
        if shape is None or len(shape) != RANKS[targets]:
            raise TaskError(
                f"`task.targets: {targets}` takes an output {OUTPUTS[targets]}, but the model's "
                f"{out}; set `task.targets` to the kind its output serves, or `model.output` "
                "to the output that is the prediction"
            )
        why = f"set in the spec; {inputs}, {out}"
    else:
        targets = _inferred(shape, given.shape, given.dtype.is_floating_point)
        why = f"inferred from the {inputs} and the {out}; set `task.targets` to change"
    classes = 10 if shape is None else shape[1] if targets == "pixel" else shape[-1]
    loss = section.loss
    if ".py:" in loss:  # the package holds the file beside train.py, under its own name
        file, _, name = loss.rpartition(":")
        loss = f"{Path(file).name}:{name}"
    return Task(targets, loss, classes, why)


def _boxes(analysis: Analysis, section: TaskSection, inputs: str) -> Task:
    """A detection model trained on its own loss dict: the classes of its box classifier (a
    Linear named `cls_score`, as torchvision's), which the blocks' per-pixel heads predict."""
    if section.loss != "model" or section.targets not in (None, "boxes"):
        raise TaskError(
            f"`task.loss: {section.loss}` with `targets: {section.targets}`: a detection model "
            "trains on the loss dict it returns; set `task: {loss: model, targets: boxes}`"
        )
    found = [
        m.out_features
        for name, m in analysis.model.module.named_modules()
        if name.split(".")[-1] == "cls_score" and isinstance(m, nn.Linear)
    ]
    if not found:
        raise TaskError(
            "`task.loss: model` trains a detection model on its loss dict, and its classes are "
            "read from its box classifier (a Linear named `cls_score`, as torchvision's), which "
            "this model lacks; use `task.loss: cross_entropy` with per-pixel or class targets"
        )
    why = f"a detection model's loss dict; {inputs}, boxes and labels per image"
    return Task("boxes", "model", found[0], why)


def _inferred(shape: tuple[int, ...] | None, sample: tuple[int, ...], floating: bool) -> Targets:
    if shape is None or len(shape) == 2:
        return "class"
    if len(shape) == 3:
        tokens = not floating and len(sample) == 1 and sample[0] == shape[1]
        return "next_token" if tokens else "per_token"
    if len(shape) == 4 and len(sample) == 3 and floating:
        return "pixel"
    return "class"


def _text(sample: tuple[int, ...]) -> str:
    return "(" + ", ".join(["B", *map(str, sample)]) + ")"


SERVING: dict[Targets, tuple[str, ...]] = {
    "class": ("linear", "conv", "momentum", "infopro", "augmented", "mlaan"),
    "next_token": ("linear", "conv", "momentum", "augmented"),
    "per_token": ("linear", "conv", "momentum", "augmented"),
    "pixel": ("linear", "conv", "momentum", "augmented"),
    "boxes": ("linear", "conv", "momentum", "augmented"),
}
"""The auxiliary kinds that serve each kind of targets. Per token and per pixel, `linear` and
`conv` predict at every position instead of pooling (`conv` causal for next tokens: padded on
the left, without BatchNorm); `momentum` and `augmented` end in such a head. `infopro`
reconstructs images and `mlaan` cascades classifiers over pooled features: classes only."""


def unserved(config: object, task: Task) -> str | None:
    """Why an auxiliary (or a momentum auxiliary's head) cannot serve the task, or None."""
    kind = str(getattr(config, "kind", config))
    if kind not in SERVING[task.targets]:
        kinds = ", ".join(f"`{k}`" for k in SERVING[task.targets])
        return f"`{kind}` cannot serve `{task.targets}` targets; use {kinds}"
    variant = getattr(config, "variant", "default")
    if variant != "default" and task.dense:
        return (
            f"`conv` with `variant: {variant}` pools to one prediction per "
            f"sample and cannot serve `{task.targets}` targets; use `variant: default`"
        )
    head = getattr(config, "head", None)
    return unserved(head, task) if head is not None else None


def loss_file(loss: str, spec_source: str) -> tuple[str, str] | None:
    """For `task.loss: file.py:function`, the file's name and text, to copy into the package
    (found beside the spec, else from the working folder), after checking that it defines the
    function; None for a loss the package computes itself."""
    if ".py:" not in loss:
        return None
    file, _, name = loss.rpartition(":")
    beside = Path(spec_source).parent / file
    path = beside if beside.is_file() else Path(file)
    if not path.is_file():
        raise TaskError(
            f"`task.loss: {loss}`: no file `{file}` beside the spec ({beside}) or in the "
            "working folder; give the path of a Python file that defines the function"
        )
    reserved = {"blocks", "model", *MODULES}
    if path.stem in reserved:
        raise TaskError(
            f"`task.loss: {loss}`: the package has its own `{path.stem}.py`; rename the file "
            f"(e.g. `{path.stem}_loss.py`)"
        )
    spec = importlib.util.spec_from_file_location(f"_splitter_loss_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's file failed to run
        raise TaskError(f"`task.loss: {loss}`: running `{path}` failed: {error}") from error
    if not callable(getattr(module, name, None)):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise TaskError(
            f"`task.loss: {loss}`: `{path}` defines no function `{name}`; its functions: "
            f"{', '.join(f'`{n}`' for n in found) or 'none'}"
        )
    return path.name, path.read_text(encoding="utf-8")
