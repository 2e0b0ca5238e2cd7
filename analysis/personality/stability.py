"""How much the personality results move with the vector method, the data split and trait combinations."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go

from steerlens.figures import PALETTE, bars_with_ci, new_figure
from steerlens.model import Model
from steerlens.probes.questionnaire import items
from steerlens.stats import N_BOOT, Estimate
from steerlens.steering import SteeringVector
from steerlens.steering.vector import Units

from .measures import DoseResponse, Steered, questionnaire_scores
from .vectors import Method, TraitActivations, held_out_split, trait_vector


@dataclass(frozen=True)
class Stability:
    """How much the results move with the method, the data split and trait combinations."""

    method_cosine: dict[str, dict[str, float]]  # trait -> "mean~pca" etc. cosine at the steering layer
    method_slope: dict[str, dict[str, Estimate]]  # trait -> method -> own-trait slope
    split_cosine: dict[str, list[float]]  # trait -> cosine between vectors from disjoint halves, per seed
    split_slope: dict[str, list[float]]  # trait -> own-trait slope per seed
    combination: dict[str, dict[str, float]]  # "a+b" -> {"together:a", "alone:a", ...} score shifts at alpha
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "method_cosine": self.method_cosine,
            "method_slope": {t: {m: e.to_dict() for m, e in r.items()} for t, r in self.method_slope.items()},
            "split_cosine": self.split_cosine,
            "split_slope": self.split_slope,
            "combination": self.combination,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stability:
        """Rebuild what ``to_dict`` wrote."""
        slopes = {t: {m: Estimate(**e) for m, e in r.items()} for t, r in d["method_slope"].items()}
        return cls(
            d["method_cosine"], slopes, d["split_cosine"], d["split_slope"], d["combination"], d["settings"]
        )

    def figure(self) -> go.Figure:
        """Own-trait slope by method (bars with CIs) and over split seeds (points)."""
        fig = new_figure("Stability of the own-trait effect", "trait", "slope of own score per alpha unit")
        traits = list(self.method_slope)
        for k, m in enumerate(next(iter(self.method_slope.values()), {})):
            est = [self.method_slope[t][m] for t in traits]
            bars_with_ci(fig, traits, est, f"method {m}", PALETTE[k % len(PALETTE)])
        for t in traits:
            fig.add_scatter(
                x=[t] * len(self.split_slope[t]),
                y=self.split_slope[t],
                mode="markers",
                marker=dict(color="#000", size=6, symbol="x"),
                name="split seeds",
                showlegend=t == traits[0],
            )
        fig.update_layout(barmode="group")
        return fig


def _own_slope(
    model: Model, vec: SteeringVector, trait: str, alpha: float, units: Units, n_boot: int
) -> Estimate:
    qitems = items([trait])
    s, _ = questionnaire_scores(model, vec, (-alpha, 0.0, alpha), qitems, units=units)
    dr = DoseResponse(
        ("v",), (-alpha, 0.0, alpha), tuple(it.trait for it in qitems), s[None], s[None] * 0 + 1
    )
    return dr.slope("v", trait, n_boot)


def _combination(
    model: Model, x: SteeringVector, y: SteeringVector, traits: tuple[str, str], alpha: float, units: Units
) -> dict[str, float]:
    """Own-score shifts at ``alpha`` with both vectors steered together and each alone."""
    qitems = items(list(traits))
    keys = np.array([it.trait for it in qitems])
    row: dict[str, float] = {}
    runs: list[tuple[str, Steered, tuple[str, ...]]] = [
        ("together", [x, y], traits),
        ("alone", x, traits[:1]),
        ("alone", y, traits[1:]),
    ]
    for name, v, scored in runs:
        s, _ = questionnaire_scores(model, v, (0.0, alpha), qitems, units=units)
        d = s[1] - s[0]
        for t in scored:
            row[f"{name}:{t}"] = float(d[keys == t].mean())
    return row  # additive when together:t is close to alone:t


def stability(
    model: Model,
    acts: dict[str, TraitActivations],
    layer: int,
    *,
    alpha: float = 0.4,
    units: Units = "resid",
    seeds: Sequence[int] = (1, 2, 3),
    methods: Sequence[Method] = ("mean", "pca", "probe"),
    pairs: Sequence[tuple[str, str]] | None = None,
    n_boot: int = N_BOOT,
) -> Stability:
    """Method level (vectors by each aggregator), trait level (vectors from disjoint halves of the statement
    groups over ``seeds``) and combination level (two traits steered together vs alone).

    Example:
        >>> stab = stability(model, acts, tv.layer, alpha=0.5)
        >>> stab.split_cosine["openness"]        # cosine of vectors from disjoint halves, per seed
    """
    m_cos: dict[str, dict[str, float]] = {}
    m_slope: dict[str, dict[str, Estimate]] = {}
    s_cos: dict[str, list[float]] = {}
    s_slope: dict[str, list[float]] = {}
    singles: dict[str, SteeringVector] = {}
    for t, a in acts.items():
        all_rows = list(range(len(a.groups)))
        by = {m: trait_vector(model, a, all_rows, m, 0).select([layer]) for m in methods}
        singles[t] = by[methods[0]]
        m_cos[t] = {
            f"{x}~{y}": float(by[x].directions[layer] @ by[y].directions[layer])
            for x, y in itertools.combinations(methods, 2)
        }
        m_slope[t] = {m: _own_slope(model, v, t, alpha, units, n_boot) for m, v in by.items()}
        s_cos[t], s_slope[t] = [], []
        for seed in seeds:
            half_a, half_b = held_out_split(a, 0.5, seed)
            va = trait_vector(model, a, half_a, methods[0], seed).select([layer])
            vb = trait_vector(model, a, half_b, methods[0], seed).select([layer])
            s_cos[t].append(float(va.directions[layer] @ vb.directions[layer]))
            s_slope[t].append(_own_slope(model, va, t, alpha, units, n_boot).value)
    combo = {
        f"{x}+{y}": _combination(model, singles[x], singles[y], (x, y), alpha, units)
        for x, y in (pairs if pairs is not None else list(itertools.combinations(list(acts), 2))[:4])
    }
    settings = dict(
        model=model.name, layer=layer, alpha=alpha, units=units, seeds=list(seeds), methods=list(methods)
    )
    return Stability(m_cos, m_slope, s_cos, s_slope, combo, settings)
