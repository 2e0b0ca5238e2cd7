"""Weights-only copy-suppression tests: effective embeddings, OV suppression ranks, QK ranks, head scans.

Everything vocabulary-squared is computed in row chunks (a d_vocab x d_vocab matrix is never built) and can
run on a seeded token sample. Ranks count strictly better candidates, so rank 0 is "top-1".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.errors import SteerlensError
from steerlens.figures import PALETTE, TEMPLATE, new_figure

from .decompose import FrozenNorm, frozen_norm, lens_of, post_attn_norm
from .results import Saveable, head_frame

VARIANTS = ("self_attn", "mlp0")
QUERY_SIDES = ("unembedding", "effective", "raw")
KEY_SIDES = ("effective", "raw", "unembedding")
_WORD = re.compile(r"^[A-Za-z]{3,}$")


# ---- token sets ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSet:
    """Token ids sampled for weight tests, with how they were chosen."""

    ids: tuple[int, ...]
    settings: dict[str, Any]

    def tensor(self, device: Any = None) -> Int[Tensor, " n"]:
        return torch.tensor(self.ids, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return len(self.ids)


def token_set(model: Any, k: int | None = 4000, *, seed: int = 0, kind: str = "whole_words") -> TokenSet:
    """Sample ``k`` token ids (``None``: all that qualify), seeded.

    ``kind="whole_words"``: a space marker (SentencePiece '▁' or byte-level 'Ġ') then 3+ ASCII letters, the
    tokens copy suppression acts on in running text. ``kind="all"``: every non-special id below d_vocab.
    """
    lens = lens_of(model)
    tok = model.tokenizer
    d_vocab = int(lens.cfg.d_vocab)
    special = set(getattr(tok, "all_special_ids", []) or [])
    if kind == "whole_words":
        pieces = tok.convert_ids_to_tokens(list(range(min(d_vocab, len(tok)))))
        pool = [
            i
            for i, p in enumerate(pieces)
            if p and p[0] in ("▁", "Ġ") and _WORD.match(p[1:]) and i not in special
        ]
    elif kind == "all":
        pool = [i for i in range(d_vocab) if i not in special]
    else:
        raise SteerlensError(f"token set kind={kind!r}: expected 'whole_words' or 'all'")
    if not pool:
        raise SteerlensError(f"no token of kind {kind!r} in this tokenizer; use kind='all'")
    g = torch.Generator().manual_seed(seed)
    if k is not None and k < len(pool):
        pick = torch.randperm(len(pool), generator=g)[:k].sort().values.tolist()
        pool = [pool[i] for i in pick]
    return TokenSet(tuple(pool), {"k": k, "kind": kind, "seed": seed, "n": len(pool)})


# ---- effective embedding -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EffectiveEmbedding:
    """Residual stream after layer 0 for each token alone: ``variant`` says what layer-0 attention did.

    ``"mlp0"``: attention off, ``W_E + MLP0(W_E)``. ``"self_attn"``: each token attends only to itself (its
    OV output and the attention bias are added, through the post-attention norm if any) before MLP0, as in the
    published copy-suppression numbers. Positional embeddings are left out.
    """

    ids: Int[Tensor, " n"]
    vectors: Float[Tensor, "n d_model"]
    variant: str


def effective_embedding(
    model: Any, ids: Int[Tensor, " n"] | TokenSet, variant: str = "self_attn", chunk: int = 4096
) -> EffectiveEmbedding:
    """Effective embeddings of ``ids`` (chunked: gemma's full vocab is 262,144 rows)."""
    if variant not in VARIANTS:
        raise SteerlensError(f"effective-embedding variant={variant!r}: expected one of {VARIANTS}")
    lens = lens_of(model)
    ids = ids.tensor() if isinstance(ids, TokenSet) else ids
    b0 = lens.blocks[0]
    out = []
    for i in range(0, len(ids), chunk):
        x = lens.W_E[ids[i : i + chunk]][None]  # [1, n, d_model]
        if variant == "self_attn":
            v = torch.einsum("bnd,hde->bnhe", b0.ln1(x), b0.attn.W_V) + b0.attn.b_V
            a = torch.einsum("bnhe,hem->bnm", v, b0.attn.W_O) + b0.attn.b_O
            post = post_attn_norm(lens, 0)
            x = x + (post(a) if post is not None else a)
        if not lens.cfg.attn_only:
            x = x + b0.apply_mlp(b0.ln2(x))
        out.append(x[0])
    return EffectiveEmbedding(ids=ids, vectors=torch.cat(out), variant=variant)


# ---- rank statistics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankStats:
    """Summary of diagonal ranks: top-1 and top-10 fractions, median rank, out of ``n_candidates``."""

    top1: float
    top10: float
    median: float
    n: int
    n_candidates: int

    @classmethod
    def of(cls, ranks: Tensor, n_candidates: int) -> RankStats:
        r = ranks.float()
        return cls(
            top1=float((r < 1).float().mean()),
            top10=float((r < 10).float().mean()),
            median=float(r.median()),
            n=len(r),
            n_candidates=n_candidates,
        )


_BINS = [(0, 1, "0"), (1, 2, "1"), (2, 5, "2-4"), (5, 10, "5-9"), (10, 100, "10-99"), (100, 1000, "100-999")]


def rank_histogram(fig: go.Figure, ranks: np.ndarray, name: str, colour: str) -> go.Figure:
    """Add a bar trace of rank frequencies in log-spaced bins (0, 1, 2-4, 5-9, 10-99, 100-999, 1000+)."""
    labels = [b[2] for b in _BINS] + ["1000+"]
    counts = [int(((ranks >= lo) & (ranks < hi)).sum()) for lo, hi, _ in _BINS] + [int((ranks >= 1000).sum())]
    frac = [c / max(len(ranks), 1) for c in counts]
    fig.add_trace(go.Bar(x=labels, y=frac, name=name, marker_color=colour))
    return fig


def _count_beyond(scores: Tensor, diag: Tensor, higher: bool) -> Tensor:
    """Per row, how many entries strictly beat the diagonal value (more positive, or more negative)."""
    diff = scores - diag[:, None]
    return (diff.gt_(0) if higher else diff.lt_(0)).sum(-1).long()


# ---- OV circuit ----------------------------------------------------------------------------------------


def _head_in(lens: Any, layer: int, x: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
    return lens.blocks[layer].ln1(x[None])[0]


def _ov_out_map(lens: Any, layer: int, head: int) -> Float[Tensor, "d_head d_model"]:
    """W_O of one head through the post-attention norm's direction (its scale is one positive number per
    position, which cannot change a rank)."""
    W_O = lens.blocks[layer].attn.W_O[head]
    post = post_attn_norm(lens, layer)
    return frozen_norm(post).linear(W_O) if post is not None else W_O


def _final_direction(lens: Any) -> FrozenNorm:
    """The final norm at scale 1: its weight and centring, which can change a rank (its scale cannot)."""
    return frozen_norm(lens.ln_final) if lens.cfg.normalization_type else FrozenNorm(1.0, None, None, False)


def _read(lens: Any, cols: Int[Tensor, " n"] | slice) -> Float[Tensor, "d_model n"]:
    """Unembedding columns as residual read-directions through the final norm (scale-free)."""
    return _final_direction(lens).read_direction(lens.W_U[:, cols])


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


def _ov_ranks_tensor(
    lens: Any,
    layer: int,
    head: int,
    src_in: Float[Tensor, "n d_model"],
    ids: Int[Tensor, " n"],
    rank_over: str,
    chunk: int,
    read: Float[Tensor, "d_model n"] | None = None,
    z_out: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Suppression and copying ranks; ``src_in`` is the head's (pre-normed) input for each source token.
    ``z_out`` (sample mode) receives each row's suppression z-score: how many row standard deviations the
    diagonal logit lies below the row mean."""
    v = src_in @ lens.blocks[layer].attn.W_V[head]  # [n, d_head]
    M = _ov_out_map(lens, layer, head)  # [d_head, d_model]
    if rank_over == "sample":
        G = _read(lens, ids) if read is None else read
        MG = M @ G  # [d_head, n]
        sup, cop, zs = [], [], []
        for i in range(0, len(ids), chunk):
            s = v[i : i + chunk] @ MG
            rows = torch.arange(i, min(i + chunk, len(ids)))
            d = s[torch.arange(len(rows)), rows]
            zs.append((s.mean(-1) - d) / s.std(-1).clamp_min(1e-12))
            sup.append(_count_beyond(s, d, higher=False))
            cop.append(_count_beyond(s, d, higher=True))
        if z_out is not None:
            z_out.append(torch.cat(zs))
        return torch.cat(sup), torch.cat(cop), len(ids)
    if rank_over == "vocab":
        # The final norm goes on the rows (linear(x) @ W_U == x @ read_direction(W_U)), so each vocabulary
        # chunk is one [n, d_model] x [d_model, width] product straight from W_U, not a d_head x vocab map.
        V = lens.cfg.d_vocab
        out = _final_direction(lens).linear(v @ M)  # [n, d_model]
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
                sup_v[i : i + chunk] += _count_beyond(s, diag[i : i + chunk], higher=False)
                cop_v[i : i + chunk] += _count_beyond(s, diag[i : i + chunk], higher=True)
        return sup_v, cop_v, V
    raise SteerlensError(f"rank_over={rank_over!r}: expected 'sample' (the token set) or 'vocab'")


def ov_ranks(
    model: Any,
    layer: int,
    head: int,
    tokens: TokenSet,
    *,
    variant: str = "self_attn",
    rank_over: str = "sample",
    embedding: EffectiveEmbedding | None = None,
    chunk: int = 1024,
) -> OVRanks:
    """Signed OV ranks of one head: for each source token t, the logits ``W_U^T W_OV^T e_t`` (through the
    norms' weights) ranked over the token set (``rank_over="sample"``) or the whole vocabulary (``"vocab"``)."""
    lens = lens_of(model)
    _check_head(lens, layer, head)
    emb = embedding or effective_embedding(model, tokens, variant)
    ids = tokens.tensor()
    src_in = _head_in(lens, layer, emb.vectors)
    sup, cop, n_cand = _ov_ranks_tensor(lens, layer, head, src_in, ids, rank_over, chunk)
    return OVRanks(
        layer=layer,
        head=head,
        suppression=RankStats.of(sup, n_cand),
        copying=RankStats.of(cop, n_cand),
        ranks_suppression=sup.numpy(),
        ranks_copying=cop.numpy(),
        settings={**tokens.settings, "variant": emb.variant, "rank_over": rank_over},
    )


# ---- QK circuit ----------------------------------------------------------------------------------------


def _side(lens: Any, which: str, ids: Tensor, emb: EffectiveEmbedding) -> Float[Tensor, "n d_model"]:
    if which == "unembedding":
        return lens.W_U[:, ids].T
    if which == "effective":
        return emb.vectors
    if which == "raw":
        return lens.W_E[ids]
    raise SteerlensError(f"QK side {which!r}: expected one of {QUERY_SIDES}")


def _qk_vectors(
    lens: Any, layer: int, head: int, xq: Tensor, xk: Tensor, normed: bool = False
) -> tuple[Float[Tensor, "n d_head"], Float[Tensor, "n d_head"]]:
    """Queries and keys of one head at a common position (rotary rotations cancel at relative offset 0)."""
    attn = lens.blocks[layer].attn
    if not normed:
        xq, xk = _head_in(lens, layer, xq), _head_in(lens, layer, xk)
    q = xq @ attn.W_Q[head] + attn.b_Q[head]
    k = xk @ attn.W_K[head] + attn.b_K[head]
    if getattr(lens.cfg, "use_qk_norm", False):
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q, k


def _qk_ranks_tensor(q: Tensor, k: Tensor, chunk: int) -> Tensor:
    out = []
    for i in range(0, len(q), chunk):
        s = q[i : i + chunk] @ k.T
        rows = torch.arange(i, min(i + chunk, len(q)))
        out.append(_count_beyond(s, s[torch.arange(len(rows)), rows], higher=True))
    return torch.cat(out)


@dataclass(frozen=True)
class QKRanks(Saveable):
    """For each query token, the rank of its own key among all keys of the token set (0 = most attended)."""

    layer: int
    head: int
    query: str
    key: str
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
    model: Any,
    layer: int,
    head: int,
    tokens: TokenSet,
    *,
    query: str = "unembedding",
    key: str = "effective",
    variant: str = "self_attn",
    embedding: EffectiveEmbedding | None = None,
    chunk: int = 1024,
) -> QKRanks:
    """QK rank test: does a query built from token t's ``query`` vector attend most to token t's ``key``?"""
    lens = lens_of(model)
    _check_head(lens, layer, head)
    emb = embedding or effective_embedding(model, tokens, variant)
    ids = tokens.tensor()
    q, k = _qk_vectors(lens, layer, head, _side(lens, query, ids, emb), _side(lens, key, ids, emb))
    ranks = _qk_ranks_tensor(q, k, chunk)
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

    def to_frame(self, metric: str = "top10") -> pd.DataFrame:
        return pd.DataFrame(
            {k: {q: getattr(self.stats[q][k], metric) for q in QUERY_SIDES} for k in KEY_SIDES}
        ).rename_axis(index="query", columns="key")

    def figure(self, metric: str = "top10") -> go.Figure:
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
    model: Any,
    layer: int,
    head: int,
    tokens: TokenSet,
    *,
    variant: str = "self_attn",
    embedding: EffectiveEmbedding | None = None,
    chunk: int = 1024,
) -> QKGrid:
    """All nine query-side x key-side QK rank tests for one head."""
    lens = lens_of(model)
    _check_head(lens, layer, head)
    emb = embedding or effective_embedding(model, tokens, variant)
    ids = tokens.tensor()
    stats: dict[str, dict[str, RankStats]] = {}
    for qs in QUERY_SIDES:
        stats[qs] = {}
        for ks in KEY_SIDES:
            q, k = _qk_vectors(lens, layer, head, _side(lens, qs, ids, emb), _side(lens, ks, ids, emb))
            stats[qs][ks] = RankStats.of(_qk_ranks_tensor(q, k, chunk), len(ids))
    return QKGrid(layer, head, stats, {**tokens.settings, "variant": emb.variant, "rank_over": "sample"})


# ---- all heads -----------------------------------------------------------------------------------------

SCAN_METRICS = (
    "ov_suppression_z",
    "ov_suppression_top1",
    "ov_suppression_top10",
    "ov_suppression_median",
    "ov_copying_top1",
    "ov_copying_top10",
    "qk_top1",
    "qk_top10",
    "qk_median",
)


@dataclass(frozen=True)
class HeadScan(Saveable):
    """OV suppression/copying and QK (unembedding query, effective key) rank statistics for every head.

    ``metrics[name]`` is a ``[n_layers, n_heads]`` array; names in ``SCAN_METRICS``.
    """

    metrics: dict[str, np.ndarray]
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "head_scan"

    def to_frame(self) -> pd.DataFrame:
        return head_frame({m: np.asarray(self.metrics[m], dtype=float) for m in SCAN_METRICS})

    def figure(self, metric: str = "ov_suppression_top10") -> go.Figure:
        return layer_head_heatmap(
            self.metrics[metric], f"{metric} per head ({self.settings.get('n')} tokens)"
        )


def layer_head_heatmap(
    values: np.ndarray, title: str, colorscale: str = "RdBu", zmid: float | None = None
) -> go.Figure:
    """A layer x head heatmap in the steerlens template (layers down, heads across)."""
    n_layers, n_heads = values.shape
    fig = new_figure(title, "head", "layer", height=max(320, 22 * n_layers + 120))
    fig.add_trace(
        go.Heatmap(
            z=values,
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            colorscale=colorscale,
            zmid=zmid,
            text=np.round(values, 2),
            texttemplate="%{text}" if n_heads * n_layers <= 400 else None,
        )
    )
    fig.update_layout(template=TEMPLATE)
    fig.update_yaxes(autorange="reversed", dtick=1)
    fig.update_xaxes(dtick=1)
    return fig


def scan_heads(
    model: Any,
    tokens: TokenSet,
    *,
    variant: str = "self_attn",
    embedding: EffectiveEmbedding | None = None,
    chunk: int = 1024,
) -> HeadScan:
    """OV and QK rank statistics of every head over the token set (ranks among the sampled tokens)."""
    lens = lens_of(model)
    emb = embedding or effective_embedding(model, tokens, variant)
    ids = tokens.tensor()
    n_layers, n_heads = lens.cfg.n_layers, lens.cfg.n_heads
    out = {m: np.zeros((n_layers, n_heads)) for m in SCAN_METRICS}
    G = _read(lens, ids)
    for l in range(n_layers):
        src_in = _head_in(lens, l, emb.vectors)
        xu_in = _head_in(lens, l, lens.W_U[:, ids].T)
        for h in range(n_heads):
            zs: list[Tensor] = []
            sup, cop, n = _ov_ranks_tensor(lens, l, h, src_in, ids, "sample", chunk, read=G, z_out=zs)
            s, c = RankStats.of(sup, n), RankStats.of(cop, n)
            q, k = _qk_vectors(lens, l, h, xu_in, src_in, normed=True)
            qk = RankStats.of(_qk_ranks_tensor(q, k, chunk), n)
            for name, val in (
                ("ov_suppression_z", float(zs[0].mean())),
                ("ov_suppression_top1", s.top1),
                ("ov_suppression_top10", s.top10),
                ("ov_suppression_median", s.median),
                ("ov_copying_top1", c.top1),
                ("ov_copying_top10", c.top10),
                ("qk_top1", qk.top1),
                ("qk_top10", qk.top10),
                ("qk_median", qk.median),
            ):
                out[name][l, h] = val
    return HeadScan(out, {**tokens.settings, "variant": emb.variant, "rank_over": "sample"})


def _check_head(lens: Any, layer: int, head: int) -> None:
    if not (0 <= layer < lens.cfg.n_layers and 0 <= head < lens.cfg.n_heads):
        raise SteerlensError(
            f"head L{layer}H{head} does not exist: expected layer in [0, {lens.cfg.n_layers}) and head in "
            f"[0, {lens.cfg.n_heads})"
        )
