"""OV and QK rank statistics of every head at once, weights only: the map in which negative heads stand out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from torch import Tensor

from .circuits import (
    EffectiveEmbedding,
    RankStats,
    TokenSet,
    Variant,
    effective_embedding,
    head_input,
    read_directions,
)
from .decompose import LensModel, lens_of
from .ov import ov_rank_tensors
from .qk import qk_rank_tensor, qk_vectors
from .results import Saveable, head_frame, layer_head_heatmap

ScanMetric = Literal[
    "ov_suppression_z",
    "ov_suppression_top1",
    "ov_suppression_top10",
    "ov_suppression_median",
    "ov_copying_top1",
    "ov_copying_top10",
    "qk_top1",
    "qk_top10",
    "qk_median",
]
SCAN_METRICS: tuple[ScanMetric, ...] = get_args(ScanMetric)


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

    def figure(self, metric: ScanMetric = "ov_suppression_top10") -> go.Figure:
        return layer_head_heatmap(
            self.metrics[metric], f"{metric} per head ({self.settings.get('n')} tokens)"
        )


def scan_heads(
    model: LensModel,
    tokens: TokenSet,
    *,
    variant: Variant = "self_attn",
    embedding: EffectiveEmbedding | None = None,
    chunk: int = 1024,
) -> HeadScan:
    """OV and QK rank statistics of every head over the token set (ranks among the sampled tokens).

    Example:
        >>> scan = scan_heads(model, token_set(model, 1000))
        >>> scan.figure("ov_suppression_top10")
    """
    lens = lens_of(model)
    emb = embedding or effective_embedding(model, tokens, variant)
    ids = tokens.tensor()
    n_layers, n_heads = lens.cfg.n_layers, lens.cfg.n_heads
    out: dict[str, np.ndarray] = {m: np.zeros((n_layers, n_heads)) for m in SCAN_METRICS}
    G = read_directions(lens, ids)
    for l in range(n_layers):
        src_in = head_input(lens, l, emb.vectors)
        xu_in = head_input(lens, l, lens.W_U[:, ids].T)
        for h in range(n_heads):
            zs: list[Tensor] = []
            sup, cop, n = ov_rank_tensors(lens, l, h, src_in, ids, "sample", chunk, read=G, z_out=zs)
            s, c = RankStats.of(sup, n), RankStats.of(cop, n)
            q, k = qk_vectors(lens, l, h, xu_in, src_in, normed=True)
            qk = RankStats.of(qk_rank_tensor(q, k, chunk), n)
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
