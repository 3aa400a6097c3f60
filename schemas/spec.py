"""The split spec, version 1: what to split, where, with which auxiliaries, and how to train."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from schemas.auxiliary import AuxConfig, MomentumAux
from schemas.base import SpecModel, rule
from schemas.papers import TABLES, Paper, paper_cuts
from schemas.presets import Preset, expanded, merged
from schemas.recipes import RECIPES, Recipe
from schemas.size import SIZE_PATTERN, parse_size
from schemas.task import TaskSection

Dtype = Literal["float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool"]
_DEVICE = r"^(auto|cpu|cuda(:[0-9]+)?)$"


def _device(name: str) -> str:
    if re.fullmatch(_DEVICE, name) is None:
        raise rule(f"device `{name}` is not `auto`, `cpu`, `cuda` or `cuda:N`; write e.g. `cuda:0`")
    return name


Device = Annotated[
    str, AfterValidator(_device), WithJsonSchema({"type": "string", "pattern": _DEVICE})
]

_BudgetInput = Annotated[int, Field(gt=0)] | Annotated[str, Field(pattern=SIZE_PATTERN)] | None


class ModelInput(SpecModel):
    """One of the forward's tensor inputs."""

    shape: list[PositiveInt]
    """Shape of one sample, without the batch, e.g. `[3, 32, 32]`."""
    dtype: Dtype | None = None
    """Its dtype (null: `example_inputs()`'s, else float32)."""


class ModelSection(SpecModel):
    """The model to split and its example input; each key may also come from the command line."""

    ref: str | None = None
    """The model: `path/to/model.py` (calls `build_model(**kwargs)`), `path.py:NAME` for another
    callable or class, `torchvision:NAME` or `timm:NAME`. Optional when MODEL is on the command
    line."""
    kwargs: dict[str, Any] = Field(default={})
    """Keyword arguments for the model's constructor."""
    input_shape: list[PositiveInt] | None = None
    """Shape of one input sample, without the batch, e.g. `[3, 32, 32]`."""
    input_dtype: Dtype | None = None
    """Dtype of the input (null: `example_inputs()`'s, else float32); int64 for token ids."""
    inputs: list[ModelInput] | None = Field(default=None, min_length=1)
    """Every tensor input of a forward that takes several (an image and a metadata vector), in
    order, instead of `input_shape` and `input_dtype`. The first is carried from block to
    block; the others reach each block that reads them."""
    root: str | None = None
    """FQN of the submodule to split; the rest of the model runs around it unchanged."""
    output: int | str | None = None
    """Index or key of the model output the task loss uses, when the model returns a tuple or
    dict (null: the first element)."""

    @model_validator(mode="after")
    def _one_input_form(self) -> Self:
        if self.inputs is not None and (self.input_shape or self.input_dtype):
            raise rule(
                "`model` gives both `inputs` and `input_shape`/`input_dtype`; keep `inputs` and "
                "list the first input there as `{shape: [...], dtype: ...}`",
                at="inputs",
            )
        return self


class TraceSection(SpecModel):
    """How the model is traced with torch.fx."""

    leaf_modules: list[str] = Field(default=[])
    """Modules not to trace into, as class paths (`timm.layers.Mlp`) or FQNs (`layer1.0`)."""
    auto_leaf: bool = True
    """When tracing fails inside a submodule, make the smallest failing one a leaf and retry."""


class AutoPartition(SpecModel):
    """Cuts computed by an exact min-max partitioner; give exactly one of `blocks` and `budget`."""

    blocks: int | None = Field(default=None, ge=2)
    """Number of blocks K (at least 2); the K-1 cuts minimise the largest block cost."""
    budget: int | None = Field(default=None, gt=0)
    """Peak training memory allowed, in bytes or with a unit: `8GiB`, `512MiB` (powers of 2),
    `8GB`, `500MB` (powers of 10). The fewest blocks that fit are taken."""
    balance: Literal["memory", "flops", "params", "units"] = "memory"
    """What the blocks are balanced on: activation `memory` (with the auxiliary's), `flops`,
    `params`, or the number of `units`."""
    min_units: int = Field(default=1, ge=0)
    """Every block holds at least this many whole units with parameters (0: no rule)."""
    min_block_flops: float = Field(default=0.01, ge=0, lt=1)
    """Every block holds at least this fraction of the model's forward FLOPs (0: no rule)."""
    tail: Literal["last", "free"] = "last"
    """`last`: what follows the global pooling (the classifier) stays in the last block; `free`:
    it may be cut like the rest."""
    slack: float = Field(default=0.02, ge=0)
    """With `balance: memory`, among the splits whose largest block is within this fraction of
    the smallest possible, the one whose largest block has the fewest FLOPs."""

    @field_validator("budget", mode="before", json_schema_input_type=_BudgetInput)
    @classmethod
    def _parse_budget(cls, value: object) -> object:
        if value is None or isinstance(value, bool) or not isinstance(value, int | str):
            return value
        try:
            return parse_size(value)
        except ValueError as error:
            raise rule(str(error)) from None

    @model_validator(mode="after")
    def _one_goal(self) -> Self:
        if self.blocks is not None and self.budget is not None:
            raise rule(
                "`auto` gives both `blocks` and `budget`; keep one: `blocks: K` for K balanced "
                "blocks, or `budget: 8GiB` for the fewest blocks that fit",
                at="budget",
            )
        if self.blocks is None and self.budget is None:
            raise rule("`auto` needs `blocks` or `budget`; add e.g. `blocks: 4` or `budget: 8GiB`")
        return self


class PaperSplit(SpecModel):
    """A paper's published split of a CIFAR ResNet (its repository's table)."""

    name: Paper
    """`infopro` (InfoPro's table; its "K=16" makes the stem a module), `infopro*` (InfoPro's
    memory-balanced ResNet-110 splits), `man` (MAN's lists: InfoPro's without the stem module,
    so "K=16" is 15 blocks), `man++` (MAN's with the stem module back) or `mlaan` (MLAAN's:
    InfoPro's without the stem module, layer-wise at K = 15 and 54; with `aux.preset: mlaan`
    its leap lists at K = 8, 15 (ResNet-32) and 32, 54 (ResNet-110))."""
    k: PositiveInt
    """The K the paper names, as published (`man`'s K=16 gives 15 blocks)."""
    depth: Literal[32, 110] = 32
    """The CIFAR ResNet the table is for: 32 or 110."""


class PartitionSection(SpecModel):
    """Where the model is cut into blocks: by hand (`cuts`), computed (`auto`) or as a paper
    published (`paper`), one of them."""

    cuts: list[str] | None = Field(default=None, json_schema_extra={"minItems": 1})
    """The cut points, by module FQN or cut name, in order; K-1 cuts make K blocks.
    `splitter inspect` lists the legal ones."""
    auto: AutoPartition | None = None
    """Compute the cuts instead, e.g. `{blocks: 4}` or `{budget: 8GiB}`."""
    paper: PaperSplit | None = None
    """A paper's cuts for CIFAR ResNet-32/110, e.g. `{name: man, k: 16}`: they become `cuts`."""
    shared_params: Literal["error", "replicate", "owner", "sync"] = "error"
    """Parameters used by several blocks: `error`, `replicate` (independent copies), `owner` (the
    first block owns it, others see it detached) or `sync` (gradients summed; needs
    `training.optimizer_scope: global`)."""

    @model_validator(mode="before")
    @classmethod
    def _paper_cuts(cls, data: object) -> object:
        """`paper` resolved to its table's cuts (when neither `cuts` nor `auto` is given)."""
        if not isinstance(data, dict) or not isinstance(data.get("paper"), dict):
            return data
        paper = data["paper"]
        name, k, depth = paper.get("name"), paper.get("k"), paper.get("depth", 32)
        if "cuts" in data or "auto" in data:
            raise rule("`partition` gives `paper` and `cuts` or `auto`; keep one", at="paper")
        if name not in TABLES or type(k) is not int or depth not in (32, 110):
            return data  # the field's own validation names the problem
        try:
            return {**data, "cuts": paper_cuts(name, k, depth)}
        except ValueError as error:
            raise rule(str(error), at="paper") from None

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if self.cuts is not None and self.auto is not None:
            raise rule(
                "`partition` gives both `cuts` and `auto`; keep one: `cuts` lists the cuts by "
                "hand, `auto` computes them",
                at="auto",
            )
        if self.cuts is None and self.auto is None:
            raise rule(
                "`partition` needs `cuts` or `auto`; add e.g. `cuts: [layer2]` or "
                "`auto: {blocks: 4}`"
            )
        if self.cuts == []:
            raise rule(
                "`cuts` is empty; list at least one cut, e.g. `cuts: [layer2]`, or use "
                "`auto: {blocks: 4}` (`splitter inspect` lists the legal cuts)",
                at="cuts",
            )
        return self


class AuxSection(SpecModel):
    """The auxiliary network of each block but the last, which trains on the task loss."""

    preset: Preset | None = None
    """A paper's auxiliary by name, expanded into `default` under the keys `default` sets:
    `man` (= `infopro+man`: MAN's momentum copies, s fixed at 1, under InfoPro's `2c2f` heads
    with cross entropy and MAN's stage weights), `man++` (the same with s learned), `infopro`
    (InfoPro's decoder and `1c2f` classifier under SupCon, its lambdas for ResNet-32 at K = 2,
    4, 8, 16), `dgl` (`conv` with `variant: mlp-sr`), `dgl+man++` (momentum copies under
    MAN++'s DGL head), `auglocal` (`augmented`), `mlaan` (`mlaan`)."""
    default: AuxConfig = MomentumAux()
    """The auxiliary for blocks 0..K-2, e.g. `{kind: momentum}` or `{kind: conv, width: 64}`."""
    blocks: dict[NonNegativeInt, AuxConfig] = Field(
        default={}, json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}}
    )
    """Overrides by block index, e.g. `{0: {kind: conv, width: 64}}`."""

    def of(self, block: int) -> AuxConfig:
        """The auxiliary of block `block`: its override, else the default."""
        return self.blocks.get(block, self.default)


class OptimizerConfig(SpecModel):
    """The optimizer of each block (or of the whole model with `optimizer_scope: global`)."""

    name: Literal["sgd", "adamw"] = "sgd"
    """`sgd` or `adamw`."""
    lr: PositiveFloat = 0.05
    """Learning rate, before the schedule."""
    momentum: float = Field(default=0.9, ge=0)
    """SGD momentum."""
    nesterov: bool = True
    """SGD with Nesterov momentum."""
    weight_decay: float = Field(default=5e-4, ge=0)
    """Weight decay (decoupled for `adamw`)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's `[beta1, beta2]`."""


class ScheduleConfig(SpecModel):
    """The learning-rate schedule, set at every step (`step` decays every `step_size` epochs)."""

    name: Literal["cosine", "step", "constant"] = "cosine"
    """`cosine` annealing to 0, `step` decay, or `constant`."""
    warmup_epochs: NonNegativeInt = 1
    """Epochs of linear warm-up (step by step) before the schedule starts."""
    warmup_start_lr: NonNegativeFloat = 0.0
    """The learning rate the warm-up starts from (0: from nothing)."""
    step_size: PositiveInt = 30
    """For `step`: epochs between decays."""
    gamma: float = Field(default=0.1, gt=0)
    """For `step`: the factor the learning rate is multiplied by at each decay."""


class DataConfig(SpecModel):
    """The data the generated `train.py` trains on (its `--data` flag overrides `name`)."""

    name: Literal["synthetic", "digits", "cifar10", "cifar100", "svhn", "stl10", "imagefolder"] = (
        "digits"
    )
    """`synthetic` (random), `digits` (scikit-learn's bundled digits) or a torchvision dataset."""
    root: str | None = None
    """Folder of a torchvision dataset (needed for those; the emitted code never downloads)."""
    num_classes: PositiveInt | None = None
    """Number of classes (null: the dataset's)."""
    padding: Literal["zero", "reflect"] = "zero"
    """How CIFAR, SVHN and STL-10 images are padded by 4 before the random crop."""
    flip: bool = True
    """Random horizontal flips in training (never for SVHN)."""


class TrainingSection(SpecModel):
    """How the generated `train.py` trains the blocks."""

    recipe: Recipe = "default"
    """A paper's CIFAR training settings by name (`man-cifar`, `infopro-cifar`, `dgl-cifar`,
    `auglocal-cifar`, `mlaan-cifar`; `default`: splitter's), under every key set here."""

    @model_validator(mode="before")
    @classmethod
    def _recipe(cls, data: object) -> object:
        if not isinstance(data, dict) or data.get("recipe", "default") not in RECIPES:
            return data
        return merged(RECIPES[str(data.get("recipe", "default"))], data)

    loss: str | None = None
    """Deprecated: write `task.loss` (this key is taken as it, with a note)."""
    optimizer: OptimizerConfig = OptimizerConfig()
    """The optimizer and its settings."""
    optimizer_scope: Literal["block", "global"] = "block"
    """`block`: each block steps right after its own backward; `global`: one step after all."""
    schedule: ScheduleConfig = ScheduleConfig()
    """The learning-rate schedule."""
    epochs: PositiveInt = 10
    """Passes over the training data."""
    batch_size: PositiveInt = 128
    """Samples per training step (also the batch of cost estimates)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Numeric precision: `fp32`, or autocast to `bf16` or `fp16`."""
    devices: list[Device] = Field(default=["auto"], min_length=1)
    """Devices the blocks are placed on: `auto` (cuda:0 when present, else cpu), `cpu`, `cuda`
    or `cuda:N`, e.g. `[cuda:0, cuda:1]`."""
    stages: PositiveInt | None = None
    """Pipeline stages of a multi-process run (null: the world size)."""
    data: DataConfig = DataConfig()
    """The training data."""
    seed: int = 0
    """Seed of every random generator."""


class OutputSection(SpecModel):
    """Where `splitter compile` writes the training package."""

    dir: str | None = None
    """Output folder (null: `build/<model name>`)."""


class SplitSpec(SpecModel):
    """A split spec: how to cut a model into gradient-isolated blocks and train them locally."""

    version: Literal[1]
    """Version of the spec format; only 1 exists."""
    model: ModelSection = ModelSection()
    """The model to split; optional when MODEL is on the command line."""
    trace: TraceSection = TraceSection()
    """How the model is traced."""
    task: TaskSection = TaskSection()
    """What the model's outputs train."""
    partition: PartitionSection
    """Where the model is cut: `cuts: [...]` or `auto: {blocks: K}`."""
    aux: AuxSection = AuxSection()
    """The auxiliary networks."""
    training: TrainingSection = TrainingSection()
    """How the blocks are trained."""
    output: OutputSection = OutputSection()
    """Where the training package is written."""

    @model_validator(mode="before")
    @classmethod
    def _loss_moved(cls, data: object) -> object:
        """`training.loss` taken as `task.loss` (where `task.loss` is not given)."""
        training = data.get("training") if isinstance(data, dict) else None
        if not isinstance(training, dict) or training.get("loss") is None:
            return data
        assert isinstance(data, dict)
        given = data.get("task")
        task: dict[str, Any] = given if isinstance(given, dict) else {}
        if "loss" in task and task["loss"] != training["loss"]:
            raise rule(
                f"`training.loss: {training['loss']}` and `task.loss: {task['loss']}` differ; "
                "keep `task.loss` (`training.loss` is its old name)",
                at="training.loss",
            )
        return {**data, "task": {**task, "loss": training["loss"]}}

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: object) -> object:
        """`aux.preset` expanded into `aux.default` (for the block count the spec gives)."""
        aux = data.get("aux") if isinstance(data, dict) else None
        if not isinstance(aux, dict) or aux.get("preset") not in get_args(Preset):
            return data
        assert isinstance(data, dict)
        return {**data, "aux": expanded(aux, data.get("partition"))}

    @field_validator("version", mode="before")
    @classmethod
    def _known_version(cls, value: object) -> object:
        if isinstance(value, str):
            raise rule(f'version `"{value}"` is text; write the number: `version: 1`')
        if type(value) is not int or value != 1:
            shown = json.dumps(value, default=str)
            raise rule(
                f"version `{shown}` is not supported: only version 1 of the split spec exists; "
                "write `version: 1`"
            )
        return value

    @model_validator(mode="after")
    def _sync_needs_global(self) -> Self:
        if self.partition.shared_params == "sync" and self.training.optimizer_scope != "global":
            raise rule(
                "`partition.shared_params: sync` needs `training.optimizer_scope: global` (the "
                "summed gradients of a shared parameter are applied in one global step); set "
                "`training.optimizer_scope: global`, or use `shared_params: replicate` or `owner`",
                at="partition.shared_params",
            )
        return self
