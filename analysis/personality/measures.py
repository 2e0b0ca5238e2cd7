"""Trait expression under steering: the Likert questionnaire read from answer logits (dose-response and
leakage), held-out reactions (teacher-forced log-probs) and the persona-prompting baseline.

Shapes: ``DoseResponse.scores[condition, alpha, item]`` (keyed, 0..1); ``ReactionPreference.values[c]``
``[alphas, pairs]``. Every interval is a bootstrap over questionnaire items (or pairs) with ``n_boot``
resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import plotly.graph_objects as go

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.figures import GREY, PALETTE, line_with_band, new_figure
from steerlens.model import Model
from steerlens.probes.personality_data import PERSONAS, TRAITS, ContrastPair
from steerlens.probes.questionnaire import Item, administer, item_prompt, items, keyed_scores
from steerlens.stats import N_BOOT, Estimate, bootstrap, mean_ci
from steerlens.steering import RowSteering, SteeringVector
from steerlens.steering.vector import Units

from .figures import dose_figure
from .vectors import RANDOM, TraitActivations, held_out_split

Steered: TypeAlias = SteeringVector | Sequence[SteeringVector] | None


def row_steering(vec: Steered, alphas: Sequence[float], units: Units) -> RowSteering:
    """Every vector in ``vec`` added together, dataset row ``i`` with ``alphas[i]`` (nothing for None)."""
    vecs = [] if vec is None else [vec] if isinstance(vec, SteeringVector) else list(vec)
    return RowSteering.sweep(vecs, alphas, units=units, positions="all")


def questionnaire_scores(
    model: Model,
    vector: Steered,
    alphas: Sequence[float],
    qitems: Sequence[Item],
    *,
    units: Units = "resid",
    persona: str | None = None,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """``(keyed scores, digit mass)``, each ``[alphas, items]``: every item at every alpha in shared
    batches (per-row alphas), so an alpha grid costs one pass over items x alphas. Several vectors are
    steered together, each at the row's alpha.

    Example:
        >>> keyed, mass = questionnaire_scores(model, tv.at_layer("openness"), (-0.4, 0, 0.4), items(["openness"]))
    """
    prompts = [item_prompt(model, it, persona) for it in qitems]
    flat = [p for _ in alphas for p in prompts]
    row_alpha = [a for a in alphas for _ in prompts]
    ans = administer(model, flat, batch_size=batch_size, steering=row_steering(vector, row_alpha, units))
    keyed = keyed_scores(ans.probs, [it.reverse for it in qitems] * len(alphas))
    shape = (len(alphas), len(qitems))
    return keyed.reshape(shape).numpy(), ans.mass.reshape(shape).numpy()


@dataclass(frozen=True)
class DoseResponse:
    """Keyed questionnaire item scores (0..1) per steered condition and alpha: ``scores[c, a, item]``."""

    conditions: tuple[str, ...]  # steered vectors, e.g. the five traits and the random control
    alphas: tuple[float, ...]
    item_traits: tuple[str, ...]
    scores: np.ndarray  # [conditions, alphas, items]
    mass: np.ndarray  # [conditions, alphas, items] probability on the five digits
    settings: dict[str, Any] = field(default_factory=dict)
    item_reverse: tuple[bool, ...] = ()

    @property
    def traits(self) -> list[str]:
        return list(dict.fromkeys(self.item_traits))

    def agreement(self, condition: str, alpha_index: int, n_boot: int = N_BOOT) -> Estimate:
        """Mean un-keyed agreement (0..1) over all items: a shift here with flat keyed scores is
        acquiescence (the model agrees more or less with everything), not a trait."""
        if len(self.item_reverse) != len(self.item_traits):
            raise SteerlensError(
                "this DoseResponse was built without item keys; rebuild it with dose_response"
            )
        x = self.scores[self.conditions.index(condition), alpha_index]
        raw = np.where(np.array(self.item_reverse), 1 - x, x)
        return bootstrap(lambda i: float(raw[i].mean()), len(raw), n_boot=n_boot)

    def moved_traits(self, condition: str, n_boot: int = N_BOOT) -> list[str]:
        return [t for t in self.traits if self.moved(condition, t, n_boot)]

    def columns(self, trait: str) -> np.ndarray:
        """The item indices of ``trait``."""
        cols = np.array([k for k, t in enumerate(self.item_traits) if t == trait])
        if len(cols) == 0:
            raise SteerlensError(
                f"no items of trait {trait!r}; scored traits are {sorted(set(self.item_traits))}"
            )
        return cols

    def score(self, condition: str, alpha_index: int, trait: str, n_boot: int = N_BOOT) -> Estimate:
        x = self.scores[self.conditions.index(condition), alpha_index, self.columns(trait)]
        return bootstrap(lambda i: float(x[i].mean()), len(x), n_boot=n_boot)

    def slope(self, condition: str, trait: str, n_boot: int = N_BOOT) -> Estimate:
        """Least-squares slope of the trait score against alpha, CI by resampling items."""
        x = self.scores[self.conditions.index(condition)][:, self.columns(trait)]  # [alphas, items]
        a = np.array(self.alphas) - np.mean(self.alphas)

        def stat(i: np.ndarray) -> float:
            return float(a @ x[:, i].mean(1) / (a @ a))

        return bootstrap(stat, x.shape[1], n_boot=n_boot)

    def leakage(self, n_boot: int = N_BOOT) -> dict[str, dict[str, Estimate]]:
        """``[steered condition][scored trait]`` slopes: the diagonal is the intended effect, the rest leak."""
        return {c: {t: self.slope(c, t, n_boot) for t in self.traits} for c in self.conditions}

    def moved(self, condition: str, trait: str, n_boot: int = N_BOOT) -> bool:
        """Whether the slope's 95% CI excludes zero."""
        e = self.slope(condition, trait, n_boot)
        return e.lo > 0 or e.hi < 0

    def to_dict(self, n_boot: int = N_BOOT) -> dict[str, Any]:
        steps = range(len(self.alphas))
        return {
            "settings": self.settings,
            "alphas": list(self.alphas),
            "scores": {
                c: {t: [self.score(c, k, t, n_boot).to_dict() for k in steps] for t in self.traits}
                for c in self.conditions
            },
            "answer_mass": {c: self.mass[k].mean(1).tolist() for k, c in enumerate(self.conditions)},
            "agreement": {c: [self.agreement(c, k, n_boot).to_dict() for k in steps] for c in self.conditions}
            if self.item_reverse
            else None,
            "leakage_slopes": {
                c: {t: e.to_dict() for t, e in row.items()} for c, row in self.leakage(n_boot).items()
            },
        }

    def figure(self, n_boot: int = N_BOOT) -> go.Figure:
        """One panel per steered condition: every trait's score vs alpha (see ``dose_figure``)."""
        return dose_figure(self, n_boot)


def dose_response(
    model: Model,
    vectors: dict[str, SteeringVector],
    alphas: Sequence[float] = (-0.4, -0.2, 0.0, 0.2, 0.4),
    *,
    traits: Sequence[str] = TRAITS,
    units: Units = "resid",
    batch_size: int = 32,
) -> DoseResponse:
    """Score every trait's questionnaire while steering each of ``vectors`` (single-layer vectors, e.g.
    ``TraitVectors.at_layer(t)`` and a ``random_like`` control) over ``alphas``.

    Example:
        >>> dr = dose_response(model, {"openness": tv.at_layer("openness")}, (-0.4, 0, 0.4))
        >>> dr.slope("openness", "openness")
    """
    if not vectors:
        raise EmptyInput("no vectors to steer")
    qitems = items(traits)
    scores, mass = [], []
    for v in vectors.values():
        s, m = questionnaire_scores(model, v, alphas, qitems, units=units, batch_size=batch_size)
        scores.append(s)
        mass.append(m)
    layers = sorted({l for v in vectors.values() for l in v.layers})
    settings = dict(model=model.name, units=units, layers=layers, n_items=len(qitems))
    return DoseResponse(
        tuple(vectors),
        tuple(alphas),
        tuple(it.trait for it in qitems),
        np.stack(scores),
        np.stack(mass),
        settings,
        tuple(it.reverse for it in qitems),
    )


# ---- trait expression in text: held-out reactions ---------------------------------------------------
@dataclass(frozen=True)
class ReactionPreference:
    """How much more likely the model finds the high-trait reaction than the low one on HELD-OUT contrast
    pairs (mean per-token log-prob difference, teacher-forced) while steering: ``values[c]`` is
    ``[alphas, pairs]``. A behavioural read-out that needs no self-report."""

    conditions: tuple[str, ...]
    alphas: tuple[float, ...]
    values: dict[str, np.ndarray]
    settings: dict[str, Any] = field(default_factory=dict)

    def curve(self, condition: str, n_boot: int = N_BOOT) -> list[Estimate]:
        return [mean_ci(row, n_boot=n_boot) for row in self.values[condition]]

    def slope(self, condition: str, n_boot: int = N_BOOT) -> Estimate:
        x = self.values[condition]
        a = np.array(self.alphas) - np.mean(self.alphas)
        return bootstrap(lambda i: float(a @ x[:, i].mean(1) / (a @ a)), x.shape[1], n_boot=n_boot)

    def to_dict(self, n_boot: int = N_BOOT) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "alphas": list(self.alphas),
            "curves": {c: [e.to_dict() for e in self.curve(c, n_boot)] for c in self.conditions},
            "slopes": {c: self.slope(c, n_boot).to_dict() for c in self.conditions},
        }

    def figure(self, n_boot: int = N_BOOT) -> go.Figure:
        fig = new_figure(
            f"Held-out reactions under steering ({self.settings.get('model')})",
            f"alpha ({self.settings.get('units', 'resid')} units)",
            "log P(high reaction) - log P(low), per token",
        )
        for k, c in enumerate(self.conditions):
            est = self.curve(c, n_boot)
            colour = GREY if c.startswith(RANDOM) else PALETTE[k % len(PALETTE)]
            lo, hi = [e.lo for e in est], [e.hi for e in est]
            line_with_band(fig, list(self.alphas), [e.value for e in est], lo, hi, c, colour)
        return fig


def _preference(
    model: Model,
    vec: SteeringVector,
    pairs: list[ContrastPair],
    alphas: Sequence[float],
    units: Units,
    batch_size: int,
) -> np.ndarray:
    """``[alphas, pairs]`` per-token log P(high reaction) - log P(low) while steering ``vec``."""
    from steerlens.generation import continuation_logprobs

    heads = [f"Situation: {p.situation}\nMy reaction:" for p in pairs]
    conts = [f" {r}" for p in pairs for r in (p.high, p.low)]
    prompts = [h for h in heads for _ in (0, 1)]
    whole = model.tokenize([h + c for h, c in zip(prompts, conts, strict=True)])
    n_tok = np.array(
        [len(a) - len(b) for a, b in zip(whole, model.tokenize(prompts), strict=True)], dtype=float
    )
    row_alpha = [a for a in alphas for _ in prompts]
    lp, _ = continuation_logprobs(
        model,
        prompts * len(alphas),
        conts * len(alphas),
        batch_size=batch_size,
        steering=row_steering(vec, row_alpha, units),
    )
    per_tok = lp.numpy().reshape(len(alphas), len(prompts)) / n_tok
    return per_tok[:, 0::2] - per_tok[:, 1::2]


def reaction_preference(
    model: Model,
    acts: dict[str, TraitActivations],
    vectors: dict[str, SteeringVector],
    alphas: Sequence[float],
    *,
    control: SteeringVector | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    max_pairs: int = 16,
    units: Units = "resid",
    batch_size: int = 32,
) -> ReactionPreference:
    """Each trait vector on its own trait's held-out pairs (the split ``trait_vectors`` used), and
    ``control`` on every trait's pairs, over ``alphas`` in shared per-row-alpha batches.

    Example:
        >>> rp = reaction_preference(model, acts, {t: tv.at_layer(t) for t in acts}, (-0.5, 0, 0.5))
        >>> rp.slope("openness")
    """
    held: dict[str, list[ContrastPair]] = {}
    for t, a in acts.items():
        if not a.pairs:
            raise SteerlensError(
                f"activations of {t!r} carry no pair texts; collect them with trait_activations"
            )
        _, test = held_out_split(a, test_fraction, seed)
        held[t] = [a.pairs[i] for i in test][:: max(1, len(test) // max_pairs)][:max_pairs]
    values = {
        t: _preference(model, vectors[t], held[t], alphas, units, batch_size) for t in vectors if t in held
    }
    if control is not None:
        k = max(2, max_pairs // len(held))
        values[RANDOM] = np.concatenate(
            [_preference(model, control, ps[:k], alphas, units, batch_size) for ps in held.values()], 1
        )
    settings = dict(
        model=model.name, units=units, seed=seed, test_fraction=test_fraction, max_pairs=max_pairs
    )
    return ReactionPreference(tuple(values), tuple(alphas), values, settings)


# ---- the prompting baseline ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptingBaseline:
    """Questionnaire scores with no persona, a high-trait persona and a low-trait persona (ICL)."""

    item_traits: tuple[str, ...]
    neutral: np.ndarray  # [items]
    high: dict[str, np.ndarray]  # persona trait -> [items]
    low: dict[str, np.ndarray]
    settings: dict[str, Any] = field(default_factory=dict)

    def shift(self, persona: str, trait: str, n_boot: int = N_BOOT) -> Estimate:
        """Score of ``trait`` under the high persona minus under the low persona of ``persona``."""
        cols = np.array([k for k, t in enumerate(self.item_traits) if t == trait])
        d = self.high[persona][cols] - self.low[persona][cols]
        return bootstrap(lambda i: float(d[i].mean()), len(d), n_boot=n_boot)

    def to_dict(self, n_boot: int = N_BOOT) -> dict[str, Any]:
        traits = list(dict.fromkeys(self.item_traits))
        return {
            "settings": self.settings,
            "shift_high_minus_low": {
                p: {t: self.shift(p, t, n_boot).to_dict() for t in traits} for p in self.high
            },
        }


def prompting_baseline(
    model: Model, traits: Sequence[str] = TRAITS, batch_size: int = 32
) -> PromptingBaseline:
    """Administer the questionnaire with each trait's high and low persona (system prompt or first line).

    Example:
        >>> prompting_baseline(model, ("openness",)).shift("openness", "openness")
    """
    qitems = items(traits)
    neutral, _ = questionnaire_scores(model, None, [0.0], qitems, batch_size=batch_size)
    high, low = {}, {}
    for t in traits:
        high[t] = questionnaire_scores(
            model, None, [0.0], qitems, persona=PERSONAS[t][0], batch_size=batch_size
        )[0][0]
        low[t] = questionnaire_scores(
            model, None, [0.0], qitems, persona=PERSONAS[t][1], batch_size=batch_size
        )[0][0]
    return PromptingBaseline(tuple(it.trait for it in qitems), neutral[0], high, low, dict(model=model.name))
