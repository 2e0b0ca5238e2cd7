"""Runs split into per-head residual contributions, with every norm after a head frozen at its clean scale.

A head's output reaches the logits through norms whose scale depends on the whole residual (Gemma 3 adds a
post-attention RMSNorm on top of the final norm). Freezing each norm's per-position scale from the clean run
makes the map from head outputs to logits linear, so per-head contributions add up exactly; the additivity is
checked, never assumed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor

from steerlens.errors import SteerlensError

from .lens_parts import LinearisationError, head_weights, norm_spec, post_norm_module

if TYPE_CHECKING:  # importing transformer_lens takes seconds; annotations only need the names
    from transformer_lens import HookedTransformer
    from transformers import PreTrainedTokenizerBase

    from steerlens.model import Model

LensModel: TypeAlias = "Model | HookedTransformer"  # a steerlens Model (its lens is used) or a lens itself


def lens_of(model: LensModel) -> HookedTransformer:
    """The TransformerLens view of ``model``: a HookedTransformer or a TransformerBridge (``lens_parts`` reads
    either the same way). Annotated as a HookedTransformer, the interface both share."""
    lens = cast("HookedTransformer", getattr(model, "lens", model))
    # Look the names up without evaluating them: HookedTransformer.W_O is a property that stacks every
    # layer's W_O (tens of MB), and this check runs on every call of every analysis function.
    modules = getattr(lens, "_modules", None) or {}
    if not all(
        a in modules or hasattr(type(lens), a)
        for a in ("blocks", "W_U", "ln_final", "embed", "run_with_cache")
    ):
        raise LinearisationError(
            f"model {getattr(model, 'name', model)!r} has a {type(lens).__name__} lens; copy-suppression analyses "
            "need a TransformerLens view (HookedTransformer or TransformerBridge) with blocks, embed, ln_final "
            "and W_U. Pass a steerlens Model, e.g. steerlens.load('gemma-3-270m')"
        )
    return lens


def tokenizer_of(model: LensModel) -> PreTrainedTokenizerBase:
    """The tokenizer of a ``Model`` or of a HookedTransformer (which may have none)."""
    tok = model.tokenizer
    if tok is None:
        raise SteerlensError(
            f"{type(model).__name__} has no tokenizer; pass a steerlens Model or a HookedTransformer loaded "
            "with one (HookedTransformer.from_pretrained sets it)"
        )
    return tok


@dataclass(frozen=True)
class FrozenNorm:
    """A norm with its scale frozen: ``x -> centre(x) / scale * w + b``, linear in ``x`` apart from ``b``.

    ``scale`` broadcasts against ``x[..., :1]``; ``w``/``b`` are ``None`` where the norm has no weight/bias.
    """

    scale: Tensor | float
    w: Tensor | None
    b: Tensor | None
    centre: bool

    def linear(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        if self.centre:
            x = x - x.mean(-1, keepdim=True)
        x = x / self.scale
        return x * self.w if self.w is not None else x

    def __call__(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        y = self.linear(x)
        return y + self.b if self.b is not None else y

    def read_direction(self, u: Float[Tensor, "d_model n"]) -> Float[Tensor, "d_model n"]:
        """Directions ``g`` with ``linear(x) @ u == x @ g / scale``: what a residual vector must align with to
        move the read-outs ``u`` (unembedding columns, say)."""
        g = u * self.w[:, None] if self.w is not None else u
        return g - g.mean(0, keepdim=True) if self.centre else g


def frozen_norm(module: torch.nn.Module, scale: Tensor | float = 1.0) -> FrozenNorm:
    """Freeze a norm module (TransformerLens RMSNorm/LayerNorm or a TransformerBridge norm) at ``scale`` (1.0
    gives the direction-only map used by weight tests)."""
    spec = norm_spec(module)
    return FrozenNorm(
        scale=scale,
        w=spec.w.detach() if spec.w is not None else None,
        b=spec.b.detach() if spec.b is not None else None,
        centre=spec.centre,
    )


def post_attn_norm(lens: HookedTransformer, layer: int) -> torch.nn.Module | None:
    """The norm applied to the attention block's output before the residual add, or None (GPT-2 style)."""
    return post_norm_module(lens, layer, "ln1_post")


@dataclass
class Run:
    """One forward pass with what a decomposition needs. Shapes: L layers, B batch, P positions, H heads."""

    tokens: Int[Tensor, "batch pos"]
    z: Float[Tensor, "layer batch pos head d_head"]
    pattern: Float[Tensor, "layer batch head qpos kpos"]
    attn_out: Float[Tensor, "layer batch pos d_model"]
    resid_pre: Float[Tensor, "layer batch pos d_model"]
    resid_final: Float[Tensor, "batch pos d_model"]
    post_scale: Float[Tensor, "layer batch pos 1"] | None
    final: FrozenNorm

    @property
    def n_layers(self) -> int:
        return self.z.shape[0]


def run_decomposed(
    model: LensModel,
    tokens: Int[Tensor, "batch pos"],
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
    *,
    check: bool = True,
) -> Run:
    """Run ``tokens`` (with optional TransformerLens hooks, e.g. a resample ablation) and keep the pieces.

    ``check`` verifies additivity of every layer's per-head contributions (raises ``LinearisationError``).
    """
    lens = lens_of(model)
    n = lens.cfg.n_layers
    post = post_attn_norm(lens, 0) is not None
    keep = ("attn.hook_z", "attn.hook_pattern", "hook_attn_out", "hook_resid_pre", "ln1_post.hook_scale")

    def wanted(name: str) -> bool:
        return name.endswith(keep) or name in (f"blocks.{n - 1}.hook_resid_post", "ln_final.hook_scale")

    with lens.hooks(fwd_hooks=list(fwd_hooks)):
        _, cache = lens.run_with_cache(tokens, return_type=None, names_filter=wanted)

    def stack(site: str) -> Tensor:
        return torch.stack([cache[f"blocks.{l}.{site}"] for l in range(n)])

    if "ln_final.hook_scale" in cache:
        final = frozen_norm(lens.ln_final, cache["ln_final.hook_scale"])
    elif getattr(lens.cfg, "normalization_type", None) is None:
        final = FrozenNorm(scale=1.0, w=None, b=None, centre=False)
    else:
        raise LinearisationError(
            f"no ln_final.hook_scale was recorded for {type(lens.ln_final).__name__}; the final-norm scale cannot "
            "be frozen. Use a model whose final norm is RMSNorm or LayerNorm"
        )
    run = Run(
        tokens=tokens,
        z=stack("attn.hook_z"),
        pattern=stack("attn.hook_pattern"),
        attn_out=stack("hook_attn_out"),
        resid_pre=stack("hook_resid_pre"),
        resid_final=cache[f"blocks.{n - 1}.hook_resid_post"],
        post_scale=stack("ln1_post.hook_scale") if post else None,
        final=final,
    )
    if check:
        check_additivity(model, run)
    return run


def post_norm(model: LensModel, run: Run, layer: int) -> FrozenNorm | None:
    """The post-attention norm of ``layer`` frozen at the run's scale, or None when the model has none."""
    lens = lens_of(model)
    module = post_attn_norm(lens, layer)
    if module is None:
        return None
    assert run.post_scale is not None
    return frozen_norm(module, run.post_scale[layer])


def head_results(
    model: LensModel, run: Run, layer: int, heads: Sequence[int] | None = None
) -> Float[Tensor, "batch pos head d_model"]:
    """Each head's contribution to the residual stream (after the frozen post-attention norm, if any)."""
    lens = lens_of(model)
    hs = list(range(lens.cfg.n_heads)) if heads is None else list(heads)
    r = torch.einsum("bphd,hdm->bphm", run.z[layer][:, :, hs], head_weights(lens, layer).W_O[hs])
    norm = post_norm(model, run, layer)
    if norm is None:
        return r
    scale = norm.scale[:, :, None] if isinstance(norm.scale, Tensor) else norm.scale
    return FrozenNorm(scale, norm.w, None, norm.centre).linear(r)


def attn_bias(model: LensModel, run: Run, layer: int) -> Float[Tensor, "batch pos d_model"]:
    """The part of the attention block's output that no head owns (``b_O`` and any post-norm bias)."""
    lens = lens_of(model)
    b_O = head_weights(lens, layer).b_O.expand_as(run.attn_out[layer])
    norm = post_norm(model, run, layer)
    return b_O if norm is None else norm(b_O)


def check_additivity(model: LensModel, run: Run, rtol: float = 1e-4) -> float:
    """Check sum(heads) + bias == attention output into the residual at every layer; return the worst error."""
    worst = 0.0
    for l in range(run.n_layers):
        total = head_results(model, run, l).sum(2) + attn_bias(model, run, l)
        err = float((total - run.attn_out[l]).norm() / run.attn_out[l].norm().clamp_min(1e-12))
        worst = max(worst, err)
        if err > rtol:
            raise LinearisationError(
                f"layer {l}: per-head contributions plus bias differ from hook_attn_out by {err:.2e} (relative), "
                f"expected <= {rtol:.0e}. The frozen-scale linearisation does not hold for this model's "
                "attention output; run in float32 and make sure no hook edits the attention block, or use "
                "total-effect (path-patching) ablations instead of direct effects"
            )
    return worst


# ---- logits under the frozen final norm -------------------------------------------------------------------


def unembed(model: LensModel, normed: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_vocab"]:
    """Logits of final-normed residuals, with the model's soft-cap when it has one."""
    lens = lens_of(model)
    logits = (normed @ lens.W_U).add_(lens.b_U)  # in place: logits are rows x d_vocab
    cap = float(getattr(lens.cfg, "output_logits_soft_cap", -1.0) or -1.0)
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def flat_final(run: Run, mask: Tensor) -> FrozenNorm:
    """The run's frozen final norm restricted to the positions where ``mask`` (batch pos) is true."""
    f = run.final
    scale = f.scale[mask] if isinstance(f.scale, Tensor) else f.scale
    return FrozenNorm(scale, f.w, f.b, f.centre)


@dataclass(frozen=True)
class LogitStats:
    """Per-position loss, entropy and KL(clean || variant) for each variant of the final residual."""

    loss_clean: Float[Tensor, " n"]
    entropy_clean: Float[Tensor, " n"]
    loss: dict[str, Float[Tensor, " n"]]
    entropy: dict[str, Float[Tensor, " n"]]
    kl: dict[str, Float[Tensor, " n"]]


def logit_stats(
    model: LensModel,
    resid: Float[Tensor, "n d_model"],
    final: FrozenNorm,
    targets: Int[Tensor, " n"],
    deltas: dict[str, Float[Tensor, "n d_model"]],
    chunk: int = 96,
) -> LogitStats:
    """Loss/entropy/KL of ``resid + delta`` for each named delta, final-norm scale frozen.

    A block of positions is unembedded together with all its variants, about ``chunk`` rows (so about
    ``chunk x d_vocab`` logits) at a time: a product with few rows is bound by reading W_U (670 MB for gemma),
    so one product per variant would read it once per head."""
    n = resid.shape[0]
    names = list(deltas)
    per = max(1, chunk // (1 + len(names)))  # positions per block
    out: dict[str, dict[str, list[Tensor]]] = {k: {"loss": [], "ent": [], "kl": []} for k in names}
    lc, ec = [], []
    for i in range(0, n, per):
        sl = slice(i, i + per)
        fz = FrozenNorm(
            final.scale[sl] if isinstance(final.scale, Tensor) else final.scale,
            final.w,
            final.b,
            final.centre,
        )
        x = torch.stack([resid[sl]] + [resid[sl] + deltas[k][sl] for k in names])  # [1 + K, m, d_model]
        lps = unembed(model, fz(x)).log_softmax(-1)  # [1 + K, m, d_vocab]
        lp, lq = lps[0], lps[1:]
        p = lp.exp()
        t = targets[sl]
        lc.append(-lp.gather(-1, t[:, None])[:, 0])
        ec.append(-(p * lp).sum(-1))
        if not names:
            continue
        loss = -lq.gather(-1, t[None, :, None].expand(len(names), -1, 1))[..., 0]  # [K, m]
        ent = -lq.exp().mul_(lq).sum(-1)  # in place: each temporary is [K, m, d_vocab]
        kl = (lp - lq).mul_(p).sum(-1).clamp_min(0.0)
        for r, k in enumerate(names):
            out[k]["loss"].append(loss[r])
            out[k]["ent"].append(ent[r])
            out[k]["kl"].append(kl[r])
    cat = torch.cat
    return LogitStats(
        loss_clean=cat(lc),
        entropy_clean=cat(ec),
        loss={k: cat(v["loss"]) for k, v in out.items()},
        entropy={k: cat(v["ent"]) for k, v in out.items()},
        kl={k: cat(v["kl"]) for k, v in out.items()},
    )
