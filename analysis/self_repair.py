"""What negative heads do besides copy suppression, and a known one to test the detectors on: anti-induction
on repeated random tokens, IOI self-repair when the name movers are ablated, and a planted suppression head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Int
from torch import Tensor

from steerlens.figures import GREY, PALETTE, new_figure

from .circuits import TokenSet, Variant, effective_embedding, head_input, read_directions, token_set
from .decompose import LensModel, Run, frozen_norm, lens_of, post_attn_norm, run_decomposed, tokenizer_of
from .ioi import IOIBatch
from .lens_parts import head_weights, set_head_W_O
from .negative_heads import centred_unembed, head_dla, ioi_head_effects, ioi_logit_diff
from .results import Saveable, head_frame, layer_head_heatmap

if TYPE_CHECKING:
    from transformer_lens.hook_points import HookPoint

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


def repeated_tokens(model: LensModel, n: int = 8, length: int = 24, *, seed: int = 0) -> Int[Tensor, "n pos"]:
    """``[BOS] r_1..r_L r_1..r_L`` rows of random whole-word tokens (seeded)."""
    pool = torch.tensor(token_set(model, None, seed=seed).ids)
    g = torch.Generator().manual_seed(seed)
    r = pool[torch.randint(len(pool), (n, length), generator=g)]
    bos = tokenizer_of(model).bos_token_id
    parts = ([torch.full((n, 1), bos)] if bos is not None else []) + [r, r]
    return torch.cat(parts, dim=1)


def anti_induction(model: LensModel, n: int = 8, length: int = 24, *, seed: int = 0) -> AntiInduction:
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
    u = centred_unembed(lens, uniq)
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


Hook = tuple[str, Callable[..., Tensor]]


def _resample_hooks(nm: tuple[tuple[int, int], ...], abc: Run) -> list[Hook]:
    """Hooks that replace the z of the heads ``nm`` by their z on the ABC run (one hook per layer)."""
    hooks = []
    for l in sorted({l for l, _ in nm}):
        heads = [h for ll, h in nm if ll == l]

        def hook(z: Tensor, hook: HookPoint, heads: list[int] = heads, new: Tensor = abc.z[l]) -> Tensor:
            z = z.clone()
            z[:, :, heads] = new[:, :, heads]
            return z

        hooks.append((f"blocks.{l}.attn.hook_z", hook))
    return hooks


def self_repair(
    model: LensModel,
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
        hooks = _resample_hooks(nm, run_decomposed(model, b.abc_tokens, check=False))
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
    model: LensModel,
    layer: int,
    head: int,
    tokens: TokenSet,
    *,
    variant: Variant = "self_attn",
    gain: float = 1.0,
) -> Iterator[None]:
    """Temporarily rewrite one head's W_O so its OV circuit maps each token's effective embedding to a vector
    that lowers that token's logit and no other sampled token's: a known copy-suppression head.

    W_O is fitted by least squares through the head's existing W_V (shared by the key-value group, so left
    alone); with at most d_head tokens the fit is exact. ``gain`` scales W_O relative to the original's norm.
    The original weights are restored bit-for-bit on exit.

    Example:
        >>> with planted_suppression_head(model, 14, 2, token_set(model, 250)):
        ...     assert find_negative_heads(model, methods=("ov",)).top(1) == [(14, 2)]
    """
    lens = lens_of(model)
    w = head_weights(lens, layer)
    emb = effective_embedding(model, tokens, variant)
    v = head_input(lens, layer, emb.vectors) @ w.W_V[head]  # [n, d_head]
    g = read_directions(lens, tokens.tensor())  # [d_model, n]
    post = post_attn_norm(lens, layer)
    if post is not None:
        g = frozen_norm(post).read_direction(g)
    target = -torch.linalg.pinv(
        g
    )  # [n, d_model]: target_i . g_j = -delta_ij, each token suppresses itself only
    W = torch.linalg.pinv(v) @ target
    original = w.W_O[head].detach().clone()
    set_head_W_O(lens, layer, head, W * (gain * original.norm() / W.norm()))
    try:
        yield
    finally:
        set_head_W_O(lens, layer, head, original)
