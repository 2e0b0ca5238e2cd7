"""The per-layer steering op: one function applying add / norm-preserving add / ablation / clamp to the
residual at masked positions with per-row coefficients. Pure torch (CPU and CUDA); no Python loops."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

Op = Literal["add", "add_norm", "ablate", "clamp"]
OPS: tuple[Op, ...] = get_args(Op)


def apply_op(
    h: Float[Tensor, "batch pos d_model"],
    u: Float[Tensor, " d_model"],
    op: Op,
    coef: Float[Tensor, "batch pos"] | float,
) -> Float[Tensor, "batch pos d_model"]:
    """Return the steered residual. ``coef`` already folds alpha, unit scale and the position mask (0 where a
    position is not steered, which leaves it bit-identical).

    add:      h + c u
    add_norm: (h + c u) rescaled to |h| per position
    ablate:   h - c (h.u) u          (c = 1 removes the direction)
    clamp:    h + m (c - h.u) u      (projection set to c where m = mask; coef carries NaN where unmasked)
    """
    if op == "add":
        if isinstance(coef, float):
            return h + u if coef == 1.0 else h + coef * u
        return torch.addcmul(h, coef.unsqueeze(-1).to(h.dtype), u)
    c = coef if isinstance(coef, float) else coef.unsqueeze(-1).to(h.dtype)
    if op == "add_norm":
        out = h + c * u
        return out * (h.norm(dim=-1, keepdim=True) / out.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    proj = (h @ u).unsqueeze(-1)
    if op == "ablate":
        return h - c * proj * u
    if op == "clamp":
        if isinstance(c, float):
            return h + (c - proj) * u
        # NaN marks unsteered positions: keep them exactly as they are.
        return torch.where(torch.isnan(c), h, h + (c - proj) * u)
    raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
