"""Big Five personality steering: trait vectors, purification, questionnaire dose-response, leakage, the
prompting baseline, capability side effects and stability.

The mechanistic arm of "Personality as a Probe for LLM Evaluation": difference-of-means (or PCA / probe)
vectors from contrastive high/low reactions, steered at one layer with per-row alphas so a whole alpha grid
runs in one batch; trait expression is read from a Likert questionnaire's answer logits, never generated.
Every score comes with a bootstrap CI over questionnaire items, and a random direction of equal norm is
steered beside the traits as the control.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.figures import GREY, PALETTE, bars_with_ci, line_with_band, new_figure
from steerlens.inputs import Example
from steerlens.model import Model
from steerlens.probes.personality_data import (
    PERSONAS,
    TRAITS,
    ContrastPair,
    check_trait,
    contrast_pairs,
)
from steerlens.probes.questionnaire import Item, administer, item_prompt, items, keyed_scores
from steerlens.stats import Estimate, auroc, bootstrap, mean_ci

from .apply import Intervention, steer
from .build import AGGREGATORS, vector_from_activations
from .vector import SteeringVector, Units

RANDOM = "random"


# ---- trait vectors ------------------------------------------------------------------------------------
def _example(situation: str, reaction: str) -> Example:
    return Example.from_segments(
        [(None, f"Situation: {situation}\nMy reaction:"), ("response", f" {reaction}")]
    )


@dataclass(frozen=True)
class TraitActivations:
    """Mean resid_post over each reaction's tokens, every layer: ``high[i]`` and ``low[i]`` are a pair."""

    trait: str
    high: Float[Tensor, "pairs layers d_model"]
    low: Float[Tensor, "pairs layers d_model"]
    groups: tuple[str, ...]
    pairs: tuple[ContrastPair, ...] = ()


def trait_activations(
    model: Model,
    traits: Sequence[str] = TRAITS,
    pairs: Sequence[ContrastPair] | None = None,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, TraitActivations]:
    """Collect the contrastive activations of ``traits`` (built-in pairs, or ``pairs`` from
    ``load_contrast_jsonl``) in one pass over all layers."""
    from steerlens.collect import collect

    for t in traits:
        if pairs is None:
            check_trait(t)
    by_trait = {
        t: [p for p in (pairs if pairs is not None else contrast_pairs(t)) if p.trait == t] for t in traits
    }
    empty = [t for t, ps in by_trait.items() if not ps]
    if empty:
        raise EmptyInput(f"no contrast pairs for traits {empty}")
    examples = [_example(p.situation, r) for ps in by_trait.values() for p in ps for r in (p.high, p.low)]
    sites = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    store = collect(
        model, examples, sites, "span:response", batch_size=batch_size, dtype=torch.float16, progress=progress
    )
    pooled = torch.stack([store.pooled(s) for s in sites], 1)  # [examples, layers, d]
    out, k = {}, 0
    for t, ps in by_trait.items():
        block = pooled[k : k + 2 * len(ps)]
        k += 2 * len(ps)
        out[t] = TraitActivations(
            t, block[0::2].clone(), block[1::2].clone(), tuple(p.group for p in ps), tuple(ps)
        )
    return out


@dataclass(frozen=True)
class TraitVectors:
    """One steering vector per trait (all layers, built on the training statement groups) and the held-out
    layer profile that chose the steering layer."""

    vectors: dict[str, SteeringVector]
    profile: dict[str, list[float]]  # trait -> held-out paired accuracy per layer
    profile_auroc: dict[str, list[float]]
    layer: int
    settings: dict[str, Any] = field(default_factory=dict)
    profile_dprime: dict[str, list[float]] = field(default_factory=dict)  # held-out d' per layer

    def at_layer(self, trait: str) -> SteeringVector:
        return self.vectors[trait].select([self.layer])

    def figure(self) -> Any:
        """Separability per layer: how often the held-out high reaction projects above its low twin."""
        fig = new_figure(
            f"Trait separability per layer ({self.settings.get('model')}, held-out pairs)",
            "layer",
            "held-out paired accuracy",
        )
        for k, (t, acc) in enumerate(self.profile.items()):
            line_with_band(fig, list(range(len(acc))), acc, None, None, t, PALETTE[k % len(PALETTE)])
        fig.add_vline(
            x=self.layer, line_dash="dot", line_color=GREY, annotation_text=f"steering layer {self.layer}"
        )
        fig.add_hline(y=0.5, line_dash="dot", line_color=GREY)
        fig.update_yaxes(range=[0.4, 1.02])
        return fig


def trait_vectors(
    model: Model,
    acts: dict[str, TraitActivations],
    *,
    method: str = "mean",
    test_fraction: float = 0.25,
    seed: int = 0,
    layer: int | None = None,
    band: tuple[float, float] = (0.25, 0.75),
) -> TraitVectors:
    """Vectors per trait from the training groups; the steering layer is the one with the largest mean
    held-out d' (projection separation over its spread; paired accuracy saturates at 1) inside the middle
    ``band`` of depth (late layers separate well but steer little), unless ``layer`` is given."""
    vectors, profile, profile_auc, profile_d = {}, {}, {}, {}
    for t, a in acts.items():
        train, test = _split(a, test_fraction, seed)
        vec = _vector(model, a, train, method, seed)
        vectors[t] = vec
        acc, auc, dprime = [], [], []
        for l in range(a.high.shape[1]):
            u = vec.directions[l].double()
            hi, lo = a.high[test, l].double() @ u, a.low[test, l].double() @ u
            acc.append(float((hi > lo).double().mean()))
            auc.append(auroc(torch.cat([hi, lo]).numpy(), [1] * len(hi) + [0] * len(lo)))
            sd = float(torch.sqrt((hi.var() + lo.var()) / 2)) if len(hi) > 1 else 1.0
            dprime.append(float(hi.mean() - lo.mean()) / max(sd, 1e-12))
        profile[t], profile_auc[t], profile_d[t] = acc, auc, dprime
    n = model.cfg.n_layers
    if layer is None:
        lo_l, hi_l = int(band[0] * n), max(int(band[0] * n) + 1, math.ceil(band[1] * n))
        mean = np.mean([profile_d[t] for t in profile_d], axis=0)
        layer = lo_l + int(np.argmax(mean[lo_l:hi_l]))
    elif not 0 <= layer < n:
        raise SteerlensError(f"layer {layer} outside 0..{n - 1} for {model.name}")
    settings = dict(model=model.name, method=method, test_fraction=test_fraction, seed=seed, band=list(band))
    return TraitVectors(vectors, profile, profile_auc, layer, settings, profile_d)


def _split(a: TraitActivations, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    groups = sorted(set(a.groups))
    if len(groups) < 2:
        raise SteerlensError(f"trait {a.trait!r} has one statement group; a held-out split needs >= 2")
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    test_g = set(groups[: max(1, round(len(groups) * test_fraction))])
    train = [i for i, g in enumerate(a.groups) if g not in test_g]
    test = [i for i, g in enumerate(a.groups) if g in test_g]
    return train, test


def _vector(model: Model, a: TraitActivations, rows: Sequence[int], method: str, seed: int) -> SteeringVector:
    if method not in AGGREGATORS:
        raise SteerlensError(f"method={method!r}: expected one of {sorted(AGGREGATORS)}")
    idx = torch.tensor(list(rows))
    layers = range(a.high.shape[1])
    return vector_from_activations(
        {l: a.high[idx, l].float() for l in layers},
        {l: a.low[idx, l].float() for l in layers},
        model_id=model.name,
        d_model=model.cfg.d_model,
        method=method,
        seed=seed,
        settings={"trait": a.trait, "pairs": len(rows), "pooling": "mean over reaction tokens"},
    )


# ---- purification -------------------------------------------------------------------------------------
def purify(
    vector: SteeringVector,
    other: SteeringVector,
    *,
    target: float = 0.0,
    method: str = "project",
    mix: float = 1.0,
) -> SteeringVector:
    """Reduce what ``vector`` shares with ``other``, per layer, keeping its raw norm.

    "project": rotate within span(v, u) so cos(v', u) equals ``target`` exactly (0 = Gram-Schmidt).
    "mix": the mix-and-renormalise variant, v' = v/|v| - ``mix`` * cos(v, u) * u/|u|, rescaled to |v|
    (mix = 1 is again orthogonalisation; smaller values remove part of the overlap).
    """
    if method not in ("project", "mix"):
        raise SteerlensError(f"method={method!r}: expected 'project' or 'mix'")
    if not -1 < target < 1:
        raise SteerlensError(f"target cosine {target} must lie strictly between -1 and 1")
    raw = {}
    for l in vector.layers:
        if l not in other.directions:
            raise SteerlensError(f"cannot purify: the other vector has no layer {l} (it has {other.layers})")
        v, u = vector.directions[l].double(), other.directions[l].double()
        c = float(v @ u)
        resid = v - c * u
        if float(resid.norm()) < 1e-9:
            raise SteerlensError(f"layer {l}: the vectors are parallel; nothing is left after purification")
        w = resid / resid.norm()
        if method == "project":
            d = target * u + math.sqrt(1 - target**2) * w
        else:
            d = v - mix * c * u
            d = d / d.norm()
        raw[l] = (d * vector.raw_norms.get(l, 1.0)).float()
    tag = f"purified({method}, target={target})" if method == "project" else f"purified(mix={mix})"
    out = vector._with(raw, method=f"{vector.method}|{tag}")
    return out


def gram_schmidt(vectors: dict[str, SteeringVector], order: Sequence[str]) -> dict[str, SteeringVector]:
    """Orthogonalise the named vectors in ``order`` (each against all earlier ones), per layer."""
    out: dict[str, SteeringVector] = {}
    for name in order:
        v = vectors[name]
        for prev in out.values():
            v = purify(v, prev, target=0.0)
        out[name] = v
    return out


# ---- questionnaire under steering ---------------------------------------------------------------------
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

    def agreement(self, condition: str, alpha_index: int, n_boot: int = 1000) -> Estimate:
        """Mean un-keyed agreement (0..1) over all items: a shift here with flat keyed scores is
        acquiescence (the model agrees more or less with everything), not a trait."""
        if len(self.item_reverse) != len(self.item_traits):
            raise SteerlensError(
                "this DoseResponse was built without item keys; rebuild it with dose_response"
            )
        x = self.scores[self.conditions.index(condition), alpha_index]
        raw = np.where(np.array(self.item_reverse), 1 - x, x)
        return bootstrap(lambda i: float(raw[i].mean()), len(raw), n_boot=n_boot)

    def moved_traits(self, condition: str) -> list[str]:
        return [t for t in dict.fromkeys(self.item_traits) if self.moved(condition, t)]

    def _cols(self, trait: str) -> np.ndarray:
        cols = np.array([k for k, t in enumerate(self.item_traits) if t == trait])
        if len(cols) == 0:
            raise SteerlensError(
                f"no items of trait {trait!r}; scored traits are {sorted(set(self.item_traits))}"
            )
        return cols

    def score(self, condition: str, alpha_index: int, trait: str, n_boot: int = 1000) -> Estimate:
        x = self.scores[self.conditions.index(condition), alpha_index, self._cols(trait)]
        return bootstrap(lambda i: float(x[i].mean()), len(x), n_boot=n_boot)

    def slope(self, condition: str, trait: str, n_boot: int = 1000) -> Estimate:
        """Least-squares slope of the trait score against alpha, CI by resampling items."""
        x = self.scores[self.conditions.index(condition)][:, self._cols(trait)]  # [alphas, items]
        a = np.array(self.alphas) - np.mean(self.alphas)

        def stat(i: np.ndarray) -> float:
            return float(a @ x[:, i].mean(1) / (a @ a))

        return bootstrap(stat, x.shape[1], n_boot=n_boot)

    def leakage(self, n_boot: int = 1000) -> dict[str, dict[str, Estimate]]:
        """``[steered condition][scored trait]`` slopes: the diagonal is the intended effect, the rest leak."""
        traits = list(dict.fromkeys(self.item_traits))
        return {c: {t: self.slope(c, t, n_boot) for t in traits} for c in self.conditions}

    def moved(self, condition: str, trait: str) -> bool:
        """Whether the slope's 95% CI excludes zero."""
        e = self.slope(condition, trait)
        return e.lo > 0 or e.hi < 0

    def to_dict(self, n_boot: int = 1000) -> dict[str, Any]:
        traits = list(dict.fromkeys(self.item_traits))
        return {
            "settings": self.settings,
            "alphas": list(self.alphas),
            "scores": {
                c: {
                    t: [self.score(c, k, t, n_boot).to_dict() for k in range(len(self.alphas))]
                    for t in traits
                }
                for c in self.conditions
            },
            "answer_mass": {c: self.mass[k].mean(1).tolist() for k, c in enumerate(self.conditions)},
            "agreement": {
                c: [self.agreement(c, k, n_boot).to_dict() for k in range(len(self.alphas))]
                for c in self.conditions
            }
            if self.item_reverse
            else None,
            "leakage_slopes": {
                c: {t: e.to_dict() for t, e in row.items()} for c, row in self.leakage(n_boot).items()
            },
        }

    def figure(self) -> Any:
        """One panel per steered condition: every trait's score vs alpha (solid: the steered trait, with its
        95% CI; dotted: the others; grey dashed: un-keyed agreement). Panels of a condition that is no trait
        (the random control) band every trait. Panel titles say which traits moved beyond the CIs."""
        from plotly.subplots import make_subplots

        traits = list(dict.fromkeys(self.item_traits))
        cols = min(3, len(self.conditions))
        rows = -(-len(self.conditions) // cols)
        titles = []
        for c in self.conditions:
            moved = self.moved_traits(c)
            titles.append(f"{c}: " + (f"moved {', '.join(moved)}" if moved else "no trait moved"))
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.07)
        base = new_figure(f"Trait scores under steering ({self.settings.get('model')})", "", "")
        fig.update_layout(
            template=base.layout.template, title=base.layout.title, width=380 * cols, height=300 * rows + 80
        )
        for ci, c in enumerate(self.conditions):
            own = c.split("⊥")[0]  # "openness⊥conscientiousness" steers openness
            for ti, t in enumerate(traits):
                est = [self.score(c, k, t, n_boot=300) for k in range(len(self.alphas))]
                band = t == own or own not in traits
                sub = line_with_band(
                    new_figure("", "", ""),
                    list(self.alphas),
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
                    fig.add_trace(tr, row=ci // cols + 1, col=ci % cols + 1)
            if self.item_reverse:
                agree = [self.agreement(c, k, n_boot=300).value for k in range(len(self.alphas))]
                fig.add_scatter(
                    x=list(self.alphas),
                    y=agree,
                    mode="lines",
                    line=dict(color=GREY, dash="dash"),
                    name="agreement (un-keyed)",
                    legendgroup="agreement",
                    showlegend=ci == 0,
                    row=ci // cols + 1,
                    col=ci % cols + 1,
                )
        fig.update_yaxes(range=[0, 1])
        fig.update_xaxes(title_text=f"alpha ({self.settings.get('units', 'resid')} units)")
        return fig


Steered = SteeringVector | Sequence[SteeringVector] | None


def _row_context(model: Model, vec: Steered, alphas: Sequence[float], units: Units) -> Any:
    """A batch context steering every vector in ``vec`` (together) with each row's own alpha."""
    vecs = [] if vec is None else [vec] if isinstance(vec, SteeringVector) else list(vec)

    def ctx(rows: list[int]) -> Any:
        stack = ExitStack()
        if vecs:
            a = [float(alphas[r]) for r in rows]
            stack.enter_context(
                steer(model, *[Intervention(v, alpha=a, units=units, positions="all") for v in vecs])
            )
        return stack

    return ctx


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
    steered together, each at the row's alpha."""
    prompts = [item_prompt(model, it, persona) for it in qitems]
    flat = [p for _ in alphas for p in prompts]
    row_alpha = [a for a in alphas for _ in prompts]
    ans = administer(
        model, flat, batch_size=batch_size, context=_row_context(model, vector, row_alpha, units)
    )
    keyed = keyed_scores(ans.probs, [it.reverse for it in qitems] * len(alphas))
    shape = (len(alphas), len(qitems))
    return keyed.reshape(shape).numpy(), ans.mass.reshape(shape).numpy()


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
    ``TraitVectors.at_layer(t)`` and a ``random_like`` control) over ``alphas``."""
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

    def curve(self, condition: str, n_boot: int = 1000) -> list[Estimate]:
        return [mean_ci(row, n_boot=n_boot) for row in self.values[condition]]

    def slope(self, condition: str, n_boot: int = 1000) -> Estimate:
        x = self.values[condition]
        a = np.array(self.alphas) - np.mean(self.alphas)
        return bootstrap(lambda i: float(a @ x[:, i].mean(1) / (a @ a)), x.shape[1], n_boot=n_boot)

    def to_dict(self, n_boot: int = 1000) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "alphas": list(self.alphas),
            "curves": {c: [e.to_dict() for e in self.curve(c, n_boot)] for c in self.conditions},
            "slopes": {c: self.slope(c, n_boot).to_dict() for c in self.conditions},
        }

    def figure(self) -> Any:
        fig = new_figure(
            f"Held-out reactions under steering ({self.settings.get('model')})",
            f"alpha ({self.settings.get('units', 'resid')} units)",
            "log P(high reaction) - log P(low), per token",
        )
        for k, c in enumerate(self.conditions):
            est = self.curve(c, 300)
            colour = GREY if c.startswith(RANDOM) else PALETTE[k % len(PALETTE)]
            line_with_band(
                fig,
                list(self.alphas),
                [e.value for e in est],
                [e.lo for e in est],
                [e.hi for e in est],
                c,
                colour,
            )
        return fig


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
    ``control`` on every trait's pairs, over ``alphas`` in shared per-row-alpha batches."""
    from steerlens.generation import continuation_logprobs

    def pref(vec: SteeringVector, pairs: list[ContrastPair]) -> np.ndarray:
        heads = [f"Situation: {p.situation}\nMy reaction:" for p in pairs]
        conts = [f" {r}" for p in pairs for r in (p.high, p.low)]
        prompts = [h for h in heads for _ in (0, 1)]
        n_tok = np.array(
            [
                len(a) - len(b)
                for a, b in zip(
                    model.tokenize([h + c for h, c in zip(prompts, conts, strict=True)]),
                    model.tokenize(prompts),
                    strict=True,
                )
            ],
            dtype=float,
        )
        flat_p = prompts * len(alphas)
        flat_c = conts * len(alphas)
        row_alpha = [a for a in alphas for _ in prompts]
        lp, _ = continuation_logprobs(
            model, flat_p, flat_c, batch_size=batch_size, context=_row_context(model, vec, row_alpha, units)
        )
        per_tok = lp.numpy().reshape(len(alphas), len(prompts)) / n_tok
        return per_tok[:, 0::2] - per_tok[:, 1::2]

    held: dict[str, list[ContrastPair]] = {}
    for t, a in acts.items():
        if not a.pairs:
            raise SteerlensError(
                f"activations of {t!r} carry no pair texts; collect them with trait_activations"
            )
        _, test = _split(a, test_fraction, seed)
        held[t] = [a.pairs[i] for i in test][:: max(1, len(test) // max_pairs)][:max_pairs]
    values = {t: pref(vectors[t], held[t]) for t in vectors if t in held}
    if control is not None:
        values[RANDOM] = np.concatenate(
            [pref(control, ps[: max(2, max_pairs // len(held))]) for ps in held.values()], 1
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

    def shift(self, persona: str, trait: str, n_boot: int = 1000) -> Estimate:
        """Score of ``trait`` under the high persona minus under the low persona of ``persona``."""
        cols = np.array([k for k, t in enumerate(self.item_traits) if t == trait])
        d = self.high[persona][cols] - self.low[persona][cols]
        return bootstrap(lambda i: float(d[i].mean()), len(d), n_boot=n_boot)

    def to_dict(self, n_boot: int = 1000) -> dict[str, Any]:
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
    """Administer the questionnaire with each trait's high and low persona (system prompt or first line)."""
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


# ---- side effects -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Capability:
    """Teacher-forced arithmetic (and optional multiple-choice) results per steered condition, paired with
    the unsteered run on the same problems."""

    conditions: tuple[str, ...]
    logprob: np.ndarray  # [conditions, problems] log-prob of the right answer
    correct: np.ndarray  # [conditions, problems] greedy answer right
    baseline_logprob: np.ndarray  # [problems]
    baseline_correct: np.ndarray
    mc_correct: np.ndarray | None = None  # [conditions, mc items]
    baseline_mc: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def delta(self, condition: str, what: str = "accuracy", n_boot: int = 1000) -> Estimate:
        """Steered minus unsteered, paired over problems: "accuracy", "logprob" or "mc_accuracy"."""
        k = self.conditions.index(condition)
        if what == "accuracy":
            d = self.correct[k].astype(float) - self.baseline_correct.astype(float)
        elif what == "logprob":
            d = self.logprob[k] - self.baseline_logprob
        elif what == "mc_accuracy" and self.mc_correct is not None and self.baseline_mc is not None:
            d = self.mc_correct[k].astype(float) - self.baseline_mc.astype(float)
        else:
            raise SteerlensError(
                f"what={what!r}: expected 'accuracy', 'logprob' or (with MC items) 'mc_accuracy'"
            )
        return bootstrap(lambda i: float(d[i].mean()), len(d), n_boot=n_boot)

    def to_dict(self, n_boot: int = 1000) -> dict[str, Any]:
        hows = ["accuracy", "logprob"] + (["mc_accuracy"] if self.mc_correct is not None else [])
        return {
            "settings": self.settings,
            "baseline_accuracy": float(self.baseline_correct.mean()),
            "delta": {c: {h: self.delta(c, h, n_boot).to_dict() for h in hows} for c in self.conditions},
        }


def arithmetic_items(n: int = 48, seed: int = 0) -> tuple[list[str], list[str]]:
    """One-step problems ``"Q: 23 + 45 =" -> " 68"`` for a cheap, teacher-forced capability probe."""
    rng = np.random.default_rng(seed)
    prompts, answers = [], []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(2, 60, size=2))
        prompts.append(f"Q: {a} + {b} =")
        answers.append(f" {a + b}")
    return prompts, answers


def capability(
    model: Model,
    vectors: dict[str, SteeringVector],
    alpha: float,
    *,
    units: Units = "resid",
    n_problems: int = 48,
    seed: int = 0,
    mc_items: Sequence[dict[str, Any]] | None = None,
    batch_size: int = 32,
) -> Capability:
    """Arithmetic answer log-prob and greedy accuracy while steering each vector at ``alpha`` vs unsteered;
    ``mc_items`` (``load_multiple_choice``) add multiple-choice accuracy."""
    from steerlens.generation import continuation_logprobs

    shots = "Q: 3 + 4 = 7\nQ: 12 + 30 = 42\n"
    prompts, answers = arithmetic_items(n_problems, seed)
    prompts = [shots + p for p in prompts]

    def run(vec: SteeringVector | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        ctx = _row_context(model, vec, [alpha] * max(len(prompts), len(mc_items or [])), units)
        lp, ok = continuation_logprobs(model, prompts, answers, batch_size=batch_size, context=ctx)
        mc = multiple_choice_correct(model, mc_items, ctx, batch_size) if mc_items else None
        return lp.numpy(), ok.numpy(), mc

    b_lp, b_ok, b_mc = run(None)
    got = [run(v) for v in vectors.values()]
    return Capability(
        tuple(vectors),
        np.stack([g[0] for g in got]),
        np.stack([g[1] for g in got]),
        b_lp,
        b_ok,
        np.stack([g[2] for g in got]) if mc_items else None,  # type: ignore[misc]
        b_mc,
        dict(
            model=model.name,
            alpha=alpha,
            units=units,
            n_problems=n_problems,
            seed=seed,
            n_mc=len(mc_items or []),
        ),
    )


def load_multiple_choice(path: str | Path) -> list[dict[str, Any]]:
    """Multiple-choice JSONL: ``{"question": str, "choices": [str, ...], "answer": index or letter}``."""
    import json

    out = []
    for k, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if not {"question", "choices", "answer"} <= set(row) or not 2 <= len(row["choices"]) <= 26:
            raise SteerlensError(f"{path}:{k + 1}: need question, 2-26 choices and answer (index or letter)")
        ans = row["answer"]
        idx = ord(ans.upper()) - ord("A") if isinstance(ans, str) else int(ans)
        if not 0 <= idx < len(row["choices"]):
            raise SteerlensError(
                f"{path}:{k + 1}: answer {ans!r} is not one of the {len(row['choices'])} choices"
            )
        out.append({"question": row["question"], "choices": list(row["choices"]), "answer": idx})
    if not out:
        raise EmptyInput(f"{path} holds no multiple-choice items")
    return out


def multiple_choice_correct(
    model: Model, mc: Sequence[dict[str, Any]], context: Any, batch_size: int = 32
) -> np.ndarray:
    """Whether the letter with the highest next-token probability is the right one, per item."""
    from steerlens.generation import next_token_logprobs

    letters = [chr(ord("A") + k) for k in range(max(len(m["choices"]) for m in mc))]
    ids = []
    for c in letters:
        enc = model.tokenizer(f" {c}", add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise SteerlensError(f"' {c}' is not one token for {model.name}; multiple choice needs it to be")
        ids.append(enc[0])
    prompts = [
        m["question"] + "\n" + "".join(f"{letters[k]}. {c}\n" for k, c in enumerate(m["choices"])) + "Answer:"
        for m in mc
    ]
    lp = next_token_logprobs(model, prompts, ids, batch_size=batch_size, context=context)
    pick = [int(lp[i, : len(m["choices"])].argmax()) for i, m in enumerate(mc)]
    return np.array([p == m["answer"] for p, m in zip(pick, mc, strict=True)])


# ---- stability ----------------------------------------------------------------------------------------
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

    def figure(self) -> Any:
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


def _own_slope(model: Model, vec: SteeringVector, trait: str, alpha: float, units: Units) -> Estimate:
    qitems = items([trait])
    s, _ = questionnaire_scores(model, vec, (-alpha, 0.0, alpha), qitems, units=units)
    dr = DoseResponse(
        ("v",), (-alpha, 0.0, alpha), tuple(it.trait for it in qitems), s[None], s[None] * 0 + 1
    )
    return dr.slope("v", trait)


def stability(
    model: Model,
    acts: dict[str, TraitActivations],
    layer: int,
    *,
    alpha: float = 0.4,
    units: Units = "resid",
    seeds: Sequence[int] = (1, 2, 3),
    methods: Sequence[str] = ("mean", "pca", "probe"),
    pairs: Sequence[tuple[str, str]] | None = None,
) -> Stability:
    """Method level (vectors by each aggregator), trait level (vectors from disjoint halves of the statement
    groups over ``seeds``) and combination level (two traits steered together vs alone)."""
    m_cos: dict[str, dict[str, float]] = {}
    m_slope: dict[str, dict[str, Estimate]] = {}
    s_cos: dict[str, list[float]] = {}
    s_slope: dict[str, list[float]] = {}
    singles: dict[str, SteeringVector] = {}
    for t, a in acts.items():
        all_rows = list(range(len(a.groups)))
        by = {m: _vector(model, a, all_rows, m, 0).select([layer]) for m in methods}
        singles[t] = by[methods[0]]
        m_cos[t] = {
            f"{x}~{y}": float(by[x].directions[layer] @ by[y].directions[layer])
            for x, y in itertools.combinations(methods, 2)
        }
        m_slope[t] = {m: _own_slope(model, v, t, alpha, units) for m, v in by.items()}
        s_cos[t], s_slope[t] = [], []
        for seed in seeds:
            half_a, half_b = _split(a, 0.5, seed)
            va = _vector(model, a, half_a, methods[0], seed).select([layer])
            vb = _vector(model, a, half_b, methods[0], seed).select([layer])
            s_cos[t].append(float(va.directions[layer] @ vb.directions[layer]))
            s_slope[t].append(_own_slope(model, va, t, alpha, units).value)
    combo: dict[str, dict[str, float]] = {}
    for x, y in pairs if pairs is not None else list(itertools.combinations(list(acts), 2))[:4]:
        both = [singles[x], singles[y]]
        qitems = items([x, y])
        keys = np.array([it.trait for it in qitems])
        row: dict[str, float] = {}
        runs: list[tuple[str, Steered]] = [("together", both), ("alone", singles[x]), ("alone", singles[y])]
        for name, v in runs:
            s, _ = questionnaire_scores(model, v, (0.0, alpha), qitems, units=units)
            d = s[1] - s[0]
            for t in (x, y) if name == "together" else ([x] if v is singles[x] else [y]):
                row[f"{name}:{t}"] = float(d[keys == t].mean())
        combo[f"{x}+{y}"] = row  # additive when together:t is close to alone:t
    settings = dict(
        model=model.name, layer=layer, alpha=alpha, units=units, seeds=list(seeds), methods=list(methods)
    )
    return Stability(m_cos, m_slope, s_cos, s_slope, combo, settings)


def purify_against_others(vectors: dict[str, SteeringVector]) -> dict[str, SteeringVector]:
    """Each single-layer vector with the span of all the others projected out (norm kept)."""
    out = {}
    for name, v in vectors.items():
        (layer,) = v.layers
        others = torch.stack([o.directions[layer].double() for k, o in vectors.items() if k != name], 1)
        q, _ = torch.linalg.qr(others)
        d = v.directions[layer].double()
        d = d - q @ (q.T @ d)
        if float(d.norm()) < 1e-9:
            raise SteerlensError(
                f"{name!r} lies in the span of the other vectors; nothing is left after purifying"
            )
        out[name] = v._with(
            {layer: (d / d.norm() * v.raw_norms.get(layer, 1.0)).float()}, f"{v.method}|purified(all)"
        )
    return out


# ---- the study ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PersonalityStudy:
    """Everything the personality run measured, with the settings that made it."""

    vectors: TraitVectors
    dose: DoseResponse  # the five traits and the random control
    purified: DoseResponse  # each trait purified against the other four, and the paper's O-vs-C pair
    prompting: PromptingBaseline
    capability: Capability
    stability: Stability | None
    reactions: ReactionPreference | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Per trait: steering slope on its own score (CI), whether it moved, the largest leak, the prompting
        shift and the capability change, plus a plain-language verdict."""
        out: dict[str, Any] = {}
        leak = self.dose.leakage(n_boot=500)
        for t in self.vectors.vectors:
            own = leak[t][t]
            others = {k: e for k, e in leak[t].items() if k != t}
            worst = max(others, key=lambda k: abs(others[k].value)) if others else None
            rand = leak[RANDOM][t] if RANDOM in leak else None
            moved = own.lo > 0 or own.hi < 0
            beyond_random = rand is None or own.value > rand.hi or own.value < rand.lo
            react = self.reactions.slope(t, 500) if self.reactions and t in self.reactions.values else None
            out[t] = {
                "steering_slope": own.to_dict(),
                "random_control_slope": rand.to_dict() if rand else None,
                "largest_leak": {worst: others[worst].to_dict()} if worst else {},
                "prompting_shift": self.prompting.shift(t, t, 500).to_dict(),
                "held_out_reaction_slope": react.to_dict() if react else None,
                "arithmetic_accuracy_delta": self.capability.delta(t, "accuracy", 500).to_dict(),
                "verdict": (
                    (
                        "moves in the intended direction"
                        if own.value > 0
                        else "moves OPPOSITE to the intended direction"
                    )
                    + ("" if beyond_random else ", but not beyond the random control")
                )
                if moved
                else "questionnaire score does not move (slope CI includes 0)",
            }
        return out

    def leakage_figure(self) -> Any:
        """Slope matrices (steered row -> scored column) before and after purification."""
        from plotly.subplots import make_subplots

        traits = list(self.vectors.vectors)
        mats = []
        for dr in (self.dose, self.purified):
            lk = dr.leakage(n_boot=200)
            rows = list(lk)
            mats.append((rows, [[lk[r][c].value for c in traits] for r in rows]))
        lim = max(abs(v) for _, m in mats for row in m for v in row) or 1.0
        fig = make_subplots(
            rows=1, cols=2, subplot_titles=("raw trait vectors", "purified"), horizontal_spacing=0.18
        )
        for k, (rows, m) in enumerate(mats):
            fig.add_heatmap(
                z=m,
                x=traits,
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
        base = new_figure(f"Leakage: steering row, score column ({self.settings.get('model')})", "", "")
        fig.update_layout(template=base.layout.template, title=base.layout.title, width=1100, height=460)
        fig.update_yaxes(autorange="reversed")
        return fig

    def comparison_figure(self) -> Any:
        """Own-trait change: steering (score at max alpha minus min alpha) vs prompting (high minus low
        persona), and the random control, with 95% CIs."""
        fig = new_figure(
            f"Steering vs prompting ({self.settings.get('model')})",
            "trait",
            "change in own trait score (0-1 scale)",
        )
        traits = list(self.vectors.vectors)
        a = self.dose.alphas
        lo_i, hi_i = int(np.argmin(a)), int(np.argmax(a))

        def span(cond: str, t: str) -> Estimate:
            k = self.dose.conditions.index(cond)
            cols = self.dose._cols(t)
            d = self.dose.scores[k, hi_i, cols] - self.dose.scores[k, lo_i, cols]
            return bootstrap(lambda i: float(d[i].mean()), len(d), n_boot=500)

        series = {
            f"steering (alpha {a[lo_i]} -> {a[hi_i]})": [span(t, t) for t in traits],
            "prompting (low -> high persona)": [self.prompting.shift(t, t, 500) for t in traits],
        }
        if RANDOM in self.dose.conditions:
            series["random control"] = [span(RANDOM, t) for t in traits]
        for k, (name, est) in enumerate(series.items()):
            bars_with_ci(fig, traits, est, name, GREY if name == "random control" else PALETTE[k])
        fig.update_layout(barmode="group")
        return fig

    def capability_figure(self) -> Any:
        fig = new_figure(
            f"Side effects at alpha {self.capability.settings.get('alpha')} ({self.settings.get('model')})",
            "steered vector",
            "change vs unsteered",
        )
        hows = ["accuracy"] + (["mc_accuracy"] if self.capability.mc_correct is not None else [])
        for k, h in enumerate(hows):
            est = [self.capability.delta(c, h, 500) for c in self.capability.conditions]
            bars_with_ci(
                fig,
                list(self.capability.conditions),
                est,
                f"arithmetic {h}" if h == "accuracy" else "multiple-choice accuracy",
                PALETTE[k],
            )
        return fig

    def figures(self) -> dict[str, Any]:
        figs = {
            "personality_layers": self.vectors.figure(),
            "personality_dose_response": self.dose.figure(),
            "personality_leakage": self.leakage_figure(),
            "personality_vs_prompting": self.comparison_figure(),
            "personality_side_effects": self.capability_figure(),
        }
        if self.stability is not None:
            figs["personality_stability"] = self.stability.figure()
        if self.reactions is not None:
            figs["personality_reactions"] = self.reactions.figure()
        return figs

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "layer": self.vectors.layer,
            "layer_profile": self.vectors.profile,
            "summary": self.summary(),
            "dose_response": self.dose.to_dict(500),
            "purified": self.purified.to_dict(500),
            "prompting": self.prompting.to_dict(500),
            "capability": self.capability.to_dict(500),
            "stability": self.stability.to_dict() if self.stability else None,
            "held_out_reactions": self.reactions.to_dict(500) if self.reactions else None,
        }

    def save(self, out: str | Path, formats: Sequence[str] = ("html",)) -> Path:
        """metrics JSON, one safetensors vector per trait (at the steering layer) and the figures."""
        from steerlens.figures import save_figures
        from steerlens.files import write_json

        out_p = Path(out)
        out_p.mkdir(parents=True, exist_ok=True)
        for t in self.vectors.vectors:
            self.vectors.at_layer(t).save(out_p / f"trait_{t}.safetensors")
        write_json(out_p / "personality.json", self.to_dict())
        save_figures(self.figures(), out_p, formats=formats)
        return out_p


def personality_study(
    model: Model,
    out: str | Path | None = None,
    *,
    traits: Sequence[str] = TRAITS,
    alphas: Sequence[float] = (-0.5, -0.25, 0.0, 0.25, 0.5),
    method: str = "mean",
    layer: int | None = None,
    seed: int = 0,
    mc_items: Sequence[dict[str, Any]] | None = None,
    with_stability: bool = True,
    progress: bool = True,
) -> PersonalityStudy:
    """The whole personality arm: vectors (held-out layer), dose-response of all traits with a random
    control, purified vectors, the prompting baseline, side effects at the largest alpha, stability."""
    say = print if progress else (lambda *a, **k: None)
    say(f"      contrastive activations for {len(traits)} traits", flush=True)
    acts = trait_activations(model, traits)
    tv = trait_vectors(model, acts, method=method, seed=seed, layer=layer)
    singles = {t: tv.at_layer(t) for t in traits}
    say(f"      steering layer {tv.layer}; questionnaire dose-response", flush=True)
    conds = {**singles, RANDOM: singles[traits[0]].random_like(seed + 1)}
    dose = dose_response(model, conds, alphas, traits=traits)
    pure = purify_against_others(singles) if len(traits) > 1 else dict(singles)
    if "openness" in singles and "conscientiousness" in singles:
        pure["openness⊥conscientiousness"] = purify(singles["openness"], singles["conscientiousness"])
    purified = dose_response(model, pure, alphas, traits=traits)
    say("      held-out reactions under steering", flush=True)
    reactions = reaction_preference(model, acts, singles, alphas, control=conds[RANDOM], seed=seed)
    say("      prompting baseline, side effects", flush=True)
    prompting = prompting_baseline(model, traits)
    cap = capability(model, conds, max(alphas, key=abs), seed=seed, mc_items=mc_items)
    stab = None
    if with_stability:
        say("      stability over methods, splits and trait pairs", flush=True)
        stab = stability(model, acts, tv.layer, alpha=max(abs(a) for a in alphas))
    settings = dict(
        model=model.name, traits=list(traits), alphas=list(alphas), method=method, layer=tv.layer, seed=seed
    )
    study = PersonalityStudy(tv, dose, purified, prompting, cap, stab, reactions, settings)
    if out is not None:
        study.save(out)
    return study


# ---- command line (registered through the ``steerlens.commands`` entry point) -------------------------


def register(sub: Any) -> None:
    """Add this study's subcommand to the ``steerlens`` CLI."""
    p = sub.add_parser(
        "personality", help="Big Five trait vectors, questionnaire dose-response, leakage, prompting baseline"
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default="runs/personality")
    p.add_argument("--traits", default="openness,conscientiousness,extraversion,agreeableness,neuroticism")
    p.add_argument("--alphas", default="-0.5,-0.25,0,0.25,0.5", help="in residual-norm units")
    p.add_argument("--method", choices=["mean", "pca", "probe"], default="mean")
    p.add_argument(
        "--layer", type=int, default=None, help="default: best held-out separability, middle layers"
    )
    p.add_argument("--mc", default=None, help="multiple-choice JSONL for the side-effect check")
    p.add_argument(
        "--no-stability", action="store_true", help="skip the method / split / pair stability runs"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from steerlens import load
    from steerlens.steering.personality import load_multiple_choice, personality_study

    t0 = time.perf_counter()
    study = personality_study(
        load(args.model),
        args.out,
        traits=args.traits.split(","),
        alphas=[float(a) for a in args.alphas.split(",")],
        method=args.method,
        layer=args.layer,
        seed=args.seed,
        mc_items=load_multiple_choice(args.mc) if args.mc else None,
        with_stability=not args.no_stability,
    )
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s (steering layer {study.vectors.layer})")
    for t, row in study.summary().items():
        e = row["steering_slope"]
        print(f"  {t:18s} slope {e['value']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]  {row['verdict']}")
    return 0
