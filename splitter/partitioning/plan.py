"""From a split spec to checked cuts and blocks: the spec's meaning against the traced model."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch.fx as fx

from schemas import LoadedSpec, SplitSpec, show_size
from schemas.positions import locate
from splitter.analysis.cuts import CutPoint
from splitter.analysis.explain import explain_cut
from splitter.analysis.lambdas import for_cuts
from splitter.analysis.model import Analysis, analyze
from splitter.analysis.outputs import other_outputs, returned, unknown_keys
from splitter.errors import SpecError, SplitterError
from splitter.frontend.annotate import node_cost
from splitter.frontend.modelref import ModelOptions
from splitter.partitioning.partitioner import (
    Partition,
    Rules,
    partition_blocks,
    partition_budget,
    settings_from,
)
from splitter.transform.surgery import Surgery, split

Problem = tuple[tuple[str | int, ...], str]


@dataclass
class Plan:
    """A model analysed against a spec: its cuts and its blocks."""

    analysis: Analysis
    spec: LoadedSpec
    cuts: list[CutPoint]
    surgery: Surgery


def plan_for(analysis: Analysis, loaded: LoadedSpec) -> Plan:
    """Check a loaded spec against an analysed model and cut it into blocks."""
    cuts = check_spec(loaded, analysis)
    surgery = split(analysis.traced, cuts, loaded.spec.partition.shared_params)
    for other in other_outputs(analysis.traced.graph("train"), loaded.spec):
        if other.weight == 0 and not analysis.root:
            shown = ", ".join(f"`{p}`" for p in other.params[:3])
            more = f" and {len(other.params) - 3} more" if len(other.params) > 3 else ""
            analysis.model.warnings.append(
                f"output `{other.key}` is not trained (`task.aux_outputs: {{{other.key}: 0}}`): "
                f"its parameters {shown}{more} get no gradient; give it a weight to train it"
            )
    if analysis.before_root:
        shown = ", ".join(f"`{n}`" for n in analysis.before_root[:4])
        analysis.model.warnings.append(
            f"{shown} run before `model.root: {analysis.root}` and have parameters: local "
            "training gives them no gradient (`--mode e2e` does); choose a root that holds them"
        )
    if loaded.spec.training.loss is not None:
        analysis.model.warnings.append(
            f"`training.loss: {loaded.spec.training.loss}` is deprecated and was taken as "
            f"`task.loss`; write `task: {{loss: {loaded.spec.training.loss}}}` instead"
        )
    return Plan(analysis, loaded, cuts, surgery)


def with_cut_problems(
    error: SpecError, model: str | None, source: str, options: ModelOptions
) -> SpecError:
    """A spec the schema rejects may still name cuts: check them too, so that every problem
    is reported at once. Anything that stops the check leaves the schema's problems alone."""
    doc = error.document if isinstance(error.document, dict) else {}
    partition, section = doc.get("partition"), doc.get("model")
    cuts = partition.get("cuts") if isinstance(partition, dict) else None
    ref = model or (section.get("ref") if isinstance(section, dict) else None)
    root = section.get("root") if isinstance(section, dict) else None
    if not (isinstance(cuts, list) and all(isinstance(c, str) for c in cuts) and ref):
        return error
    try:
        analysis = analyze(str(ref), options, root=root if isinstance(root, str) else None)
    except SplitterError:
        return error
    extra = [
        f"{source}, line {line}, column {column}: {message}"
        for path, message in resolve_cuts(analysis, cuts)[1]
        for line, column in [locate(error.positions, path)]
    ]
    return SpecError(sorted([*error.problems, *extra], key=_place), error.document)


def _place(problem: str) -> tuple[int, int]:
    found = re.search(r", line (\d+), column (\d+): ", problem)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def check_spec(loaded: LoadedSpec, analysis: Analysis) -> list[CutPoint]:
    """Every problem of the spec against this model, reported together; the resolved cuts."""
    spec = loaded.spec
    problems: list[Problem] = []
    cuts: list[CutPoint] = []
    if spec.partition.auto is None:
        cuts, cut_problems = resolve_cuts(analysis, spec.partition.cuts or [])
        problems += cut_problems
    auto = spec.partition.auto
    blocks = (auto.blocks or 0) if auto is not None else len(spec.partition.cuts or []) + 1
    problems += _aux_problems(spec, blocks)
    problems += _output_problems(spec, analysis) + _aux_output_problems(spec, analysis)
    if not problems and auto is not None:
        found = _auto_partition(spec, analysis)
        cuts = found.cuts
        problems += _aux_problems(spec, len(cuts) + 1) if cuts else _one_block(spec, found)
    if not problems:
        problems += _loss_problems(spec, analysis, cuts)
    if problems:
        raise SpecError([loaded.problem(path, message) for path, message in problems])
    return cuts


def _auto_partition(spec: SplitSpec, analysis: Analysis) -> Partition:
    """`partition.auto`: the partitioner's split for the spec's auxiliaries and optimizer; its
    warnings go with the model's."""
    auto = spec.partition.auto
    assert auto is not None
    settings, rules = settings_from(spec, None, None), Rules.of(auto)
    if auto.blocks:
        found = partition_blocks(analysis, auto.blocks, settings, auto.balance, rules)
    else:
        assert auto.budget is not None
        found = partition_budget(analysis, auto.budget, settings, auto.balance, rules)
    analysis.model.warnings.extend(found.warnings)
    return found


def _one_block(spec: SplitSpec, found: Partition) -> list[Problem]:
    """`partition.auto` chose one block: end to end, nothing for local training."""
    budget = spec.partition.auto.budget if spec.partition.auto else None
    if budget is not None:
        why = (
            f"the model fits the budget of {show_size(budget)} unsplit (peak "
            f"{show_size(found.local_peak_bytes)}): train it end to end, or lower "
            "`partition.auto.budget` to split it"
        )
        return [(("partition", "auto", "budget"), why)]
    why = found.warnings[0] if found.warnings else "one block"
    return [(("partition", "auto"), f"{why}; there is nothing to compile for local training")]


def _loss_problems(spec: SplitSpec, analysis: Analysis, cuts: list[CutPoint]) -> list[Problem]:
    """A block whose InfoPro weights are both zero would have no local loss: it never trains."""
    problems: list[Problem] = []
    for k, weights in for_cuts(analysis, spec, cuts).items():
        if weights.zero:
            where = ("aux", "blocks", k) if k in spec.aux.blocks else ("aux", "default")
            problems.append(
                (
                    where,
                    f"block {k}'s infopro loss is identically zero (lambda1 = lambda2 = 0 there), "
                    f"so block {k} would never train; give it a nonzero weight, e.g. "
                    f"`aux: {{blocks: {{{k}: {{kind: infopro, lambda2: 1}}}}}}`",
                )
            )
    return problems


def _aux_problems(spec: SplitSpec, blocks: int) -> list[Problem]:
    problems: list[Problem] = []
    for index in spec.aux.blocks:
        if blocks and index == blocks - 1:
            problems.append(
                (
                    ("aux", "blocks", index),
                    f"block {index} is the last block, which trains on the task loss and has no "
                    "auxiliary; remove this entry",
                )
            )
        elif blocks and index >= blocks:
            problems.append(
                (
                    ("aux", "blocks", index),
                    f"there is no block {index}: the spec makes {blocks} blocks (0..{blocks - 1}); "
                    f"auxiliaries can be set for blocks 0..{blocks - 2}",
                )
            )
    return problems


def _output_problems(spec: SplitSpec, analysis: Analysis) -> list[Problem]:
    """`model.output` must select an element of what the model returns."""
    choice = spec.model.output
    if choice is None:
        return []
    nodes = list(analysis.traced.graph("train").graph.nodes)
    returned = nodes[-1].args[0]
    if isinstance(returned, dict):
        valid: list[object] = list(returned)
    elif isinstance(returned, (tuple, list)):
        valid = list(range(len(returned)))
    elif isinstance(returned, fx.Node) and node_cost(returned).shape is not None:
        valid = [0]
    else:
        return []  # a structure built at run time (e.g. a namedtuple): checked when training
    if choice in valid:
        return []
    shown = ", ".join(f"`{v}`" for v in valid)
    return [(("model", "output"), f"the model returns nothing at `{choice}`; use one of {shown}")]


def _aux_output_problems(spec: SplitSpec, analysis: Analysis) -> list[Problem]:
    """`task.aux_outputs` may weigh only outputs the model returns."""
    gm = analysis.traced.graph("train")
    keys = ", ".join(f"`{k}`" for k, _ in returned(gm.graph))
    return [
        (("task", "aux_outputs", key), f"the model returns nothing at `{key}`; use one of {keys}")
        for key in unknown_keys(gm, spec)
    ]


def resolve_cuts(analysis: Analysis, names: Sequence[str]) -> tuple[list[CutPoint], list[Problem]]:
    """Cut names to cut points, with a problem for each unknown, illegal, repeated or
    out-of-order name."""
    cuts: list[CutPoint] = []
    problems: list[Problem] = []
    seen: dict[int, str] = {}
    for i, name in enumerate(names):
        cut = analysis.cuts.find(name)
        message = explain_cut(analysis, name) if cut is None else _order_problem(cut, cuts, seen)
        if message:
            problems.append((("partition", "cuts", i), message))
        elif cut is not None:
            cuts.append(cut)
        if cut is not None:
            seen.setdefault(cut.index, name)
    return cuts, problems


def _order_problem(cut: CutPoint, cuts: list[CutPoint], seen: dict[int, str]) -> str | None:
    if cut.index in seen:
        return f"cut `{cut.name}` repeats `{seen[cut.index]}` (the same position); list each once"
    if cuts and cut.index < cuts[-1].index:
        return (
            f"cut `{cut.name}` comes before `{cuts[-1].name}` in the model; "
            "list the cuts in forward order"
        )
    return None
