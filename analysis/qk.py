"""The QK circuit of one head, weights only: does a query built from token t attend most to token t?

Queries and keys are taken at a common position, where rotary rotations cancel (relative offset 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.errors import SteerlensError
from steerlens.figures import PALETTE, new_figure

from .circuits import (
    EffectiveEmbedding,
    RankMetric,
    RankStats,
    TokenSet,
    Variant,
    check_head,
    count_beyond,
    effective_embedding,
    head_input,
    rank_histogram,
)
from .decompose import LensModel, lens_of
from .lens_parts import embed, head_weights, qk_norms
from .results import Saveable

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

Side = Literal["unembedding", "effective", "raw"]  # which vector stands for a token on a query or key side
QUERY_SIDES: tuple[Side, ...] = ("unembedding", "effective", "raw")
KEY_SIDES: tuple[Side, ...] = ("effective", "raw", "unembedding")


def _side(
    lens: HookedTransformer, which: Side, ids: Tensor, emb: EffectiveEmbedding
) -> Float[Tensor, "n d_model"]:
    if which == "unembedding":
        return lens.W_U[:, ids].T
    if which == "effective":
        return emb.vectors
    if which == "raw":
        return embed(lens, ids)
    raise SteerlensError(f"QK side {which!r}: expected one of {QUERY_SIDES}")


def qk_vectors(
    lens: HookedTransformer, layer: int, head: int, xq: Tensor, xk: Tensor, normed: bool = False
) -> tuple[Float[Tensor, "n d_head"], Float[Tensor, "n d_head"]]:
    """Queries and keys of one head at a common position (rotary rotations cancel at relative offset 0)."""
    w = head_weights(lens, layer)
    if not normed:
        xq, xk = head_input(lens, layer, xq), head_input(lens, layer, xk)
    q = xq @ w.W_Q[head] + w.b_Q[head]
    k = xk @ w.W_K[head] + w.b_K[head]
    norms = qk_norms(lens, layer)
    if norms is not None:
        q, k = norms[0](q), norms[1](k)
    return q, k


def qk_rank_tensor(q: Tensor, k: Tensor, chunk: int) -> Tensor:
    """For each query row, how many keys score strictly higher than its own (row-aligned) key."""
    out = []
    for i in range(0, len(q), chunk):
        s = q[i : i + chunk] @ k.T
        rows = torch.arange(i, min(i + chunk, len(q)))
        out.append(count_beyond(s, s[torch.arange(len(rows)), rows], higher=True))
    return torch.cat(out)


@dataclass(frozen=True)
class QKRanks(Saveable):
    """For each query token, the rank of its own key among all keys of the token set (0 = most attended)."""

    layer: int
    head: int
    query: Side
    key: Side
    stats: RankStats
    ranks: np.ndarray = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "qk_ranks"

    def figure(self) -> go.Figure:
        fig = new_figure(
            f"QK circuit L{self.layer}H{self.head}: query {self.query}, key {self.key}",
            "rank of own key (0 = top-1)",
            "fraction of query tokens",
        )
        return rank_histogram(fig, self.ranks, "own-key rank", PALETTE[0])


def qk_ranks(
    model: LensModel,
    layer: int,
    head: int,
    tokens: TokenSet,
    *,
    query: Side = "unembedding",
    key: Side = "effective",
    variant: Variant = "self_attn",
    embedding: EffectiveEmbedding | None = None,
    chunk: int = 1024,
) -> QKRanks:
    """QK rank test: does a query built from token t's ``query`` vector attend most to token t's ``key``?"""
    lens = lens_of(model)
    check_head(lens, layer, head)
    emb = embedding or effective_embedding(model, tokens, variant)
    ids = tokens.tensor()
    q, k = qk_vectors(lens, layer, head, _side(lens, query, ids, emb), _side(lens, key, ids, emb))
    ranks = qk_rank_tensor(q, k, chunk)
    return QKRanks(
        layer=layer,
        head=head,
        query=query,
        key=key,
        stats=RankStats.of(ranks, len(ids)),
        ranks=ranks.numpy(),
        settings={**tokens.settings, "variant": emb.variant, "rank_over": "sample"},
    )


@dataclass(frozen=True)
class QKGrid(Saveable):
    """The 3x3 query-side x key-side grid of QK rank tests for one head (``stats[query][key]``).

    Query sides: unembedding (the head's query reads a *prediction*), effective embedding, raw embedding.
    Key sides: effective embedding (what the residual holds at a source token), raw embedding, unembedding.
    For tied embeddings, raw embedding and unembedding differ only in scale, which the pre-norm removes.
    """

    layer: int
    head: int
    stats: dict[str, dict[str, RankStats]]
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "qk_grid"

    def to_frame(self, metric: RankMetric = "top10") -> pd.DataFrame:
        return pd.DataFrame(
            {k: {q: getattr(self.stats[q][k], metric) for q in QUERY_SIDES} for k in KEY_SIDES}
        ).rename_axis(index="query", columns="key")

    def figure(self, metric: RankMetric = "top10") -> go.Figure:
        df = self.to_frame(metric)
        fig = new_figure(f"QK grid L{self.layer}H{self.head}: {metric} fraction", "key side", "query side")
        fig.add_trace(
            go.Heatmap(
                z=df.values,
                x=list(df.columns),
                y=list(df.index),
                zmin=0,
                zmax=1,
                colorscale="Blues",
                text=np.round(df.values, 3),
                texttemplate="%{text}",
            )
        )
        fig.update_yaxes(autorange="reversed")
        return fig


def qk_grid(
    model: LensModel,
    layer: int,
    head: int,
    tokens: TokenSet,
    *,
    variant: Variant = "self_attn",
    embedding: EffectiveEmbedding | None = None,
    chunk: int = 1024,
) -> QKGrid:
    """All nine query-side x key-side QK rank tests for one head.

    Example:
        >>> grid = qk_grid(model, 9, 1, token_set(model, 500))
        >>> grid.stats["unembedding"]["effective"].top10, grid.figure()
    """
    lens = lens_of(model)
    check_head(lens, layer, head)
    emb = embedding or effective_embedding(model, tokens, variant)
    ids = tokens.tensor()
    stats: dict[str, dict[str, RankStats]] = {}
    for qs in QUERY_SIDES:
        stats[qs] = {}
        for ks in KEY_SIDES:
            q, k = qk_vectors(lens, layer, head, _side(lens, qs, ids, emb), _side(lens, ks, ids, emb))
            stats[qs][ks] = RankStats.of(qk_rank_tensor(q, k, chunk), len(ids))
    return QKGrid(layer, head, stats, {**tokens.settings, "variant": emb.variant, "rank_over": "sample"})
