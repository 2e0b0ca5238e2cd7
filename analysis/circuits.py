"""Weights-only copy-suppression tests, the shared parts: token sets, effective embeddings, rank statistics.

The OV circuit is in ``ov.py``, the QK circuit in ``qk.py`` and the all-heads scan in ``head_scan.py``.
Everything vocabulary-squared is computed in row chunks (a d_vocab x d_vocab matrix is never built) and can
run on a seeded token sample. Ranks count strictly better candidates, so rank 0 is "top-1".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.errors import SteerlensError

from .decompose import FrozenNorm, LensModel, frozen_norm, lens_of, post_attn_norm, tokenizer_of
from .lens_parts import embed, head_weights, mlp_out

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

Variant = Literal["self_attn", "mlp0"]  # what layer-0 attention does in the effective embedding
TokenKind = Literal["whole_words", "all"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
_WORD = re.compile(r"^[A-Za-z]{3,}$")


# ---- token sets ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSet:
    """Token ids sampled for weight tests, with how they were chosen."""

    ids: tuple[int, ...]
    settings: dict[str, Any]

    def tensor(self, device: torch.device | str | None = None) -> Int[Tensor, " n"]:
        return torch.tensor(self.ids, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return len(self.ids)


def token_set(
    model: LensModel, k: int | None = 4000, *, seed: int = 0, kind: TokenKind = "whole_words"
) -> TokenSet:
    """Sample ``k`` token ids (``None``: all that qualify), seeded.

    ``kind="whole_words"``: a space marker (SentencePiece '▁' or byte-level 'Ġ') then 3+ ASCII letters, the
    tokens copy suppression acts on in running text. ``kind="all"``: every non-special id below d_vocab.
    """
    lens = lens_of(model)
    tok = tokenizer_of(model)
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
    variant: Variant


def effective_embedding(
    model: LensModel, ids: Int[Tensor, " n"] | TokenSet, variant: Variant = "self_attn", chunk: int = 4096
) -> EffectiveEmbedding:
    """Effective embeddings of ``ids`` (chunked: gemma's full vocab is 262,144 rows)."""
    if variant not in VARIANTS:
        raise SteerlensError(f"effective-embedding variant={variant!r}: expected one of {VARIANTS}")
    lens = lens_of(model)
    ids = ids.tensor() if isinstance(ids, TokenSet) else ids
    b0, w = lens.blocks[0], head_weights(lens, 0)
    post = post_attn_norm(lens, 0)
    out = []
    for i in range(0, len(ids), chunk):
        x = embed(lens, ids[i : i + chunk])[None]  # [1, n, d_model]
        if variant == "self_attn":
            v = torch.einsum("bnd,hde->bnhe", b0.ln1(x), w.W_V) + w.b_V
            a = torch.einsum("bnhe,hem->bnm", v, w.W_O) + w.b_O
            x = x + (post(a) if post is not None else a)
        if not lens.cfg.attn_only:
            x = x + mlp_out(lens, 0, b0.ln2(x))
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


RankMetric = Literal["top1", "top10", "median"]  # a RankStats number a figure or table shows
_BINS = [(0, 1, "0"), (1, 2, "1"), (2, 5, "2-4"), (5, 10, "5-9"), (10, 100, "10-99"), (100, 1000, "100-999")]


def rank_histogram(fig: go.Figure, ranks: np.ndarray, name: str, colour: str) -> go.Figure:
    """Add a bar trace of rank frequencies in log-spaced bins (0, 1, 2-4, 5-9, 10-99, 100-999, 1000+)."""
    labels = [b[2] for b in _BINS] + ["1000+"]
    counts = [int(((ranks >= lo) & (ranks < hi)).sum()) for lo, hi, _ in _BINS] + [int((ranks >= 1000).sum())]
    frac = [c / max(len(ranks), 1) for c in counts]
    fig.add_trace(go.Bar(x=labels, y=frac, name=name, marker_color=colour))
    return fig


def count_beyond(scores: Tensor, diag: Tensor, higher: bool) -> Tensor:
    """Per row, how many entries strictly beat the diagonal value (more positive, or more negative)."""
    diff = scores - diag[:, None]
    return (diff.gt_(0) if higher else diff.lt_(0)).sum(-1).long()


# ---- what a head reads and what the logits read --------------------------------------------------------


def head_input(
    lens: HookedTransformer, layer: int, x: Float[Tensor, "n d_model"]
) -> Float[Tensor, "n d_model"]:
    """Residual vectors as the heads of ``layer`` read them (through the pre-attention norm)."""
    return lens.blocks[layer].ln1(x[None])[0]


def final_direction(lens: HookedTransformer) -> FrozenNorm:
    """The final norm at scale 1: its weight and centring, which can change a rank (its scale cannot)."""
    return frozen_norm(lens.ln_final) if lens.cfg.normalization_type else FrozenNorm(1.0, None, None, False)


def read_directions(lens: HookedTransformer, cols: Int[Tensor, " n"] | slice) -> Float[Tensor, "d_model n"]:
    """Unembedding columns as residual read-directions through the final norm (scale-free)."""
    return final_direction(lens).read_direction(lens.W_U[:, cols])


def check_head(lens: HookedTransformer, layer: int, head: int) -> None:
    if not (0 <= layer < lens.cfg.n_layers and 0 <= head < lens.cfg.n_heads):
        raise SteerlensError(
            f"head L{layer}H{head} does not exist: expected layer in [0, {lens.cfg.n_layers}) and head in "
            f"[0, {lens.cfg.n_heads})"
        )
