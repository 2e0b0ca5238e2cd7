"""The personality study: its settings (``PersonalityConfig``), ``run(model, cfg)`` and the result
(``PersonalityStudy``) with its summary, figures, report section, ``save`` and ``load``.

The mechanistic arm of "Personality as a Probe for LLM Evaluation": difference-of-means (or PCA / probe)
vectors from contrastive high/low reactions, steered at one layer with per-row alphas so a whole alpha grid
runs in one batch; trait expression is read from a Likert questionnaire's answer logits, never generated.
Every score comes with a bootstrap CI (``cfg.n_boot`` resamples) over questionnaire items, and a random
direction of equal norm is steered beside the traits as the control.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import plotly.graph_objects as go

from steerlens.config import StudyConfig, SubParsers
from steerlens.files import read_json
from steerlens.model import Model
from steerlens.progress import Stages
from steerlens.stats import N_BOOT, Estimate
from steerlens.steering import SteeringVector
from steerlens.steering.vector import Units

from ..report import Section
from ..study import add_study_command
from .figures import comparison_figure, leakage_figure, side_effects_figure
from .measures import (
    DoseResponse,
    PromptingBaseline,
    ReactionPreference,
    dose_response,
    prompting_baseline,
    reaction_preference,
)
from .side_effects import Capability, capability, load_multiple_choice
from .stability import Stability, stability
from .store import ARRAYS, load_arrays, save_arrays
from .vectors import RANDOM, Method, Trait, TraitVectors, trait_activations, trait_vectors

TITLE = "Personality: dose-response, leakage, prompting baseline"


@dataclass(frozen=True)
class PersonalityConfig(StudyConfig):
    """Settings of the personality study.

    traits: Big Five traits to build vectors for and score
    alphas: steering coefficients, in ``units``
    method: how a trait vector is built from its contrast pairs
    layer: steering layer; default: best held-out separability among the middle layers
    seed: seed of the held-out split, the random control and the arithmetic problems
    with_stability: also run the method / data-split / trait-pair stability checks (slow)
    units: unit of alpha: "resid" (mean residual norm), "vector" (raw vector norm) or "raw"
    n_boot: bootstrap resamples behind every interval (JSON, report and figures)
    mc: multiple-choice JSONL (question, choices, answer) for the side-effect check
    """

    traits: tuple[Trait, ...] = (
        "openness",
        "conscientiousness",
        "extraversion",
        "agreeableness",
        "neuroticism",
    )
    alphas: tuple[float, ...] = (-0.5, -0.25, 0.0, 0.25, 0.5)
    method: Method = "mean"
    layer: int | None = None
    seed: int = 0
    with_stability: bool = True
    units: Units = "resid"
    n_boot: int = N_BOOT
    mc: str | None = None

    QUICK: ClassVar[dict[str, Any]] = dict(
        traits=("conscientiousness", "extraversion"), alphas=(-0.5, 0.0, 0.5), with_stability=False
    )


@dataclass(frozen=True)
class PersonalityStudy:
    """Everything the personality run measured, with the settings that made it.

    ``load`` restores every field from a saved run, except that ``vectors.vectors`` then hold only the
    steering layer (the all-layer vectors and the activations are not saved).
    """

    vectors: TraitVectors
    dose: DoseResponse  # the traits and the random control
    purified: DoseResponse  # each trait purified against the others, and the paper's O-vs-C pair
    prompting: PromptingBaseline
    capability: Capability
    stability: Stability | None
    reactions: ReactionPreference | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    config: PersonalityConfig = field(default_factory=PersonalityConfig)

    @property
    def n_boot(self) -> int:
        return self.config.n_boot

    def summary(self) -> dict[str, Any]:
        """Per trait: steering slope on its own score (CI), whether it moved, the largest leak, the prompting
        shift and the capability change, plus a plain-language verdict."""
        out: dict[str, Any] = {}
        leak = self.dose.leakage(self.n_boot)
        for t in self.vectors.vectors:
            own = leak[t][t]
            others = {k: e for k, e in leak[t].items() if k != t}
            worst = max(others, key=lambda k: abs(others[k].value)) if others else None
            rand = leak[RANDOM][t] if RANDOM in leak else None
            react = (
                self.reactions.slope(t, self.n_boot)
                if self.reactions and t in self.reactions.values
                else None
            )
            out[t] = {
                "steering_slope": own.to_dict(),
                "random_control_slope": rand.to_dict() if rand else None,
                "largest_leak": {worst: others[worst].to_dict()} if worst else {},
                "prompting_shift": self.prompting.shift(t, t, self.n_boot).to_dict(),
                "held_out_reaction_slope": react.to_dict() if react else None,
                "arithmetic_accuracy_delta": self.capability.delta(t, "accuracy", self.n_boot).to_dict(),
                "verdict": _verdict(own, rand),
            }
        return out

    def leakage_figure(self) -> go.Figure:
        """Slope matrices (steered row -> scored column) before and after purification."""
        traits = list(self.vectors.vectors)
        return leakage_figure(traits, self.dose, self.purified, str(self.settings.get("model")), self.n_boot)

    def comparison_figure(self) -> go.Figure:
        """Own-trait change: steering (max alpha minus min alpha) vs prompting (high minus low persona), and
        the random control, with 95% CIs."""
        traits = list(self.vectors.vectors)
        return comparison_figure(
            traits, self.dose, self.prompting, str(self.settings.get("model")), self.n_boot
        )

    def capability_figure(self) -> go.Figure:
        return side_effects_figure(self.capability, str(self.settings.get("model")), self.n_boot)

    def figures(self) -> dict[str, go.Figure]:
        figs = {
            "personality_layers": self.vectors.figure(),
            "personality_dose_response": self.dose.figure(self.n_boot),
            "personality_leakage": self.leakage_figure(),
            "personality_vs_prompting": self.comparison_figure(),
            "personality_side_effects": self.capability_figure(),
        }
        if self.stability is not None:
            figs["personality_stability"] = self.stability.figure()
        if self.reactions is not None:
            figs["personality_reactions"] = self.reactions.figure(self.n_boot)
        return figs

    def sections(self) -> list[Section]:
        """The report section: how the traits were steered and read, the steering layer, the per-trait table
        and every figure."""
        sec = Section("personality", TITLE)
        sec.text = (
            f"Trait vectors at layer {self.vectors.layer} (best held-out separability among middle layers), "
            "steered with per-row alphas. Trait expression is read two ways: a balanced-keyed Likert "
            "questionnaire from the answer logits, and the preference for the high- over the low-trait reaction "
            "on held-out statement pairs the vectors never saw (log-prob per token). Controls: a random "
            "direction of equal norm, purified vectors and the persona-prompting baseline; side effect: "
            "arithmetic accuracy at the largest alpha."
        )
        sec.numbers["steering layer"] = self.vectors.layer
        if self.reactions is not None and RANDOM in self.reactions.values:
            random_slope = self.reactions.slope(RANDOM, self.n_boot).to_dict()
            sec.numbers["held-out reaction slope, random control"] = random_slope
        sec.tables.append((_TABLE_CAPTION, [_table_row(t, r) for t, r in self.summary().items()]))
        sec.figures.update(self.figures())
        return [sec]

    def to_dict(self) -> dict[str, Any]:
        n = self.n_boot
        return {
            "settings": self.settings,
            "layer": self.vectors.layer,
            "layer_profile": self.vectors.profile,
            "summary": self.summary(),
            "dose_response": self.dose.to_dict(n),
            "purified": self.purified.to_dict(n),
            "prompting": self.prompting.to_dict(n),
            "capability": self.capability.to_dict(n),
            "stability": self.stability.to_dict() if self.stability else None,
            "held_out_reactions": self.reactions.to_dict(n) if self.reactions else None,
            "config": self.config.to_dict(),
        }

    def save(self, out: str | Path, formats: Sequence[str] = ("html",)) -> Path:
        """``personality.json`` (numbers and config), one safetensors vector per trait (at the steering
        layer), the per-item arrays ``load`` rebuilds the results from, and the figures in ``formats``."""
        from steerlens.figures import save_figures
        from steerlens.files import write_json

        out_p = Path(out)
        out_p.mkdir(parents=True, exist_ok=True)
        for t in self.vectors.vectors:
            self.vectors.at_layer(t).save(out_p / f"trait_{t}.safetensors")
        parts = (self.dose, self.purified, self.prompting, self.capability, self.reactions)
        save_arrays(out_p / ARRAYS, self.vectors, parts)
        write_json(out_p / "personality.json", self.to_dict())
        save_figures(self.figures(), out_p, formats=formats)
        return out_p

    @classmethod
    def load(cls, out: str | Path, model: Model | None = None) -> Self:
        """Rebuild a study ``save`` wrote (``model``, if given, checks the vectors fit it). Not restored: the
        all-layer trait vectors (``vectors.vectors`` hold the steering layer only) and the activations."""
        out_p = Path(out)
        d = read_json(out_p / "personality.json")
        cfg = PersonalityConfig.from_dict(d["config"])
        vecs = {
            t: SteeringVector.load(out_p / f"trait_{t}.safetensors", model) for t in d["settings"]["traits"]
        }
        tv, dose, purified, prompting, cap, reactions = load_arrays(out_p / ARRAYS, vecs)
        stab = Stability.from_dict(d["stability"]) if d["stability"] else None
        return cls(tv, dose, purified, prompting, cap, stab, reactions, d["settings"], cfg)


_TABLE_CAPTION = (
    "Per trait: questionnaire slope (keyed score per alpha unit) vs a random direction, held-out "
    "reaction slope (log-prob per token per alpha unit), persona-prompting shift, arithmetic "
    "accuracy change at the largest alpha, and the questionnaire verdict"
)


def _table_row(trait: str, r: dict[str, Any]) -> dict[str, Any]:
    return {
        "trait": trait,
        "steering slope": r["steering_slope"],
        "random control slope": r["random_control_slope"],
        "held-out reaction slope": r["held_out_reaction_slope"],
        "prompting shift": r["prompting_shift"],
        "arithmetic accuracy change": r["arithmetic_accuracy_delta"],
        "verdict": r["verdict"],
    }


def _verdict(own: Estimate, rand: Estimate | None) -> str:
    """Plain words for an own-trait slope: moved or not (CI vs 0), which way, and beyond the random control."""
    if not (own.lo > 0 or own.hi < 0):
        return "questionnaire score does not move (slope CI includes 0)"
    beyond_random = rand is None or own.value > rand.hi or own.value < rand.lo
    direction = (
        "moves in the intended direction" if own.value > 0 else "moves OPPOSITE to the intended direction"
    )
    return direction + ("" if beyond_random else ", but not beyond the random control")


def run(
    model: Model, cfg: PersonalityConfig, out: str | Path | None = None, *, progress: bool = True
) -> PersonalityStudy:
    """The whole personality arm: vectors (held-out layer), dose-response of all traits with a random
    control, purified vectors, the prompting baseline, side effects at the largest alpha, stability.

    Args:
        model: the model to steer.
        cfg: the settings (``PersonalityConfig.quick()`` for a smoke run).
        out: if given, ``save`` the study there (figures as HTML).
        progress: print one line per stage.

    Example:
        >>> study = run(steerlens.load("smollm2-135m-instruct"), PersonalityConfig.quick())
        >>> study.summary()["extraversion"]["verdict"]
    """
    say = Stages("personality", 5 if cfg.with_stability else 4, progress)
    traits: list[str] = list(cfg.traits)
    alphas, units = cfg.alphas, cfg.units
    say.stage(f"contrastive activations for {len(traits)} traits")
    acts = trait_activations(model, traits)
    tv = trait_vectors(model, acts, method=cfg.method, seed=cfg.seed, layer=cfg.layer)
    singles = {t: tv.at_layer(t) for t in traits}
    say.stage(f"steering layer {tv.layer}; questionnaire dose-response")
    conds = {**singles, RANDOM: singles[traits[0]].random_like(cfg.seed + 1)}
    dose = dose_response(model, conds, alphas, traits=traits, units=units)
    purified = dose_response(model, purified_vectors(singles), alphas, traits=traits, units=units)
    say.stage("held-out reactions under steering")
    reactions = reaction_preference(
        model, acts, singles, alphas, control=conds[RANDOM], seed=cfg.seed, units=units
    )
    say.stage("prompting baseline, side effects")
    prompting = prompting_baseline(model, traits)
    mc_items = load_multiple_choice(cfg.mc) if cfg.mc else None
    cap = capability(model, conds, max(alphas, key=abs), units=units, seed=cfg.seed, mc_items=mc_items)
    stab = None
    if cfg.with_stability:
        say.stage("stability over methods, splits and trait pairs")
        stab = stability(
            model, acts, tv.layer, alpha=max(abs(a) for a in alphas), units=units, n_boot=cfg.n_boot
        )
    settings = dict(
        model=model.name, traits=traits, alphas=list(alphas), method=cfg.method, layer=tv.layer, seed=cfg.seed
    )
    study = PersonalityStudy(tv, dose, purified, prompting, cap, stab, reactions, settings, cfg)
    if out is not None:
        study.save(out)
    return study


def purified_vectors(singles: dict[str, SteeringVector]) -> dict[str, SteeringVector]:
    """Each trait vector with the span of the others removed, plus openness purified against
    conscientiousness (the paper's pair) when both are there."""
    pure = (
        {t: v.remove_span([o for s, o in singles.items() if s != t]) for t, v in singles.items()}
        if len(singles) > 1
        else dict(singles)
    )
    if "openness" in singles and "conscientiousness" in singles:
        pure["openness⊥conscientiousness"] = singles["openness"].purify(singles["conscientiousness"])
    return pure


def register(sub: SubParsers) -> None:
    """``steerlens personality``: registered through the ``steerlens.commands`` entry point."""

    def main(model: Model, cfg: PersonalityConfig, out: Path, args: argparse.Namespace) -> PersonalityStudy:
        return run(model, cfg)  # add_study_command saves to --out

    add_study_command(
        sub,
        "personality",
        "Big Five trait vectors, questionnaire dose-response, leakage, prompting baseline",
        PersonalityConfig,
        main,
        model="smollm2-135m-instruct",
    )
