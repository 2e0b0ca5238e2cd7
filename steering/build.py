"""Build steering vectors from two activation stores (positive / negative) or from paired prompts.

Aggregators share one signature, ``(pos [n, d], neg [m, d], seed) -> raw direction [d]``: difference of
means (CAA), first principal component of paired differences (repeng style), logistic-probe weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.collect import collect
from steerlens.errors import EmptyInput, SteerlensError
from steerlens.model import Model
from steerlens.probes.linear import fit_logistic
from steerlens.sites import SiteKind, as_site_kind
from steerlens.store import ActivationStore

from .vector import SteeringVector

Aggregator = Callable[[Tensor, Tensor, int], Tensor]
Method = Literal["mean", "pca", "probe"]


def mean_difference(
    pos: Float[Tensor, "n d"], neg: Float[Tensor, "m d"], seed: int = 0
) -> Float[Tensor, " d"]:
    """Difference of means (CAA): the raw vector, unnormalised."""
    return pos.double().mean(0).float() - neg.double().mean(0).float()


def pca_difference(
    pos: Float[Tensor, "n d"], neg: Float[Tensor, "n d"], seed: int = 0
) -> Float[Tensor, " d"]:
    """First principal axis of the paired differences ``pos[i] - neg[i]``, uncentered (so a shift shared by
    the pairs dominates, as with RepE's random-sign pairs), signed to agree with their mean and scaled to the
    mean difference's projection on it."""
    if pos.shape != neg.shape:
        raise SteerlensError(f"pca needs paired rows; got {pos.shape[0]} positive vs {neg.shape[0]} negative")
    diffs = (pos - neg).double()
    if len(diffs) < 2:
        raise SteerlensError("pca needs at least 2 pairs; use method='mean' for a single pair")
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    pc = vh[0]
    mean = diffs.mean(0)
    proj = float(mean @ pc)
    if proj < 0:
        pc, proj = -pc, -proj
    return (pc * max(proj, 1e-12)).float()


def probe_direction(
    pos: Float[Tensor, "n d"], neg: Float[Tensor, "m d"], seed: int = 0, l2: float = 1e-3, steps: int = 200
) -> Float[Tensor, " d"]:
    """Weights of an L2-regularised logistic probe (on standardised features, mapped back), scaled to the
    mean difference's projection on them."""
    x = torch.cat([pos, neg])
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    direction = fit_logistic(x, y, l2=2 * l2, steps=steps).direction.double()
    proj = float((pos.double().mean(0) - neg.double().mean(0)) @ direction)
    return (direction * max(abs(proj), 1e-12) * (1 if proj >= 0 else -1)).float()


AGGREGATORS: dict[str, Aggregator] = {
    "mean": mean_difference,
    "pca": pca_difference,
    "probe": probe_direction,
}


def build_vector(
    pos: ActivationStore,
    neg: ActivationStore,
    method: Method | Aggregator = "mean",
    *,
    layers: Sequence[int] | None = None,
    seed: int = 0,
) -> SteeringVector:
    """A ``SteeringVector`` from positive and negative stores holding the same resid-type sites.

    Every layer present in both stores is built (or ``layers``); raw norms and mean residual norms are kept.
    """
    if pos.model != neg.model:
        raise SteerlensError(f"positive store is from {pos.model!r}, negative from {neg.model!r}")
    by_layer = _layer_sites(pos, neg)
    kinds = {kind for kind, _ in by_layer.values()}
    if len(kinds) != 1:
        raise SteerlensError(f"stores mix site kinds {sorted(kinds)}; build one vector per kind")
    chosen = sorted(by_layer) if layers is None else list(layers)
    missing = [l for l in chosen if l not in by_layer]
    if missing:
        raise SteerlensError(f"layers {missing} not in both stores; they hold {sorted(by_layer)}")
    return vector_from_activations(
        {l: pos[by_layer[l][1]] for l in chosen},
        {l: neg[by_layer[l][1]] for l in chosen},
        model_id=pos.model,
        d_model=pos.manifest["d_model"],
        site_kind=as_site_kind(kinds.pop()),
        method=method,
        seed=seed,
        dataset_hash=hashlib.sha256((pos.dataset_hash + neg.dataset_hash).encode()).hexdigest(),
        settings={
            "positions": pos.manifest["positions"],
            "n_pos": len(pos),
            "n_neg": len(neg),
            "pos_store": str(pos.path),
            "neg_store": str(neg.path),
        },
    )


def vector_from_activations(
    pos: dict[int, Float[Tensor, "n d"]],
    neg: dict[int, Float[Tensor, "m d"]],
    *,
    model_id: str,
    d_model: int,
    site_kind: SiteKind = "hook_resid_post",
    method: Method | Aggregator = "mean",
    seed: int = 0,
    dataset_hash: str = "",
    settings: dict | None = None,
) -> SteeringVector:
    """A ``SteeringVector`` from per-layer positive / negative activation rows (any pooling the caller chose)."""
    agg = AGGREGATORS.get(method) if isinstance(method, str) else method
    if agg is None:
        raise SteerlensError(f"method={method!r}: expected one of {sorted(AGGREGATORS)} or a callable")
    dirs, raw, resid = {}, {}, {}
    for l in sorted(pos):
        p, n = pos[l].float(), neg[l].float()
        if len(p) == 0 or len(n) == 0:
            raise EmptyInput(f"no rows at layer {l} (positive {len(p)}, negative {len(n)}); check positions")
        if not (torch.isfinite(p).all() and torch.isfinite(n).all()):
            raise SteerlensError(f"activations at layer {l} contain NaN/inf; the model or inputs are broken")
        v = agg(p, n, seed)
        raw[l] = float(v.norm())
        dirs[l] = v
        resid[l] = float(torch.cat([p, n]).norm(dim=-1).mean())
    name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
    return SteeringVector(
        directions=dirs,
        model_id=model_id,
        d_model=d_model,
        site_kind=site_kind,
        method=name,
        raw_norms=raw,
        resid_norms=resid,
        dataset_hash=dataset_hash,
        settings={**(settings or {}), "seed": seed},
    )


def vector_from_prompts(
    model: Model,
    positive: Sequence,
    negative: Sequence,
    *,
    method: Method = "mean",
    site: SiteKind = "hook_resid_post",
    layers: Sequence[int] | None = None,
    positions: str | int = "last",
    seed: int = 0,
    batch_size: int = 8,
) -> SteeringVector:
    """A steering vector from contrasting prompts: collect activations, then ``build_vector``.

    Why: the shortest path from "texts that show X" and "texts that do not" to a vector for every layer.

    Args:
        model: the model.
        positive, negative: texts or ``Example`` objects (paired for ``method="pca"``).
        method: "mean" (difference of means), "pca" (first PC of paired differences) or "probe".
        site: the residual site kind; layers: which layers (default all); positions: as in ``collect``.

    Example:
        >>> vec = vector_from_prompts(model, ["I love it"], ["I hate it"])
        >>> with steer(model, vec.select([12]), alpha=0.2, units="resid"): ...
    """
    if not positive or not negative:
        raise EmptyInput("need at least one positive and one negative prompt")
    if method == "pca" and len(positive) != len(negative):
        raise SteerlensError(f"pca needs pairs: {len(positive)} positive vs {len(negative)} negative prompts")
    layer_list = range(model.cfg.n_layers) if layers is None else layers
    sites = [f"blocks.{l}.{site}" for l in layer_list]
    pos = collect(model, positive, sites, positions, batch_size=batch_size, progress=False)
    neg = collect(model, negative, sites, positions, batch_size=batch_size, progress=False)
    return build_vector(pos, neg, method, seed=seed)


def _layer_sites(pos: ActivationStore, neg: ActivationStore) -> dict[int, tuple[str, str]]:
    out = {}
    for s in pos.sites:
        if s in neg.sites and s.startswith("blocks."):
            _, layer, kind = s.split(".", 2)
            out[int(layer)] = (kind, s)
    if not out:
        raise SteerlensError(f"stores share no per-layer sites (positive {pos.sites}, negative {neg.sites})")
    return out
