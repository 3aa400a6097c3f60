"""The `inspect` report: a JSON-ready dict, and rich tables of it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from schemas import mib
from splitter.analysis.costs import BlockCost
from splitter.analysis.cuts import few_cuts, units
from splitter.analysis.lambdas import for_cuts
from splitter.analysis.model import Analysis
from splitter.frontend.annotate import NodeCost, node_cost, output_shape
from splitter.partitioning.partitioner import Partition, evaluate, settings_from
from splitter.partitioning.plan import Plan
from splitter.transform.verify import Verification


def inspect_report(analysis: Analysis, plan: Plan | None = None) -> dict[str, Any]:
    """The fields of `splitter inspect --format json`; with a plan, its real blocks."""
    model, traced = analysis.model, analysis.traced
    gm = traced.graph("train")
    costs = [node_cost(n) for n in gm.graph.nodes]
    block_ends = [c.name for c in plan.cuts] if plan else []
    priced = plan_partition(plan) if plan else None
    return {
        "model": model.ref,
        "root": analysis.root,
        "batch_size": model.batch_size,
        "precision": model.precision,
        "inputs": [
            {"shape": [model.batch_size, *i.shape], "dtype": str(i.dtype).removeprefix("torch.")}
            for i in analysis.target_inputs
        ],
        "nodes": len(gm.graph.nodes),
        "parameters": sum(p.numel() for p in analysis.target.parameters()),
        "total_activation_bytes": analysis.total_activation_bytes,
        "leafed": [{"fqn": x.fqn, "kind": x.kind, "reason": x.reason} for x in traced.leafed],
        "measured_nodes": [n.name for n in gm.graph.nodes if node_cost(n).measured],
        "mode_differences": {
            "train_only": list(analysis.cuts.train_only),
            "eval_only": list(analysis.cuts.eval_only),
        },
        "cut_points": _cut_rows(analysis, costs),
        "units": [u.__dict__ for u in units(gm, analysis.cuts.cuts, block_ends)],
        "blocks": _block_rows(gm, costs, plan, priced),
        "warnings": [*model.warnings, *few_cuts(analysis.cuts.cuts)],
        **(cost_fields(priced) if priced else {}),
    }


def _block_rows(
    gm: Any, costs: list[NodeCost], plan: Plan | None, priced: Partition | None
) -> list[dict[str, Any]]:
    nodes = list(gm.graph.nodes)
    cuts = plan.cuts if plan else []
    bounds = [-1, *(c.index for c in cuts), len(nodes) - 1]
    names = ["input", *(c.name for c in cuts), "output"]
    variable = [b.variable_bytes for b in priced.blocks] if priced else []
    weights = for_cuts(plan.analysis, plan.spec.spec, plan.cuts) if plan else {}
    rows = []
    for k in range(len(bounds) - 1):
        span = costs[bounds[k] + 1 : bounds[k + 1] + 1]
        out_shape = cuts[k].shape if k < len(cuts) else output_shape(gm.graph)
        row = {
            "index": k,
            "start": names[k],
            "end": names[k + 1],
            "params": sum(c.params for c in span),
            "param_bytes": sum(c.param_bytes for c in span),
            "activation_bytes": sum(c.saved_bytes for c in span),
            "flops": sum(c.flops for c in span),
            "out_shape": list(out_shape) if out_shape else None,
        }
        if plan:
            row["variable_bytes"] = variable[k]
            row["params"] = sum(p.numel() for p in plan.surgery.blocks[k].parameters())
            row["param_bytes"] = sum(
                p.numel() * p.element_size() for p in plan.surgery.blocks[k].parameters()
            )
            row["aux"] = aux_kind(plan, k)
            if k in weights:  # InfoPro's, as its schedule resolved them
                pair = weights[k].lambda1, weights[k].lambda2
                row["loss_weights"] = list(pair)
                row["aux"] = f"{row['aux']} ({pair[0]:.3g}, {pair[1]:.3g})"
        rows.append(row)
    return rows


def plan_partition(plan: Plan) -> Partition:
    """The costs of the plan's blocks, as the partitioner prices them."""
    settings = settings_from(plan.spec.spec, None, None)
    return evaluate(plan.analysis, plan.cuts, settings)


def aux_kind(plan: Plan, index: int) -> str:
    """The auxiliary kind of block `index`; the last block trains on the task loss."""
    if index == len(plan.cuts):
        return "task loss"
    return plan.spec.spec.aux.of(index).kind


def _cut_rows(analysis: Analysis, costs: list[NodeCost]) -> list[dict[str, Any]]:
    rows = []
    for cut in analysis.cuts.cuts:
        before = costs[: cut.index + 1]
        rows.append(
            {
                "name": cut.name,
                "aliases": list(cut.aliases),
                "node": cut.node,
                "shape": list(cut.shape) if cut.shape else None,
                "activation_bytes_before": sum(c.saved_bytes for c in before),
                "params_before": sum(c.params for c in before),
                "flops_before": sum(c.flops for c in before),
            }
        )
    return rows


def table(
    title: str,
    columns: list[str],
    rows: list[list[str]],
    width: int | None = None,
    drop: Sequence[str] = (),
    wrap: Sequence[str] = (),
) -> Table:
    """A rich table; columns whose name starts with `>` are right-aligned. When it is wider
    than `width`, the columns named in `drop` are hidden in their order, those in `wrap` wrap
    between words, then the outer border goes; every other cell stays whole (names are copied
    from it), folded onto a second line only when even that does not fit."""
    names = [col.lstrip(">") for col in columns]
    keep, widths, edge = _fit(names, rows, width, drop, wrap)
    hidden = [name for k, name in enumerate(names) if k not in keep]
    note = f"{', '.join(hidden)} hidden to fit {width} columns (--wide shows them)"
    out = Table(title=escape(title), title_justify="left", show_edge=edge, pad_edge=edge)
    out.caption, out.caption_justify = (escape(note) if hidden else None), "left"
    for k, size in zip(keep, widths, strict=True):
        right = columns[k].startswith(">")
        out.add_column(names[k], justify="right" if right else "left", width=size, overflow="fold")
    for row in rows:
        out.add_row(*(escape(row[k]) for k in keep))
    return out


def _span(widths: Sequence[int], edge: bool = True) -> int:
    """A table's width: its cells, a space each side of them and the borders between them."""
    return sum(widths) + 3 * len(widths) + (1 if edge else -3)


def _fit(
    names: list[str],
    rows: list[list[str]],
    width: int | None,
    drop: Sequence[str],
    wrap: Sequence[str],
) -> tuple[list[int], list[int | None], bool]:
    """The columns to show, their widths (None: rich's own) and whether the outer border shows,
    to fit in `width` characters."""
    cells = [[row[k] for row in rows] for k in range(len(names))]
    natural = [
        max(map(cell_len, [name, *column])) for name, column in zip(names, cells, strict=True)
    ]
    if width is None or _span(natural) <= width:
        return list(range(len(names))), [None] * len(names), True
    least = []
    for name, column in zip(names, cells, strict=True):
        words = [word for cell in column for word in cell.split()] if name in wrap else column
        least.append(max(map(cell_len, [*name.split(), *words])))
    keep = list(range(len(names)))
    for name in drop:
        if _span([least[k] for k in keep]) <= width:
            break
        keep.remove(names.index(name))
    edge = _span([least[k] for k in keep]) <= width
    spare = width - _span([least[k] for k in keep], edge)
    widths: list[int | None] = []
    for k in keep:
        grow = max(0, min(spare, natural[k] - least[k]))
        widths.append(least[k] + grow)
        spare -= grow
    return keep, widths, edge


def render(report: dict[str, Any], console: Console) -> None:
    """Cut points, units, blocks and a summary as rich tables."""
    cut_rows = [
        [
            str(i),
            row["name"],
            "x".join(map(str, row["shape"] or [])),
            mib(row["activation_bytes_before"]),
            f"{row['params_before']:,}",
            f"{row['flops_before'] / 1e9:,.2f}",
            ", ".join(row["aliases"]),
        ]
        for i, row in enumerate(report["cut_points"])
    ]
    columns = [">#", "cut", "shape", ">act. before MiB", ">params before", ">GFLOPs before"]
    title = f"Legal cut points of {report['model']}"
    hide = ["GFLOPs before", "params before", "aliases", "act. before MiB", "shape"]
    width = console.width
    cuts = table(title, [*columns, "aliases"], cut_rows, width, hide, wrap=["aliases"])
    console.print(cuts)
    unit_rows = [
        [str(u["index"]), u["start"], u["end"], f"{u['params']:,}"] for u in report["units"]
    ]
    console.print(table("Units", [">#", "start", "end", ">params"], unit_rows, width, ["params"]))
    block_rows = [
        [
            str(b["index"]),
            b["start"],
            b["end"],
            f"{b['params']:,}",
            mib(b["activation_bytes"]),
            f"{b['flops'] / 1e9:,.2f}",
            "x".join(map(str, b["out_shape"] or [])),
            b.get("aux", "-"),
        ]
        for b in report["blocks"]
    ]
    block_columns = [">#", "start", "end", ">params", ">act. MiB", ">GFLOPs", "out", "aux"]
    hide = ["GFLOPs", "out", "act. MiB", "params", "aux"]
    console.print(table("Blocks", block_columns, block_rows, width, hide))
    console.print(_summary(report, width))


def _summary(report: dict[str, Any], width: int) -> Table:
    cuts, diffs = report["cut_points"], report["mode_differences"]
    flops = sum(b["flops"] for b in report["blocks"])
    inputs = report["inputs"]
    rows = [
        ["model", report["model"] + (f" (root `{report['root']}`)" if report["root"] else "")],
        ["input", " + ".join(f"{'x'.join(map(str, i['shape']))} {i['dtype']}" for i in inputs)],
        ["precision", report["precision"]],
        ["graph nodes (train)", str(report["nodes"])],
        ["parameters", f"{report['parameters']:,}"],
        ["saved activations", f"{mib(report['total_activation_bytes'])} MiB"],
        ["forward GFLOPs", f"{flops / 1e9:,.2f}"],
        ["legal cuts", f"{len(cuts)} (at most {len(cuts) + 1} blocks)"],
        ["units", str(len(report["units"]))],
    ]
    rows += [[f"leafed {x['kind']}", f"{x['fqn']}: {x['reason']}"] for x in report["leafed"]]
    if report["measured_nodes"]:
        rows.append(["costs measured on real tensors", ", ".join(report["measured_nodes"])])
    if diffs["train_only"] or diffs["eval_only"]:
        rows.append(["cuts legal in train mode only", ", ".join(diffs["train_only"]) or "-"])
        rows.append(["cuts legal in eval mode only", ", ".join(diffs["eval_only"]) or "-"])
    return table("Summary", ["key", "value"], rows, width, wrap=["value"])


def verification_report(plan: Plan, result: Verification) -> dict[str, Any]:
    """The fields of `splitter verify --format json`."""
    return {
        "model": plan.analysis.model.ref,
        "root": plan.analysis.root,
        "spec": plan.spec.source,
        "ok": result.ok,
        "blocks": [{**b.__dict__, "problems": list(b.problems), "ok": b.ok} for b in result.blocks],
        "output_equal_eval": result.output_equal_eval,
        "output_rel_diff_train": result.output_rel_diff_train,
        "model_output_equal_eval": result.model_output_equal_eval,
        "untrained": result.untrained,
        "multiply_trained": result.multiply_trained,
        "shared_params": [s.__dict__ for s in plan.surgery.shared],
        "warnings": list(plan.analysis.model.warnings),
    }


def render_verification(report: dict[str, Any], console: Console) -> None:
    """Per-block checks and the verdict."""
    yes = {True: "yes", False: "NO", None: "-"}
    rows = [
        [
            str(b["index"]),
            b["start"],
            b["end"],
            f"{b['params']:,}",
            yes[b["eval_equal"]],
            f"{b['train_rel_diff']:.1e}",
            yes[b["isolated"] and b["input_grad_free"]],
            str(b["trained"]),
            "; ".join(b["problems"]) or "ok",
        ]
        for b in report["blocks"]
    ]
    columns = [">#", "start", "end", ">params", "eval ==", ">train rel. diff", "isolated"]
    columns += [">trained params", "verdict"]
    hide = ["trained params", "train rel. diff", "params", "eval ==", "isolated"]
    title = f"verify {report['model']} with {report['spec']}"
    console.print(table(title, columns, rows, console.width, hide, wrap=["verdict"]))
    lines = [
        f"chained output == original (eval): {yes[report['output_equal_eval']]}",
        f"chained output vs original (train, same seed): {report['output_rel_diff_train']:.1e}",
    ]
    if report["root"]:
        lines.append(
            f"whole model with root `{report['root']}` split == original (eval): "
            f"{yes[report['model_output_equal_eval']]}"
        )
    lines += [
        f"block {b['index']}'s local loss trains blocks {b['index'] - b['window'] + 1}.."
        f"{b['index']} (its declared window)"
        for b in report["blocks"]
        if b["window"] > 1
    ]
    lines += [f"not trained by any block: {n}" for n in report["untrained"]]
    lines += [f"trained by more than one block: {n}" for n in report["multiply_trained"]]
    lines.append("all checks passed" if report["ok"] else "verification FAILED")
    for line in lines:
        console.print(line, highlight=False, markup=False)


def _block_cost_row(index: int, names: list[str], block: BlockCost) -> dict[str, Any]:
    return {
        "index": index,
        "start": names[index],
        "end": names[index + 1],
        "variable_bytes": block.variable_bytes,
        "activation_bytes": block.activation_bytes,
        "aux_activation_bytes": block.aux_activation_bytes,
        "grad_bytes": block.grad_bytes,
        "param_bytes": block.param_bytes,
        "params": block.params,
        "flops": block.flops,
        "units": block.units,
    }


def cost_fields(part: Partition) -> dict[str, Any]:
    """The partitioner's totals: `fixed_bytes`, `local_peak_bytes`, `e2e_peak_bytes`."""
    return {
        "fixed_bytes": part.fixed_bytes,
        "local_peak_bytes": part.local_peak_bytes,
        "e2e_peak_bytes": part.e2e_peak_bytes,
        "saving": part.saving,
    }


def partition_report(part: Partition, text: str, written: str | None) -> dict[str, Any]:
    """The fields of `splitter partition --format json`."""
    names = ["input", *(c.name for c in part.cuts), "output"]
    settings = part.settings
    return {
        "model": part.analysis.model.ref,
        "root": part.analysis.root,
        "batch_size": part.analysis.model.batch_size,
        "precision": part.analysis.model.precision,
        "balance": part.balance,
        "aux": settings.aux.default.kind,
        "optimizer": settings.optimizer.name,
        "optimizer_scope": settings.scope,
        "cuts": [c.name for c in part.cuts],
        "blocks": [_block_cost_row(k, names, b) for k, b in enumerate(part.blocks)],
        **cost_fields(part),
        "spec_yaml": text,
        "written": written,
        "warnings": list(part.analysis.model.warnings),
    }


def render_partition(report: dict[str, Any], console: Console) -> None:
    """Each block's cost, then the e2e peak, the local peak and the saving."""
    rows = [
        [
            str(b["index"]),
            b["start"],
            b["end"],
            mib(b["variable_bytes"]),
            mib(b["activation_bytes"]),
            mib(b["aux_activation_bytes"]),
            mib(b["grad_bytes"]),
            f"{b['params']:,}",
            f"{b['flops'] / 1e9:,.2f}",
        ]
        for b in report["blocks"]
    ]
    columns = [">#", "start", "end", ">variable MiB", ">activations", ">auxiliary"]
    columns += [">gradients", ">params", ">GFLOPs"]
    hide = ["GFLOPs", "params", "gradients", "auxiliary", "activations"]
    title = (
        f"partition of {report['model']}: {len(report['blocks'])} blocks by "
        f"{report['balance']} (aux {report['aux']}, {report['optimizer']})"
    )
    console.print(table(title, columns, rows, console.width, hide))
    for label, key in [
        ("fixed part", "fixed_bytes"),
        ("e2e peak", "e2e_peak_bytes"),
        ("local peak", "local_peak_bytes"),
    ]:
        console.print(f"{label}: {mib(report[key])} MiB", highlight=False, markup=False)
    console.print(f"saving: {report['saving']:.1%}", highlight=False, markup=False)
    if report["written"]:
        console.print(f"spec written to {report['written']}", highlight=False, markup=False)
