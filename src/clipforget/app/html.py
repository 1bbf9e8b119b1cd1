"""The HTML primitives of the reports: escaping, tables, facts, embedded images, the page shell.

A page is self-contained: figures are data URIs, there is no script and nothing loads from the network."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d2330;
       max-width: 1120px; margin: 0 auto; padding: 1.2em 1.5em 4em; background: #fff; }
h1 { font-size: 1.55em; margin: .2em 0 .1em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #d8dce4; }
h3 { font-size: 1.02em; margin: 1.3em 0 .4em; }
.sub { color: #5b6475; margin: 0 0 1em; } code, pre { font: 13px/1.35 ui-monospace, "DejaVu Sans Mono", monospace; }
pre { background: #f5f6f8; padding: .8em; overflow-x: auto; border-radius: 4px; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 14px; }
th, td { border: 1px solid #d8dce4; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f2f5; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.hl td { background: #fff6e0; }
.banner { border-radius: 6px; padding: .7em 1em; margin: 1em 0; }
.banner.warn { background: #fff1f0; border: 2px solid #cf222e; } .banner.ok { background: #eefbf1; border: 1px solid #2da44e; }
.banner strong { display: block; margin-bottom: .2em; } .banner ul { margin: .2em 0 0 1.2em; padding: 0; }
.grid { display: flex; flex-wrap: wrap; gap: .7em; } .card { width: 132px; font-size: 12px; }
.card img { width: 112px; height: 112px; object-fit: contain; background: #f0f2f5; display: block; }
.ok { color: #1a7f37; } .bad { color: #cf222e; } .muted { color: #5b6475; }
img.fig { max-width: 100%; height: auto; display: block; margin: .4em 0 1em; }
details { margin: .4em 0; } summary { cursor: pointer; color: #0b57d0; }
nav a { margin-right: .8em; font-size: 14px; }
"""


def e(x: Any) -> str:
    return html.escape(str(x))


def num(x: Any, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "–"


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] | None = None,
          highlight: Sequence[bool] = ()) -> str:
    """An HTML table; the columns in ``numeric`` (default: all but the first) are right-aligned. Cells are escaped."""
    numeric = set(range(1, len(head)) if numeric is None else numeric)
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        cls = ' class="hl"' if i < len(highlight) and highlight[i] else ""
        out.append(f"<tr{cls}>" + "".join(f'<td{" class=n" if j in numeric else ""}>{e(c)}</td>'
                                          for j, c in enumerate(row)) + "</tr>")
    return "\n".join(out) + "</table>"


def facts(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of named facts, names as row headers."""
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>"


def img(data: bytes, alt: str, cls: str = "fig") -> str:
    return f'<img class="{cls}" alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def page(title: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{e(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
