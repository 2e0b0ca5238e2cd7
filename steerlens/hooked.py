"""HookedTransformer views over the HF weights: built from a local checkpoint under a name TransformerLens does
not list, and made to share the HF tensors instead of holding a second copy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .sites import block_path

if TYPE_CHECKING:
    from .model import ModelConfig


def hooked_from_dir(path: Path, hf: nn.Module, tokenizer: Any, dtype: torch.dtype) -> nn.Module:
    """A HookedTransformer for a supported architecture under a name TransformerLens does not list: the
    steps of ``HookedTransformer.from_pretrained_no_processing`` with the config read from ``path`` (its
    name lookup refuses unlisted names, and its config lookup would go to the hub)."""
    from transformer_lens import HookedTransformer, loading

    device = next(hf.parameters()).device
    cfg = loading.get_pretrained_model_config(str(path), dtype=dtype, device=device)
    state = loading.get_pretrained_state_dict(str(path), cfg, hf, dtype=dtype)
    ht = HookedTransformer(cfg, tokenizer, move_to_device=False)
    ht.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return ht.to(device)


def share_hooked_weights(ht: nn.Module, hf: nn.Module, cfg: ModelConfig) -> float:
    """Point a HookedTransformer's weight matrices at views of the HF tensors they were copied from.

    Each candidate is checked with ``torch.equal`` before sharing, so a mismatched mapping leaves the copy
    in place rather than changing the model. Returns the fraction of the lens' parameter bytes now shared.
    """
    from einops import rearrange

    hf_params = dict(hf.named_parameters(remove_duplicate=False))
    ht_params = dict(ht.named_parameters())

    def heads(w: torch.Tensor, n: int) -> torch.Tensor:
        return rearrange(w, "(n h) m -> n m h", n=n)

    rules: dict[str, tuple[str, Any]] = {
        "embed.W_E": ("model.embed_tokens.weight", lambda w: w),
        "unembed.W_U": ("lm_head.weight", lambda w: w.T),
    }
    for l in range(cfg.n_layers):
        p = block_path(l)
        for ht_k in ("_W_K", "W_K"):
            rules[f"blocks.{l}.attn.{ht_k}"] = (
                f"{p}.self_attn.k_proj.weight",
                lambda w: heads(w, cfg.n_kv_heads),
            )
        for ht_v in ("_W_V", "W_V"):
            rules[f"blocks.{l}.attn.{ht_v}"] = (
                f"{p}.self_attn.v_proj.weight",
                lambda w: heads(w, cfg.n_kv_heads),
            )
        rules[f"blocks.{l}.attn.W_Q"] = (f"{p}.self_attn.q_proj.weight", lambda w: heads(w, cfg.n_heads))
        rules[f"blocks.{l}.attn.W_O"] = (
            f"{p}.self_attn.o_proj.weight",
            lambda w: rearrange(w, "m (n h) -> n h m", n=cfg.n_heads),
        )
        rules[f"blocks.{l}.mlp.W_in"] = (f"{p}.mlp.up_proj.weight", lambda w: w.T)
        rules[f"blocks.{l}.mlp.W_gate"] = (f"{p}.mlp.gate_proj.weight", lambda w: w.T)
        rules[f"blocks.{l}.mlp.W_out"] = (f"{p}.mlp.down_proj.weight", lambda w: w.T)
    shared = 0
    for ht_name, (hf_name, view) in rules.items():
        if ht_name in ht_params and hf_name in hf_params:
            target = view(hf_params[hf_name].data)
            param = ht_params[ht_name]
            if (
                target.shape == param.shape
                and target.dtype == param.dtype
                and torch.equal(target, param.data)
            ):
                param.data = target
                shared += param.numel() * param.element_size()
    total = sum(p.numel() * p.element_size() for p in ht_params.values())
    return shared / total
