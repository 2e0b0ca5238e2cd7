"""The steering semantics written as plainly as possible: the oracle every fast path is tested against.

One forward over the whole sequence (no cache), one plain forward hook per intervention and layer, registered
in the order the user gave them, each editing ``resid_post`` where an explicitly computed mask says so.
Positions come from explicit per-row prompt lengths, never from how the sequence reached the model.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from steerlens.steering import Intervention, Trigger, Window


def position_mask(iv: Intervention, ids: Tensor, mask: Tensor, prompt_lens: list[int]) -> Tensor:
    """[batch, T] bool: where ``iv`` acts. Positions count from each row's first real token."""
    batch, width = ids.shape
    first_real = [int(mask[r].nonzero()[0]) for r in range(batch)]
    out = torch.zeros(batch, width, dtype=torch.bool)
    for r in range(batch):
        for t in range(width):
            rel = t - first_real[r]
            p = iv.positions
            if p == "all":
                on = True
            elif p == "prompt":
                on = rel < prompt_lens[r]
            elif p == "generated":
                on = rel >= prompt_lens[r]
            elif isinstance(p, Window):
                start = p.start if isinstance(p.start, int) else p.start[r]
                end = p.end if p.end is None or isinstance(p.end, int) else p.end[r]
                on = rel >= start and (end is None or rel < end)
            elif isinstance(p, Trigger):
                hits = [k for k in range(width) if mask[r, k] and int(ids[r, k]) in p.token_ids]
                on = bool(hits) and t >= hits[0]
            else:
                raise AssertionError(p)
            out[r, t] = on
    return out


def edit(iv: Intervention, layer: int, h: Tensor, where: Tensor) -> Tensor:
    """``h`` [batch, T, d] with ``iv`` applied at layer ``layer`` where ``where`` [batch, T] is true."""
    u = iv.vector.directions[layer].to(h)
    scale = iv.vector.scale(layer, iv.units)
    alpha = torch.as_tensor(iv.alpha, dtype=torch.float32)
    out = h.clone()
    # Float order follows the engine where it is free to choose: (scale * u) before alpha, and the projection
    # taken over the whole [batch, T, d] tensor at once (a per-row x @ u sums in another order, and gemma's
    # residual, growing 40x over depth, amplifies that 1-ulp difference past the tolerance).
    proj = h @ u  # [batch, T]
    for r in range(h.shape[0]):
        a = float(alpha[r]) if alpha.ndim == 1 else float(alpha)
        x, p = h[r], proj[r][:, None]
        if iv.op == "add":
            y = x + a * (scale * u)
        elif iv.op == "add_norm":
            y = x + a * (scale * u)
            y = y * (x.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True))
        elif iv.op == "ablate":
            y = x - a * p * u
        elif iv.op == "clamp":
            y = x + (a * scale - p) * u
        else:
            raise AssertionError(iv.op)
        out[r] = torch.where(where[r][:, None], y, x)
    return out


def _hooks(ivs: list[Intervention], ids: Tensor, mask: Tensor, prompt_lens: list[int]) -> list:
    """(layer, intervention, mask) in the user's order."""
    todo = []
    for iv in ivs:
        where = position_mask(iv, ids, mask, prompt_lens)
        layers = iv.vector.layers if iv.layers is None else list(iv.layers)
        todo += [(l, iv, where) for l in layers]
    return todo


def hf_reference(model, ivs, ids, mask, prompt_lens) -> Tensor:
    """Logits [batch, T, vocab] of the HF module with the interventions as plain layer-output hooks."""
    handles = []
    for l, iv, where in _hooks(ivs, ids, mask, prompt_lens):
        layer = model.hf.model.layers[l]
        handles.append(layer.register_forward_hook(lambda m, a, o, l=l, iv=iv, w=where: edit(iv, l, o, w)))
    try:
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        return model.hf(ids, attention_mask=mask, position_ids=pos).logits
    finally:
        for h in handles:
            h.remove()


def lens_reference(model, ivs, ids, mask, prompt_lens) -> Tensor:
    """The same through TransformerLens' own hook points (``blocks.{l}.hook_resid_post``), in order."""
    fwd = [
        (f"blocks.{l}.hook_resid_post", lambda x, hook, l=l, iv=iv, w=where: edit(iv, l, x, w))
        for l, iv, where in _hooks(ivs, ids, mask, prompt_lens)
    ]
    with model.lens.hooks(fwd_hooks=fwd) if fwd else contextlib.nullcontext():
        return model.lens(ids, attention_mask=mask)
