"""One plotly look for every ``.figure()``: paper fonts and sizes, a colour-blind-safe palette, CI bands."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

# Okabe-Ito: distinguishable under the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
GREY = "#7f7f7f"

TEMPLATE = go.layout.Template(
    layout=go.Layout(
        font=dict(family="Helvetica, Arial, sans-serif", size=13, color="#222"),
        title=dict(font=dict(size=15), x=0.0, xanchor="left"),
        colorway=PALETTE,
        paper_bgcolor="white",
        plot_bgcolor="white",
        xaxis=dict(showline=True, linecolor="#444", ticks="outside", gridcolor="#eee", zeroline=False),
        yaxis=dict(showline=True, linecolor="#444", ticks="outside", gridcolor="#eee", zeroline=False),
        legend=dict(bgcolor="rgba(255,255,255,0.8)", borderwidth=0),
        margin=dict(l=60, r=20, t=50, b=50),
        width=720,
        height=420,
    )
)


def new_figure(title: str, x: str, y: str, **layout: Any) -> go.Figure:
    """An empty figure in the steerlens template with axis titles."""
    fig = go.Figure()
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title=x, yaxis_title=y, **layout)
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def line_with_band(
    fig: go.Figure,
    x: Sequence[float],
    y: Sequence[float],
    lo: Sequence[float] | None,
    hi: Sequence[float] | None,
    name: str,
    colour: str,
    dash: str | None = None,
) -> go.Figure:
    """Add a line with markers and, when given, a shaded confidence band between ``lo`` and ``hi``."""
    if lo is not None and hi is not None:
        fig.add_trace(
            go.Scatter(
                x=list(x) + list(x)[::-1],
                y=list(hi) + list(lo)[::-1],
                fill="toself",
                fillcolor=_rgba(colour, 0.18),
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=list(x),
            y=list(y),
            mode="lines+markers",
            name=name,
            legendgroup=name,
            line=dict(color=colour, dash=dash),
            marker=dict(size=6),
        )
    )
    return fig


def save_figure(fig: go.Figure, path: str | Path) -> Path:
    """Write ``fig`` as HTML (``.html``: plotly.js written once beside it, works offline) or a static image
    (``.png``/``.svg``/``.pdf``, needs kaleido and a Chromium), atomically."""
    from .files import atomic_write

    path = Path(path)
    if path.suffix == ".html":
        return atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs="directory"))
    return atomic_write(path, lambda tmp: fig.write_image(tmp, format=path.suffix.lstrip(".")))
