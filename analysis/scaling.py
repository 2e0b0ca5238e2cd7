"""The test-time scaling study: parallel (majority / best-of-N / weighted over N samples) and sequential
("Wait" rounds) scaling on held-out synthetic problems, unsteered vs steered with a critique run's vector vs
its controls of equal norm (a random direction, and the run's shuffled-label vector); best-of-N is scored by
the critique probe at its own layer.

The loops themselves are mechanism (``steering.tts``); this module is the study: ``ScalingConfig``,
``run(model, cfg, critique)`` -> ``ScalingStudy`` with ``save`` / ``load`` and the report section.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, get_args

import plotly.graph_objects as go

from steerlens.config import StudyConfig, SubParsers
from steerlens.errors import SteerlensError
from steerlens.figures import save_figures
from steerlens.files import read_json, write_json
from steerlens.generation import Engine
from steerlens.model import Model
from steerlens.probes.linear import Logistic
from steerlens.progress import Stages
from steerlens.stats import N_BOOT
from steerlens.steering.apply import Intervention
from steerlens.steering.tts import (
    parallel,
    probe_verifier,
    wait_stacking,
)
from steerlens.steering.vector import SteeringVector, Units
from steerlens.tasks import Problem, arithmetic_problems

from .critique import STUDY_MODEL, Control, CritiqueStudy
from .report import Section
from .scaling_curves import ScalingComparison
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
    controls: steering controls of equal norm beside the vector: 'random' (a random direction), 'shuffled'
        (the critique run's shuffled-label vector; runs saved before it have none: pass --controls random)
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
    controls: tuple[Control, ...] = get_args(Control)
    n_boot: int = N_BOOT
    engine: Engine = "hf"


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
    controls: Mapping[Control, SteeringVector] | None = None,
    progress: bool = True,
) -> ScalingComparison:
    """The conditions (unsteered; ``vector`` at ``layer`` on generated tokens; each of ``cfg.controls`` of
    equal norm likewise) under parallel and sequential scaling. ``controls``: the control vectors at ``layer``
    (``CritiqueVector.controls``); default: a random direction of equal norm (seed + 1) only. ``probe``
    scores samples for best-of-N at ``probe_layer``, the layer it was fitted on, which need not be the
    steering ``layer``."""
    if probe is not None and probe_layer is None:
        raise SteerlensError(
            "probe given without probe_layer: a probe only means something at the layer it was fitted on "
            "(Logistic.load returns it in the metadata as 'layer')"
        )
    problems = held_out_problems(cfg)
    at = vector.select([layer])
    if controls is None:
        controls = {"random": at.random_like(cfg.seed + 1)}
    conditions = _conditions(at, cfg, controls)
    say = Stages("tts", len(conditions), progress)
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


def _conditions(
    at: SteeringVector, cfg: ScalingConfig, controls: Mapping[Control, SteeringVector]
) -> dict[str, list[Intervention]]:
    """Unsteered; the vector on generated tokens; each control of ``cfg.controls`` likewise."""
    if "shuffled" in cfg.controls and "shuffled" not in controls:
        raise SteerlensError(
            "controls include 'shuffled', but the critique run has no shuffled-label vector (runs saved before "
            "it existed): rerun `steerlens critique`, or pass --controls random"
        )
    vectors: dict[str, SteeringVector] = {"critique": at}
    vectors.update((name, vec) for name, vec in controls.items())
    names = {"critique": "critique", "random": "random control", "shuffled": "shuffled-label control"}
    out: dict[str, list[Intervention]] = {"unsteered": []}
    for arm in ("critique", *cfg.controls):
        out[f"{names[arm]} (alpha {cfg.alpha})"] = [
            Intervention(vectors[arm], alpha=cfg.alpha, units=cfg.units, positions="generated")
        ]
    return out


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
            "'Wait' rounds with budget forcing, unsteered vs critique-steered vs controls of equal norm (a random "
            "direction; the shuffled-label vector), on held-out problems."
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
        write_json(out / RESULTS, self.comparison.results())
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
        comp = ScalingComparison.from_results(raw, read_json(out / SUMMARY)["settings"], n_boot=cfg.n_boot)
        return cls(cfg, comp)


def run(
    model: Model,
    cfg: ScalingConfig,
    critique: CritiqueStudy,
    out: str | Path | None = None,
    *,
    progress: bool = True,
) -> ScalingStudy:
    """Scale unsteered, critique-steered and control-steered (``cfg.controls``): the vector of the
    ``critique`` run at ``cfg.layer`` (default: the layer that run chose), best-of-N scored by its probe at the
    probe's own layer. The loops keep no checkpoints, so ``out`` is not written to; ``save`` writes the run.

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
        model, cfg, cv.vector, layer, probe=cv.probe, probe_layer=cv.layer,
        controls=cv.controls(cfg.seed + 1, layer), progress=progress,
    )  # fmt: skip
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
