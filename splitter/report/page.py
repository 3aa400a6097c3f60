"""The self-contained HTML page of a picture: the SVG inline and a table of what it shows."""

from __future__ import annotations

import html

from schemas import mib
from splitter.report.picture import Picture


def page(pic: Picture, svg: str) -> str:
    """One self-contained HTML file: the SVG inline and a table of what it shows."""
    body = svg[svg.index("<svg") :]
    heading = html.escape(f"{pic.title}: {len(pic.blocks)} blocks" if pic.blocks else pic.title)
    if pic.blocks:
        head = ["block", "units", "ends at", "params", "local MiB", "auxiliary"]
        rows = [
            [
                f"block {b.index}",
                html.escape(
                    f"{pic.rows[b.first_row].first} … {pic.rows[b.first_row + b.rows - 1].last}"
                ),
                html.escape(pic.cuts[b.index] if b.index < len(pic.cuts) else "output"),
                count(b.params),
                mib(b.variable_bytes),
                html.escape(" · ".join(b.aux.lines) if b.aux else "task loss"),
            ]
            for b in pic.blocks
        ]
    else:
        head = ["unit", "kind", "params", "saved MiB", "cut below"]
        rows = [
            [
                html.escape(r.label),
                html.escape(r.kind),
                count(r.params),
                mib(r.saved_bytes),
                html.escape(r.end_cut or "output"),
            ]
            for r in pic.rows
        ]
    table = "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>\n"
    table += "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>\n" for r in rows)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>splitter: {heading}</title>\n<style>\n"
        "body { font-family: sans-serif; margin: 1.5em; color: #222; }\n"
        "svg { max-width: 100%; height: auto; }\n"
        "table { border-collapse: collapse; font-size: 0.85em; margin-top: 1em; }\n"
        "th, td { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left; }\n"
        "</style>\n</head>\n<body>\n"
        f"<h1>{heading}</h1>\n{body}\n<table>\n{table}</table>\n</body>\n</html>\n"
    )


def count(n: int) -> str:
    """`11.7 M`, `3.5 K` or `120`: a parameter count."""
    for unit, size in (("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)
