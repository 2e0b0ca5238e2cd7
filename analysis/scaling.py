"""The test-time scaling study: parallel (majority / best-of-N / weighted over N samples) and sequential
("Wait" rounds) scaling on held-out synthetic problems, unsteered vs steered with a critique run's vector vs
a random direction of equal norm (the control); best-of-N is scored by the critique probe at its own layer.

The loops themselves are mechanism (``steering.tts``); this module is the study: ``ScalingConfig``,
``run(model, cfg, critique)`` -> ``ScalingStudy`` with ``save`` / ``load`` and the report section.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import plotly.graph_objects as go

from steerlens.config import StudyConfig, SubParsers
from steerlens.errors import SteerlensError
from steerlens.figures import PALETTE, line_with_band, new_figure, save_figures
from steerlens.files import read_json, write_json
from steerlens.generation import Engine
from steerlens.model import Model
from steerlens.probes.linear import Logistic
from steerlens.progress import Stages
from steerlens.stats import N_BOOT, Estimate
from steerlens.steering.apply import Intervention
from steerlens.steering.tts import (
    ParallelResult,
    Round,
    SequentialResult,
    parallel,
    probe_verifier,
    wait_stacking,
)
from steerlens.steering.vector import SteeringVector, Units
from steerlens.tasks import Problem, arithmetic_problems

from .critique import STUDY_MODEL, CritiqueStudy
from .report import Section
from .study import add_study_command

SUMMARY, RESULTS, CONFIG = "tts.json", "tts_results.json", "config.json"


@dataclass(frozen=True)
class ScalingConfig(StudyConfig):
    """Settings of the test-time scaling study.

    n_problems: held-out synthetic addition problems (seed + 5000)
    steps, max_operand: their difficulty (default: the critique run's, so the vector is used where it was built)
    shots: worked examples in the prompt (default: the critique run's, the prompt the vector was read from)
    samples: parallel samples per problem (accuracy at N = 1, 2, 4, ... up to this)
    rounds: "Wait" rounds after the first answer
    budget: generated tokens per sample and per round
    alpha: steering strength on generated tokens, in ``units``
    units: what alpha multiplies ('resid': the mean per-token residual norm at the layer)
    layer: steering layer (default: the layer the critique run chose; the probe always reads its own layer)
    seed: samples and the random control's direction
    n_boot: bootstrap resamples for every interval the study reports
    engine: decoding engine: 'hf' (transformers generate) or 'vllm' (one continuous batch; `make vllm`)
    """

    QUICK: ClassVar[dict[str, Any]] = dict(n_problems=3, samples=2, rounds=1)

    n_problems: int = 24
    steps: int | None = None
    max_operand: int | None = None
    shots: int | None = None
    samples: int = 8
    rounds: int = 2
    budget: int = 96
    alpha: float = 0.1
    units: Units = "resid"
    layer: int | None = None
    seed: int = 0
    n_boot: int = N_BOOT
    engine: Engine = "hf"


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


def held_out_problems(cfg: ScalingConfig) -> list[Problem]:
    """The study's problems: ``n_problems`` additions at the critique run's difficulty, seeded apart from the
    critique run's own (seed + 5000)."""
    if cfg.steps is None or cfg.max_operand is None:
        raise SteerlensError(
            "ScalingConfig.steps and .max_operand must be set (run() takes them from the critique run)"
        )
    return arithmetic_problems(
        cfg.n_problems, seed=cfg.seed + 5_000, steps=cfg.steps, ops="+", max_operand=cfg.max_operand
    )


def scaling_comparison(
    model: Model,
    cfg: ScalingConfig,
    vector: SteeringVector,
    layer: int,
    *,
    probe: Logistic | None = None,
    probe_layer: int | None = None,
    progress: bool = True,
) -> ScalingComparison:
    """The three conditions (unsteered; ``vector`` at ``layer`` on generated tokens; a random direction of
    equal norm) under parallel and sequential scaling. ``probe`` scores samples for best-of-N at
    ``probe_layer``, the layer it was fitted on, which need not be the steering ``layer``."""
    if probe is not None and probe_layer is None:
        raise SteerlensError(
            "probe given without probe_layer: a probe only means something at the layer it was fitted on "
            "(Logistic.load returns it in the metadata as 'layer')"
        )
    say = Stages("tts", 3, progress)
    problems = held_out_problems(cfg)
    conditions = _conditions(vector.select([layer]), cfg)
    verifier = None  # one probe scores every condition's samples
    if probe is not None and probe_layer is not None:
        verifier = probe_verifier(model, probe, probe_layer, name="critique_probe")
    par, seq, shots = {}, {}, 3 if cfg.shots is None else cfg.shots
    for name, ivs in conditions.items():
        say.stage(
            f"{name}: {cfg.samples} samples x {cfg.n_problems} problems, then {cfg.rounds} 'Wait' rounds"
        )
        par[name] = parallel(
            model,
            problems,
            n=cfg.samples,
            seed=cfg.seed,
            max_new_tokens=cfg.budget,  # the round budget of the sequential loop: both loops think as long
            steering=ivs,
            verifier=verifier,
            shots=shots,
            engine=cfg.engine,
        )
        seq[name] = wait_stacking(
            model,
            problems,
            rounds=cfg.rounds,
            budget=cfg.budget,
            steering=ivs,
            shots=shots,
            engine=cfg.engine,
        )
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("samples", "n_boot")}  # + the run's:
    settings |= {"model": model.name, "n": cfg.samples, "layer": layer, "probe_layer": probe_layer}
    return ScalingComparison(par, seq, settings, n_boot=cfg.n_boot)


def _conditions(at: SteeringVector, cfg: ScalingConfig) -> dict[str, list[Intervention]]:
    """Unsteered; the vector on generated tokens; a random direction of equal norm likewise."""
    control = at.random_like(cfg.seed + 1)
    return {
        "unsteered": [],
        f"critique (alpha {cfg.alpha})": [
            Intervention(at, alpha=cfg.alpha, units=cfg.units, positions="generated")
        ],
        f"random control (alpha {cfg.alpha})": [
            Intervention(control, alpha=cfg.alpha, units=cfg.units, positions="generated")
        ],
    }


@dataclass(frozen=True)
class ScalingStudy:
    """One test-time scaling run: the comparison and the config that made it."""

    config: ScalingConfig
    comparison: ScalingComparison

    def summary(self) -> dict[str, Any]:
        return self.comparison.to_dict()

    def figures(self) -> dict[str, go.Figure]:
        return {"tts_curves": self.comparison.figure()}

    def sections(self) -> list[Section]:
        """The report's section: the last point of every curve, and the figure."""
        d = self.summary()
        sec = Section("tts", "Test-time scaling, steered vs unsteered")
        sec.text = (
            "Parallel sampling (majority vote, best-of-N by the critique probe, weighted voting) and sequential "
            "'Wait' rounds with budget forcing, unsteered vs critique-steered vs a random direction of equal "
            "norm, on held-out problems."
        )
        for name, curves in d["parallel"].items():
            last = curves["majority"][-1]
            sec.numbers[f"majority@{last['samples']} {name}"] = last
        for name, seq in d["sequential"].items():
            sec.numbers[f"after {len(seq['accuracy']) - 1} 'Wait' rounds, {name}"] = seq["accuracy"][-1]
        sec.figures["tts_curves"] = self.comparison.figure()
        return [sec]

    def save(self, out: str | Path, formats: Sequence[str] = ("html",)) -> Path:
        """``tts.json`` (the curves), ``tts_results.json`` (every sampled answer and round), ``config.json``
        and the figure in ``formats`` under ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / SUMMARY, self.summary())
        write_json(out / RESULTS, _results_to_dict(self.comparison))
        write_json(out / CONFIG, self.config.to_dict())
        save_figures(self.figures(), out, formats=formats)
        return out

    @classmethod
    def load(cls, out: str | Path, model: Model | None = None) -> ScalingStudy:
        """Rebuild a run written by ``save`` (``model`` is not needed: the results are text and numbers)."""
        out = Path(out)
        missing = [name for name in (SUMMARY, RESULTS, CONFIG) if not (out / name).is_file()]
        if missing:
            what = "does not exist" if not out.is_dir() else f"is not a finished scaling run (no {missing})"
            raise SteerlensError(f"{out} {what}; run `steerlens tts --critique DIR --out {out}` to make it")
        cfg = ScalingConfig.from_dict(read_json(out / CONFIG))
        raw = read_json(out / RESULTS)
        comp = ScalingComparison(
            {k: _parallel_from_dict(v) for k, v in raw["parallel"].items()},
            {k: _sequential_from_dict(v) for k, v in raw["sequential"].items()},
            read_json(out / SUMMARY)["settings"],
            n_boot=cfg.n_boot,
        )
        return cls(cfg, comp)


def _results_to_dict(comp: ScalingComparison) -> dict[str, Any]:
    return {
        "parallel": {k: asdict(v) for k, v in comp.parallel.items()},
        "sequential": {k: asdict(v) for k, v in comp.sequential.items()},
    }


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


def run(
    model: Model,
    cfg: ScalingConfig,
    critique: CritiqueStudy,
    out: str | Path | None = None,
    *,
    progress: bool = True,
) -> ScalingStudy:
    """Scale unsteered, critique-steered and random-control-steered: the vector of the ``critique`` run at
    ``cfg.layer`` (default: the layer that run chose), best-of-N scored by its probe at the probe's own
    layer. The loops keep no checkpoints, so ``out`` is not written to; ``save`` writes the run.

    Example:
        >>> crit = CritiqueStudy.load("runs/critique", model)
        >>> study = run(model, ScalingConfig.quick(), crit); study.save("runs/tts")
    """
    cv = critique.critique
    made = critique.config
    cfg = replace(
        cfg,
        steps=made.steps if cfg.steps is None else cfg.steps,
        max_operand=made.max_operand if cfg.max_operand is None else cfg.max_operand,
        shots=made.shots if cfg.shots is None else cfg.shots,
    )
    layer = cfg.layer if cfg.layer is not None else cv.layer
    comp = scaling_comparison(
        model, cfg, cv.vector, layer, probe=cv.probe, probe_layer=cv.layer, progress=progress
    )
    return ScalingStudy(cfg, comp)


# ---- command line (registered through the ``steerlens.commands`` entry point) -------------------------


def register(sub: SubParsers) -> None:
    """``steerlens tts --critique DIR``: one flag per ``ScalingConfig`` field, ``--quick`` for smoke sizes."""

    def critique_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--critique", default="runs/critique", help="a `steerlens critique` run directory")

    def main(model: Model, cfg: ScalingConfig, out: Path, args: argparse.Namespace) -> ScalingStudy:
        return run(model, cfg, CritiqueStudy.load(args.critique, model=model), out)

    add_study_command(
        sub,
        "tts",
        "test-time scaling (parallel and 'Wait' rounds), steered vs unsteered",
        ScalingConfig,
        main,
        model=STUDY_MODEL,
        extra=critique_dir,
    )
