"""From a split spec to checked cuts and blocks: the spec's meaning against the traced model."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch.fx as fx

from schemas import LoadedSpec, SplitSpec, load_spec
from schemas.positions import locate
from splitter.analysis import Analysis, analyze
from splitter.annotate import node_cost
from splitter.cuts import CutPoint, data_graph, modules_finishing, node_paths
from splitter.errors import SpecError, SplitterError, UsageError
from splitter.modelref import ModelOptions, merge_options, split_file_ref
from splitter.surgery import Surgery, split

Problem = tuple[tuple[str | int, ...], str]


@dataclass
class Plan:
    """A model analysed against a spec: its cuts and its blocks."""

    analysis: Analysis
    spec: LoadedSpec
    cuts: list[CutPoint]
    surgery: Surgery


def load_plan(model: str | None, spec_path: str, options: ModelOptions) -> Plan:
    """Load the spec, analyse the model it names (command line first), check the spec's
    cuts and auxiliaries against the model, and cut it into blocks."""
    try:
        loaded = load_spec(spec_path)
    except SpecError as error:
        raise _with_cut_problems(error, model, spec_path, options) from None
    ref = model or spec_model_ref(spec_path, loaded)
    merged, notes = merge_options(options, loaded.spec)
    analysis = analyze(
        ref, merged, root=loaded.spec.model.root, auto_leaf=loaded.spec.trace.auto_leaf
    )
    analysis.model.warnings.extend(notes)
    return plan_for(analysis, loaded)


def plan_for(analysis: Analysis, loaded: LoadedSpec) -> Plan:
    """Check a loaded spec against an analysed model and cut it into blocks."""
    cuts = check_spec(loaded, analysis)
    surgery = split(analysis.traced, cuts, loaded.spec.partition.shared_params)
    return Plan(analysis, loaded, cuts, surgery)


def spec_model_ref(spec_path: str, loaded: LoadedSpec | None = None) -> str:
    """The spec's `model.ref` (a file found beside the spec when not in the working folder)."""
    loaded = loaded or load_spec(spec_path)
    ref = _relative_to(spec_path, loaded.spec.model.ref)
    if not ref:
        raise UsageError(
            f"no MODEL given and `{spec_path}` has no `model.ref`; pass MODEL "
            "(e.g. `examples/resnet_cifar/model.py`) or set `model.ref` in the spec"
        )
    return ref


def _with_cut_problems(
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


def _relative_to(spec_path: str, ref: str | None) -> str | None:
    """A model file in `model.ref` is found from the working folder, else from the spec's."""
    if not ref or ref.startswith(("torchvision:", "timm:")):
        return ref
    path, attr = split_file_ref(ref)
    beside = Path(spec_path).parent / path
    if Path(path).exists() or not beside.exists():
        return ref
    return str(beside) if attr == "build_model" else f"{beside}:{attr}"


def check_spec(loaded: LoadedSpec, analysis: Analysis) -> list[CutPoint]:
    """Every problem of the spec against this model, reported together; the resolved cuts."""
    spec = loaded.spec
    problems: list[Problem] = []
    cuts: list[CutPoint] = []
    legal = len(analysis.cuts.cuts)
    if spec.partition.auto is not None:
        problems += _auto_problems(spec, legal)
    else:
        cuts, cut_problems = resolve_cuts(analysis, spec.partition.cuts or [])
        problems += cut_problems
    auto = spec.partition.auto
    blocks = (auto.blocks or 0) if auto is not None else len(spec.partition.cuts or []) + 1
    problems += _aux_problems(spec, blocks)
    problems += _output_problems(spec, analysis)
    if not problems and auto is not None:
        cuts = _auto_cuts(spec, analysis)
        problems += _aux_problems(spec, len(cuts) + 1)
    if problems:
        raise SpecError([loaded.problem(path, message) for path, message in problems])
    return cuts


def _auto_cuts(spec: SplitSpec, analysis: Analysis) -> list[CutPoint]:
    """`partition.auto`: the partitioner's cuts for the spec's auxiliaries and optimizer."""
    from splitter.partitioner import partition_blocks, partition_budget, settings_from

    auto = spec.partition.auto
    assert auto is not None
    settings = settings_from(spec, None, None)
    if auto.blocks:
        return partition_blocks(analysis, auto.blocks, settings, auto.balance).cuts
    assert auto.budget is not None
    return partition_budget(analysis, auto.budget, settings, auto.balance).cuts


def _auto_problems(spec: SplitSpec, legal: int) -> list[Problem]:
    auto = spec.partition.auto
    if auto is None or not auto.blocks or auto.blocks <= legal + 1:
        return []
    return [
        (
            ("partition", "auto", "blocks"),
            f"{auto.blocks} blocks need {auto.blocks - 1} cuts but the model has {legal} legal "
            f"cuts; use at most {legal + 1} blocks",
        )
    ]


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


def explain_cut(analysis: Analysis, name: str) -> str:
    """Why `name` is not a legal cut: unknown (with the closest names), or which tensors
    cross it and the nearest legal cuts before and after."""
    gm = analysis.traced.graph("train")
    position = _position(gm, name)
    if position is None:
        modules = (m for m, _ in analysis.target.named_modules() if m)
        known = list(dict.fromkeys([*analysis.cuts.lookup, *modules]))
        close = difflib.get_close_matches(name, known, n=3)
        hint = (
            f"the closest names are {', '.join(f'`{c}`' for c in close)}"
            if close
            else ("`splitter inspect MODEL` lists the legal cuts")
        )
        return f"cut `{name}` names no module or operation of the model; {hint}"
    crossing = _crossing(gm, position, analysis)
    before = [c.name for c in analysis.cuts.cuts if c.index < position]
    after = [c.name for c in analysis.cuts.cuts if c.index > position]
    nearest = " and ".join(f"`{n}`" for n in (before[-1:] + after[:1])) or "none"
    if not crossing:
        return (
            f"cut `{name}` is not a legal cut (no single tensor flows through it, or it "
            f"is the model's input or output); the nearest legal cuts are {nearest}"
        )
    return (
        f"cut `{name}` is not a legal cut: {len(crossing)} tensors cross it, the outputs of "
        f"{' and '.join(crossing)}; the nearest legal cuts are {nearest}"
    )


def _position(gm: fx.GraphModule, name: str) -> int | None:
    nodes = list(gm.graph.nodes)
    finishing = modules_finishing(gm.graph)
    paths = node_paths(gm.graph)
    for i, node in enumerate(nodes):
        if name in finishing.get(node, ()) or paths[node] == name or node.name == name:
            return i
    return None


def _crossing(gm: fx.GraphModule, position: int, analysis: Analysis) -> list[str]:
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    paths = node_paths(gm.graph)
    by_node = {c.node: c.name for c in analysis.cuts.cuts}
    data = set(data_graph(gm.graph).nodes)
    crossing = []
    for node in nodes[: position + 1]:
        if node not in data or not any(order[u] > position for u in node.users):
            continue
        label = by_node.get(node.name, paths[node])
        crossing.append("the model's input" if node.op == "placeholder" else f"`{label}`")
    return crossing
