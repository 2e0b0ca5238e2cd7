"""The OV circuit of one head, weights only: where each source token ranks in the logits the head writes
when it attends to that token (among the most negative: suppression; the most positive: copying)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.errors import SteerlensError
from steerlens.figures import PALETTE, new_figure

from .circuits import (
    EffectiveEmbedding,
    RankStats,
    TokenSet,
    Variant,
    check_head,
    count_beyond,
    effective_embedding,
    final_direction,
    head_input,
    rank_histogram,
    read_directions,
)
from .decompose import LensModel, frozen_norm, lens_of, post_attn_norm
from .lens_parts import head_weights
from .results import Saveable

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

RankOver = Literal["sample", "vocab"]  # candidates a token is ranked among: the token set or the vocabulary


@dataclass(frozen=True)
class OVRanks(Saveable):
    """Where each source token ranks in its own OV logits: among the most negative (suppression) and most
    positive (copying). ``ranks_*`` are per source token; ``settings`` record the token set and options."""

    layer: int
    head: int
    suppression: RankStats
    copying: RankStats
    ranks_suppression: np.ndarray = field(repr=False)
    ranks_copying: np.ndarray = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "ov_ranks"

    def figure(self) -> go.Figure:
        fig = new_figure(
            f"OV circuit L{self.layer}H{self.head}: rank of the source token in its own logits",
            "rank (0 = top-1)",
            "fraction of source tokens",
            barmode="group",
        )
        rank_histogram(fig, self.ranks_suppression, "suppression (most negative)", PALETTE[3])
        rank_histogram(fig, self.ranks_copying, "copying (most positive)", PALETTE[0])
        return fig

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"direction": k, **vars(getattr(self, k))} for k in ("suppression", "copying")]
        ).set_index("direction")


def ov_out_map(lens: HookedTransformer, layer: int, head: int) -> Float[Tensor, "d_head d_model"]:
    """W_O of one head through the post-attention norm's direction (its scale is one positive number per
    position, which cannot change a rank)."""
    W_O = head_weights(lens, layer).W_O[head]
    post = post_attn_norm(lens, layer)
    return frozen_norm(post).linear(W_O) if post is not None else W_O


def ov_rank_tensors(
    lens: HookedTransformer,
    layer: int,
    head: int,
    src_in: Float[Tensor, "n d_model"],
    ids: Int[Tensor, " n"],
    rank_over: RankOver,
    chunk: int,
    read: Float[Tensor, "d_model n"] | None = None,
    z_out: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Suppression and copying ranks and the number of candidates; ``src_in`` is the head's (pre-normed)
    input for each source token. ``z_out`` (sample mode) receives each row's suppression z-score: how many
    row standard deviations the diagonal logit lies below the row mean."""
    # b_V is left out: like b_O it adds the same vector whatever the source token (TL folds it into b_O)
    v = src_in @ head_weights(lens, layer).W_V[head]  # [n, d_head]
    M = ov_out_map(lens, layer, head)  # [d_head, d_model]
    if rank_over == "sample":
        G = read_directions(lens, ids) if read is None else read
        return _ranks_in_sample(v, M @ G, ids, chunk, z_out)
    if rank_over == "vocab":
        return _ranks_in_vocab(lens, final_direction(lens).linear(v @ M), ids, chunk)
    raise SteerlensError(f"rank_over={rank_over!r}: expected 'sample' (the token set) or 'vocab'")


def _ranks_in_sample(
    v: Float[Tensor, "n d_head"],
    MG: Float[Tensor, "d_head n"],
    ids: Int[Tensor, " n"],
    chunk: int,
    z_out: list[Tensor] | None,
) -> tuple[Tensor, Tensor, int]:
    sup, cop, zs = [], [], []
    for i in range(0, len(ids), chunk):
        s = v[i : i + chunk] @ MG
        rows = torch.arange(i, min(i + chunk, len(ids)))
        d = s[torch.arange(len(rows)), rows]
        zs.append((s.mean(-1) - d) / s.std(-1).clamp_min(1e-12))
        sup.append(count_beyond(s, d, higher=False))
        cop.append(count_beyond(s, d, higher=True))
    if z_out is not None:
        z_out.append(torch.cat(zs))
    return torch.cat(sup), torch.cat(cop), len(ids)


def _ranks_in_vocab(
    lens: HookedTransformer, out: Float[Tensor, "n d_model"], ids: Int[Tensor, " n"], chunk: int
) -> tuple[Tensor, Tensor, int]:
    """The final norm goes on the rows (linear(x) @ W_U == x @ read_direction(W_U)), so each vocabulary
    chunk is one [n, d_model] x [d_model, width] product straight from W_U, not a d_head x vocab map."""
    V = lens.cfg.d_vocab
    diag = (out * lens.W_U[:, ids].T).sum(-1)
    sup_v = torch.zeros(len(ids), dtype=torch.long)
    cop_v = torch.zeros(len(ids), dtype=torch.long)
    width = chunk * 16
    for j in range(0, V, width):
        W = lens.W_U[:, j : j + width]
        own = ((ids >= j) & (ids < j + W.shape[1])).nonzero()[:, 0]  # rows whose own token is here
        for i in range(0, len(ids), chunk):
            s = out[i : i + chunk] @ W
            mine = own[(own >= i) & (own < i + chunk)]
            s[mine - i, ids[mine] - j] = diag[mine]  # a token never beats itself through rounding
            sup_v[i : i + chunk] += count_beyond(s, diag[i : i + chunk], higher=False)
            cop_v[i : i + chunk] += count_beyond(s, diag[i : i + chunk], higher=True)
    return sup_v, cop_v, V


def ov_ranks(
    model: LensModel,
    layer: int,
    head: int,
    tokens: TokenSet,
    *,
    variant: Variant = "self_attn",
    rank_over: RankOver = "sample",
    embedding: EffectiveEmbedding | None = None,
    chunk: int = 1024,
) -> OVRanks:
    """Signed OV ranks of one head: for each source token t, the logits ``W_U^T W_OV^T e_t`` (through the
    norms' weights) ranked over the token set (``rank_over="sample"``) or the whole vocabulary (``"vocab"``).

    Example:
        >>> ov = ov_ranks(model, 9, 1, token_set(model, 500))
        >>> ov.suppression.top10, ov.figure()
    """
    lens = lens_of(model)
    check_head(lens, layer, head)
    emb = embedding or effective_embedding(model, tokens, variant)
    ids = tokens.tensor()
    src_in = head_input(lens, layer, emb.vectors)
    sup, cop, n_cand = ov_rank_tensors(lens, layer, head, src_in, ids, rank_over, chunk)
    return OVRanks(
        layer=layer,
        head=head,
        suppression=RankStats.of(sup, n_cand),
        copying=RankStats.of(cop, n_cand),
        ranks_suppression=sup.numpy(),
        ranks_copying=cop.numpy(),
        settings={**tokens.settings, "variant": emb.variant, "rank_over": rank_over},
    )
