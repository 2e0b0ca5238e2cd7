"""``steer(model, ...)``: apply steering vectors during forward passes and generation, then restore the model.

One context manager for every view. Hooks go on the HF modules, which the nnsight view and a TransformerBridge
lens run through; a HookedTransformer lens (a separate module tree) gets TL hooks with the same spec.

Fast paths: a static add at every position with one coefficient is folded into the bias of the layer's output
projection (``down_proj``) where the architecture allows it exactly (Llama-like; not Gemma's post-norms), so it
costs nothing at run time. Everything else runs as one op per steered layer (``fused.apply_op``). Positions are
tracked across KV-cached decoding steps, so "generated" includes the very first generated token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from steerlens.errors import SteerlensError
from steerlens.model import Model
from steerlens.sites import family_table, first_tensor

from .fused import OPS, apply_op
from .vector import SteeringVector


@dataclass(frozen=True)
class Window:
    """Token positions ``start <= i < end`` of each row, counted from the row's first real (unpadded) token."""

    start: int
    end: int | None = None


@dataclass(frozen=True)
class Trigger:
    """Steer each row from the first occurrence of any of ``token_ids`` onwards (inclusive)."""

    token_ids: tuple[int, ...]


Positions = str | Window | Trigger  # "all" | "prompt" | "generated" | Window | Trigger


@dataclass(frozen=True)
class Intervention:
    """One vector applied with one operation at chosen positions and coefficients.

    ``alpha`` is a float or one value per batch row (an alpha sweep or N differently steered samples in one
    batch). ``units``: "vector" (multiples of the raw vector), "raw" (activation units) or "resid" (multiples
    of the layer's mean residual norm, comparable across layers and models). For ``ablate`` alpha is the
    fraction removed (1 = all); for ``clamp`` it is the target projection, in ``units``.
    """

    vector: SteeringVector
    alpha: float | Sequence[float] | Tensor = 1.0
    op: str = "add"
    positions: Positions = "all"
    units: str = "vector"
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise SteerlensError(f"op={self.op!r}: expected one of {OPS}")
        if isinstance(self.positions, str) and self.positions not in ("all", "prompt", "generated"):
            raise SteerlensError(
                f"positions={self.positions!r}: expected 'all', 'prompt', 'generated', Window(start, end) or "
                "Trigger(token_ids)"
            )
        a = torch.as_tensor(self.alpha, dtype=torch.float32)
        if a.ndim > 1 or not torch.isfinite(a).all():
            raise SteerlensError(
                f"alpha must be a finite float or a 1-D list of per-row floats, got {self.alpha!r}"
            )

    @property
    def steered_layers(self) -> list[int]:
        layers = self.vector.layers if self.layers is None else list(self.layers)
        missing = [l for l in layers if l not in self.vector.directions]
        if missing:
            raise SteerlensError(f"layers {missing} not in the vector (it has {self.vector.layers})")
        return layers

    @property
    def per_row(self) -> bool:
        return torch.as_tensor(self.alpha).ndim == 1

    def foldable(self) -> bool:
        return (
            self.op == "add"
            and self.positions == "all"
            and not self.per_row
            and self.vector.site == "hook_resid_post"
        )


@dataclass
class _State:
    """Where the current forward chunk sits in its sequence, shared by every hook of one ``steer`` context."""

    offset: int = 0  # absolute index (in padded coordinates) of the chunk's first token
    prompt_len: int = 0
    row_start: Tensor | None = None  # [batch] leading pad count per row
    trigger_from: dict[tuple[int, ...], Tensor] = field(
        default_factory=dict
    )  # per trigger: [batch] first hit
    masks: dict[Any, Tensor] = field(default_factory=dict)
    batch: int = 0
    seq: int = 0
    rows: Tensor | None = None  # original batch rows still decoding (after early-stopped rows were dropped)

    def keep_rows(self, index: Tensor) -> None:
        """Follow a decoder that dropped finished rows from its batch (and KV cache)."""
        index = index.cpu()
        self.rows = index if self.rows is None else self.rows[index]
        if self.row_start is not None:
            self.row_start = self.row_start[index]
        self.trigger_from = {k: v[index] for k, v in self.trigger_from.items()}

    def begin(
        self,
        ids: Tensor | None,
        batch: int,
        seq: int,
        offset: int,
        attention_mask: Tensor | None,
        triggers: list[Trigger],
    ) -> None:
        self.offset, self.batch, self.seq, self.masks = offset, batch, seq, {}
        if offset > 0 and self.row_start is None:
            # entered mid-sequence (a decoder that prefilled outside this context): the cache is the prompt
            self.prompt_len, self.row_start, self.rows = offset, torch.zeros(batch, dtype=torch.long), None
        if offset == 0:
            self.prompt_len = seq
            if attention_mask is not None and attention_mask.shape == (batch, seq):
                self.row_start = (attention_mask.cumsum(-1) == 0).sum(-1)
            else:
                self.row_start = torch.zeros(batch, dtype=torch.long)
            self.trigger_from = {}
            self.rows = None
        for trig in triggers:
            if ids is None:
                raise SteerlensError("Trigger positions need input_ids (not inputs_embeds)")
            hit = torch.isin(ids, torch.tensor(trig.token_ids, device=ids.device))
            pos = torch.arange(offset, offset + seq, device=ids.device).expand(batch, seq)
            first = torch.where(hit, pos, torch.full_like(pos, 2**62)).min(-1).values.cpu()
            prev = self.trigger_from.get(trig.token_ids)
            self.trigger_from[trig.token_ids] = first if prev is None else torch.minimum(prev, first)

    def mask(self, positions: Positions, device: torch.device) -> Tensor | None:
        """[batch, seq] float mask of steered positions in the current chunk, or None for all positions."""
        if positions == "all":
            return None
        key = positions
        if key not in self.masks:
            absolute = torch.arange(self.offset, self.offset + self.seq).expand(self.batch, self.seq)
            assert self.row_start is not None
            if positions == "prompt":
                m = absolute < self.prompt_len
            elif positions == "generated":
                m = absolute >= self.prompt_len
            elif isinstance(positions, Window):
                rel = absolute - self.row_start[:, None]
                m = rel >= positions.start
                if positions.end is not None:
                    m = m & (rel < positions.end)
            elif isinstance(positions, Trigger):
                m = absolute >= self.trigger_from[positions.token_ids][:, None]
            else:  # pragma: no cover - validated in Intervention
                raise SteerlensError(f"bad positions {positions!r}")
            self.masks[key] = m.to(device)
        return self.masks[key]


@dataclass(frozen=True)
class _Step:
    """One intervention at one layer, precomputed so the hook does tensor work only (no Python-side
    conversions that would break a ``torch.compile`` graph)."""

    index: int  # the intervention's position in the steer() call: the key of its cached coefficient
    op: str
    vector: Tensor  # [d_model]; for add-type ops the unit scale is already folded in
    scale: float  # what remains to multiply alpha by (1.0 for add-type ops, so all layers share one coef)
    alpha: float | None  # one alpha for every row ...
    alpha_rows: Tensor | None  # ... or [batch] per-row alphas
    positions: Positions


def _prepare(ivs: list[Intervention], device: torch.device, dtype: torch.dtype) -> dict[int, list[_Step]]:
    """Per steered layer, the steps to run in order."""
    steps: dict[int, list[_Step]] = {}
    for i, iv in enumerate(ivs):
        a = torch.as_tensor(iv.alpha, dtype=torch.float32)
        alpha, rows = (None, a.to(device)) if a.ndim == 1 else (float(a), None)
        for l in iv.steered_layers:
            u = iv.vector.directions[l].to(device=device, dtype=dtype)
            unit = iv.vector.scale(l, iv.units)
            if iv.op in ("add", "add_norm"):
                u, scale = u * unit, 1.0
            else:
                scale = unit if iv.op == "clamp" else 1.0
            steps.setdefault(l, []).append(_Step(i, iv.op, u, scale, alpha, rows, iv.positions))
    return steps


def _coef(step: _Step, state: _State, device: torch.device, dtype: torch.dtype) -> Tensor | float:
    """alpha x scale x position mask: a float (uniform) or a [batch, seq] tensor, cached per forward."""
    mask = state.mask(step.positions, device)
    if mask is None and step.alpha is not None:
        return step.alpha * step.scale
    key = ("coef", step.index, step.scale)
    if key in state.masks:
        return state.masks[key]
    if step.alpha_rows is not None:
        rows = (
            step.alpha_rows if state.rows is None else step.alpha_rows[state.rows.to(step.alpha_rows.device)]
        )
        if len(rows) != state.batch:
            raise SteerlensError(
                f"alpha has {len(rows)} per-row values but the batch has {state.batch} rows; pass one per row"
            )
        c = (rows * step.scale).reshape(-1, 1).expand(state.batch, state.seq)
    else:
        assert step.alpha is not None
        c = torch.full((state.batch, state.seq), step.alpha * step.scale, device=device)
    if mask is None:
        out = c.to(dtype)
    elif step.op == "clamp":
        out = torch.where(mask, c, torch.full_like(c, float("nan"))).to(dtype)
    else:
        out = (c * mask).to(dtype)
    state.masks[key] = out
    return out


def _parse(model: Model, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Intervention]:
    if args and isinstance(args[0], SteeringVector):
        if len(args) > 1:
            raise SteerlensError("pass one vector with keyword options, or several Intervention objects")
        ivs = [Intervention(args[0], **kwargs)]
    else:
        if kwargs:
            raise SteerlensError(f"options {sorted(kwargs)} belong in Intervention(...) when passing several")
        ivs = list(args)
        bad = [x for x in ivs if not isinstance(x, Intervention)]
        if bad or not ivs:
            raise SteerlensError("steer() takes a SteeringVector (plus options) or Intervention objects")
    for iv in ivs:
        iv.vector.check_model(model)
        if iv.vector.site != "hook_resid_post":
            raise SteerlensError(f"steer() acts on resid_post; this vector is at {iv.vector.site}")
        _ = iv.steered_layers
    return ivs


@dataclass
class Steering:
    """What ``with steer(...) as s`` gives: the interventions, and ``keep_rows`` for custom decoders that drop
    finished rows from their batch (per-row alphas and positions then follow the surviving rows)."""

    interventions: list[Intervention]
    _state: _State

    def keep_rows(self, index: Tensor) -> None:
        self._state.keep_rows(index)


@contextlib.contextmanager
def steer(model: Model, *interventions: Any, fold: bool | str = "auto", **options: Any) -> Iterator[Steering]:
    """Steer ``model`` inside the block; leaving it (also by exception) restores bit-identical outputs.

    ``steer(model, vector, alpha=4, positions="generated")`` or ``steer(model, Intervention(...), ...)``.
    ``fold``: "auto" folds static adds into output-projection biases where exact; False always uses hooks;
    True requires folding (errors where it is not exact).
    """
    ivs = _parse(model, interventions, options)
    _let_compiled_code_see_hooks()
    can_fold = family_table(model.cfg.model_type)["hook_mlp_out"][0] == "mlp"  # mlp_out is down_proj's output
    to_fold = [iv for iv in ivs if fold is not False and iv.foldable() and can_fold]
    if fold is True and len(to_fold) != len(ivs):
        raise SteerlensError(
            "fold=True: only a static add at all positions with one alpha can be folded, and only on "
            f"architectures whose MLP output enters the residual directly ({model.cfg.model_type} "
            f"{'does' if can_fold else 'has post-MLP norms and does not'}); use fold='auto'"
        )
    hooked = [iv for iv in ivs if iv not in to_fold]
    state = _State()
    triggers = [iv.positions for iv in hooked if isinstance(iv.positions, Trigger)]
    by_layer = _prepare(hooked, model.device, model.dtype)
    handles: list[Any] = []
    restore: list[tuple[nn.Linear, Any]] = []
    try:
        for tree in model.hf_trees():  # hf itself, and a TransformerBridge's twin of it
            for iv in to_fold:
                restore.extend(_fold(tree, iv))
            if by_layer:
                base = tree.get_submodule(str(tree.base_model_prefix))
                handles.append(
                    base.register_forward_pre_hook(
                        lambda m, a, kw: _begin_hf(state, a, kw, triggers), with_kwargs=True
                    )
                )
                for l, steps in by_layer.items():
                    layer = tree.get_submodule(f"model.layers.{l}")
                    handles.append(
                        layer.register_forward_hook(lambda m, a, o, s=steps: _steer_output(o, s, state))
                    )
        lens = model._lens
        if lens is not None and not hasattr(lens, "original_model"):
            # A HookedTransformer has its own module tree and bias tensors: every intervention runs as TL hooks.
            tl_layers = _prepare(ivs, model.device, model.dtype)
            tl_triggers = [iv.positions for iv in ivs if isinstance(iv.positions, Trigger)]
            handles.append(
                lens.register_forward_pre_hook(
                    lambda m, a, kw: _begin_tl(state, a, kw, tl_triggers), with_kwargs=True
                )
            )
            for l, steps in tl_layers.items():
                hp = lens.blocks[l].hook_resid_post
                handles.append(hp.register_forward_hook(lambda m, a, o, s=steps: _steer_tensor(o, s, state)))
        yield Steering(ivs, state)
    finally:
        for h in handles:
            h.remove()
        for proj, bias in reversed(restore):
            proj.bias = bias


def _let_compiled_code_see_hooks() -> None:
    """``torch.compile`` does not guard on module hooks by default, so a model compiled before ``steer`` would
    silently run unsteered. Make it guard on them; graphs compiled without those guards are dropped once."""
    import torch._dynamo

    if torch._dynamo.config.skip_nnmodule_hook_guards:
        torch._dynamo.config.skip_nnmodule_hook_guards = False
        torch._dynamo.reset()


def _fold(tree: nn.Module, iv: Intervention) -> list[tuple[nn.Linear, Any]]:
    """Add the intervention's static vector to each steered layer's down_proj bias; return what to restore."""
    restore: list[tuple[nn.Linear, Any]] = []
    alpha = float(iv.alpha)  # type: ignore[arg-type]
    if alpha == 0.0:
        return restore
    for l in iv.steered_layers:
        proj = tree.get_submodule(f"model.layers.{l}.mlp.down_proj")
        proj = getattr(proj, "_original_component", proj)  # a TransformerBridge wraps the Linear
        if not isinstance(proj, nn.Linear):
            raise SteerlensError(f"cannot fold into {type(proj).__name__} at layer {l}; use fold=False")
        delta = (alpha * iv.vector.scale(l, iv.units) * iv.vector.directions[l]).to(proj.weight)
        restore.append((proj, proj.bias))
        old = proj.bias.detach() if proj.bias is not None else torch.zeros_like(delta)
        proj.bias = nn.Parameter(old + delta, requires_grad=False)
    return restore


def _steer_tensor(h: Tensor, steps: list[_Step], state: _State) -> Tensor:
    for step in steps:
        h = apply_op(h, step.vector, step.op, _coef(step, state, h.device, h.dtype))
    return h


def _steer_output(out: Any, steps: list[_Step], state: _State) -> Any:
    h = _steer_tensor(first_tensor(out), steps, state)
    return (h, *out[1:]) if isinstance(out, tuple) else h


def _begin_hf(state: _State, args: tuple, kw: dict, triggers: list) -> None:
    ids = kw.get("input_ids", args[0] if args else None)
    embeds = kw.get("inputs_embeds")
    ref = ids if ids is not None else embeds
    if ref is None:
        raise SteerlensError("steered forward got neither input_ids nor inputs_embeds")
    cache = kw.get("cache", kw.get("past_key_values"))
    offset = int(cache.get_seq_length()) if cache is not None else 0
    state.begin(ids, ref.shape[0], ref.shape[1], offset, kw.get("attention_mask"), triggers)


def _begin_tl(state: _State, args: tuple, kw: dict, triggers: list) -> None:
    tokens = kw.get("input", args[0] if args else None)
    if not isinstance(tokens, Tensor):
        raise SteerlensError("steering the HookedTransformer view needs token tensors as input, not strings")
    cache = kw.get("past_kv_cache")
    offset = int(cache.entries[0].past_keys.shape[1]) if cache is not None else 0
    state.begin(tokens, tokens.shape[0], tokens.shape[1], offset, kw.get("attention_mask"), triggers)
