"""One self-contained HTML report: sections of prose, key numbers, tables, figures and model text.

Every string that reaches the page is escaped (model text can hold anything); plotly.js is embedded once so
the file opens offline and can be mailed as is.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerlens.files import atomic_write


@dataclass
class Section:
    """A report section. ``numbers`` are key results (name -> value), ``tables`` are (caption, rows) with
    rows as dicts, ``examples`` are raw model texts shown verbatim (escaped)."""

    id: str
    title: str
    text: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    tables: list[tuple[str, Sequence[Mapping[str, Any]]]] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    error: str | None = None  # set when the step failed; the report still renders the rest


CSS = """
body{font-family:Helvetica,Arial,sans-serif;max-width:1250px;margin:2em auto;color:#222;line-height:1.45}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f4f4f4} pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;font-size:.85em}
.err{color:#b00;font-weight:bold} nav a{margin-right:1em} .num td:first-child{font-family:monospace}
"""


def format_value(v: Any) -> str:
    """A result value as report text: floats to 4 digits, estimates as ``value [lo, hi]``."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict) and {"value", "lo", "hi"} <= set(v):
        return f"{v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)[:300]
    return str(v)


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p><i>(empty)</i></p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_value(r.get(c, '')))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def render(sections: Sequence[Section], title: str, settings: Mapping[str, Any] | None = None) -> str:
    """The report as one HTML string (plotly.js inline, every text escaped)."""
    from plotly.offline import get_plotlyjs

    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{CSS}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<nav>" + "".join(f"<a href='#{esc(s.id)}'>{esc(s.title)}</a>" for s in sections) + "</nav>",
    ]
    if settings:
        parts.append(
            "<h2 id='settings'>Settings</h2>"
            + _table([{"setting": k, "value": v} for k, v in settings.items()])
        )
    for s in sections:
        parts.append(f"<section id='{esc(s.id)}'><h2>{esc(s.title)}</h2>")
        if s.error:
            parts.append(f"<p class='err'>This step failed: {esc(s.error)}</p>")
        if s.text:
            parts.extend(f"<p>{esc(p)}</p>" for p in s.text.split("\n\n"))
        if s.numbers:
            parts.append(
                "<div class='num'>"
                + _table([{"result": k, "value": v} for k, v in s.numbers.items()])
                + "</div>"
            )
        for caption, rows in s.tables:
            parts.append(f"<h3>{esc(caption)}</h3>{_table(rows)}")
        for name, fig in s.figures.items():
            div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{s.id}-{name}")
            parts.append(f"<figure id='{esc(name)}'>{div}</figure>")
        if s.examples:
            parts.append("<h3>Model text</h3>" + "".join(f"<pre>{esc(e)}</pre>" for e in s.examples))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    sections: Sequence[Section], path: str | Path, title: str, settings: Mapping[str, Any] | None = None
) -> Path:
    """Write ``render(...)`` atomically to ``path``."""
    path = Path(path)
    text = render(sections, title, settings)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
