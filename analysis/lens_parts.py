"""A model's parts read one way, whichever TransformerLens view holds it: a HookedTransformer or a
TransformerBridge. Every copy-suppression analysis reads weights, biases, MLPs and norms through here.

The two views differ where the analyses look. The bridge keeps grouped-query key/value weights un-expanded
(``[n_kv_heads, d_model, d_head]``), returns None for absent biases, has no ``apply_mlp``, wraps the HF norms
in ``RMSNormalizationBridge`` / ``NormalizationBridge``, gives the raw (unscaled) embedding matrix as ``W_E``
and, for Gemma 3, leaves the config flags of its post-sublayer and QK norms unset. Everything here returns
per-query-head tensors in HookedTransformer's convention: key/value head ``h // (n_heads // n_kv_heads)``
serves query head ``h`` (``repeat_interleave``, as TL's ``GroupedQueryAttention.W_K`` and HF's ``repeat_kv``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from steerlens.errors import SteerlensError


class LinearisationError(SteerlensError):
    """A norm or model that the frozen-scale linearisation cannot handle, or a decomposition that does not add up."""


def is_bridge(lens: Any) -> bool:
    """True for a TransformerBridge view (it wraps an HF module tree), False for a HookedTransformer."""
    return "original_model" in getattr(lens, "_modules", {}) or hasattr(lens, "original_model")


# ---- attention weights ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadWeights:
    """One layer's attention weights per query head, biases as zeros where the model has none.

    ``W_Q``/``W_K``/``W_V``: ``[head, d_model, d_head]``; ``W_O``: ``[head, d_head, d_model]``;
    ``b_Q``/``b_K``/``b_V``: ``[head, d_head]``; ``b_O``: ``[d_model]``.
    """

    W_Q: Float[Tensor, "head d_model d_head"]
    W_K: Float[Tensor, "head d_model d_head"]
    W_V: Float[Tensor, "head d_model d_head"]
    W_O: Float[Tensor, "head d_head d_model"]
    b_Q: Float[Tensor, "head d_head"]
    b_K: Float[Tensor, "head d_head"]
    b_V: Float[Tensor, "head d_head"]
    b_O: Float[Tensor, " d_model"]


def expand_kv(t: Tensor, n_heads: int) -> Tensor:
    """Key/value heads repeated to one per query head (``repeat_interleave`` on dim 0; identity if expanded)."""
    n_kv = t.shape[0]
    if n_heads % n_kv:
        raise SteerlensError(f"{n_kv} key/value heads do not divide {n_heads} query heads evenly")
    return t if n_kv == n_heads else t.repeat_interleave(n_heads // n_kv, dim=0)


def head_weights(lens: Any, layer: int) -> HeadWeights:
    """Per-query-head weights and biases of ``layer``'s attention (GQA expanded, None biases as zeros)."""
    attn = lens.blocks[layer].attn
    n = int(lens.cfg.n_heads)
    W_Q, W_O = attn.W_Q, attn.W_O
    zeros = W_Q.new_zeros(n, W_Q.shape[-1])

    def bias(name: str) -> Tensor:
        b = getattr(attn, name, None)
        return zeros if b is None else expand_kv(b, n)

    b_O = getattr(attn, "b_O", None)
    return HeadWeights(
        W_Q=W_Q,
        W_K=expand_kv(attn.W_K, n),
        W_V=expand_kv(attn.W_V, n),
        W_O=W_O,
        b_Q=bias("b_Q"),
        b_K=bias("b_K"),
        b_V=bias("b_V"),
        b_O=W_O.new_zeros(W_O.shape[-1]) if b_O is None else b_O,
    )


def set_head_W_O(lens: Any, layer: int, head: int, value: Float[Tensor, "d_head d_model"]) -> None:
    """Overwrite one head's W_O in place (on the bridge ``W_O`` is a view of the output projection's weight);
    refuses if the write did not reach the model's weights."""
    W_O = lens.blocks[layer].attn.W_O
    with torch.no_grad():
        W_O[head] = value.to(W_O.dtype)
    if not torch.equal(lens.blocks[layer].attn.W_O[head], value.to(W_O.dtype)):
        raise SteerlensError(
            f"writing W_O of L{layer}H{head} did not change the {type(lens).__name__}'s weights (its W_O is a "
            "copy, not a view); use a HookedTransformer lens (steerlens.load(name, lens='hooked'))"
        )


def qk_norms(lens: Any, layer: int) -> tuple[nn.Module, nn.Module] | None:
    """The per-head query and key norms of ``layer`` (Gemma 3, Qwen 3), or None when the model has none."""
    attn = lens.blocks[layer].attn
    q, k = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    if q is None or k is None or not (is_bridge(lens) or getattr(lens.cfg, "use_qk_norm", False)):
        return None
    return q, k


# ---- embedding, MLP and post-sublayer norms ------------------------------------------------------------


def embed(lens: Any, ids: Int[Tensor, " n"]) -> Float[Tensor, "n d_model"]:
    """Token embeddings as the model adds them to the residual stream (with Gemma's sqrt(d_model) scale,
    which a bridge's ``W_E`` leaves out); no positional embedding."""
    return lens.embed(ids[None])[0]


def post_norm_module(lens: Any, layer: int, which: str) -> nn.Module | None:
    """The norm applied to a sublayer's output before the residual add (``which``: "ln1_post" after
    attention, "ln2_post" after the MLP), or None (GPT-2 / Llama style)."""
    block = lens.blocks[layer]
    if is_bridge(lens):
        return getattr(block, which, None)
    return getattr(block, which) if getattr(lens.cfg, "use_normalization_before_and_after", False) else None


def mlp_out(lens: Any, layer: int, normed: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """What ``layer``'s MLP adds to the residual for pre-normed input ``normed`` (post-MLP norm included)."""
    block = lens.blocks[layer]
    if not is_bridge(lens):
        return block.apply_mlp(normed)
    out = block.mlp(normed)
    post = post_norm_module(lens, layer, "ln2_post")
    return post(out) if post is not None else out


# ---- norms ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormSpec:
    """What a norm computes: ``centre(x) / sqrt(mean(centre(x)^2) + eps) * w + b`` (``w``/``b`` None: absent)."""

    w: Tensor | None
    b: Tensor | None
    eps: float
    centre: bool

    def __call__(self, x: Tensor) -> Tensor:
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        y = x / (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        y = y * self.w if self.w is not None else y
        return y + self.b if self.b is not None else y


_TL_NORMS = {"RMSNorm": False, "RMSNormPre": False, "LayerNorm": True, "LayerNormPre": True}
_checked: weakref.WeakKeyDictionary[nn.Module, NormSpec] = weakref.WeakKeyDictionary()


def _read_norm(module: nn.Module) -> NormSpec:
    kind = type(module).__name__
    if kind in _TL_NORMS:
        w, b = getattr(module, "w", None), getattr(module, "b", None)
        return NormSpec(w, b, float(getattr(module, "eps", 1e-5)), _TL_NORMS[kind])
    orig = getattr(module, "original_component", None)
    if kind in ("RMSNormalizationBridge", "NormalizationBridge") and orig is not None:
        rms = bool(getattr(module, "uses_rms_norm", kind == "RMSNormalizationBridge"))
        w, b = getattr(orig, "weight", None), getattr(orig, "bias", None)
        eps = getattr(orig, "variance_epsilon", None) or getattr(orig, "eps", None) or 1e-6
        if w is not None and rms and getattr(getattr(module, "config", None), "rmsnorm_uses_offset", False):
            w = 1.0 + w  # Gemma's RMSNorm scales by (1 + weight); TL's own RMSNorm stores it shifted
        return NormSpec(w, None if rms else b, float(eps), not rms)
    raise LinearisationError(
        f"norm module {kind!r} has no frozen-scale linearisation; expected a TransformerLens RMSNorm, "
        "RMSNormPre, LayerNorm or LayerNormPre, or a TransformerBridge RMSNormalizationBridge or "
        "NormalizationBridge. Load the model with one of these norms"
    )


def norm_spec(module: nn.Module) -> NormSpec:
    """The norm ``module`` read as a ``NormSpec``, checked (once per module) against the module's own output
    on a random input."""
    spec = _checked.get(module)
    if spec is not None:
        return spec
    spec = _read_norm(module)
    w = spec.w if spec.w is not None else spec.b
    d = int(w.shape[-1]) if w is not None else 8
    x = torch.randn(2, 3, d, generator=torch.Generator().manual_seed(0)).to(
        device=w.device if w is not None else None, dtype=w.dtype if w is not None else None
    )
    with torch.no_grad():
        want, got = module(x), spec(x)
    err = float((want - got).abs().max() / want.abs().max().clamp_min(1e-12))
    if err > 1e-4:
        raise LinearisationError(
            f"the linearisation read from {type(module).__name__} (centre={spec.centre}, eps={spec.eps:g}) "
            f"differs from the module's output by {err:.1e} (relative) on a random input; this norm is not "
            "supported: load the model with a HookedTransformer lens (steerlens.load(name, lens='hooked'))"
        )
    _checked[module] = spec
    return spec
