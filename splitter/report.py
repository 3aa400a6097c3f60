"""The `inspect` report: a JSON-ready dict, and rich tables of it."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from splitter.analysis import Analysis
from splitter.annotate import NodeCost, node_cost
from splitter.cuts import units


def inspect_report(analysis: Analysis) -> dict[str, Any]:
    """The fields of `splitter inspect --format json` (issue 2)."""
    model, traced = analysis.model, analysis.traced
    gm = traced.graph("train")
    costs = [node_cost(n) for n in gm.graph.nodes]
    return {
        "model": model.ref,
        "batch_size": model.batch_size,
        "precision": model.precision,
        "input_shape": [model.batch_size, *model.input.shape],
        "input_dtype": str(model.input.dtype).removeprefix("torch."),
        "nodes": len(gm.graph.nodes),
        "parameters": sum(p.numel() for p in model.module.parameters()),
        "total_activation_bytes": analysis.total_activation_bytes,
        "leafed": [{"fqn": x.fqn, "kind": x.kind, "reason": x.reason} for x in traced.leafed],
        "measured_nodes": [n.name for n in gm.graph.nodes if node_cost(n).measured],
        "mode_differences": {
            "train_only": list(analysis.cuts.train_only),
            "eval_only": list(analysis.cuts.eval_only),
        },
        "cut_points": _cut_rows(analysis, costs),
        "units": [u.__dict__ for u in units(gm, analysis.cuts.cuts)],
        "blocks": [_whole_model_block(gm.graph.nodes, costs)],
        "warnings": list(model.warnings),
    }


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


def _whole_model_block(nodes: Any, costs: list[NodeCost]) -> dict[str, Any]:
    output = next(n for n in reversed(nodes) if n.op == "output")
    value = output.args[0]
    out_shape = node_cost(value).shape if hasattr(value, "meta") else None
    return {
        "index": 0,
        "start": "input",
        "end": "output",
        "params": sum(c.params for c in costs),
        "param_bytes": sum(c.param_bytes for c in costs),
        "activation_bytes": sum(c.saved_bytes for c in costs),
        "flops": sum(c.flops for c in costs),
        "out_shape": list(out_shape) if out_shape else None,
    }


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def render(report: dict[str, Any], console: Console) -> None:
    """Cut points, units and a summary as rich tables."""
    cuts = Table(title=f"Legal cut points of {report['model']}", title_justify="left")
    for col, justify in [
        ("#", "right"),
        ("cut", "left"),
        ("shape", "left"),
        ("act. before MiB", "right"),
        ("params before", "right"),
        ("GFLOPs before", "right"),
        ("aliases", "left"),
    ]:
        cuts.add_column(col, justify=justify)  # type: ignore[arg-type]
    for i, row in enumerate(report["cut_points"]):
        cuts.add_row(
            str(i),
            row["name"],
            "x".join(map(str, row["shape"] or [])),
            mib(row["activation_bytes_before"]),
            f"{row['params_before']:,}",
            f"{row['flops_before'] / 1e9:,.2f}",
            ", ".join(row["aliases"]),
        )
    console.print(cuts)
    unit_table = Table(title="Units", title_justify="left")
    for col in ("#", "start", "end", "params"):
        unit_table.add_column(col)
    for u in report["units"]:
        unit_table.add_row(str(u["index"]), u["start"], u["end"], f"{u['params']:,}")
    console.print(unit_table)
    console.print(_summary(report))


def _summary(report: dict[str, Any]) -> Table:
    table = Table(title="Summary", title_justify="left", show_header=False)
    block, cuts = report["blocks"][0], report["cut_points"]
    diffs = report["mode_differences"]
    rows = [
        ("model", report["model"]),
        ("input", f"{'x'.join(map(str, report['input_shape']))} {report['input_dtype']}"),
        ("precision", report["precision"]),
        ("graph nodes (train)", str(report["nodes"])),
        ("parameters", f"{report['parameters']:,}"),
        ("saved activations", f"{mib(report['total_activation_bytes'])} MiB"),
        ("forward GFLOPs", f"{block['flops'] / 1e9:,.2f}"),
        ("legal cuts", f"{len(cuts)} (at most {len(cuts) + 1} blocks)"),
        ("units", str(len(report["units"]))),
    ]
    rows += [(f"leafed {x['kind']}", f"{x['fqn']}: {x['reason']}") for x in report["leafed"]]
    if report["measured_nodes"]:
        rows.append(("costs measured on real tensors", ", ".join(report["measured_nodes"])))
    if diffs["train_only"] or diffs["eval_only"]:
        rows.append(("cuts legal in train mode only", ", ".join(diffs["train_only"]) or "-"))
        rows.append(("cuts legal in eval mode only", ", ".join(diffs["eval_only"]) or "-"))
    table.add_column("key")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, value)
    return table
