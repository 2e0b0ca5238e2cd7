"""Read a steering vector through an SAE: which features its direction is made of (cosine with decoder rows),
which features it switches on in real activations (encoder of ``resid + alpha * v`` minus encoder of
``resid``), the contexts where those features fire most, and the same for a random direction of equal norm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from sae_lens import SAE
from torch import Tensor

from steerlens.errors import SAEMismatch, SteerlensError
from steerlens.model import Model
from steerlens.steering.sae import sae_site
from steerlens.steering.vector import SteeringVector, Units
from steerlens.store import ActivationStore

from .data import store_tokens

Score = Literal["cosine", "delta"]
DENSE = 0.5  # a feature active on more than this fraction of rows is "dense" (left out of the change ranking)


@dataclass(frozen=True)
class FeatureContext:
    """One place a feature fires: the store row, its example and position, the activation and the text up to
    and including the token (marked ``[[token]]``)."""

    feature: int
    activation: float
    example: int
    position: int
    text: str = ""


@dataclass(frozen=True)
class VectorFeatures:
    """One steering vector (and its random control of equal norm) read through one SAE at one layer.

    ``cosine[f]``: cosine of the vector's direction with decoder row f. ``delta[f]``: mean change of feature f's
    activation when ``alpha`` (in ``units``) times the vector is added to real residuals from the store.
    ``control_*``: the same for ``vector.random_like(seed)``. ``contexts[f]``: max-activating contexts of the
    top features. ``density[f]``: fraction of those rows where f is active without the vector.

    Dense features (active on more than ``DENSE`` of the rows) are left out of the encoder-change ranking and
    reported apart: they are on for nearly every token, so any shift with a component along their encoder row
    moves their mean, which a random direction does too (on smollm2 layer 15 the top "change" of most vectors
    was an always-on feature). Pass ``dense=None`` to ``top`` to rank them in.
    """

    name: str
    layer: int
    cosine: Tensor
    delta: Tensor
    control_cosine: Tensor
    control_delta: Tensor
    contexts: dict[int, list[FeatureContext]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    density: Tensor | None = None  # None for studies saved before it was recorded

    def top(
        self, by: Score = "cosine", k: int = 10, control: bool = False, dense: float | None = DENSE
    ) -> list[tuple[int, float]]:
        """The ``k`` features with the largest score (signed: what adding the vector pushes up); for "delta",
        features denser than ``dense`` are left out (``None``: none are)."""
        scores = {"cosine": (self.cosine, self.control_cosine), "delta": (self.delta, self.control_delta)}[by]
        s = scores[1] if control else scores[0]
        if by == "delta" and dense is not None and self.density is not None:
            s = s.masked_fill(self.density > dense, float("-inf"))
        vals, idx = s.topk(min(k, int(torch.isfinite(s).sum())))
        return list(zip(idx.tolist(), vals.tolist(), strict=True))

    def dense_features(self, dense: float = DENSE) -> list[dict[str, Any]]:
        """The features active on more than ``dense`` of the rows, with their change under the vector and
        under the control."""
        if self.density is None:
            return []
        return [
            {"feature": f, "density": float(self.density[f]), "delta": float(self.delta[f]),
             "control_delta": float(self.control_delta[f])}
            for f in torch.nonzero(self.density > dense).flatten().tolist()
        ]  # fmt: skip

    def summary(self, k: int = 5) -> dict[str, Any]:
        """Top features and how far they stand out from the random control's best."""
        return {
            "top_cosine": self.top("cosine", k),
            "top_delta": self.top("delta", k),
            "max_cosine": float(self.cosine.max()),
            "control_max_cosine": float(self.control_cosine.max()),
            "max_delta": self.top("delta", 1)[0][1],
            "control_max_delta": self.top("delta", 1, control=True)[0][1],
            "dense": self.dense_features(),
            "chance_cosine": 1
            / math.sqrt(self.settings.get("d_in", 1)),  # typical |cos| of random directions
        }

    def to_frame(self, k: int = 10) -> pd.DataFrame:
        rows = []
        for by in ("cosine", "delta"):
            for arm, control in (("vector", False), ("random control", True)):
                for rank, (f, v) in enumerate(self.top(by, k, control)):
                    rows.append(
                        {"vector": self.name, "score": by, "arm": arm, "rank": rank, "feature": f, "value": v}
                    )
        return pd.DataFrame(rows)

    def figure(self, k: int = 10) -> go.Figure:
        """Top-k features by cosine and by encoder change, vector beside its random control (returned, not shown)."""
        titles = ("cosine with decoder row", f"mean encoder change (features on <= {DENSE:.0%} of rows)")
        fig = make_subplots(rows=1, cols=2, subplot_titles=titles)
        for col, by in ((1, "cosine"), (2, "delta")):
            for arm, control, colour in (("vector", False, "#1f77b4"), ("random control", True, "#999999")):
                top = self.top(by, k, control)  # type: ignore[arg-type]
                fig.add_bar(
                    x=[f"f{f}" for f, _ in top], y=[v for _, v in top], name=arm, marker_color=colour,
                    showlegend=col == 1, row=1, col=col,
                )  # fmt: skip
        fig.update_layout(
            title=f"{self.name} through the SAE at layer {self.layer} (alpha {self.settings.get('alpha')} "
            f"{self.settings.get('units')})",
            template="plotly_white", barmode="group",
        )  # fmt: skip
        return fig

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer": self.layer,
            "summary": self.summary(),
            "contexts": {str(f): [c.__dict__ for c in cs] for f, cs in self.contexts.items()},
            "settings": self.settings,
        }

    def tensors(self) -> dict[str, Tensor]:
        out = {
            "cosine": self.cosine, "delta": self.delta,
            "control_cosine": self.control_cosine, "control_delta": self.control_delta,
        }  # fmt: skip
        return out if self.density is None else {**out, "density": self.density}

    @classmethod
    def from_parts(cls, d: dict[str, Any], tensors: dict[str, Tensor]) -> Self:
        contexts = {int(f): [FeatureContext(**c) for c in cs] for f, cs in d["contexts"].items()}
        return cls(d["name"], d["layer"], **tensors, contexts=contexts, settings=d["settings"])


@torch.no_grad()
def vector_features(
    model: Model,
    sae: SAE[Any],
    vector: SteeringVector,
    store: ActivationStore,
    *,
    name: str | None = None,
    alpha: float = 1.0,
    units: Units = "vector",
    k: int = 10,
    n_contexts: int = 5,
    n_rows: int = 2048,
    seed: int = 0,
) -> VectorFeatures:
    """Decompose ``vector`` at the SAE's layer into SAE features, beside a random control of equal norm.

    Args:
        model, sae: the model and an SAE at a ``blocks.L.hook_resid_post`` site (checked).
        vector: a steering vector with layer L.
        store: activations at the SAE's site (the real data for the encoder change and the contexts).
        name: a label (default: the vector's method).
        alpha, units: how much of the vector is added for the encoder change (``SteeringVector.scale``).
        k: top features whose contexts are looked up (for the vector and the control).
        n_contexts: contexts per feature.
        n_rows: store rows (evenly spread) for the encoder change.
        seed: seed of the random control.

    Example:
        >>> vf = vector_features(model, sae, critique_vec, store)
        >>> vf.top("cosine", 5), vf.figure()
    """
    label = name or vector.method
    return read_vectors(
        model, sae, {label: vector}, store, alpha=alpha, units=units, k=k, n_contexts=n_contexts,
        n_rows=n_rows, seed=seed,
    )[label]  # fmt: skip


@torch.no_grad()
def read_vectors(
    model: Model,
    sae: SAE[Any],
    vectors: Mapping[str, SteeringVector],
    store: ActivationStore,
    *,
    alpha: float = 1.0,
    units: Units = "vector",
    k: int = 10,
    n_contexts: int = 5,
    n_rows: int = 2048,
    seed: int = 0,
) -> dict[str, VectorFeatures]:
    """``vector_features`` for several vectors, each equal to its own call, in two passes over the store in
    all (the spread rows, then one max-activating pass for the union of their top features) instead of two
    per vector. Why: on a 2M-row store each pass reads 4.4 GiB; the SAE study reads its seven vectors here."""
    site = sae_site(model, sae)
    if site.kind != "hook_resid_post" or site.layer is None or site.name not in store.sites:
        raise SAEMismatch(
            f"vector_features needs an SAE at a resid_post site held by the store; got {site.name}"
        )
    layer = site.layer
    for label, vector in vectors.items():
        if layer not in vector.directions:
            raise SteerlensError(
                f"{label}: the vector has no layer {layer} (the SAE's); it has {vector.layers}"
            )
    x = _spread_rows(store, site.name, n_rows)
    base = sae.encode(x)
    density = (base > 0).float().mean(0).cpu()
    settings = {
        "alpha": alpha, "units": units, "n_rows": len(x), "seed": seed, "sae_site": site.name,
        "d_sae": sae.cfg.d_sae, "d_in": sae.cfg.d_in,
    }  # fmt: skip
    outs, wanted = {}, {}
    for label, vector in vectors.items():
        scores = {"density": density}
        for arm, v in (("", vector), ("control_", vector.random_like(seed))):
            d = v.directions[layer].to(sae.W_dec)
            scores[arm + "cosine"] = (sae.W_dec @ d / sae.W_dec.norm(dim=-1).clamp_min(1e-12)).cpu()
            shift = alpha * v.scale(layer, units) * d
            scores[arm + "delta"] = (sae.encode(x + shift) - base).mean(0).cpu()
        out = VectorFeatures(label, layer, **scores, settings={**settings, "vector_method": vector.method})
        scored: tuple[Score, ...] = ("cosine", "delta")
        tops = [out.top(by, k, control) for by in scored for control in (False, True)]
        outs[label], wanted[label] = out, list(dict.fromkeys(f for top in tops for f, _ in top))
    union = list(dict.fromkeys(f for fs in wanted.values() for f in fs))
    contexts = max_activating(sae, store, site.name, union, n_contexts, tokenizer=model.tokenizer)
    return {
        label: dataclasses.replace(out, contexts={f: contexts[f] for f in wanted[label]})
        for label, out in outs.items()
    }


def _spread_rows(store: ActivationStore, site: str, n: int) -> Tensor:
    """Up to ``n`` rows spread evenly over the store, read one shard at a time."""
    total = len(store)
    step = max(1, total // n)
    keep, seen = [], 0
    for x in store.iter_batches(site):
        first = (-seen) % step  # the first row of this chunk on the grid 0, step, 2 * step, ...
        keep.append(x[first::step].float().flatten(1))  # empty when a short chunk holds no grid row
        seen += len(x)
    return torch.cat(keep)[:n]


@torch.no_grad()
def max_activating(
    sae: SAE[Any],
    store: ActivationStore,
    site: str,
    features: list[int],
    n: int = 5,
    *,
    tokenizer: Any = None,
    window: int = 12,
) -> dict[int, list[FeatureContext]]:
    """The ``n`` store rows where each of ``features`` fires most, streamed shard by shard, with their text
    when the store has its token windows beside it (``sae_store`` saves them; ``tokenizer`` decodes them).

    Example:
        >>> max_activating(sae, store, "blocks.6.hook_resid_post", [12, 40], n=3)[12][0].text
    """
    if not features:
        return {}
    idx = torch.tensor(features)
    best_v = torch.full((len(features), n), -torch.inf)
    best_r = torch.full((len(features), n), -1, dtype=torch.long)
    offset = 0
    for x in store.iter_batches(site):
        acts = sae.encode(x.float().reshape(len(x), -1).to(sae.W_dec))[:, idx].T.cpu()  # [features, rows]
        rows = torch.arange(offset, offset + len(x)).expand(len(features), -1)
        v, i = torch.cat([best_v, acts], 1).topk(min(n, best_v.shape[1] + acts.shape[1]), dim=1)
        best_r = torch.cat([best_r, rows], 1).gather(1, i)
        best_v = v
        offset += len(x)
    ex, pos, toks = store.example, store.position, store_tokens(store)
    out: dict[int, list[FeatureContext]] = {}
    for j, f in enumerate(features):
        out[f] = []
        for v, r in zip(best_v[j].tolist(), best_r[j].tolist(), strict=True):
            if r < 0 or v <= 0:
                continue
            e, p = int(ex[r]), int(pos[r])
            text = _context(toks, e, p, window, tokenizer) if toks is not None else ""
            out[f].append(FeatureContext(f, v, e, p, text))
    return out


def _context(tokens: Tensor, example: int, position: int, window: int, tok: Any) -> str:
    ids = tokens[example, max(0, position - window) : position + 1].tolist()
    if tok is None:
        return " ".join(map(str, ids[:-1])) + f" [[{ids[-1]}]]"
    return tok.decode(ids[:-1]) + "[[" + tok.decode(ids[-1:]) + "]]"
