"""Finding negative (copy-suppression) heads, anti-induction scores, IOI self-repair, and a planted head to
validate the detectors on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.errors import SteerlensError
from steerlens.figures import GREY, PALETTE, new_figure

from .ablation import DirectEffects, direct_effects
from .circuits import (
    HeadScan,
    TokenSet,
    _head_in,
    _read,
    effective_embedding,
    layer_head_heatmap,
    scan_heads,
    token_set,
)
from .decompose import Run, head_results, lens_of, run_decomposed
from .ioi import IOIBatch
from .results import Saveable, head_frame

METHODS = ("copy_dla", "ioi", "ov", "entropy")


def _centred_unembed(lens: Any, ids: Tensor) -> Float[Tensor, "d_model n"]:
    """Unembedding columns minus the vocabulary-mean column (softmax ignores a shift shared by all logits)."""
    return lens.W_U[:, ids] - lens.W_U.mean(1, keepdim=True)


def head_dla(
    model: Any, run: Run, layer: int, ids: Tensor, unembed: Float[Tensor, "d_model n"] | None = None
) -> Float[Tensor, "batch pos head n"]:
    """Direct logit attribution of each head of ``layer`` to tokens ``ids`` (centred over the vocabulary),
    through the frozen post-attention and final norms. ``unembed``: ``_centred_unembed(lens, ids)`` when the
    caller loops over layers (the vocabulary mean reads all of W_U, 262,144 x 640 for gemma)."""
    lens = lens_of(model)
    c = head_results(model, run, layer)  # [B, P, H, d]
    f = run.final
    scale = f.scale[:, :, None] if isinstance(f.scale, Tensor) else f.scale
    from .decompose import FrozenNorm

    u = _centred_unembed(lens, ids) if unembed is None else unembed
    return FrozenNorm(scale, f.w, None, f.centre).linear(c) @ u


def copy_dla_scores(model: Any, run: Run) -> np.ndarray:
    """Per head: mean over destinations of the attention-weighted direct logit attribution to the tokens the
    head attends to (BOS excluded). Negative: the head suppresses what it attends to."""
    lens = lens_of(model)
    toks = run.tokens
    uniq, inv = torch.unique(toks, return_inverse=True)  # inv: [B, P]
    B, P = toks.shape
    out = np.zeros((lens.cfg.n_layers, lens.cfg.n_heads))
    u = _centred_unembed(lens, uniq)
    for l in range(lens.cfg.n_layers):
        dla = head_dla(model, run, l, uniq, u)  # [B, d, H, U]
        idx = inv[:, None, None, :].expand(B, P, dla.shape[2], P)  # source token index per (b, d, h, s)
        dla_src = dla.gather(-1, idx)  # [B, d, H, s]
        A = run.pattern[l].permute(0, 2, 1, 3).clone()  # [B, d, H, s]
        A[..., 0] = 0.0
        score = (A * dla_src).sum(-1)[:, 1:]  # destinations after BOS
        out[l] = score.mean((0, 1)).numpy()
    return out


def ioi_scores(model: Any, batches: Sequence[IOIBatch]) -> tuple[np.ndarray, float]:
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


def ioi_head_effects(model: Any, run: Run, batch: IOIBatch) -> np.ndarray:
    """``[prompt, layer, head]`` direct effects on the IO - S logit difference at the last position."""
    lens = lens_of(model)
    direction = lens.W_U[:, batch.io] - lens.W_U[:, batch.s]  # [d, n]
    f = run.final
    scale = f.scale[:, -1] if isinstance(f.scale, Tensor) else f.scale  # [n, 1]
    from .decompose import FrozenNorm

    fz = FrozenNorm(scale[:, None] if isinstance(scale, Tensor) else scale, f.w, None, f.centre)
    out = np.zeros((len(batch.io), lens.cfg.n_layers, lens.cfg.n_heads))
    for l in range(lens.cfg.n_layers):
        c = fz.linear(head_results(model, run, l)[:, -1])  # [n, H, d]
        out[:, l] = torch.einsum("nhd,dn->nh", c, direction).numpy()
    return out


def ioi_logit_diff(model: Any, run: Run, batch: IOIBatch) -> Tensor:
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

    def figure(self, method: str | None = None) -> go.Figure:
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


def find_negative_heads(
    model: Any,
    methods: Sequence[str] = METHODS,
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
    """
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise SteerlensError(f"methods={list(methods)!r}: expected a non-empty subset of {METHODS}")
    if tokens is None and ("copy_dla" in methods or "entropy" in methods):
        from .corpus import corpus_windows

        tokens = corpus_windows(model)
    if tokens is not None and run is None and ("copy_dla" in methods or "entropy" in methods):
        run = run_decomposed(model, tokens)
    scores: dict[str, np.ndarray] = {}
    ranks: dict[str, np.ndarray] = {}
    settings: dict[str, Any] = {"methods": list(methods), "seed": seed}
    if "copy_dla" in methods:
        assert run is not None
        scores["copy_dla"] = copy_dla_scores(model, run)
        ranks["copy_dla"] = _rank(scores["copy_dla"])
    if "ioi" in methods:
        if ioi is None:
            from .ioi import ioi_prompts

            ioi = ioi_prompts(model, seed=seed)
        scores["ioi"], settings["ioi_logit_diff"] = ioi_scores(model, ioi)
        ranks["ioi"] = _rank(scores["ioi"])
        settings["ioi_prompts"] = sum(len(b.io) for b in ioi)
    if "ov" in methods:
        if scan is None:
            sample = token_sample or token_set(model, 1000, seed=seed)
            scan = scan_heads(model, sample)
        m = scan.metrics
        scores["ov"] = m["ov_suppression_top10"]
        key = np.lexsort(
            (-m["ov_suppression_z"].ravel(), -m["ov_suppression_top1"].ravel(), -scores["ov"].ravel())
        )
        r = np.empty(key.size, dtype=int)
        r[key] = np.arange(key.size)
        ranks["ov"] = r.reshape(scores["ov"].shape)
        settings["ov_token_set"] = scan.settings
    if "entropy" in methods:
        assert tokens is not None
        de = direct or direct_effects(model, tokens, max_positions=max_positions, seed=seed, run=run)
        scores["entropy"] = de.entropy
        ranks["entropy"] = _rank(-de.entropy)
        settings["entropy"] = de.settings
    if tokens is not None:
        settings["text"] = {"n_sequences": int(tokens.shape[0]), "seq_len": int(tokens.shape[1])}
    mean_rank = np.mean([ranks[m] for m in ranks], axis=0)
    order = np.lexsort((np.arange(mean_rank.size), mean_rank.ravel()))
    n_heads = mean_rank.shape[1]
    ranking = tuple((int(i // n_heads), int(i % n_heads)) for i in order)
    return NegativeHeads(scores=scores, ranks=ranks, ranking=ranking, settings=settings)


# ---- anti-induction ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AntiInduction(Saveable):
    """On repeated random tokens: ``induction_attention`` (mean attention from a second-half token to the
    token after its first occurrence) and ``anti_induction`` (minus the direct logit attribution to the correct
    next token, so positive = the head suppresses what induction predicts). ``[n_layers, n_heads]``."""

    induction_attention: np.ndarray
    anti_induction: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "anti_induction"

    def to_frame(self) -> pd.DataFrame:
        return head_frame(
            {"induction_attention": self.induction_attention, "anti_induction": self.anti_induction}
        )

    def figure(self) -> go.Figure:
        return layer_head_heatmap(
            self.anti_induction, "Anti-induction score (repeated random tokens)", zmid=0.0
        )


def repeated_tokens(model: Any, n: int = 8, length: int = 24, *, seed: int = 0) -> Int[Tensor, "n pos"]:
    """``[BOS] r_1..r_L r_1..r_L`` rows of random whole-word tokens (seeded)."""
    pool = torch.tensor(token_set(model, None, seed=seed).ids)
    g = torch.Generator().manual_seed(seed)
    r = pool[torch.randint(len(pool), (n, length), generator=g)]
    bos = model.tokenizer.bos_token_id
    parts = ([torch.full((n, 1), bos)] if bos is not None else []) + [r, r]
    return torch.cat(parts, dim=1)


def anti_induction(model: Any, n: int = 8, length: int = 24, *, seed: int = 0) -> AntiInduction:
    """Induction attention and anti-induction (negative direct logit attribution to the next token) per head."""
    lens = lens_of(model)
    toks = repeated_tokens(model, n, length, seed=seed)
    run = run_decomposed(model, toks)
    off = toks.shape[1] - 2 * length  # 1 with BOS
    dest = torch.arange(off + length, off + 2 * length - 1)  # second-half positions with a next token
    src = dest - length + 1  # token after the first occurrence
    nxt = toks[:, dest + 1]  # [n, D]
    ind = np.zeros((lens.cfg.n_layers, lens.cfg.n_heads))
    anti = np.zeros_like(ind)
    uniq, inv = torch.unique(nxt, return_inverse=True)
    u = _centred_unembed(lens, uniq)
    for l in range(lens.cfg.n_layers):
        ind[l] = run.pattern[l][:, :, dest, src].mean((0, 2)).numpy()
        dla = head_dla(model, run, l, uniq, u)[:, dest]  # [n, D, H, U]
        got = dla.gather(-1, inv[:, :, None, None].expand(-1, -1, dla.shape[2], 1))[..., 0]
        anti[l] = (-got.mean((0, 1))).numpy()
    return AntiInduction(ind, anti, {"n": n, "length": length, "seed": seed, "token_kind": "whole_words"})


# ---- IOI self-repair -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfRepair(Saveable):
    """IOI self-repair when ``name_movers`` are resample-ablated (z from the ABC prompts).

    ``clean``/``ablated``: per-head direct effects on the logit difference (``[n_layers, n_heads]``, each
    run's own final-norm scale). ``self_repair = (LD_ablated - LD_clean) - (direct change of the name movers)``;
    ``share``: each other head's direct-effect change / self_repair (shares of all non-name-mover components
    sum to 1, with ``share_other`` holding MLPs, biases and embeddings)."""

    name_movers: tuple[tuple[int, int], ...]
    clean: np.ndarray
    ablated: np.ndarray
    logit_diff_clean: float
    logit_diff_ablated: float
    self_repair: float
    share: np.ndarray
    share_other: float
    settings: dict[str, Any] = field(default_factory=dict)
    name: str = "self_repair"

    def to_frame(self) -> pd.DataFrame:
        movers = np.zeros(self.clean.shape, dtype=bool)
        for l, h in self.name_movers:
            movers[l, h] = True
        return head_frame(
            {"clean": self.clean, "ablated": self.ablated, "share": self.share, "name_mover": movers}
        )

    def figure(self, highlight: Sequence[tuple[int, int]] = ()) -> go.Figure:
        fig = new_figure(
            "IOI self-repair: per-head direct effect on logit difference",
            "clean direct effect",
            "direct effect with name movers resample-ablated",
        )
        df = self.to_frame().reset_index()
        lo = float(min(df.clean.min(), df.ablated.min()))
        hi = float(max(df.clean.max(), df.ablated.max()))
        fig.add_trace(
            go.Scatter(
                x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color=GREY, dash="dot"), showlegend=False
            )
        )
        marked = {(int(l), int(h)) for l, h in highlight}
        hl = pd.Series([(int(l), int(h)) in marked for l, h in zip(df["layer"], df["head"], strict=True)])
        groups = [
            ("name movers", df["name_mover"], PALETTE[1]),
            ("highlighted", hl & ~df["name_mover"], PALETTE[3]),
        ]
        rest = ~(groups[0][1] | groups[1][1])
        for label, sel, colour in [("other heads", rest, PALETTE[0]), *groups]:
            d = df[sel]
            fig.add_trace(
                go.Scatter(
                    x=d["clean"],
                    y=d["ablated"],
                    mode="markers",
                    name=label,
                    marker=dict(color=colour, size=8),
                    text=[f"L{int(l)}H{int(h)}" for l, h in zip(d["layer"], d["head"], strict=True)],
                )
            )
        return fig


def self_repair(
    model: Any,
    batches: Sequence[IOIBatch],
    *,
    name_movers: Sequence[tuple[int, int]] | None = None,
    n_name_movers: int = 3,
) -> SelfRepair:
    """Resample-ablate ``name_movers`` (default: the ``n_name_movers`` heads with the largest positive direct
    effect on the IOI logit difference) and measure how other heads' direct effects change."""
    lens = lens_of(model)
    clean_runs = [run_decomposed(model, b.tokens) for b in batches]
    clean = np.concatenate([ioi_head_effects(model, r, b) for r, b in zip(clean_runs, batches, strict=True)])
    if name_movers is None:
        mean = clean.mean(0)
        flat = np.argsort(-mean.ravel())[:n_name_movers]
        name_movers = [(int(i // lens.cfg.n_heads), int(i % lens.cfg.n_heads)) for i in flat]
    nm = tuple((int(l), int(h)) for l, h in name_movers)
    ablated_list, ld_c, ld_a = [], [], []
    for run, b in zip(clean_runs, batches, strict=True):
        abc = run_decomposed(model, b.abc_tokens, check=False)
        hooks = []
        for l in sorted({l for l, _ in nm}):
            heads = [h for ll, h in nm if ll == l]

            def hook(z: Tensor, hook: Any, heads: list[int] = heads, new: Tensor = abc.z[l]) -> Tensor:
                z = z.clone()
                z[:, :, heads] = new[:, :, heads]
                return z

            hooks.append((f"blocks.{l}.attn.hook_z", hook))
        arun = run_decomposed(model, b.tokens, hooks)
        ablated_list.append(ioi_head_effects(model, arun, b))
        ld_c.append(ioi_logit_diff(model, run, b))
        ld_a.append(ioi_logit_diff(model, arun, b))
    ablated = np.concatenate(ablated_list)
    c, a = clean.mean(0), ablated.mean(0)
    ldc, lda = float(torch.cat(ld_c).mean()), float(torch.cat(ld_a).mean())
    nm_mask = np.zeros_like(c, dtype=bool)
    for l, h in nm:
        nm_mask[l, h] = True
    direct_change = float((a - c)[nm_mask].sum())
    repair = (lda - ldc) - direct_change
    delta = np.where(nm_mask, 0.0, a - c)
    share = delta / repair if abs(repair) > 1e-12 else np.full_like(delta, np.nan)
    return SelfRepair(
        name_movers=nm,
        clean=c,
        ablated=a,
        logit_diff_clean=ldc,
        logit_diff_ablated=lda,
        self_repair=repair,
        share=share,
        share_other=float(1.0 - np.nansum(share)) if abs(repair) > 1e-12 else float("nan"),
        settings={"n_prompts": int(clean.shape[0]), "ablation": "resample z from ABC prompts",
                  "final_norm": "each run's own scale", "name_movers": [list(x) for x in nm]},
    )  # fmt: skip


# ---- a planted copy-suppression head -------------------------------------------------------------------


@contextlib.contextmanager
def planted_suppression_head(
    model: Any, layer: int, head: int, tokens: TokenSet, *, variant: str = "self_attn", gain: float = 1.0
) -> Iterator[None]:
    """Temporarily rewrite one head's W_O so its OV circuit maps each token's effective embedding to a vector
    that lowers that token's logit and no other sampled token's: a known copy-suppression head.

    W_O is fitted by least squares through the head's existing W_V (shared by the key-value group, so left
    alone); with at most d_head tokens the fit is exact. ``gain`` scales W_O relative to the original's norm.
    The original weights are restored bit-for-bit on exit.
    """
    lens = lens_of(model)
    attn = lens.blocks[layer].attn
    emb = effective_embedding(model, tokens, variant)
    v = _head_in(lens, layer, emb.vectors) @ attn.W_V[head]  # [n, d_head]
    g = _read(lens, tokens.tensor())  # [d_model, n]
    post = getattr(lens.blocks[layer], "ln1_post", None)
    if post is not None and getattr(lens.cfg, "use_normalization_before_and_after", False):
        g = g * post.w.detach()[:, None]
    target = -torch.linalg.pinv(
        g
    )  # [n, d_model]: target_i . g_j = -delta_ij, each token suppresses itself only
    W = torch.linalg.pinv(v) @ target
    original = attn.W_O.data[head].clone()
    W = W * (gain * original.norm() / W.norm())
    attn.W_O.data[head] = W.to(original.dtype)
    try:
        yield
    finally:
        attn.W_O.data[head] = original
