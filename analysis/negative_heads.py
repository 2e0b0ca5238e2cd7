"""Finding negative (copy-suppression) heads: per-head scores by several methods and one ranking over them.

Anti-induction, IOI self-repair and a planted suppression head to validate the detectors on are in
``self_repair.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.errors import SteerlensError

from .ablation import DirectEffects, direct_effects
from .circuits import TokenSet, token_set
from .corpus import corpus_windows
from .decompose import FrozenNorm, LensModel, Run, head_results, lens_of, run_decomposed
from .head_scan import HeadScan, scan_heads
from .ioi import IOIBatch, ioi_prompts
from .results import Saveable, layer_head_heatmap

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

Method = Literal["copy_dla", "ioi", "ov", "entropy"]  # how a head is scored as negative
METHODS: tuple[Method, ...] = get_args(Method)


def centred_unembed(lens: HookedTransformer, ids: Tensor) -> Float[Tensor, "d_model n"]:
    """Unembedding columns minus the vocabulary-mean column (softmax ignores a shift shared by all logits)."""
    return lens.W_U[:, ids] - lens.W_U.mean(1, keepdim=True)


def head_dla(
    model: LensModel, run: Run, layer: int, ids: Tensor, unembed: Float[Tensor, "d_model n"] | None = None
) -> Float[Tensor, "batch pos head n"]:
    """Direct logit attribution of each head of ``layer`` to tokens ``ids`` (centred over the vocabulary),
    through the frozen post-attention and final norms. ``unembed``: ``centred_unembed(lens, ids)`` when the
    caller loops over layers (the vocabulary mean reads all of W_U, 262,144 x 640 for gemma)."""
    lens = lens_of(model)
    c = head_results(model, run, layer)  # [B, P, H, d]
    f = run.final
    scale = f.scale[:, :, None] if isinstance(f.scale, Tensor) else f.scale
    u = centred_unembed(lens, ids) if unembed is None else unembed
    return FrozenNorm(scale, f.w, None, f.centre).linear(c) @ u


def copy_dla_scores(model: LensModel, run: Run) -> np.ndarray:
    """Per head: mean over destinations of the attention-weighted direct logit attribution to the tokens the
    head attends to (BOS excluded). Negative: the head suppresses what it attends to."""
    lens = lens_of(model)
    toks = run.tokens
    uniq, inv = torch.unique(toks, return_inverse=True)  # inv: [B, P]
    B, P = toks.shape
    out = np.zeros((lens.cfg.n_layers, lens.cfg.n_heads))
    u = centred_unembed(lens, uniq)
    for l in range(lens.cfg.n_layers):
        dla = head_dla(model, run, l, uniq, u)  # [B, d, H, U]
        idx = inv[:, None, None, :].expand(B, P, dla.shape[2], P)  # source token index per (b, d, h, s)
        dla_src = dla.gather(-1, idx)  # [B, d, H, s]
        A = run.pattern[l].permute(0, 2, 1, 3).clone()  # [B, d, H, s]
        A[..., 0] = 0.0
        score = (A * dla_src).sum(-1)[:, 1:]  # destinations after BOS
        out[l] = score.mean((0, 1)).numpy()
    return out


def ioi_scores(model: LensModel, batches: Sequence[IOIBatch]) -> tuple[np.ndarray, float]:
    """Per head: mean direct effect on logit(IO) - logit(S) at the final position (frozen final norm); and
    the model's mean logit difference."""
    lens = lens_of(model)
    total, n, ld = np.zeros((lens.cfg.n_layers, lens.cfg.n_heads)), 0, 0.0
    for b in batches:
        run = run_decomposed(model, b.tokens)
        total += ioi_head_effects(model, run, b).sum(0)
        ld += float(ioi_logit_diff(model, run, b).sum())
        n += len(b.io)
    return total / n, ld / n


def ioi_head_effects(model: LensModel, run: Run, batch: IOIBatch) -> np.ndarray:
    """``[prompt, layer, head]`` direct effects on the IO - S logit difference at the last position."""
    lens = lens_of(model)
    direction = lens.W_U[:, batch.io] - lens.W_U[:, batch.s]  # [d, n]
    f = run.final
    scale = f.scale[:, -1] if isinstance(f.scale, Tensor) else f.scale  # [n, 1]
    fz = FrozenNorm(scale[:, None] if isinstance(scale, Tensor) else scale, f.w, None, f.centre)
    out = np.zeros((len(batch.io), lens.cfg.n_layers, lens.cfg.n_heads))
    for l in range(lens.cfg.n_layers):
        c = fz.linear(head_results(model, run, l)[:, -1])  # [n, H, d]
        out[:, l] = torch.einsum("nhd,dn->nh", c, direction).numpy()
    return out


def ioi_logit_diff(model: LensModel, run: Run, batch: IOIBatch) -> Tensor:
    """logit(IO) - logit(S) at the last position, from the run's final residual and final norm."""
    lens = lens_of(model)
    x = run.final(run.resid_final)[:, -1]
    direction = lens.W_U[:, batch.io] - lens.W_U[:, batch.s]
    return (x * direction.T).sum(-1) + lens.b_U[batch.io] - lens.b_U[batch.s]


@dataclass(frozen=True)
class NegativeHeads(Saveable):
    """Heads ranked by how negative (copy-suppressing) they look, by several methods.

    ``scores[method]``: ``[n_layers, n_heads]`` in the method's own units (copy_dla, ioi: logits, negative =
    suppressing; ov: top-10 suppression fraction; entropy: entropy raised by the head's direct path).
    ``ranks[method]``: 0 = most negative-head-like. ``ranking``: heads by mean rank over the methods used.
    """

    scores: dict[str, np.ndarray]
    ranks: dict[str, np.ndarray]
    ranking: tuple[tuple[int, int], ...]
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "negative_heads"

    def top(self, k: int = 5) -> list[tuple[int, int]]:
        return list(self.ranking[:k])

    def to_frame(self) -> pd.DataFrame:
        n_layers, n_heads = next(iter(self.scores.values())).shape
        pos = {lh: i for i, lh in enumerate(self.ranking)}
        rows = []
        for l in range(n_layers):
            for h in range(n_heads):
                row: dict[str, Any] = {"layer": l, "head": h, "rank": pos[(l, h)]}
                row.update({m: float(self.scores[m][l, h]) for m in self.scores})
                row.update({f"rank_{m}": int(self.ranks[m][l, h]) for m in self.ranks})
                rows.append(row)
        return pd.DataFrame(rows).set_index(["layer", "head"]).sort_values("rank")

    def figure(self, method: Method | None = None) -> go.Figure:
        if method is None:
            mean_rank = np.mean([self.ranks[m] for m in self.ranks], axis=0)
            return layer_head_heatmap(
                mean_rank, f"Negative-head mean rank ({', '.join(self.ranks)}); 0 = most negative", "Viridis"
            )
        return layer_head_heatmap(self.scores[method], f"Negative-head score: {method}", zmid=0.0)


def _rank(order_key: np.ndarray) -> np.ndarray:
    """Rank heads by ascending key (0 = smallest) keeping the layer x head shape."""
    flat = order_key.ravel()
    ranks = np.empty(flat.size, dtype=int)
    ranks[np.argsort(flat, kind="stable")] = np.arange(flat.size)
    return ranks.reshape(order_key.shape)


def _ov_rank(m: dict[str, np.ndarray]) -> np.ndarray:
    """Rank heads by OV suppression: top-10 fraction, then top-1 fraction, then z-score (0 = most)."""
    key = np.lexsort(
        (
            -m["ov_suppression_z"].ravel(),
            -m["ov_suppression_top1"].ravel(),
            -m["ov_suppression_top10"].ravel(),
        )
    )
    r = np.empty(key.size, dtype=int)
    r[key] = np.arange(key.size)
    return r.reshape(m["ov_suppression_top10"].shape)


def _ranking(ranks: dict[str, np.ndarray]) -> tuple[tuple[int, int], ...]:
    """Heads by mean rank over the methods, ties broken by (layer, head) order."""
    mean_rank = np.mean([ranks[m] for m in ranks], axis=0)
    order = np.lexsort((np.arange(mean_rank.size), mean_rank.ravel()))
    n_heads = mean_rank.shape[1]
    return tuple((int(i // n_heads), int(i % n_heads)) for i in order)


def find_negative_heads(
    model: LensModel,
    methods: Sequence[Method] = METHODS,
    *,
    tokens: Int[Tensor, "batch pos"] | None = None,
    ioi: Sequence[IOIBatch] | None = None,
    token_sample: TokenSet | None = None,
    scan: HeadScan | None = None,
    run: Run | None = None,
    direct: DirectEffects | None = None,
    max_positions: int | None = 96,
    seed: int = 0,
) -> NegativeHeads:
    """Rank every head as a negative / copy-suppression head by ``methods``:

    ``copy_dla`` attention-weighted direct logit attribution to attended tokens on ``tokens`` (text);
    ``ioi`` direct effect on the IOI logit difference (``ioi`` prompts); ``ov`` OV suppression rank test
    (top-10, then top-1, then z-score) on ``token_sample``; ``entropy`` entropy raised by the head's direct
    path (mean-ablation, frozen final scale) on ``tokens``. Missing inputs are built with defaults.

    Example:
        >>> neg = find_negative_heads(model, methods=("ov", "copy_dla"))
        >>> neg.top(3), neg.figure()
    """
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise SteerlensError(f"methods={list(methods)!r}: expected a non-empty subset of {METHODS}")
    on_text = "copy_dla" in methods or "entropy" in methods
    if tokens is None and on_text:
        tokens = corpus_windows(model)
    if tokens is not None and run is None and on_text:
        run = run_decomposed(model, tokens)
    scores: dict[str, np.ndarray] = {}
    ranks: dict[str, np.ndarray] = {}
    settings: dict[str, Any] = {"methods": list(methods), "seed": seed}
    if "copy_dla" in methods:
        assert run is not None
        scores["copy_dla"] = copy_dla_scores(model, run)
        ranks["copy_dla"] = _rank(scores["copy_dla"])
    if "ioi" in methods:
        ioi = ioi_prompts(model, seed=seed) if ioi is None else ioi
        scores["ioi"], settings["ioi_logit_diff"] = ioi_scores(model, ioi)
        ranks["ioi"] = _rank(scores["ioi"])
        settings["ioi_prompts"] = sum(len(b.io) for b in ioi)
    if "ov" in methods:
        scan = scan_heads(model, token_sample or token_set(model, 1000, seed=seed)) if scan is None else scan
        scores["ov"], ranks["ov"] = scan.metrics["ov_suppression_top10"], _ov_rank(scan.metrics)
        settings["ov_token_set"] = scan.settings
    if "entropy" in methods:
        assert tokens is not None
        de = direct or direct_effects(model, tokens, max_positions=max_positions, seed=seed, run=run)
        scores["entropy"], ranks["entropy"] = de.entropy, _rank(-de.entropy)
        settings["entropy"] = de.settings
    if tokens is not None:
        settings["text"] = {"n_sequences": int(tokens.shape[0]), "seq_len": int(tokens.shape[1])}
    return NegativeHeads(scores=scores, ranks=ranks, ranking=_ranking(ranks), settings=settings)
