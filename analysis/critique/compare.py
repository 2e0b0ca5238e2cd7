"""Does recovery from an injected error appear with scale? The same error-injection protocol on several
models, one table and one figure.

Why: a single model's 2x2 table cannot say whether "hidden critique" is a property of reasoning models or of
one checkpoint; the same problems, injections and decoding on models of different sizes can.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from steerlens.config import SubParsers
from steerlens.figures import new_figure
from steerlens.files import write_json
from steerlens.model import Model
from steerlens.probes.traces import InjectionRun
from steerlens.progress import Stages
from steerlens.stats import Estimate

from .study import CritiqueConfig, injection_run

RECORDS = "records.jsonl"


@dataclass(frozen=True)
class ModelComparison:
    """One ``InjectionRun`` per model (same problems, injections, decoding) and the config that made them."""

    runs: dict[str, InjectionRun]
    config: CritiqueConfig

    def estimates(self) -> dict[str, dict[str, Estimate]]:
        return {m: r.estimates(self.config.n_boot, self.config.seed) for m, r in self.runs.items()}

    def table(self) -> str:
        """A markdown table: one row per model, clean accuracy and the four cells with 95% CIs."""
        est = self.estimates()
        cols = list(next(iter(est.values())))
        head = [c.replace("|", "\\|") for c in cols]  # "recovered | solved cleanly" would split a cell
        lines = ["| model | n | " + " | ".join(head) + " |", "|---" * (len(cols) + 2) + "|"]
        for m, e in est.items():
            cells = [
                f"{x.value:.2f} [{x.lo:.2f}, {x.hi:.2f}]" if not np.isnan(x.value) else "n/a"
                for x in e.values()
            ]
            lines.append(f"| {m} | {len(self.runs[m].injected)} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def figure(self) -> go.Figure:
        """Grouped bars: each 2x2 cell (and clean accuracy) per model, with 95% bootstrap CIs."""
        fig = new_figure(
            f"Error injection across models ({self.config.steps} steps, operands <= {self.config.max_operand})",
            "",
            "fraction of problems",
        )
        for m, e in self.estimates().items():
            v = np.array([x.value for x in e.values()])
            fig.add_trace(
                go.Bar(
                    name=m,
                    x=list(e),
                    y=v,
                    error_y=dict(
                        type="data",
                        symmetric=False,
                        array=[x.hi - x.value for x in e.values()],
                        arrayminus=[x.value - x.lo for x in e.values()],
                    ),
                )
            )
        fig.update_layout(barmode="group", yaxis_range=[0, 1])
        return fig

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "models": {m: {k: x.to_dict() for k, x in e.items()} for m, e in self.estimates().items()},
            "settings": {m: r.settings for m, r in self.runs.items()},
        }

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text(self.table() + "\n")
        self.figure().write_html(out / "comparison.html", include_plotlyjs="cdn")
        return write_json(out / "comparison.json", self.to_dict())


def compare_models(
    models: Sequence[Model], cfg: CritiqueConfig, out: str | Path | None = None, *, progress: bool = True
) -> ModelComparison:
    """Run the critique study's error injection (``cfg``'s problems, mode, shots, budget) on each model.

    Args:
        models: loaded models, smallest first (the table keeps this order).
        cfg: the critique settings; only the injection part is used (n, steps, max_operand, seed, mode,
            shots, max_new_tokens, batch_size).
        out: with it, each model's records are checkpointed under ``out/<model>/`` and reused by a rerun made
            with the same settings.

    Example:
        >>> cmp = compare_models([steerlens.load(n) for n in names], CritiqueConfig(n=200), "runs/compare")
        >>> print(cmp.table())
    """
    say = Stages("critique-compare", len(models), progress)
    runs = {}
    for model in models:
        path = Path(out) / model.name / RECORDS if out is not None else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        runs[model.name], _ = injection_run(model, cfg, path, say, progress)
    return ModelComparison(runs, cfg)


# ---- command line (registered through the ``steerlens.commands`` entry point) -------------------------

DEFAULT_MODELS = ("smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct")


def register(sub: SubParsers) -> None:
    """``steerlens critique-compare --models a,b,c``: the injection protocol on each model, one table."""
    p = sub.add_parser("critique-compare", help="error injection on several models: does recovery scale?")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated, smallest first")
    p.add_argument("--out", default="runs/critique_compare", help="run directory (records are checkpointed)")
    CritiqueConfig.add_arguments(p)

    def main(args: argparse.Namespace) -> int:
        from steerlens import load

        cmp = compare_models(
            [load(m) for m in args.models.split(",")], CritiqueConfig.from_args(args), args.out
        )
        print(f"wrote {cmp.save(args.out)}\n{cmp.table()}")
        return 0

    p.set_defaults(func=main)
