"""``steer(model, ...)``: apply steering vectors during forward passes and generation, then restore the model.

One context manager for every view. Hooks go on the HF modules, which the nnsight view and a TransformerBridge
lens run through; a HookedTransformer lens (a separate module tree) gets TL hooks with the same spec.

Semantics (what the reference implementation in ``tests/steering/reference.py`` spells out): at each steered
layer the interventions run on ``resid_post`` in the order given, each at its positions with its coefficient.

Fast path: a static add at every position with one coefficient is folded into the bias of the layer's output
projection (``down_proj``) where that is exactly the same computation: the architecture adds the MLP output
straight to the residual (Llama-like, not Gemma's post-norms) and every intervention before it at that layer
is an add too (adds commute; nothing else does). Everything else runs as hooks: one fused op per layer for
all of its steps (``fused.steer_layer``: a Triton kernel on CUDA, the per-step torch composition on CPU).
Positions are tracked across KV-cached decoding steps and cacheless re-runs (``positions.SequenceState``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from steerlens.errors import SteerlensError
from steerlens.model import Model
from steerlens.sites import block_path, decoder_body, first_tensor, mlp_out_is_residual_add, mlp_out_proj_path

from .fused import UNIFORM, apply_steps
from .intervention import Intervention
from .ops import OPS, Op
from .positions import Positions, SequenceState, Trigger, Window, spares_prefix
from .vector import SteeringVector, Units

Fold = bool | Literal["auto"]  # "auto": fold where exact; False: hooks only; True: everything must fold

__all__ = ["Intervention", "Op", "Positions", "Steering", "Trigger", "Units", "Window", "steer"]


@dataclass(frozen=True)
class _Step:
    """One intervention at one layer, precomputed so the hook does tensor work only (no Python-side
    conversions that would break a ``torch.compile`` graph)."""

    index: int  # the intervention's position in the steer() call: the key of its cached coefficient
    op: Op
    vector: Tensor  # [d_model]; for add-type ops the unit scale is already folded in
    scale: float  # what remains to multiply alpha by (1.0 for add-type ops, so all layers share one coef)
    alpha: float | None  # one alpha for every row ...
    alpha_rows: Tensor | None  # ... or [batch] per-row alphas
    positions: Positions


def _step(i: int, iv: Intervention, l: int, device: torch.device, dtype: torch.dtype) -> _Step:
    a = torch.as_tensor(iv.alpha, dtype=torch.float32)
    alpha, rows = (None, a.to(device)) if a.ndim == 1 else (float(a), None)
    u = iv.vector.directions[l].to(device=device, dtype=dtype)
    unit = iv.vector.scale(l, iv.units)
    if iv.op in ("add", "add_norm"):
        u, scale = u * unit, 1.0
    else:
        scale = unit if iv.op == "clamp" else 1.0
    return _Step(i, iv.op, u, scale, alpha, rows, iv.positions)


def _plan(
    ivs: list[Intervention], can_fold: bool, fold: Fold, device: torch.device, dtype: torch.dtype
) -> tuple[list[tuple[int, Intervention]], dict[int, list[_Step]]]:
    """Per layer, which interventions fold into a bias and which run as hook steps (in the given order).

    An add folds at a layer only if every intervention before it at that layer is an add too: the bias runs
    before all hooks, which changes nothing only when it commutes with what it overtakes."""
    folds: list[tuple[int, Intervention]] = []
    steps: dict[int, list[_Step]] = {}
    for l in sorted({l for iv in ivs for l in iv.steered_layers}):
        only_adds_before = True
        for i, iv in enumerate(ivs):
            if l not in iv.steered_layers:
                continue
            if fold is not False and can_fold and iv.foldable() and only_adds_before:
                folds.append((l, iv))
            else:
                steps.setdefault(l, []).append(_step(i, iv, l, device, dtype))
            only_adds_before = only_adds_before and iv.op == "add"
    return folds, steps


@dataclass(frozen=True)
class _Layer:
    """One layer's hook steps packed once for the fused op: directions [n_steps, d_model] and op codes."""

    steps: list[_Step]
    dirs: Tensor
    codes: list[int]


def _layer(steps: list[_Step]) -> _Layer:
    """UNIFORM marks the steps whose coefficient is one float (``_coef`` returns a float for them)."""
    codes = [
        OPS.index(s.op) | (UNIFORM if s.positions == "all" and s.alpha is not None else 0) for s in steps
    ]
    return _Layer(steps, torch.stack([s.vector for s in steps]), codes)


def _coef(step: _Step, state: SequenceState, device: torch.device) -> Tensor | float:
    """alpha x scale x position mask: a float (uniform) or a [batch, seq] fp32 tensor, cached per forward."""
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
        out = c.float()
    elif step.op == "clamp":
        out = torch.where(mask, c, torch.full_like(c, float("nan"))).float()
    else:
        out = (c * mask).float()
    state.masks[key] = out
    return out


def _coefs(layer: _Layer, state: SequenceState, h: Tensor) -> Tensor:
    """[n_steps, batch, seq] fp32: every step's coefficients, packed once per forward for each step list."""
    key = ("packed", tuple((s.index, s.scale) for s in layer.steps), h.device)
    if key not in state.masks:
        lead = h.shape[:-1]
        cs = [_coef(s, state, h.device) for s in layer.steps]
        full = [torch.full(lead, c, device=h.device) if isinstance(c, float) else c.expand(lead) for c in cs]
        state.masks[key] = torch.stack(full)
    return state.masks[key]


def _parse(
    model: Model, args: tuple[Intervention | SteeringVector, ...], options: dict[str, Any]
) -> list[Intervention]:
    if args and isinstance(args[0], SteeringVector):
        if len(args) > 1:
            raise SteerlensError("pass one vector with keyword options, or several Intervention objects")
        ivs = [Intervention(args[0], **options)]
    else:
        given = {k for k, v in options.items() if not _is_default(k, v)}
        if given:
            raise SteerlensError(f"options {sorted(given)} belong in Intervention(...) when passing several")
        ivs = list(args)  # type: ignore[arg-type]
        bad = [x for x in ivs if not isinstance(x, Intervention)]
        if bad or not ivs:
            raise SteerlensError("steer() takes a SteeringVector (plus options) or Intervention objects")
    for iv in ivs:
        iv.vector.check_model(model)
        if iv.vector.site_kind != "hook_resid_post":
            raise SteerlensError(f"steer() acts on resid_post; this vector is at {iv.vector.site_kind}")
        _ = iv.steered_layers
    return ivs


_DEFAULTS: dict[str, Any] = {"alpha": 1.0, "op": "add", "positions": "all", "units": "vector", "layers": None}


def _is_default(name: str, value: object) -> bool:
    d = _DEFAULTS[name]
    return value is d or (type(value) in (int, float, str) and value == d)


@dataclass(eq=False)
class Steering:
    """What ``with steer(...) as s`` gives: the interventions, ``keep_rows`` for custom decoders that drop
    finished rows from their batch (per-row alphas and windows then follow the surviving rows), ``resume``
    for decoders that prefilled outside the context, and ``new_sequence`` between unrelated forwards."""

    interventions: list[Intervention]
    _state: SequenceState
    folded_layers: frozenset[int] = frozenset()
    thread: int = 0
    fingerprint: str = ""

    def keep_rows(self, index: Tensor) -> None:
        self._state.keep_rows(index)

    def resume(self, ids: Tensor, attention_mask: Tensor | None = None) -> None:
        """The KV cache passed to the next forward already holds ``ids`` (the prompt), computed elsewhere."""
        self._state.resume(ids, attention_mask)

    def new_sequence(self) -> None:
        self._state.new_sequence()

    def spares_prefix(self, prefix: Tensor) -> bool:
        """Whether a forward of ``prefix`` alone (batch 1, the first tokens of every prompt) is left untouched
        by this context, so its KV cache can be shared; never for per-row values (sized for a whole batch)."""
        if any(
            iv.per_row or (isinstance(iv.positions, Window) and iv.positions.per_row)
            for iv in self.interventions
        ):
            return False
        return spares_prefix([iv.positions for iv in self.interventions], prefix)

    def prefix_cached(self, prefix: Tensor, pads: Tensor) -> None:
        """The next forward continues a cache of ``prefix`` [batch, n] with the rest of each prompt, placed
        after ``pads`` [batch] pad tokens (see ``SequenceState.prefix_cached``)."""
        self._state.prefix_cached(prefix, pads)


@contextlib.contextmanager
def steer(
    model: Model,
    *interventions: Intervention | SteeringVector,
    alpha: float | Sequence[float] | Tensor = 1.0,
    op: Op = "add",
    positions: Positions = "all",
    units: Units = "vector",
    layers: Sequence[int] | None = None,
    fold: Fold = "auto",
) -> Iterator[Steering]:
    """Steer ``model`` inside the block; leaving it (also by exception) restores bit-identical outputs.

    Args:
        model: the model to steer (every view: ``hf``, ``lens``, ``nn``).
        interventions: one ``SteeringVector`` (steered with the keyword options below) or several
            ``Intervention`` objects (each carrying its own options), applied per layer in the order given.
        alpha, op, positions, units, layers: as in ``Intervention``, for a single vector.
        fold: "auto" folds static adds into output-projection biases where that is exact; False always uses
            hooks; True requires every intervention to fold (errors where it cannot).

    Example:
        >>> with steer(model, vec, alpha=4, positions="generated"):
        ...     text = steerlens.generate(model, ["The movie was"])

    ``steer()`` changes the model for every caller until it exits: do not run the same ``Model`` from another
    thread meanwhile (entering ``steer()`` from a second thread while one is active raises).
    """
    options = {"alpha": alpha, "op": op, "positions": positions, "units": units, "layers": layers}
    ivs = _parse(model, interventions, options)
    me = threading.get_ident()
    if any(s.thread != me for s in model.steering):
        raise SteerlensError(
            f"steer() is already active on {model.name} in another thread; steering changes the shared model, "
            "so use one thread per Model (load a second Model for concurrent work)"
        )
    _let_compiled_code_see_hooks()
    folds, by_layer = _checked_plan(model, ivs, fold)
    state = SequenceState(
        triggers=list(dict.fromkeys(iv.positions for iv in ivs if isinstance(iv.positions, Trigger)))
    )
    fingerprint = "|".join(iv.fingerprint() for iv in ivs)
    handle = Steering(ivs, state, frozenset(l for l, _ in folds), me, fingerprint)
    handles: list[RemovableHandle] = []
    restore: list[tuple[nn.Linear, nn.Parameter | None]] = []
    model._steering.append(handle)
    try:
        for tree in model.hf_trees():  # hf itself, and a TransformerBridge's twin of it
            _fold(tree, folds, restore)
            _hook_hf(tree, by_layer, state, handles)
        lens = model.built_lens
        if lens is not None and model.lens_kind == "hooked":
            _hook_lens(lens, _plan(ivs, False, False, model.device, model.dtype)[1], state, handles)
        yield handle
    finally:
        for h in handles:
            h.remove()
        for proj, bias in reversed(restore):
            proj.register_parameter("bias", bias)
        model._steering.remove(handle)


def _checked_plan(
    model: Model, ivs: list[Intervention], fold: Fold
) -> tuple[list[tuple[int, Intervention]], dict[int, list[_Step]]]:
    can_fold = mlp_out_is_residual_add(model.cfg.model_type)
    folds, by_layer = _plan(ivs, can_fold, fold, model.device, model.dtype)
    if fold is True and by_layer:
        raise SteerlensError(
            "fold=True: only a static add at all positions with one alpha, after nothing but adds at its layer, "
            f"can be folded, and only on architectures whose MLP output enters the residual directly "
            f"({model.cfg.model_type} {'does' if can_fold else 'has post-MLP norms and does not'}); use fold='auto'"
        )
    return folds, by_layer


def _hook_hf(
    tree: nn.Module, by_layer: dict[int, list[_Step]], state: SequenceState, handles: list[RemovableHandle]
) -> None:
    """Hooks on an HF module tree: the decoder body opens each forward chunk, each layer's output is steered.
    Each handle is recorded as soon as it exists, so a failure half-way still removes every hook."""
    if not by_layer:
        return
    body = decoder_body(tree)
    handles.append(body.register_forward_pre_hook(lambda m, a, kw: _begin_hf(state, a, kw), with_kwargs=True))
    for l, steps in by_layer.items():
        layer = tree.get_submodule(block_path(l))
        packed = _layer(steps)
        handles.append(layer.register_forward_hook(lambda m, a, o, p=packed: _steer_output(o, p, state)))


def _hook_lens(
    lens: Any, by_layer: dict[int, list[_Step]], state: SequenceState, handles: list[RemovableHandle]
) -> None:
    """A HookedTransformer has its own module tree and bias tensors: every intervention runs as TL hooks.
    TL's generate calls forward() directly (module hooks on the lens never fire), so a chunk begins at block
    0, and token ids come from the embedding call that preceded it."""
    handles.append(lens.embed.register_forward_pre_hook(lambda m, a: _tokens_tl(state, a)))
    begin = lens.blocks[0].register_forward_pre_hook(
        lambda m, a, kw: _begin_tl(state, a, kw), with_kwargs=True
    )
    handles.append(begin)
    for l, steps in by_layer.items():
        hp = lens.blocks[l].hook_resid_post
        packed = _layer(steps)
        handles.append(hp.register_forward_hook(lambda m, a, o, p=packed: _steer_tensor(o, p, state)))


def _let_compiled_code_see_hooks() -> None:
    """``torch.compile`` does not guard on module hooks by default, so a model compiled before ``steer`` would
    silently run unsteered. Make it guard on them; graphs compiled without those guards are dropped once."""
    import torch._dynamo

    if torch._dynamo.config.skip_nnmodule_hook_guards:
        torch._dynamo.config.skip_nnmodule_hook_guards = False
        torch._dynamo.reset()


def _fold(
    tree: nn.Module,
    folds: list[tuple[int, Intervention]],
    restore: list[tuple[nn.Linear, nn.Parameter | None]],
) -> None:
    """Add each folded intervention's static vector to its layer's down_proj bias. Every projection is
    checked before any is changed, and each change is recorded in ``restore`` before it is made."""
    projs = []
    for l, _ in folds:
        proj = tree.get_submodule(mlp_out_proj_path(l))
        proj = getattr(proj, "_original_component", proj)  # a TransformerBridge wraps the Linear
        if not isinstance(proj, nn.Linear):
            raise SteerlensError(f"cannot fold into {type(proj).__name__} at layer {l}; use fold=False")
        projs.append(proj)
    for proj, (l, iv) in zip(projs, folds, strict=True):
        alpha = float(iv.alpha)  # type: ignore[arg-type]
        if alpha == 0.0:
            continue
        delta = (alpha * iv.vector.scale(l, iv.units) * iv.vector.directions[l]).to(proj.weight)
        restore.append((proj, proj.bias))
        old = proj.bias.detach() if proj.bias is not None else torch.zeros_like(delta)
        proj.bias = nn.Parameter(old + delta, requires_grad=False)


def _steer_tensor(h: Tensor, layer: _Layer, state: SequenceState) -> Tensor:
    """All of a layer's steps in one op: one read and one write of the residual (on CPU: the steps in turn)."""
    return apply_steps(h, layer.dirs, _coefs(layer, state, h), layer.codes)


def _steer_output(out: Any, layer: _Layer, state: SequenceState) -> Any:
    h = _steer_tensor(first_tensor(out), layer, state)
    return (h, *out[1:]) if isinstance(out, tuple) else h


def _begin_hf(state: SequenceState, args: tuple, kw: dict) -> None:
    ids = kw.get("input_ids", args[0] if args else None)
    embeds = kw.get("inputs_embeds")
    ref = ids if ids is not None else embeds
    if ref is None:
        raise SteerlensError("steered forward got neither input_ids nor inputs_embeds")
    cache = kw.get("cache", kw.get("past_key_values"))
    offset = int(cache.get_seq_length()) if cache is not None else 0
    state.begin(ids, ref.shape[0], ref.shape[1], offset, kw.get("attention_mask"))


def _tokens_tl(state: SequenceState, args: tuple) -> None:
    state.pending_tokens = args[0] if args and isinstance(args[0], Tensor) else None


def _begin_tl(state: SequenceState, args: tuple, kw: dict) -> None:
    resid = args[0] if args else kw["resid_pre"]
    entry = kw.get("past_kv_cache_entry")
    offset = int(entry.past_keys.shape[1]) if entry is not None else 0
    mask = kw.get("attention_mask")
    tokens = state.pending_tokens
    ids = tokens if tokens is not None and tuple(tokens.shape) == tuple(resid.shape[:2]) else None
    state.pending_tokens = None
    state.begin(ids, resid.shape[0], resid.shape[1], offset, mask, key=resid)
