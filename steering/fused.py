"""One op per steered layer: the whole ordered list of steps applied to the residual in one pass.

Why: a torch op per intervention reads and writes the residual once per step and launches several kernels
each; ``torch.ops.steerlens.steer_layer`` reads it once and writes it once, ``torch.compile`` traces through
it without a graph break, and a CUDA graph can capture it.

One layer's steps, packed (``n`` steps, ``lead`` = the residual's leading dims, e.g. ``batch pos``):

- ``dirs``  ``[n, d_model]``: the directions (add-type ops with the unit scale folded in), any float dtype;
- ``coefs`` ``[n, *lead]`` fp32: alpha x scale x position mask per step and position. 0 leaves a position
  as it is; for ``clamp`` (where 0 is a real target) NaN marks the positions left as they are;
- ``codes`` ``list[int]``: ``OPS.index(op)``, plus ``UNIFORM`` when the coefficient is one number
  everywhere (the reference then uses each op's scalar form, exactly as the one-op-per-step hooks did).

Implementations: on CUDA a Triton kernel (one program per block of positions, the steps in a loop with the
op codes as a runtime argument, so one compiled kernel serves every step list; fp32 accumulation, one cast
back at the end); elsewhere, and on CUDA without triton, ``reference``:
``apply_op`` step after step, bit-identical to the per-step hooks it replaces.

CUDA graphs: ``FusedLayer`` keeps ``dirs`` and ``coefs`` in persistent buffers. Capture once; between replays
``set`` rewrites a step's coefficients (alpha, per-row alphas, position mask) in place, so the graph reads the
new values from the memory it captured. Never replace the buffers (``f.coefs = ...``): the graph would not see it.

This file imports only torch, jaxtyping and (when installed) triton, so it runs on a machine without the rest
of steerlens (``bench/fused_gpu.sh`` loads it on its own).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .ops import OPS, Op, apply_op

try:  # an optional dependency: only the CUDA path needs it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

UNIFORM = 4  # code flag: one coefficient for every position (coefs holds it everywhere)
OP_MASK = 3  # code & OP_MASK = OPS.index(op)
MAX_STEPS = 31  # steps per kernel launch: their codes travel as 2 bits each in one int64

__all__ = ["OPS", "UNIFORM", "FusedLayer", "apply_steps", "reference", "steer_layer", "triton_steer"]


def reference(
    h: Float[Tensor, "*lead d_model"],
    dirs: Float[Tensor, "n d_model"],
    coefs: Float[Tensor, " n *lead"],
    codes: Sequence[int],
) -> Float[Tensor, "*lead d_model"]:
    """The steps as plain torch ops, one after another: the meaning of the fused op and its CPU path."""
    if not codes or h.numel() == 0:
        return h.clone()
    for i, code in enumerate(codes):
        c = float(coefs[i].reshape(-1)[0]) if code & UNIFORM else coefs[i]
        h = apply_op(h, dirs[i], OPS[code & OP_MASK], c)
    return h


if triton is not None:

    @triton.jit(do_not_specialize=["codes", "n_steps"])  # one compiled kernel for every list of steps
    def _steer_kernel(
        h_ptr,
        out_ptr,
        dir_ptr,
        coef_ptr,
        n_rows,
        d_model,
        stride_h,
        stride_out,
        stride_dir,
        stride_coef,
        codes,  # int64, 2 bits per step: the OPS index of step s at bits 2s and 2s+1
        n_steps,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """BLOCK_M positions x the whole d_model in registers, the steps in turn; one load, one store.

        Latency: step s+1's direction and coefficients are loaded before step s computes (they do not depend
        on h), so their load latency hides behind this step's reductions instead of adding up step by step.
        Arithmetic (what bounds several steps on bf16): ``add`` needs no reduction, ``add_norm`` one or two
        (|h + c u| and, unless the step before was an ``add_norm`` and left it known, |h|), masks act per row."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        rmask = rows < n_rows
        cmask = cols < d_model
        m2 = rmask[:, None] & cmask[None, :]
        r64 = rows.to(tl.int64)[:, None]
        h = tl.load(h_ptr + r64 * stride_h + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        u = tl.load(dir_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        c = tl.load(coef_ptr + rows, mask=rmask, other=0.0)[:, None]
        hh = tl.zeros([BLOCK_M, 1], dtype=tl.float32)  # |h|^2 per row, valid right after an add_norm
        hh_at = n_steps * 0 - 1  # the step at whose start ``hh`` is current (-1: none)
        for s in range(n_steps):
            nxt = (s + 1) % n_steps  # prefetch the next step's operands (after the last: step 0's, unused)
            u_next = tl.load(dir_ptr + nxt * stride_dir + cols, mask=cmask, other=0.0)
            c_next = tl.load(coef_ptr + nxt * stride_coef + rows, mask=rmask, other=0.0)
            code = (codes >> (2 * s)) & 3  # the same for every program: no divergence
            # Every op is h <- r h + b u with per-row r, b: the selects act on [BLOCK_M, 1], not per element,
            # and b = 0, r = 1 leave a position as it is.
            if code == 0:  # add
                h = h + c * u
            elif code == 1:  # add_norm: y = h + c u, rescaled to |h|. |y|^2 is summed from y itself: the
                # expansion |h|^2 + c (2 h.u + c |u|^2) cancels where y is short next to h and c u (seed
                # 1886705371: 4.6e-5 off on d_model 1), and it needs one reduction more.
                y = h + c * u
                yy = tl.sum(y * y, axis=1)[:, None]
                if hh_at != s:
                    hh = tl.sum(h * h, axis=1)[:, None]
                r = tl.where(c == 0.0, 1.0, tl.div_rn(tl.sqrt_rn(hh), tl.maximum(tl.sqrt_rn(yy), 1e-12)))
                h = y * r
                hh = tl.where(c == 0.0, hh, yy * r * r)  # = |h|^2 before, unless |h + c u| < 1e-12
                hh_at = s + 1
            elif code == 2:  # ablate
                h = h - (c * tl.sum(h * u, axis=1)[:, None]) * u
            else:  # clamp: NaN marks positions left as they are
                h = h + tl.where(c != c, 0.0, c - tl.sum(h * u, axis=1)[:, None]) * u
            u = u_next.to(tl.float32)[None, :]
            c = c_next[:, None]
        tl.store(out_ptr + r64 * stride_out + cols[None, :], h.to(out_ptr.dtype.element_ty), mask=m2)


# (BLOCK_M, num_warps) by (BLOCK_D, element size), measured on a GPU (bench/fused.py --gpu prints the sweep's
# best shapes); shapes not listed use _default_shape. STEERLENS_FUSED_SHAPE overrides both: "BLOCK_MxWARPS"
# for every d_model, or "d_model:BLOCK_MxWARPS,..." per d_model (e.g. "576:2x4,4096:1x8"); read once per
# (d_model, dtype) (``_launch_shape.cache_clear()`` re-reads it).
LAUNCH_SHAPES: dict[tuple[int, int], tuple[int, int]] = {}
SHAPE_ENV = "STEERLENS_FUSED_SHAPE"


def _default_shape(block_d: int) -> tuple[int, int]:
    """A whole row per program, about 4K elements per program (32 per thread at 4 warps)."""
    return max(1, min(16, 4096 // block_d)), 4 if block_d <= 4096 else 8 if block_d <= 8192 else 16


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _env_shape(d_model: int) -> tuple[int, int] | None:
    spec = os.environ.get(SHAPE_ENV, "").replace(" ", "")
    for item in filter(None, spec.split(",")):
        key, _, shape = item.rpartition(":")
        if key in ("", str(d_model)):
            m, _, w = shape.lower().partition("x")
            if not (m.isdigit() and w.isdigit() and _pow2(int(m)) and _pow2(int(w))):
                raise ValueError(f"{SHAPE_ENV}={spec!r}: {item!r} is not BLOCK_MxWARPS, both powers of two")
            return int(m), int(w)
    return None


@functools.lru_cache(maxsize=256)
def _launch_shape(d_model: int, itemsize: int = 4) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps) for rows of ``d_model`` elements of ``itemsize`` bytes."""
    block_d = triton.next_power_of_2(d_model)
    m, w = _env_shape(d_model) or LAUNCH_SHAPES.get((block_d, itemsize)) or _default_shape(block_d)
    return m, block_d, w


@functools.lru_cache(maxsize=1024)
def _chunks(codes: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    """(first step, steps, packed op codes) per launch: one unless a layer has over MAX_STEPS steps."""
    out = []
    for start in range(0, len(codes), MAX_STEPS):
        chunk = codes[start : start + MAX_STEPS]
        out.append((start, len(chunk), sum((code & OP_MASK) << (2 * s) for s, code in enumerate(chunk))))
    return tuple(out)


def triton_steer(
    h: Float[Tensor, "*lead d_model"],
    dirs: Float[Tensor, "n d_model"],
    coefs: Float[Tensor, " n *lead"],
    codes: Sequence[int],
    shape: tuple[int, int] | None = None,
) -> Float[Tensor, "*lead d_model"]:
    """Launch the Triton kernel (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``); no host sync, no new
    tensors besides the output, so it can be captured in a CUDA graph. ``shape``: (BLOCK_M, num_warps)
    instead of ``_launch_shape``'s (the benchmark's sweep).

    Host cost matters at decode sizes (a 64 x 576 residual moves 74 KB: ~2 us of GPU time), so the common
    case (contiguous residual, fp32 contiguous coefficients, one launch) creates no tensor but the output and
    the launch plan is cached per step list."""
    if triton is None:
        raise RuntimeError("triton is not installed: pip install triton (or use reference())")
    if not codes or h.numel() == 0:
        return h.clone()
    d = h.shape[-1]
    if h.is_contiguous():
        x, out = h, torch.empty_like(h, memory_format=torch.contiguous_format)
    else:
        x = h.reshape(-1, d)
        x = x if x.stride(-1) == 1 else x.contiguous()
        out = torch.empty((x.shape[0], d), dtype=h.dtype, device=h.device)
    rows = h.numel() // d
    stride_x = d if x is h else x.stride(0)
    c = coefs if coefs.dtype == torch.float32 and coefs.is_contiguous() else coefs.float().contiguous()
    u = dirs if dirs.stride(-1) == 1 else dirs.contiguous()
    if shape is None:
        block_m, block_d, warps = _launch_shape(d, h.element_size())
    else:
        (block_m, warps), block_d = shape, triton.next_power_of_2(d)
    grid = (triton.cdiv(rows, block_m),)
    for start, n, packed in _chunks(tuple(codes)):
        _steer_kernel[grid](
            x, out, u[start:] if start else u, c[start:] if start else c, rows, d, stride_x, d, u.stride(0),
            rows, packed, n, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
        )  # fmt: skip
        x, stride_x = out, d
    return out if out.shape == h.shape else out.view(h.shape)


@torch.library.custom_op("steerlens::steer_layer", mutates_args=())
def steer_layer(h: Tensor, dirs: Tensor, coefs: Tensor, codes: list[int]) -> Tensor:
    """One steered layer as one op (see the module docstring for the packing); default: ``reference``."""
    return reference(h, dirs, coefs, codes)


@steer_layer.register_kernel("cuda")
def _steer_layer_cuda(h: Tensor, dirs: Tensor, coefs: Tensor, codes: list[int]) -> Tensor:
    return triton_steer(h, dirs, coefs, codes) if triton is not None else reference(h, dirs, coefs, codes)


@steer_layer.register_fake
def _steer_layer_fake(h: Tensor, dirs: Tensor, coefs: Tensor, codes: list[int]) -> Tensor:
    return torch.empty_like(h)


def apply_steps(
    h: Float[Tensor, "*lead d_model"],
    dirs: Float[Tensor, "n d_model"],
    coefs: Float[Tensor, " n *lead"],
    codes: Sequence[int],
) -> Float[Tensor, "*lead d_model"]:
    """The fused op where it pays: on CUDA (the Triton kernel) and inside ``torch.compile`` (one opaque node,
    no graph break). Eagerly the op's kernels are called directly, without the ~15-25 us of custom-op dispatch
    per call: the Triton kernel on CUDA, the torch composition on CPU and wherever gradients must flow (the op
    has no backward)."""
    if torch.is_grad_enabled() and (h.requires_grad or dirs.requires_grad):
        return reference(h, dirs, coefs, codes)
    if torch.compiler.is_compiling():
        return torch.ops.steerlens.steer_layer(h, dirs, coefs, list(codes))
    if h.is_cuda and triton is not None:  # the op's CUDA kernel, called directly: no dispatch cost eagerly
        return triton_steer(h, dirs, coefs, codes)
    return reference(h, dirs, coefs, codes)


class FusedLayer:
    """One layer's steps in persistent buffers, for CUDA graphs and static decode loops.

    Capture ``f(h)`` once; between replays, ``set`` writes new coefficients into the same memory, so the
    captured graph steers with them (no re-capture, no new tensors inside the graph).

    Args:
        ops: the operations, in order.
        dirs: ``[n_steps, d_model]`` directions (copied into a buffer; ``set_direction`` rewrites one).
        lead: the residual's leading shape the graph will see, e.g. ``(batch, 1)`` for decode steps.
        device: where the buffers live (default: ``dirs``'s device).

    Example:
        >>> f = FusedLayer(["add", "clamp"], torch.stack([u, v]), lead=(64, 1), device="cuda")
        >>> f.set(0, torch.linspace(-2, 2, 64))        # per-row alphas; f.set(1, 3.0, mask=m) masks positions
        >>> g = torch.cuda.CUDAGraph()
        >>> with torch.cuda.graph(g):
        ...     out = f(h)
        >>> f.set(1, 0.5); g.replay()                   # the replay clamps to 0.5
    """

    def __init__(
        self,
        ops: Sequence[Op],
        dirs: Float[Tensor, "n d_model"],
        lead: Sequence[int],
        device: torch.device | str | None = None,
    ) -> None:
        bad = [op for op in ops if op not in OPS]
        if bad or len(ops) != len(dirs):
            raise ValueError(f"ops {list(ops)}: expected one of {OPS} per row of dirs ({len(dirs)} rows)")
        device = dirs.device if device is None else torch.device(device)
        self.ops = list(ops)
        self.codes = [OPS.index(op) for op in ops]
        self.dirs = dirs.detach().to(device).clone().contiguous()
        self.coefs = torch.zeros((len(ops), *lead), dtype=torch.float32, device=device)
        for i, op in enumerate(ops):
            self.coefs[i].fill_(float("nan") if op == "clamp" else 0.0)  # every step off until set

    def set(self, i: int, alpha: float | Tensor, mask: Tensor | None = None) -> None:
        """Step ``i``'s coefficient, in place: one float, ``[batch]`` per-row values or the full ``lead``
        shape; ``mask`` (bool, broadcastable to ``lead``) limits it to some positions."""
        lead = self.coefs.shape[1:]
        value = torch.as_tensor(alpha, dtype=torch.float32, device=self.coefs.device)
        if value.ndim == 1 and len(lead) > 1:
            value = value.reshape(-1, *[1] * (len(lead) - 1))
        value = value.expand(lead)
        if mask is not None:
            off = float("nan") if self.ops[i] == "clamp" else 0.0
            value = torch.where(mask.to(self.coefs.device), value, torch.full_like(value, off))
        self.coefs[i].copy_(value)

    def set_direction(self, i: int, u: Float[Tensor, " d_model"]) -> None:
        """Step ``i``'s direction, in place (for add-type ops, scale it by the unit first)."""
        self.dirs[i].copy_(u)

    def __call__(self, h: Float[Tensor, "*lead d_model"]) -> Float[Tensor, "*lead d_model"]:
        return apply_steps(h, self.dirs, self.coefs, self.codes)
