"""Build steering vectors from two activation stores (positive / negative) or from paired prompts.

Aggregators share one signature, ``(pos [n, d], neg [m, d], seed) -> raw direction [d]``: difference of
means (CAA), first principal component of paired differences (repeng style), logistic-probe weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.collect import collect
from steerlens.errors import EmptyInput, SteerlensError
from steerlens.model import Model
from steerlens.store import ActivationStore

from .vector import SteeringVector

Aggregator = Callable[[Tensor, Tensor, int], Tensor]


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
    torch.manual_seed(seed)
    x = torch.cat([pos, neg]).double()
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    direction = w.detach() / sd
    direction = direction / direction.norm()
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
    method: str | Aggregator = "mean",
    *,
    layers: Sequence[int] | None = None,
    seed: int = 0,
) -> SteeringVector:
    """A ``SteeringVector`` from positive and negative stores holding the same resid-type sites.

    Every layer present in both stores is built (or ``layers``); raw norms and mean residual norms are kept.
    """
    if pos.model != neg.model:
        raise SteerlensError(f"positive store is from {pos.model!r}, negative from {neg.model!r}")
    agg = AGGREGATORS.get(method) if isinstance(method, str) else method
    if agg is None:
        raise SteerlensError(f"method={method!r}: expected one of {sorted(AGGREGATORS)} or a callable")
    by_layer = _layer_sites(pos, neg)
    kinds = {kind for kind, _ in by_layer.values()}
    if len(kinds) != 1:
        raise SteerlensError(f"stores mix site kinds {sorted(kinds)}; build one vector per kind")
    chosen = sorted(by_layer) if layers is None else list(layers)
    missing = [l for l in chosen if l not in by_layer]
    if missing:
        raise SteerlensError(f"layers {missing} not in both stores; they hold {sorted(by_layer)}")
    dirs, raw, resid = {}, {}, {}
    for l in chosen:
        site = by_layer[l][1]
        p, n = pos[site].float(), neg[site].float()
        if len(p) == 0 or len(n) == 0:
            raise EmptyInput(f"no rows at {site} (positive {len(p)}, negative {len(n)}); check positions")
        if not (torch.isfinite(p).all() and torch.isfinite(n).all()):
            raise SteerlensError(f"activations at {site} contain NaN/inf; the model or inputs are broken")
        v = agg(p, n, seed)
        raw[l] = float(v.norm())
        dirs[l] = v
        resid[l] = float(torch.cat([p, n]).norm(dim=-1).mean())
    name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
    return SteeringVector(
        directions=dirs,
        model_id=pos.model,
        d_model=pos.manifest["d_model"],
        site=kinds.pop(),
        method=name,
        raw_norms=raw,
        resid_norms=resid,
        dataset_hash=hashlib.sha256((pos.dataset_hash + neg.dataset_hash).encode()).hexdigest(),
        settings={
            "positions": pos.manifest["positions"],
            "n_pos": len(pos),
            "n_neg": len(neg),
            "seed": seed,
            "pos_store": str(pos.path),
            "neg_store": str(neg.path),
        },
    )


def vector_from_prompts(
    model: Model,
    positive: Sequence,
    negative: Sequence,
    *,
    method: str = "mean",
    site: str = "hook_resid_post",
    layers: Sequence[int] | None = None,
    positions: str | int = "last",
    seed: int = 0,
    batch_size: int = 8,
) -> SteeringVector:
    """Collect activations for paired positive / negative prompts, then ``build_vector``."""
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
