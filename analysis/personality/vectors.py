"""Trait vectors: contrastive activations of high/low reactions, one vector per trait, and the held-out layer
profile that picks the steering layer.

Shapes: ``high`` / ``low`` are ``[pairs, layers, d_model]``, the mean ``resid_post`` over each reaction's
tokens; ``high[i]`` and ``low[i]`` are the two reactions to one situation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.figures import GREY, PALETTE, line_with_band, new_figure
from steerlens.inputs import Example
from steerlens.model import Model
from steerlens.probes.personality_data import TRAITS, ContrastPair, check_trait, contrast_pairs
from steerlens.stats import auroc
from steerlens.steering import SteeringVector
from steerlens.steering.build import AGGREGATORS, Method, vector_from_activations

RANDOM = "random"  # the condition name of the random-direction control
Trait = Literal["openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism"]


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
    """Collect the contrastive activations of ``traits`` in one pass over all layers.

    Args:
        model: the model to read.
        traits: trait names; built-in ones unless ``pairs`` are given.
        pairs: your own pairs (``load_contrast_jsonl``); default: the built-in pairs of each trait.
        batch_size, progress: collection settings.

    Example:
        >>> acts = trait_activations(model, ("extraversion",))
        >>> acts["extraversion"].high.shape        # [pairs, layers, d_model]
    """
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

    def figure(self) -> go.Figure:
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
    method: Method = "mean",
    test_fraction: float = 0.25,
    seed: int = 0,
    layer: int | None = None,
    band: tuple[float, float] = (0.25, 0.75),
) -> TraitVectors:
    """Vectors per trait from the training statement groups, and the steering layer.

    The layer is the one with the largest mean held-out d' (projection separation over its spread; paired
    accuracy saturates at 1) inside the middle ``band`` of depth (late layers separate well but steer
    little), unless ``layer`` is given.

    Example:
        >>> tv = trait_vectors(model, trait_activations(model))
        >>> tv.at_layer("openness")            # a one-layer SteeringVector at tv.layer
    """
    vectors, profile, profile_auc, profile_d = {}, {}, {}, {}
    for t, a in acts.items():
        train, test = held_out_split(a, test_fraction, seed)
        vectors[t] = trait_vector(model, a, train, method, seed)
        profile[t], profile_auc[t], profile_d[t] = _held_out_profile(vectors[t], a, test)
    n = model.cfg.n_layers
    if layer is None:
        lo_l, hi_l = int(band[0] * n), max(int(band[0] * n) + 1, math.ceil(band[1] * n))
        mean = np.mean([profile_d[t] for t in profile_d], axis=0)
        layer = lo_l + int(np.argmax(mean[lo_l:hi_l]))
    elif not 0 <= layer < n:
        raise SteerlensError(f"layer {layer} outside 0..{n - 1} for {model.name}")
    settings = dict(model=model.name, method=method, test_fraction=test_fraction, seed=seed, band=list(band))
    return TraitVectors(vectors, profile, profile_auc, layer, settings, profile_d)


def _held_out_profile(
    vec: SteeringVector, a: TraitActivations, test: list[int]
) -> tuple[list[float], list[float], list[float]]:
    """Per layer on the held-out pairs: paired accuracy, AUROC and d' of the projections on ``vec``."""
    acc, auc, dprime = [], [], []
    for l in range(a.high.shape[1]):
        u = vec.directions[l].double()
        hi, lo = a.high[test, l].double() @ u, a.low[test, l].double() @ u
        acc.append(float((hi > lo).double().mean()))
        auc.append(auroc(torch.cat([hi, lo]).numpy(), [1] * len(hi) + [0] * len(lo)))
        sd = float(torch.sqrt((hi.var() + lo.var()) / 2)) if len(hi) > 1 else 1.0
        dprime.append(float(hi.mean() - lo.mean()) / max(sd, 1e-12))
    return acc, auc, dprime


def held_out_split(a: TraitActivations, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train rows, test rows)``: whole statement groups held out, so test wording is never seen."""
    groups = sorted(set(a.groups))
    if len(groups) < 2:
        raise SteerlensError(f"trait {a.trait!r} has one statement group; a held-out split needs >= 2")
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    test_g = set(groups[: max(1, round(len(groups) * test_fraction))])
    train = [i for i, g in enumerate(a.groups) if g not in test_g]
    test = [i for i, g in enumerate(a.groups) if g in test_g]
    return train, test


def trait_vector(
    model: Model, a: TraitActivations, rows: Sequence[int], method: Method, seed: int
) -> SteeringVector:
    """The ``method`` vector of ``a``'s pairs ``rows``, at every layer."""
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
