"""The worker side of the vLLM engine: per-request steering and activation capture inside vLLM's model runner.

Why a separate module: this code runs in vLLM's worker process (in-process for one device, a process per
rank under tensor parallelism), reached through ``LLM.collective_rpc``; it must import only torch and the
steering mechanism, never the client.

vLLM runs one flattened batch of tokens per step: requests ``0..n-1`` in the runner's order, request ``i``'s
tokens at ``query_start_loc[i]:query_start_loc[i+1]`` with their absolute positions in ``positions``. Each
request names its spec in ``SamplingParams.extra_args["steerlens"]``. At the start of a step (a pre-hook on
the rank's first decoder layer) the specs present are packed, per steered layer, into one step list for the
whole batch: every spec's steps in its own order, each with coefficients only on its own requests' tokens
(0 elsewhere, NaN for ``clamp``, which the op leaves bit-identical). One fused op per layer then steers every
request with exactly its own interventions.

vLLM's decoder layers return ``(hidden, residual)`` whose sum is the residual stream (``resid_post``). A
steered layer returns ``(steered sum, 0)``: the next layer's fused add-norm adds 0 (exact), so unsteered
tokens stay bit-identical to an unhooked run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .fused import apply_steps
from .ops import OPS

NEVER = 2**62
SPEC_KEY = "steerlens"  # extra_args: the request's spec id
ROW_KEY = "steerlens_row"  # extra_args: the caller's row index (capture output is keyed by it)
CAPTURE_KEY = "steerlens_capture"  # extra_args: capture this request's residuals


@dataclass(frozen=True)
class WorkerStep:
    """One intervention at one layer, as the worker applies it (built client-side by ``vllm_specs``)."""

    op: str
    vector: Tensor  # [d_model], add-type ops with the unit scale folded in
    vid: str  # identifies ``vector`` (steps on the same direction merge across requests)
    coef: float  # alpha x remaining scale
    positions: tuple  # ("all",) ("prompt",) ("generated",) ("window", start, end) ("trigger", ids)


@dataclass
class _State:
    runner: Any
    specs: dict[str, dict[int, list[WorkerStep]]] = field(default_factory=dict)
    capture_layers: tuple[int, ...] = ()
    triggers: dict[tuple[str, tuple[int, ...]], int] = field(default_factory=dict)  # (req, ids) -> first hit
    plan: dict[int, tuple[Tensor, Tensor, list[int]]] = field(default_factory=dict)
    dirs: dict[tuple, tuple[Tensor, list[int]]] = field(
        default_factory=dict
    )  # (layer, specs) -> stacked, codes
    capture_rows: list[tuple[int, int, int, Tensor]] = field(default_factory=list)  # (row, start, end, pos)
    captured: dict[tuple[int, int], list[tuple[Tensor, Tensor]]] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)


_STATE: _State | None = None


def _layers(runner: Any) -> Any:
    model = runner.model
    body = getattr(model, "model", None) or getattr(getattr(model, "language_model", None), "model", None)
    if body is None or not hasattr(body, "layers"):
        raise RuntimeError(f"steerlens: cannot find the decoder layers of vLLM's {type(model).__name__}")
    return body.layers


def install(worker: Any) -> int:
    """Hook the worker's model once (idempotent); returns the number of decoder layers."""
    global _STATE
    runner = worker.model_runner
    layers = _layers(runner)
    if _STATE is not None and _STATE.runner is runner:
        return len(layers)
    _STATE = state = _State(runner)
    real = [i for i, m in enumerate(layers) if type(m).__name__ != "PPMissingLayer"]
    first = layers[real[0]]
    state.handles.append(
        first.register_forward_pre_hook(lambda m, a, kw: _begin(state, a, kw), with_kwargs=True)
    )
    for i in real:
        state.handles.append(layers[i].register_forward_hook(lambda m, a, o, l=i: _after_layer(state, l, o)))
    return len(layers)


def configure(
    worker: Any, specs: dict[str, dict[int, list[WorkerStep]]], capture_layers: Sequence[int]
) -> None:
    """Set the specs (id -> layer -> steps) and capture layers for the next ``generate``; clears old state."""
    assert _STATE is not None, "steerlens: install() first"
    device, dtype = _STATE.runner.device, _STATE.runner.model_config.dtype
    _STATE.specs = {
        k: {
            l: [WorkerStep(s.op, s.vector.to(device, dtype), s.vid, s.coef, s.positions) for s in steps]
            for l, steps in v.items()
        }
        for k, v in specs.items()
    }
    _STATE.capture_layers = tuple(capture_layers)
    _STATE.triggers, _STATE.captured, _STATE.plan, _STATE.dirs = {}, {}, {}, {}


def take_captured(worker: Any) -> dict[tuple[int, int], tuple[Tensor, Tensor]]:
    """(row, layer) -> (positions [T], residuals [T, d_model]) of everything captured since ``configure``."""
    assert _STATE is not None
    out = {
        k: (torch.cat([p for p, _ in v]), torch.cat([h for _, h in v])) for k, v in _STATE.captured.items()
    }
    _STATE.captured = {}
    return out


def _extra(req: Any) -> dict:
    sp = getattr(req, "sampling_params", None)
    return (getattr(sp, "extra_args", None) or {}) if sp is not None else {}


def _begin(state: _State, args: tuple, kw: dict) -> None:
    """Pack this step's coefficients: for every steered layer, every present spec's steps, masked to its
    requests' tokens (request i owns tokens query_start_loc[i]:query_start_loc[i+1])."""
    state.plan, state.capture_rows = {}, []
    r = state.runner
    n = r.input_batch.num_reqs
    positions = kw.get("positions", args[0] if args else None)
    if n == 0 or positions is None or (not state.specs and not state.capture_layers):
        return
    qsl = r.query_start_loc.cpu[: n + 1].tolist()
    # a copy: on CPU ``.cpu()`` would alias the runner's persistent positions buffer, rewritten every step
    pos = positions.reshape(-1).to("cpu", copy=True)
    by_spec: dict[str, list[tuple[int, int, Any]]] = {}
    for i, rid in enumerate(r.input_batch.req_ids[:n]):
        req = r.requests[rid]
        extra = _extra(req)
        a, b = qsl[i], qsl[i + 1]
        if extra.get(SPEC_KEY) in state.specs:
            by_spec.setdefault(extra[SPEC_KEY], []).append((a, b, req))
        if extra.get(CAPTURE_KEY) and b > a:
            state.capture_rows.append((int(extra[ROW_KEY]), a, b, pos[a:b]))
    device = positions.device
    rows: dict[tuple, Tensor] = {}  # coefficient rows, shared by the layers (and specs) that use them
    stacks: dict[tuple, Tensor] = {}  # stacked rows, shared by layers with the same coefficients
    for l in sorted({l for k in by_spec for l in state.specs[k]}):
        # Specs whose steps at this layer are the same ops on the same directions merge step by step: their
        # requests' tokens are disjoint, so one step with each request's own coefficients does the same (an
        # alpha sweep over 64 requests is one step per layer, not 64).
        groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
        for k in sorted(by_spec):
            if steps := state.specs[k].get(l):
                groups.setdefault(tuple((s.op, s.vid) for s in steps), []).append(k)
        keys = []
        for sig, ks in groups.items():
            for j, (op, _) in enumerate(sig):
                key = tuple((k, op, state.specs[k][l][j].coef, state.specs[k][l][j].positions) for k in ks)
                if key not in rows:
                    rows[key] = _coef_row(state, [(state.specs[k][l][j], by_spec[k]) for k in ks], pos)
                keys.append(key)
        ckey = tuple(keys)
        if ckey not in stacks:
            stacks[ckey] = torch.stack([rows[k] for k in keys]).to(device)
        dkey = (l, tuple((sig, tuple(ks)) for sig, ks in groups.items()))
        if dkey not in state.dirs:  # the directions of a layer's groups do not change from step to step
            dirs = [state.specs[ks[0]][l][j].vector for sig, ks in groups.items() for j in range(len(sig))]
            codes = [OPS.index(op) for sig in groups for op, _ in sig]
            state.dirs[dkey] = (torch.stack(dirs), codes)
        dirs_l, codes_l = state.dirs[dkey]
        state.plan[l] = (dirs_l, stacks[ckey], codes_l)


def _coef_row(
    state: _State, parts: list[tuple[WorkerStep, list[tuple[int, int, Any]]]], pos: Tensor
) -> Tensor:
    """[tokens] fp32: each step's coefficient on its own requests' selected tokens; 0 (NaN for clamp, which
    leaves a position as it is even at target 0) everywhere else."""
    c = torch.full((len(pos),), float("nan") if parts[0][0].op == "clamp" else 0.0)
    for s, reqs in parts:
        for a, b, req in reqs:
            if s.positions[0] == "all":
                c[a:b] = s.coef
            else:
                c[a:b] = torch.where(_mask(state, s.positions, req, pos[a:b]), s.coef, c[a:b])
    return c


def _mask(state: _State, positions: tuple, req: Any, pos: Tensor) -> Tensor:
    """Which of one request's tokens (absolute positions ``pos``) a step acts on."""
    kind = positions[0]
    n_prompt = req.num_prompt_tokens
    if kind == "all":
        return torch.ones_like(pos, dtype=torch.bool)
    if kind == "prompt":
        return pos < n_prompt
    if kind == "generated":
        return pos >= n_prompt
    if kind == "window":
        m = pos >= positions[1]
        return m if positions[2] is None else m & (pos < positions[2])
    if kind == "trigger":
        return pos >= _first_hit(state, req, positions[1], int(pos.max()))
    raise ValueError(f"unknown positions {positions!r}")


def _first_hit(state: _State, req: Any, ids: tuple[int, ...], upto: int) -> int:
    """First position <= ``upto`` holding one of ``ids`` (prompt tokens, then the generated tokens, which the
    runner holds once sampled; steerlens runs vLLM without async scheduling so they are there)."""
    key = (req.req_id, ids)
    hit = state.triggers.get(key, NEVER)
    if hit != NEVER:
        return hit
    tokens = list(req.prompt_token_ids or []) + list(req.output_token_ids)
    wanted = set(ids)
    hit = next((p for p in range(min(upto + 1, len(tokens))) if tokens[p] in wanted), NEVER)
    state.triggers[key] = hit
    return hit


def _after_layer(state: _State, layer: int, out: Any) -> Any:
    plan = state.plan.get(layer)
    capture = layer in state.capture_layers and state.capture_rows
    if plan is None and not capture:
        return None
    hidden, residual = out
    h = hidden if residual is None else hidden + residual
    if plan is not None:
        dirs, coefs, codes = plan
        h = apply_steps(h, dirs, coefs[:, : h.shape[0]], codes)
    if capture:
        for row, a, b, p in state.capture_rows:
            state.captured.setdefault((row, layer), []).append(
                (p, h[a:b].detach().to("cpu", torch.float32, copy=True))
            )
    if plan is None:
        return None
    return h, (None if residual is None else torch.zeros_like(residual))
