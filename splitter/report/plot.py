"""Draw a `Picture` with matplotlib: the block graph top to bottom, and beside it each block's
local-training memory against the end-to-end peak. Writes `.svg`, `.png` or a self-contained
`.html` page (the SVG inline, a table of the blocks, no network)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas import mib
from splitter.errors import ArgumentError
from splitter.files import write_atomically
from splitter.report.page import count, page
from splitter.report.picture import Picture, Row

FORMATS = (".svg", ".png", ".html")
PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#9D755D")
TIMES = "\u00d7"  # the multiplication sign
GREY, INK, E2E = "#9A9A9A", "#222222", "#C0392B"
ROW_INCHES, WIDTH_INCHES, DPI = 0.5, 13.0, 110
# Columns of the graph panel, in its data units (0..12).
BLOCK_X, BOX_X0, BOX_X1, CUT_X, AUX_X0, AUX_X1 = 0.1, 2.7, 6.3, 6.45, 8.7, 11.95


def check_plot_path(path: str, force: bool) -> Path:
    """The plot file to write: a known suffix, and no existing file without `--force`."""
    target = Path(path)
    if target.suffix.lower() not in FORMATS:
        raise ArgumentError(f"{{plot}} `{path}`: name a .svg, .png or .html file", "plot")
    if target.is_dir():
        raise ArgumentError(
            f"{{plot}} `{path}` is a folder; name a .svg, .png or .html file", "plot"
        )
    if target.exists() and not force:
        raise ArgumentError(
            f"{{plot}} `{path}` exists; pass {{force}} to overwrite it", "plot", "force"
        )
    return target


def save(pic: Picture, path: Path) -> None:
    """Draw `pic` into `path` (its suffix picks the format), atomically."""
    write_figure(path, lambda: draw(pic), lambda svg: page(pic, svg))


def svg_text(pic: Picture) -> str:
    """The picture as an SVG document whose labels are text, not paths."""
    return figure_data(lambda: draw(pic), "svg").decode()


def write_figure(path: Path, make: Callable[[], Any], html: Callable[[str], str]) -> None:
    """Write the Figure `make()` draws into `path`, atomically: `.svg`, `.png`, or `.html`
    (`html` turns the SVG text into the page)."""
    suffix = path.suffix.lower()
    if suffix == ".html":
        data = html(figure_data(make, "svg").decode()).encode()
    else:
        data = figure_data(make, suffix[1:])
    write_atomically(path, data)


def figure_data(make: Callable[[], Any], fmt: str) -> bytes:
    """The Figure `make()` draws, saved as `fmt`. In SVG text stays text (searchable,
    selectable), and fixed ids and no date make the file reproducible."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context(
        {"svg.fonttype": "none", "svg.hashsalt": "splitter", "text.parse_math": False}
    ):
        figure = make()
        metadata = {"Date": None} if fmt == "svg" else {}
        figure.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
    return buffer.getvalue()


def draw(pic: Picture) -> Any:
    """The matplotlib Figure of `pic` (no pyplot state is touched)."""
    from matplotlib.figure import Figure

    n = len(pic.rows)
    top, bottom = 0.85, 0.6
    height = n * ROW_INCHES + top + bottom
    figure = Figure(figsize=(WIDTH_INCHES, height))
    frame = (bottom / height, n * ROW_INCHES / height)
    graph = figure.add_axes((0.005, frame[0], 0.68, frame[1]))
    bars = figure.add_axes((0.71, frame[0], 0.27, frame[1]))
    for axes in (graph, bars):
        axes.set_ylim(n, 0)
    graph.set_xlim(0, 12)
    graph.axis("off")
    _draw_blocks(graph, pic)
    _draw_rows(graph, pic)
    _draw_auxiliaries(graph, pic)
    if pic.blocks:
        _draw_block_memory(bars, pic)
    else:
        _draw_row_memory(bars, pic)
    split = f"{len(pic.blocks)} blocks" if pic.blocks else "not split"
    units = sum(r.units * r.count for r in pic.rows)
    figure.text(0.005, 1 - 0.3 / height, f"{pic.title}: {split}", fontsize=12, weight="bold")
    figure.text(
        0.005,
        1 - 0.55 / height,
        f"{units} units in {n} rows (runs of alike units folded); batch {pic.batch_size}; "
        "ticks mark legal cuts, arcs skip connections",
        fontsize=8,
        color=GREY,
    )
    return figure


def _arrow(
    graph: Any, start: tuple[float, float], end: tuple[float, float], color: str, **style: Any
) -> None:
    from matplotlib.patches import FancyArrowPatch

    style = {"lw": 0.8, **style}
    graph.add_patch(
        FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=6, color=color, **style)
    )


def _box(
    graph: Any,
    corner: tuple[float, float],
    size: tuple[float, float],
    edge: str,
    face: str = "white",
    alpha: float = 1.0,
) -> None:
    from matplotlib.patches import FancyBboxPatch

    style = "round,pad=0,rounding_size=0.1"
    box = FancyBboxPatch(corner, *size, boxstyle=style, facecolor=face, edgecolor=edge, alpha=alpha)
    graph.add_patch(box)


def colour(block: int) -> str:
    return PALETTE[block % len(PALETTE)]


def _draw_blocks(graph: Any, pic: Picture) -> None:
    from matplotlib.patches import Rectangle

    for block in pic.blocks:
        tint = colour(block.index)
        graph.add_patch(
            Rectangle((0, block.first_row), AUX_X0 - 0.15, block.rows, color=tint, alpha=0.1, lw=0)
        )
        graph.text(
            BLOCK_X,
            block.first_row + 0.12,
            f"block {block.index}",
            color=tint,
            fontsize=9,
            weight="bold",
            va="top",
        )
        graph.text(
            BLOCK_X,
            block.first_row + 0.48,
            f"{count(block.params)} params\n{mib(block.variable_bytes)} MiB variable",
            color=INK,
            fontsize=7,
            va="top",
            linespacing=1.2,
        )


def _draw_rows(graph: Any, pic: Picture) -> None:
    chosen = set(pic.cuts)
    middle = (BOX_X0 + BOX_X1) / 2
    for i, row in enumerate(pic.rows):
        edge = colour(row.block) if pic.blocks else GREY
        _box(graph, (BOX_X0, i + 0.12), (BOX_X1 - BOX_X0, 0.76), edge)
        times = f"  {TIMES}{row.count}" if row.count > 1 else ""
        label = _short(_row_label(row, 42 - len(times)), 42 - len(times)) + times
        graph.text(
            middle,
            i + 0.38,
            label,
            ha="center",
            va="center",
            fontsize=7.5,
            weight="bold",
            color=INK,
        )
        graph.text(
            middle, i + 0.66, _details(row), ha="center", va="center", fontsize=6.5, color="#555555"
        )
        if row.skips:
            _arrow(
                graph,
                (BOX_X0, i + 0.22),
                (BOX_X0, i + 0.78),
                edge,
                connectionstyle="arc3,rad=0.7",
                lw=0.9,
            )
            graph.text(
                BOX_X0 - 0.32,
                i + 0.5,
                _skip_text(row),
                ha="right",
                va="center",
                fontsize=6.5,
                color=edge,
            )
        if i + 1 < len(pic.rows):
            _arrow(graph, (middle, i + 0.88), (middle, i + 1.12), GREY, lw=0.8)
        if row.end_cut is None:
            continue
        if row.end_cut in chosen:
            graph.plot([0, AUX_X0 - 0.15], [i + 1, i + 1], color=INK, lw=1.6)
            graph.text(
                CUT_X,
                i + 1,
                cut_label(row.end_cut, chosen=True),
                va="center",
                fontsize=7,
                weight="bold",
                color=INK,
                bbox={"fc": "white", "ec": INK, "lw": 0.6, "boxstyle": "round,pad=0.15"},
            )
        else:
            graph.plot([BOX_X1, BOX_X1 + 0.12], [i + 1, i + 1], color=GREY, lw=0.8)
            graph.text(CUT_X, i + 1, cut_label(row.end_cut), va="center", fontsize=6.5, color=GREY)


def cut_label(name: str, chosen: bool = False) -> str:
    """How a legal cut is labelled: `cut NAME` when the split cuts there."""
    return f"cut {_short(name, 32)}" if chosen else _short(name, 34)


def _row_label(row: Row, most: int) -> str:
    """`first … last`, shortened to `layer3.1 … 17` when that is too long."""
    if row.count == 1 or len(row.label) <= most:
        return row.label
    pairs = enumerate(zip(row.first, row.last, strict=False))
    same = next((i for i, (a, b) in pairs if a != b), min(len(row.first), len(row.last)))
    stem = row.first[:same].rstrip("0123456789")
    return f"{row.first} … {row.last[len(stem) :]}"


def _details(row: Row) -> str:
    parts = [row.kind] if row.kind else []
    parts.append(f"{count(row.params)} params")
    if row.shape:
        parts.append(TIMES.join(map(str, row.shape[1:])) or "scalar")
    if row.inner_cuts:
        parts.append(f"{row.inner_cuts} cut{'s' * (row.inner_cuts != 1)} inside")
    return " · ".join(parts)


def _skip_text(row: Row) -> str:
    kinds = [("+", row.skips.count("add")), ("cat", row.skips.count("cat"))]
    return " ".join(f"{n}{TIMES}{k}" if n > 1 else k for k, n in kinds if n)


def _draw_auxiliaries(graph: Any, pic: Picture) -> None:
    for block in pic.blocks:
        last = block.first_row + block.rows - 1
        tint = colour(block.index)
        if block.aux is None:
            lines, tint = ["task loss", "the model's own head"], INK
        else:
            cost = block.aux.cost
            lines = [
                *(_short(line, 46) for line in block.aux.lines),
                f"{mib(cost.saved_bytes)} MiB act · {mib(cost.param_bytes)} MiB weights",
            ]
        face = (tint, 0.16) if block.aux else ("white", 1.0)
        _box(graph, (AUX_X0, last + 0.05), (AUX_X1 - AUX_X0, 0.9), tint, *face)
        graph.text(
            AUX_X0 + 0.12, last + 0.12, lines[0], va="top", fontsize=7.5, weight="bold", color=tint
        )
        graph.text(
            AUX_X0 + 0.12,
            last + 0.34,
            "\n".join(lines[1:]),
            va="top",
            fontsize=6.5,
            color=INK,
            linespacing=1.15,
        )
        _arrow(graph, (BOX_X1, last + 0.5), (AUX_X0, last + 0.5), tint, lw=0.9)
        for source in block.aux.sources if block.aux else ():
            start, end = (BOX_X1, source + 0.62), (AUX_X0 + 0.5, last + 0.95)
            _arrow(graph, start, end, tint, connectionstyle="arc3,rad=0.15", lw=0.8, linestyle="--")
            graph.text(
                (start[0] + end[0]) / 2 + 0.25,
                (start[1] + end[1]) / 2 + 0.1,
                "EMA",
                fontsize=6.5,
                color=tint,
                va="center",
            )


def _draw_block_memory(bars: Any, pic: Picture) -> None:
    centres = [b.first_row + b.rows / 2 for b in pic.blocks]
    thickness = [min(0.7, b.rows * 0.7) for b in pic.blocks]
    tints = [colour(b.index) for b in pic.blocks]
    segments = [
        (
            "parameters + optimizer state (all blocks)",
            [pic.fixed_bytes] * len(pic.blocks),
            GREY,
            1.0,
        ),
        ("block activations", [b.activation_bytes for b in pic.blocks], tints, 1.0),
        ("auxiliary activations", [b.aux_activation_bytes for b in pic.blocks], tints, 0.55),
        ("gradients", [b.grad_bytes for b in pic.blocks], tints, 0.25),
    ]
    left = [0.0] * len(pic.blocks)
    for label, values, tint, alpha in segments:
        widths = [v / 2**20 for v in values]
        bars.barh(
            centres,
            widths,
            height=thickness,
            left=left,
            color=tint,
            alpha=alpha,
            label=label,
            edgecolor="white",
            lw=0.4,
        )
        left = [a + b for a, b in zip(left, widths, strict=True)]
    e2e, local = pic.e2e_peak_bytes / 2**20, pic.local_peak_bytes / 2**20
    bars.axvline(e2e, color=E2E, lw=1.2)
    bars.axvline(local, color=INK, lw=1.0, ls="--")
    saving = 1 - local / e2e if e2e else 0.0
    bars.set_title(
        f"local peak {local:,.0f} vs e2e {e2e:,.0f} MiB "
        f"({abs(saving):.0%} {'less' if saving >= 0 else 'more'})",
        fontsize=8,
        loc="left",
    )
    bars.text(e2e, 0, " e2e peak", color=E2E, fontsize=7, va="top", ha="left")
    bars.text(local, 0, "local peak ", color=INK, fontsize=7, va="top", ha="right")
    bars.set_xlim(0, max(e2e, max(left)) * 1.18)
    _memory_axes(bars, pic)
    bars.legend(loc="lower right", fontsize=6.5, frameon=False)


def _draw_row_memory(bars: Any, pic: Picture) -> None:
    widths = [r.saved_bytes / 2**20 for r in pic.rows]
    bars.barh([i + 0.5 for i in range(len(pic.rows))], widths, height=0.7, color=GREY)
    total = pic.total_activation_bytes / 2**20
    bars.set_title(
        f"saved activations per row; e2e keeps them all: {total:,.0f} MiB", fontsize=8, loc="left"
    )
    bars.set_xlim(0, max(widths, default=0) * 1.15 or 1)
    _memory_axes(bars, pic)


def _memory_axes(bars: Any, pic: Picture) -> None:
    bars.set_yticks([])
    bars.set_xlabel(f"MiB at batch {pic.batch_size}", fontsize=7)
    bars.tick_params(labelsize=7)
    for side in ("top", "right", "left"):
        bars.spines[side].set_visible(False)


def _short(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most // 2 - 1] + "…" + text[-(most // 2) :]
