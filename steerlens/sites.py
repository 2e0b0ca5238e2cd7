"""Hook sites named with TransformerLens' grammar (``blocks.{l}.hook_resid_post``), resolved for every view.

One table per architecture family says which HF submodule (and whether its input or output) carries each
site, so the HF view, the nnsight view and the lens view read the same tensor under the same name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import torch
from torch import nn

from .errors import SiteError

if TYPE_CHECKING:
    from .model import ModelConfig

IO = Literal["input", "output"]
SiteKind = Literal[
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "attn.hook_z",
    "mlp.hook_post",
    "ln_final.hook_normalized",
]
SITE_KINDS: tuple[SiteKind, ...] = get_args(SiteKind)


def as_site_kind(kind: str) -> SiteKind:
    """``kind`` checked against the site kinds steerlens knows."""
    if kind not in SITE_KINDS:
        raise SiteError(f"unknown site kind {kind!r}; expected one of {list(SITE_KINDS)}")
    return cast(SiteKind, kind)


# Residual-stream layout of the two families we support natively. "sandwich" models (Gemma 2/3) normalise
# each sublayer's output before adding it to the residual, so attn_out / mlp_out are those norms' outputs.
_LLAMA_LIKE = {
    "hook_resid_pre": ("", "input"),
    "hook_resid_mid": ("post_attention_layernorm", "input"),
    "hook_resid_post": ("", "output"),
    "hook_attn_out": ("self_attn", "output"),
    "hook_mlp_out": ("mlp", "output"),
    "attn.hook_z": ("self_attn.o_proj", "input"),
    "mlp.hook_post": ("mlp.down_proj", "input"),
}
_SANDWICH = {
    **_LLAMA_LIKE,
    "hook_resid_mid": ("pre_feedforward_layernorm", "input"),
    "hook_attn_out": ("post_attention_layernorm", "output"),
    "hook_mlp_out": ("post_feedforward_layernorm", "output"),
}
_FAMILIES = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _SANDWICH,
    "gemma3_text": _SANDWICH,
    "gemma3": _SANDWICH,
}
GLOBAL_SITES = {"ln_final.hook_normalized": ("model.norm", "output")}
# Every supported family nests its decoder layers the same way in the HF CausalLM tree.
_BLOCKS = "model.layers"
_MLP_OUT_PROJ = "mlp.down_proj"
_BLOCK_RE = re.compile(r"^blocks\.(\d+|\*)\.(.+)$")


@dataclass(frozen=True)
class Site:
    """One hook site: its TransformerLens name and where it lives in the HF module tree."""

    name: str
    kind: SiteKind
    layer: int | None
    module_path: str  # dotted path from the HF CausalLM root
    io: IO
    shape: tuple[int, ...]  # trailing shape of one position's activation

    def hf_module(self, hf: nn.Module) -> nn.Module:
        return hf.get_submodule(self.module_path)

    def nn_envoy(self, nn_model: Any) -> Any:
        """The nnsight envoy of this site's module (read ``.input`` / ``.output`` per ``self.io``)."""
        envoy = nn_model
        for part in self.module_path.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def reshape(self, x: torch.Tensor) -> torch.Tensor:
        """Flat ``[..., d]`` module tensor to this site's shape (``hook_z`` becomes ``[..., n_heads, d_head]``)."""
        return x.reshape(*x.shape[:-1], *self.shape)


def family_table(model_type: str) -> dict[str, tuple[str, str]]:
    try:
        return _FAMILIES[model_type]
    except KeyError:
        raise SiteError(
            f"architecture {model_type!r} has no hook-site table yet (supported: {sorted(_FAMILIES)}); "
            "use model.lens (TransformerLens) for its hooks, or add a table in steerlens/sites.py"
        ) from None


def block_path(layer: int) -> str:
    """Dotted path of decoder layer ``layer`` from the HF CausalLM root."""
    return f"{_BLOCKS}.{layer}"


def mlp_out_proj_path(layer: int) -> str:
    """Dotted path of layer ``layer``'s MLP output projection (where a static add can become a bias)."""
    return f"{block_path(layer)}.{_MLP_OUT_PROJ}"


def mlp_out_is_residual_add(model_type: str) -> bool:
    """True where the MLP output projection's result is added to the residual as is (no post-MLP norm), so a
    bias on it is exactly an add to ``resid_post`` (Llama, Qwen2, Mistral; not Gemma 2/3's sandwich norms)."""
    return family_table(model_type)["hook_mlp_out"][0] == "mlp"


def decoder_body(hf: nn.Module) -> nn.Module:
    """The decoder stack without the unembedding (``hf.model`` for every supported family)."""
    return hf.get_submodule(str(getattr(hf, "base_model_prefix", "model")))


def parse_sites(names: str | list[str] | tuple[str, ...], cfg: ModelConfig) -> list[Site]:
    """Parse site names; ``blocks.*.X`` expands to every layer. Errors list what would be valid."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise SiteError(
            "no sites given; pass e.g. sites=['blocks.3.hook_resid_post'] or 'blocks.*.hook_resid_post'"
        )
    out: list[Site] = []
    for name in names:
        m = _BLOCK_RE.match(name)
        if m and m.group(1) == "*":
            out.extend(parse_site(f"blocks.{l}.{m.group(2)}", cfg) for l in range(cfg.n_layers))
        else:
            out.append(parse_site(name, cfg))
    return list({s.name: s for s in out}.values())  # drop repeats, keep first-seen order


def parse_site(name: str, cfg: ModelConfig) -> Site:
    table = family_table(cfg.model_type)
    if name in GLOBAL_SITES:
        path, io = GLOBAL_SITES[name]
        return Site(name, name, None, path, io, (cfg.d_model,))  # type: ignore[arg-type]
    m = _BLOCK_RE.match(name) if isinstance(name, str) else None
    if not m:
        raise SiteError(
            f"unknown site {name!r}: expected 'blocks.{{layer}}.{{kind}}' with kind in {sorted(table)} "
            f"or one of {sorted(GLOBAL_SITES)}, e.g. 'blocks.3.hook_resid_post'"
        )
    layer, kind = int(m.group(1)), m.group(2)
    if not 0 <= layer < cfg.n_layers:
        raise SiteError(
            f"layer {layer} out of range in site {name!r}: {cfg.name} has {cfg.n_layers} layers "
            f"(0..{cfg.n_layers - 1}); use e.g. 'blocks.{cfg.n_layers - 1}.{kind}'"
        )
    if kind not in table:
        raise SiteError(f"unknown site kind {kind!r} in {name!r}; supported kinds: {sorted(table)}")
    sub, io = table[kind]
    path = block_path(layer) + (f".{sub}" if sub else "")
    shape = {"attn.hook_z": (cfg.n_heads, cfg.d_head), "mlp.hook_post": (cfg.d_mlp,)}.get(
        kind, (cfg.d_model,)
    )
    return Site(name, kind, layer, path, io, shape)  # type: ignore[arg-type]


def first_tensor(x: Any) -> torch.Tensor:
    """A module's output may be a tensor or a tuple whose first item is the hidden state."""
    return x[0] if isinstance(x, tuple | list) else x
