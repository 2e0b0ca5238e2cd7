"""Direct-path ablations under frozen norm scales: per-head direct effects, per-position mean ablation, and the
copy-suppression-preserving ablation (CSPA) of McDougall et al. (2023).

Only a head's *direct* path to the logits is changed: its contribution to the final residual is replaced and
the final-norm scale stays at its clean value, so the logits move linearly with the replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from steerlens.errors import SteerlensError
from steerlens.figures import GREY, PALETTE, new_figure

from .decompose import (
    FrozenNorm,
    LensModel,
    Run,
    flat_final,
    frozen_norm,
    head_results,
    lens_of,
    logit_stats,
    post_norm,
    run_decomposed,
)
from .lens_parts import head_weights
from .results import Saveable, head_frame, layer_head_heatmap

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

DirectMetric = Literal["loss", "kl", "entropy"]  # a per-head direct effect
QKMode = Literal["predicted", "all", "none"]  # which (destination, source) pairs CSPA keeps
OVMode = Literal["project", "full"]  # what CSPA keeps of a kept pair
QK_MODES: tuple[QKMode, ...] = get_args(QKMode)
OV_MODES: tuple[OVMode, ...] = get_args(OVMode)


def destination_mask(tokens: Int[Tensor, "batch pos"]) -> Bool[Tensor, "batch pos"]:
    """Positions scored: every position with a next token, except position 0 (BOS, an attention sink)."""
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 0] = False
    mask[:, -1] = False
    return mask


def _subsample(mask: Tensor, max_positions: int | None, seed: int) -> Tensor:
    if max_positions is None or int(mask.sum()) <= max_positions:
        return mask
    idx = mask.flatten().nonzero()[:, 0]
    g = torch.Generator().manual_seed(seed)
    keep = idx[torch.randperm(len(idx), generator=g)[:max_positions]]
    out = torch.zeros(mask.numel(), dtype=torch.bool)
    out[keep] = True
    return out.view_as(mask)


# ---- per-head direct effects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectEffects(Saveable):
    """Per-head effect of mean-ablating the head's direct path (per-position mean, final-norm scale frozen).

    ``loss``: mean loss increase; ``kl``: mean KL(clean || ablated); ``entropy``: mean entropy *decrease* when
    ablated, i.e. how much the head raises the entropy of the output (positive for calibrating, negative heads).
    Arrays are ``[n_layers, n_heads]``.
    """

    loss: np.ndarray
    kl: np.ndarray
    entropy: np.ndarray
    loss_clean: float
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "direct_effects"

    def to_frame(self) -> pd.DataFrame:
        return head_frame({"loss": self.loss, "kl": self.kl, "entropy": self.entropy})

    def figure(self, metric: DirectMetric = "loss") -> go.Figure:
        return layer_head_heatmap(
            getattr(self, metric), f"Direct effect per head: {metric} (mean ablation, frozen scale)", zmid=0.0
        )


def direct_effects(
    model: LensModel,
    tokens: Int[Tensor, "batch pos"],
    *,
    max_positions: int | None = 192,
    seed: int = 0,
    run: Run | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
) -> DirectEffects:
    """Loss, KL and entropy effect of mean-ablating each head's direct path, on up to ``max_positions``
    seeded destination positions (each costs one full-vocabulary softmax per head). ``heads`` limits the
    work to those heads (the others are NaN)."""
    lens = lens_of(model)
    run = run or run_decomposed(model, tokens)
    mask = _subsample(destination_mask(tokens), max_positions, seed)
    targets = tokens[:, 1:][mask[:, :-1]]
    deltas: dict[str, Tensor] = {}
    for l in range(lens.cfg.n_layers):
        c = head_results(model, run, l)  # [B, P, H, d]
        delta = c.mean(0, keepdim=True) - c
        for h in range(lens.cfg.n_heads):
            if heads is None or (l, h) in heads:
                deltas[f"{l}.{h}"] = delta[:, :, h][mask]
    stats = logit_stats(model, run.resid_final[mask], flat_final(run, mask), targets, deltas)
    shape = (lens.cfg.n_layers, lens.cfg.n_heads)
    loss, kl, ent = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for key in deltas:
        l, h = map(int, key.split("."))
        loss[l, h] = float((stats.loss[key] - stats.loss_clean).mean())
        kl[l, h] = float(stats.kl[key].mean())
        ent[l, h] = float((stats.entropy_clean - stats.entropy[key]).mean())
    return DirectEffects(
        loss=loss,
        kl=kl,
        entropy=ent,
        loss_clean=float(stats.loss_clean.mean()),
        settings={"n_sequences": tokens.shape[0], "seq_len": tokens.shape[1], "positions": int(mask.sum()),
                  "max_positions": max_positions, "seed": seed, "ablation": "per-position mean, direct path",
                  "final_norm": "scale frozen"},
    )  # fmt: skip


# ---- copy-suppression-preserving ablation --------------------------------------------------------------


@dataclass(frozen=True)
class CSPAResult(Saveable):
    """CSPA of one head. ``effect_explained = 1 - KL(clean||CSPA) / KL(clean||mean ablation)`` (sums over
    positions) on the head's direct effect, final-norm scale frozen. ``curve`` gives the same ratio on the
    positions whose mean-ablation KL is at or above each ``percentiles`` value (where the head matters most)."""

    layer: int
    head: int
    effect_explained: float
    kl_cspa: float
    kl_mean_ablation: float
    loss_clean: float
    loss_cspa: float
    loss_mean_ablation: float
    percentiles: np.ndarray
    curve: np.ndarray
    kl_cspa_per_position: np.ndarray = field(repr=False)
    kl_mean_ablation_per_position: np.ndarray = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "cspa"

    def figure(self) -> go.Figure:
        fig = new_figure(
            f"CSPA L{self.layer}H{self.head}: effect explained by copy suppression",
            "positions kept: KL(clean||mean-ablation) percentile at or above",
            "effect explained (1 - KL ratio)",
        )
        fig.add_hline(y=self.effect_explained, line=dict(color=GREY, dash="dot"))
        fig.add_trace(
            go.Scatter(
                x=list(self.percentiles),
                y=list(self.curve),
                mode="lines+markers",
                name="CSPA",
                line=dict(color=PALETTE[0]),
            )
        )
        fig.update_yaxes(range=[min(0.0, float(np.nanmin(self.curve)) - 0.05), 1.02])
        return fig

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"percentile": self.percentiles, "effect_explained": self.curve})


def predicted_mask(
    model: LensModel, run: Run, layer: int, fraction: float, chunk: int = 64
) -> Bool[Tensor, "batch dest src"]:
    """``mask[b, d, s]``: the token at source ``s`` is in the top ``fraction`` of the logit lens of the
    residual stream entering ``layer`` at destination ``d`` (what earlier layers predict there)."""
    lens = lens_of(model)
    B, P = run.tokens.shape
    k = max(1, round(fraction * lens.cfg.d_vocab))
    resid = run.resid_pre[layer].reshape(B * P, -1)
    src_tok = run.tokens  # [B, P]
    out = torch.zeros(B * P, P, dtype=torch.bool)
    for i in range(0, B * P, chunk):
        logits = lens.ln_final(resid[i : i + chunk][None])[0] @ lens.W_U
        thresh = logits.topk(k, dim=-1).values[:, -1:]
        b = torch.arange(i, min(i + chunk, B * P)) // P
        src_logits = logits.gather(-1, src_tok[b])  # [n, P]
        out[i : i + chunk] = src_logits >= thresh
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    return out.view(B, P, P) & causal


def _source_outputs(
    model: LensModel, run: Run, layer: int, head: int, B: int, P: int
) -> tuple[Float[Tensor, "batch src d_model"], Tensor | float]:
    """Each source position's value through W_O of ``head`` (post-attention norm's weight and centre
    applied), and the post-norm's inverse scale per destination (``[B, d, 1]``, ones without a post-norm)."""
    lens = lens_of(model)
    w = head_weights(lens, layer)
    v = lens.blocks[layer].ln1(run.resid_pre[layer]) @ w.W_V[head] + w.b_V[head]  # [B, s, d_head]
    r = v @ w.W_O[head]  # [B, s, d_model]
    post = post_norm(model, run, layer)
    if post is not None:
        r = FrozenNorm(1.0, post.w, None, post.centre).linear(r)  # weight/centre now, scale per destination
        inv_scale = 1.0 / post.scale  # [B, d, 1]
    else:
        inv_scale = torch.ones(B, P, 1)
    return r, inv_scale


def _pairs_kept(
    model: LensModel, run: Run, layer: int, qk: QKMode, fraction: float, B: int, P: int
) -> Float[Tensor, "batch dest src"]:
    if qk == "predicted":
        return predicted_mask(model, run, layer, fraction).float()
    if qk == "all":
        return torch.ones(B, P, P)
    return torch.zeros(B, P, P)


def _kept_output(
    lens: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    W: Float[Tensor, "batch dest src"],
    r: Float[Tensor, "batch src d_model"],
    inv_scale: Tensor | float,
    mu: Float[Tensor, "dest d_model"],
    ov: OVMode,
) -> Float[Tensor, "batch dest d_model"]:
    """What the kept pairs (attention ``W``) contribute: whole (``"full"``), or their negative component
    along the source token's unit unembedding plus the per-position mean for the rest (``"project"``)."""
    if ov == "full":
        return torch.einsum("bds,bsm->bdm", W, r) * inv_scale
    B, P = tokens.shape
    g = frozen_norm(lens.ln_final).read_direction(lens.W_U[:, tokens.flatten()]).T  # [B*P, d_model]
    g = (g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)).view(B, P, -1)  # unit, per source token
    dot = torch.einsum("bsm,bsm->bs", r, g)[:, None, :] * inv_scale  # [B, d, s]: c[d,s] . g_s
    mu_g = torch.einsum("dm,bsm->bds", mu, g)
    return (
        torch.einsum("bds,bsm->bdm", W * dot.clamp(max=0.0), g)
        + W.sum(-1, keepdim=True) * mu
        - torch.einsum("bds,bsm->bdm", W * mu_g, g)
    )


def _explained(kl_c: Tensor, kl_m: Tensor, percentiles: Sequence[float]) -> list[float]:
    """1 - KL ratio on the positions whose mean-ablation KL is at or above each percentile."""
    curve = []
    for p in percentiles:
        sel = kl_m >= torch.quantile(kl_m, p / 100.0)
        curve.append(1.0 - float(kl_c[sel].sum() / kl_m[sel].sum().clamp_min(1e-30)))
    return curve


def cspa(
    model: LensModel,
    layer: int,
    head: int,
    tokens: Int[Tensor, "batch pos"],
    *,
    qk: QKMode = "predicted",
    ov: OVMode = "project",
    predicted_fraction: float = 0.05,
    percentiles: tuple[float, ...] = (0, 25, 50, 75, 90, 95, 99),
    run: Run | None = None,
) -> CSPAResult:
    """Copy-suppression-preserving ablation of one head's direct effect.

    For destination d and source s (attention A[d, s]), the head's contribution ``c[d, s]`` (value at s through
    W_O and the frozen post-attention norm of d) is kept only if ``qk`` allows the pair: ``"predicted"``
    keeps sources whose token is in the top ``predicted_fraction`` of the logit lens at d, ``"all"`` keeps
    every pair, ``"none"`` none. A kept pair is then, with ``ov="project"``, reduced to its negative component
    along the (final-norm weighted) unembedding of s's token, the rest replaced by the per-position mean;
    ``ov="full"`` keeps it whole. Dropped pairs contribute the per-position mean. ``qk="all", ov="full"``
    reproduces the clean run (100% explained); ``qk="none"`` is mean ablation (0%).

    Example:
        >>> res = cspa(model, 9, 1, corpus_windows(model, 8, 64))
        >>> res.effect_explained, res.figure()
    """
    if qk not in QK_MODES or ov not in OV_MODES:
        raise SteerlensError(f"cspa(qk={qk!r}, ov={ov!r}): expected qk in {QK_MODES} and ov in {OV_MODES}")
    run = run or run_decomposed(model, tokens)
    B, P = tokens.shape
    A = run.pattern[layer][:, head]  # [B, d, s]
    r, inv_scale = _source_outputs(model, run, layer, head, B, P)
    clean = head_results(model, run, layer, [head])[:, :, 0]  # [B, d, d_model]
    mu = clean.mean(0)  # [d, d_model]: per-position mean
    W = A * _pairs_kept(model, run, layer, qk, predicted_fraction, B, P)  # [B, d, s]
    kept = _kept_output(lens_of(model), tokens, W, r, inv_scale, mu, ov)
    ablated = kept + (A.sum(-1, keepdim=True) - W.sum(-1, keepdim=True)) * mu
    mask = destination_mask(tokens)
    targets = tokens[:, 1:][mask[:, :-1]]
    deltas = {"cspa": (ablated - clean)[mask], "mean": (mu - clean)[mask]}
    stats = logit_stats(model, run.resid_final[mask], flat_final(run, mask), targets, deltas)
    kl_c, kl_m = stats.kl["cspa"], stats.kl["mean"]
    return CSPAResult(
        layer=layer,
        head=head,
        effect_explained=1.0 - float(kl_c.sum() / kl_m.sum().clamp_min(1e-30)),
        kl_cspa=float(kl_c.mean()),
        kl_mean_ablation=float(kl_m.mean()),
        loss_clean=float(stats.loss_clean.mean()),
        loss_cspa=float(stats.loss["cspa"].mean()),
        loss_mean_ablation=float(stats.loss["mean"].mean()),
        percentiles=np.array(percentiles, dtype=float),
        curve=np.array(_explained(kl_c, kl_m, percentiles)),
        kl_cspa_per_position=kl_c.numpy(),
        kl_mean_ablation_per_position=kl_m.numpy(),
        settings={"qk": qk, "ov": ov, "predicted_fraction": predicted_fraction, "n_sequences": B, "seq_len": P,
                  "positions": int(mask.sum()), "ablation": "per-position mean, direct path",
                  "final_norm": "scale frozen"},
    )  # fmt: skip
