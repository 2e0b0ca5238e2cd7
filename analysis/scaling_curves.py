"""Accuracy-vs-N and accuracy-vs-rounds curves of several steering conditions, the test-time scaling
study's result: its JSON, the one figure, and every sampled answer read back from disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import numpy as np
import plotly.graph_objects as go

from steerlens.figures import PALETTE, line_with_band, new_figure
from steerlens.stats import N_BOOT, Estimate
from steerlens.steering.tts import ParallelResult, Round, SequentialResult


@dataclass(frozen=True)
class ScalingComparison:
    """Accuracy-vs-N and accuracy-vs-rounds curves for several conditions (e.g. unsteered, critique-steered,
    random-control-steered), drawn in one figure with 95% CIs (``n_boot`` resamples, JSON and figure alike)."""

    parallel: dict[str, ParallelResult]
    sequential: dict[str, SequentialResult]
    settings: dict[str, Any] = field(default_factory=dict)
    n_boot: int = N_BOOT

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"settings": self.settings, "parallel": {}, "sequential": {}}
        for name, pr in self.parallel.items():
            out["parallel"][name] = {
                how: [
                    {**e.to_dict(), "samples": n, "tokens": t}
                    for n, t, e in pr.curve(how, n_boot=self.n_boot)
                ]
                for how in pr.aggregations()
            }
        for name, sr in self.sequential.items():
            out["sequential"][name] = {
                "accuracy": [e.to_dict() for e in sr.accuracy(self.n_boot)],
                "tokens": sr.tokens().mean(0).tolist(),
                "transitions": [{k: v.to_dict() for k, v in t.items()} for t in sr.transitions(self.n_boot)],
            }
        return out

    def figure(self) -> go.Figure:
        """Three panels sharing the accuracy axis: vs N (majority solid, best-of-N dashed, weighted dotted),
        vs 'Wait' rounds, and vs generated tokens per problem (parallel circles, sequential squares)."""
        from plotly.subplots import make_subplots

        base = new_figure(f"Test-time scaling ({self.settings.get('model')})", "", "")
        fig = make_subplots(
            rows=1,
            cols=3,
            shared_yaxes=True,
            subplot_titles=("parallel: N samples", "sequential: 'Wait' rounds", "accuracy vs compute"),
        )
        fig.update_layout(template=base.layout.template, title=base.layout.title, width=1200, height=440)
        add = self._adder(fig)
        dashes = {"majority": None, "best": "dash", "weighted": "dot"}
        for name, pr in self.parallel.items():
            for how in pr.aggregations():
                pts = pr.curve(how, n_boot=self.n_boot)
                label = name if how == "majority" else f"{name}, {how}"
                add(
                    name,
                    label,
                    [n for n, _, _ in pts],
                    [e for *_, e in pts],
                    1,
                    dash=dashes[how],
                    legend=True,
                    band=how == "majority",
                )
            pts = pr.curve("majority", n_boot=self.n_boot)
            add(name, name, [t for _, t, _ in pts], [e for *_, e in pts], 3, symbol="circle")
        for name, sr in self.sequential.items():
            acc = sr.accuracy(self.n_boot)
            add(name, name, list(range(len(acc))), acc, 2)
            add(name, name, sr.tokens().mean(0).tolist(), acc, 3, symbol="square", dash="dash")
        fig.update_xaxes(title_text="samples N", type="log", dtick=np.log10(2), row=1, col=1)
        fig.update_xaxes(title_text="rounds of 'Wait'", dtick=1, row=1, col=2)
        fig.update_xaxes(
            title_text="generated tokens per problem", type="log", dtick=np.log10(2), row=1, col=3
        )
        fig.update_yaxes(title_text="accuracy", range=[0, 1], row=1, col=1)
        fig.update_yaxes(range=[0, 1])
        return fig

    def _adder(self, fig: go.Figure) -> Callable[..., None]:
        """``add(name, label, xs, estimates, col, **style)``: one curve (a band only where ``band``) in the
        condition's colour and legend group."""
        colours = {
            name: PALETTE[k % len(PALETTE)]
            for k, name in enumerate(dict.fromkeys([*self.parallel, *self.sequential]))
        }

        def add(name: str, label: str, xs: list[float], est: list[Estimate], col: int, **style: Any) -> None:
            sub = line_with_band(
                new_figure("", "", ""),
                xs,
                [e.value for e in est],
                [e.lo for e in est] if style.get("band", True) else None,  # one band per condition per panel
                [e.hi for e in est] if style.get("band", True) else None,
                label,
                colours[name],
                dash=style.get("dash"),
            )
            for tr in sub.data:
                tr.legendgroup = name
                tr.showlegend = bool(style.get("legend")) and tr.showlegend is not False
                if style.get("symbol") and tr.mode:
                    tr.marker.symbol = style["symbol"]
                fig.add_trace(tr, row=1, col=col)

        return add

    def results(self) -> dict[str, Any]:
        """Every sampled answer and round, as JSON (``from_results`` reads it back)."""
        return {
            "parallel": {k: asdict(v) for k, v in self.parallel.items()},
            "sequential": {k: asdict(v) for k, v in self.sequential.items()},
        }

    @classmethod
    def from_results(cls, raw: dict[str, Any], settings: dict[str, Any], n_boot: int = N_BOOT) -> Self:
        """Rebuild from ``results()`` and the settings the curves were made with."""
        par = {k: _parallel_from_dict(v) for k, v in raw["parallel"].items()}
        seq = {k: _sequential_from_dict(v) for k, v in raw["sequential"].items()}
        return cls(par, seq, settings, n_boot=n_boot)


def _parallel_from_dict(d: dict[str, Any]) -> ParallelResult:
    return ParallelResult(
        problem_ids=tuple(d["problem_ids"]),
        truths=tuple(d["truths"]),
        answers=tuple(tuple(a) for a in d["answers"]),
        scores=None if d["scores"] is None else tuple(tuple(s) for s in d["scores"]),
        tokens=tuple(tuple(t) for t in d["tokens"]),
        settings=d["settings"],
    )


def _sequential_from_dict(d: dict[str, Any]) -> SequentialResult:
    rounds = tuple(tuple(Round(**r) for r in rs) for rs in d["rounds"])
    return SequentialResult(tuple(d["problem_ids"]), rounds, d["settings"])
