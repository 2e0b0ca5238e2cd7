"""The personality figures that span several results: dose-response panels, leakage matrices, steering vs
prompting, side effects. Every interval uses the ``n_boot`` the caller passes (the study's one count)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from steerlens.figures import GREY, PALETTE, bars_with_ci, line_with_band, new_figure
from steerlens.stats import Estimate, bootstrap

from .vectors import RANDOM

if TYPE_CHECKING:
    from .measures import DoseResponse, PromptingBaseline
    from .side_effects import Capability


def dose_figure(dr: DoseResponse, n_boot: int) -> go.Figure:
    """One panel per steered condition: every trait's score vs alpha (solid: the steered trait, with its
    95% CI; dotted: the others; grey dashed: un-keyed agreement). Panels of a condition that is no trait
    (the random control) band every trait. Panel titles say which traits moved beyond the CIs."""
    traits = dr.traits
    cols = min(3, len(dr.conditions))
    rows = -(-len(dr.conditions) // cols)
    titles = []
    for c in dr.conditions:
        moved = dr.moved_traits(c, n_boot)
        titles.append(f"{c}: " + (f"moved {', '.join(moved)}" if moved else "no trait moved"))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.07)
    base = new_figure(f"Trait scores under steering ({dr.settings.get('model')})", "", "")
    fig.update_layout(
        template=base.layout.template, title=base.layout.title, width=380 * cols, height=300 * rows + 80
    )
    for ci, c in enumerate(dr.conditions):
        own = c.split("⊥")[0]  # "openness⊥conscientiousness" steers openness
        where = dict(row=ci // cols + 1, col=ci % cols + 1)
        for ti, t in enumerate(traits):
            est = [dr.score(c, k, t, n_boot) for k in range(len(dr.alphas))]
            band = t == own or own not in traits
            sub = line_with_band(
                new_figure("", "", ""),
                list(dr.alphas),
                [e.value for e in est],
                [e.lo for e in est] if band else None,
                [e.hi for e in est] if band else None,
                t,
                PALETTE[ti % len(PALETTE)],
                dash=None if t == own else "dot",
            )
            for tr in sub.data:
                tr.legendgroup = t
                tr.showlegend = ci == 0 and tr.showlegend is not False
                fig.add_trace(tr, **where)
        if dr.item_reverse:
            fig.add_scatter(
                x=list(dr.alphas),
                y=[dr.agreement(c, k, n_boot).value for k in range(len(dr.alphas))],
                mode="lines",
                line=dict(color=GREY, dash="dash"),
                name="agreement (un-keyed)",
                legendgroup="agreement",
                showlegend=ci == 0,
                **where,
            )
    fig.update_yaxes(range=[0, 1])
    fig.update_xaxes(title_text=f"alpha ({dr.settings.get('units', 'resid')} units)")
    return fig


def leakage_figure(
    traits: Sequence[str], raw: DoseResponse, purified: DoseResponse, model: str, n_boot: int
) -> go.Figure:
    """Slope matrices (steered row -> scored column) before and after purification."""
    mats = []
    for dr in (raw, purified):
        lk = dr.leakage(n_boot)
        rows = list(lk)
        mats.append((rows, [[lk[r][c].value for c in traits] for r in rows]))
    lim = max(abs(v) for _, m in mats for row in m for v in row) or 1.0
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("raw trait vectors", "purified"), horizontal_spacing=0.18
    )
    for k, (rows, m) in enumerate(mats):
        fig.add_heatmap(
            z=m,
            x=list(traits),
            y=rows,
            zmin=-lim,
            zmax=lim,
            colorscale="RdBu",
            reversescale=True,
            text=[[f"{v:+.2f}" for v in row] for row in m],
            texttemplate="%{text}",
            showscale=k == 1,
            colorbar=dict(title="slope"),
            row=1,
            col=k + 1,
        )
    base = new_figure(f"Leakage: steering row, score column ({model})", "", "")
    fig.update_layout(template=base.layout.template, title=base.layout.title, width=1100, height=460)
    fig.update_yaxes(autorange="reversed")
    return fig


def own_span(dr: DoseResponse, condition: str, trait: str, n_boot: int) -> Estimate:
    """Change in ``trait``'s score from the smallest to the largest alpha while steering ``condition``."""
    lo_i, hi_i = int(np.argmin(dr.alphas)), int(np.argmax(dr.alphas))
    k = dr.conditions.index(condition)
    cols = dr.columns(trait)
    d = dr.scores[k, hi_i, cols] - dr.scores[k, lo_i, cols]
    return bootstrap(lambda i: float(d[i].mean()), len(d), n_boot=n_boot)


def comparison_figure(
    traits: Sequence[str], dose: DoseResponse, prompting: PromptingBaseline, model: str, n_boot: int
) -> go.Figure:
    """Own-trait change: steering (score at max alpha minus min alpha) vs prompting (high minus low
    persona), and the random control, with 95% CIs."""
    fig = new_figure(f"Steering vs prompting ({model})", "trait", "change in own trait score (0-1 scale)")
    a = dose.alphas
    series = {
        f"steering (alpha {min(a)} -> {max(a)})": [own_span(dose, t, t, n_boot) for t in traits],
        "prompting (low -> high persona)": [prompting.shift(t, t, n_boot) for t in traits],
    }
    if RANDOM in dose.conditions:
        series["random control"] = [own_span(dose, RANDOM, t, n_boot) for t in traits]
    for k, (name, est) in enumerate(series.items()):
        bars_with_ci(fig, list(traits), est, name, GREY if name == "random control" else PALETTE[k])
    fig.update_layout(barmode="group")
    return fig


def side_effects_figure(cap: Capability, model: str, n_boot: int) -> go.Figure:
    """Arithmetic (and multiple-choice) accuracy change vs unsteered, per steered vector."""
    fig = new_figure(
        f"Side effects at alpha {cap.settings.get('alpha')} ({model})",
        "steered vector",
        "change vs unsteered",
    )
    for k, h in enumerate(m for m in cap.measures if m != "logprob"):
        bars_with_ci(
            fig,
            list(cap.conditions),
            [cap.delta(c, h, n_boot) for c in cap.conditions],
            f"arithmetic {h}" if h == "accuracy" else "multiple-choice accuracy",
            PALETTE[k],
        )
    return fig
