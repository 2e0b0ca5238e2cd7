"""The fused steering kernel against the reference on random step lists: a script, so that it runs where a
pytest session cannot give it what it needs. Why: ``TRITON_INTERPRET=1`` must be set before triton is first
imported (``test_fused.py`` runs this in a fresh process), and a GPU machine may have torch and triton but no
steerlens (``bench/fused_gpu.sh`` runs it there with ``STEERLENS_FUSED_STANDALONE=1``).

    TRITON_INTERPRET=1 python tests/steering/fused_cases.py --device cpu --cases 120
    STEERLENS_FUSED_STANDALONE=1 PYTHONPATH=. python3 tests/steering/fused_cases.py --device cuda --graph

Each case: 1-6 steps (add, add_norm, ablate, clamp in random order), random leading shape, d_model, dtype,
per-row / per-position / uniform coefficients, zero masks and NaN clamp masks. Checked: the kernel's error
against the exact result (the reference in float64 on the same inputs) is within ``TOL`` of the output's
largest magnitude, and positions that no step touches come back bit-identical. The reference in the input
dtype (today's CPU path, rounding after every step) is measured beside it for comparison.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import sys
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
# max |kernel - exact| / max(1, max |exact|). The kernel accumulates in fp32 and rounds once at the end, so
# bf16 / fp16 are within half a unit in the last place of the largest output (bf16 2^-8 = 3.9e-3, fp16 2^-11 =
# 4.9e-4) plus fp32 error, on a GPU. Triton's interpreter truncates fp32 -> bf16 (it ignores the rounding
# mode), a whole unit (2^-7 = 7.8e-3): its bf16 bound is one ulp. fp32: about 1e-7 seen, 2e-5 allowed.
TOL = {torch.float32: 2e-5, torch.bfloat16: 5e-3, torch.float16: 1e-3}
TOL_INTERPRETED_BF16 = 1e-2
OPS = ("add", "add_norm", "ablate", "clamp")


def load_fused() -> Any:
    """``steerlens.steering.fused``, or (``STEERLENS_FUSED_STANDALONE=1``) the file alone, loaded as
    ``steering.fused`` without running ``steering/__init__.py``: torch, jaxtyping and triton only."""
    if not os.environ.get("STEERLENS_FUSED_STANDALONE"):
        return importlib.import_module("steerlens.steering.fused")
    if "steering" not in sys.modules:
        pkg = types.ModuleType("steering")
        pkg.__path__ = [str(ROOT / "steering")]
        sys.modules["steering"] = pkg
    return importlib.import_module("steering.fused")


def random_case(
    rng: random.Random, device: str, big: bool = False, ops: list[str] | None = None
) -> dict[str, Any]:
    """One random step list (or ``ops``) with its inputs (directions of ablate/clamp are unit vectors, as in
    steer())."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    dtype = rng.choice([torch.float32, torch.bfloat16, torch.float16])
    d = rng.choice([1, 7, 64, 96, 576, 640, 1000] + ([2048, 4096, 5000] if big else []))
    lead = rng.choice([(rng.randint(1, 4), rng.randint(1, 9)), (rng.randint(1, 12),)])
    if big and rng.random() < 0.3:
        lead = (rng.randint(1, 64), rng.randint(1, 64))
    scale = rng.choice([0.1, 1.0, 8.0, 30.0])
    h = torch.randn(*lead, d, generator=g) * scale
    if rng.random() < 0.2:  # a few outlier features, as in real residuals
        h[..., : max(1, d // 50)] *= 20
    if ops is None:
        ops = [rng.choice(OPS) for _ in range(rng.randint(1, 6))]
    dirs, coefs, codes = [], [], []
    for op in ops:
        u = torch.randn(d, generator=g)
        u = u / u.norm()
        dirs.append(u * scale * d**0.5 if op in ("add", "add_norm") else u)  # add: unit ~ |h| folded in
        c, uniform = _coefficients(rng, g, op, lead, scale * d**0.5)
        coefs.append(c)
        codes.append(OPS.index(op) | (4 if uniform else 0))
    return dict(
        ops=ops,
        codes=codes,
        h=h.to(device=device, dtype=dtype),
        dirs=torch.stack(dirs).to(device=device, dtype=dtype),
        coefs=torch.stack(coefs).to(device),
    )


def _coefficients(
    rng: random.Random, g: torch.Generator, op: str, lead: tuple[int, ...], norm: float
) -> tuple[torch.Tensor, bool]:
    """fp32 coefficients of one step: uniform, per row, or per position; then maybe masked (0 / NaN)."""
    span = {"add": 1.0, "add_norm": 1.0, "ablate": 1.0, "clamp": 0.5 * norm}[op]
    lo = 0.0 if op == "ablate" else -span
    kind = rng.choice(["uniform", "rows", "positions"])
    if kind == "uniform":
        return torch.full(lead, rng.uniform(lo, span)), True
    if kind == "rows":
        c = (torch.rand(lead[0], generator=g) * (span - lo) + lo).reshape(-1, *[1] * (len(lead) - 1))
        c = c.expand(lead).clone()
    else:
        c = torch.rand(lead, generator=g) * (span - lo) + lo
    if rng.random() < 0.6:
        on = torch.rand(lead, generator=g) < rng.uniform(0.2, 0.9)
        c = torch.where(on, c, torch.full_like(c, float("nan") if op == "clamp" else 0.0))
    return c, False


def tolerance(dtype: torch.dtype, device: str) -> float:
    return TOL_INTERPRETED_BF16 if dtype == torch.bfloat16 and device == "cpu" else TOL[dtype]


def _untouched(case: dict[str, Any]) -> torch.Tensor:
    """[*lead] bool: positions that no step changes (every coefficient 0, or NaN for a clamp)."""
    off = torch.ones(case["coefs"].shape[1:], dtype=torch.bool, device=case["coefs"].device)
    for op, c in zip(case["ops"], case["coefs"], strict=True):
        off &= c.isnan() if op == "clamp" else c == 0
    return off


def _long(case: dict[str, Any], n: int = 40) -> dict[str, Any]:
    """The case's steps repeated to ``n`` (more than one kernel launch takes)."""
    reps = -(-n // len(case["ops"]))
    out = dict(case, ops=(case["ops"] * reps)[:n], codes=(case["codes"] * reps)[:n], h=case["h"].float())
    out["dirs"] = case["dirs"].float().repeat(reps, 1)[:n]  # fp32: the launches round in between
    out["coefs"] = case["coefs"].repeat(reps, *[1] * (case["coefs"].ndim - 1))[:n] * 0.2
    return out


def _short_sum(case: dict[str, Any], seed: int, rel: float = 0.02) -> dict[str, Any]:
    """The case (one ``add_norm``) in fp32 with h = -c u + a random vector of ``rel`` |c u|: h + c u is short
    next to h and c u. Summing |h + c u|^2 as |h|^2 + c (2 h.u + c |u|^2) cancels there; the kernel did, and
    seed 1886705371 found it off by 4.6e-5 on d_model 1."""
    u, c = case["dirs"][0].float(), case["coefs"][0]
    cu = c.unsqueeze(-1) * u
    e = torch.randn(cu.shape, generator=torch.Generator().manual_seed(seed)).to(cu.device)
    h = -cu + rel * cu.norm(dim=-1, keepdim=True) * e / e.norm(dim=-1, keepdim=True)
    return dict(case, h=h, dirs=case["dirs"].float())


def check(fused: Any, case: dict[str, Any]) -> tuple[float, float]:
    """(kernel error, reference-in-dtype error), each max |x - exact| / max(1, max |exact|); raises if the
    kernel is off by more than TOL or touches a position it must leave bit-identical."""
    h, dirs, coefs, codes = case["h"], case["dirs"], case["coefs"], case["codes"]
    got = fused.triton_steer(h, dirs, coefs, codes)
    exact = fused.reference(h.double(), dirs.double(), coefs.double(), codes)
    native = fused.reference(h, dirs, coefs, codes)
    norm = max(1.0, float(exact.abs().max()))
    err = float((got.double() - exact).abs().max()) / norm
    err_native = float((native.double() - exact).abs().max()) / norm
    summary = f"{case['ops']} {h.dtype} {tuple(h.shape)}: kernel {err:.2e}, reference {err_native:.2e}"
    tol = tolerance(h.dtype, h.device.type)
    assert err <= tol, f"kernel off by {err:.2e} > {tol:.0e}: {summary}"
    off = _untouched(case)
    assert torch.equal(got[off], h[off]), f"an untouched position changed: {summary}"
    if h.is_cuda:  # the registered op dispatches to the same kernel
        assert torch.equal(torch.ops.steerlens.steer_layer(h, dirs, coefs, codes), got), summary
    return err, err_native


def check_cuda_graph(fused: Any) -> None:
    """Capture a FusedLayer once, then change coefficients (and a direction) in place between replays: every
    replay must equal a fresh eager call with the new values."""
    torch.manual_seed(0)
    batch, d = 64, 576
    dirs = torch.nn.functional.normalize(torch.randn(3, d, device="cuda"), dim=-1)
    f = fused.FusedLayer(["add", "ablate", "clamp"], dirs, lead=(batch, 1))
    h = torch.randn(batch, 1, d, device="cuda") * 10
    f.set(0, torch.linspace(-2, 2, batch))
    f.set(1, 1.0)
    f(h)  # compile the kernel outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = f(h)
    updates = [
        lambda: f.set(2, 3.0),
        lambda: f.set(2, 5.0, mask=torch.arange(batch, device="cuda")[:, None] % 2 == 0),
        lambda: f.set(0, 0.0),
        lambda: f.set_direction(0, torch.randn(d, device="cuda")),
        lambda: h.copy_(torch.randn_like(h)),
    ]
    for i, update in enumerate(updates):
        update()
        graph.replay()
        want = fused.triton_steer(h, f.dirs, f.coefs, f.codes)
        assert torch.equal(out, want), f"replay {i} differs from eager after an in-place update"
        ref = fused.reference(h, f.dirs, f.coefs, f.codes)
        assert (out - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item()), f"replay {i}"
    print(f"CUDA graph: {len(updates)} in-place updates, each replay equal to eager and to the reference")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--cases", type=int, default=120)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--graph", action="store_true", help="also the CUDA-graph capture + replay check")
    args = p.parse_args()
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("on CPU the kernel runs only under the Triton interpreter: set TRITON_INTERPRET=1")
    seed = random.SystemRandom().randrange(2**31) if args.seed is None else args.seed
    print(f"fused kernel vs reference: {args.cases} cases on {args.device}, seed {seed} (--seed replays it)")
    fused, rng = load_fused(), random.Random(seed)
    worst: dict[str, list[float]] = {}
    for i in range(args.cases):
        case = random_case(rng, args.device, big=args.device == "cuda")
        try:
            err, err_native = check(fused, case)
        except AssertionError as e:
            sys.exit(f"case {i} (seed {seed}) FAILED: {e}")
        w = worst.setdefault(str(case["h"].dtype).removeprefix("torch."), [0.0, 0.0, 0])
        w[0], w[1], w[2] = max(w[0], err), max(w[1], err_native), w[2] + 1
    for name, (err, err_native, count) in sorted(worst.items()):
        tol = tolerance(getattr(torch, name), args.device)
        print(
            f"  {name:8} {count:3d} cases: worst kernel {err:.2e} (tol {tol:.0e}), reference {err_native:.2e}"
        )
    check(fused, _long(random_case(rng, args.device)))
    print("  a layer of 40 steps (two launches of at most 31): ok")
    for _ in range(6):  # the kernel reuses |h| from one add_norm in the next: runs of them
        check(
            fused, random_case(rng, args.device, ops=["add_norm", "add_norm", "add", "add_norm", "add_norm"])
        )
    print("  runs of add_norm (|h| carried from one to the next): ok")
    for _ in range(12):
        check(fused, _short_sum(random_case(rng, args.device, ops=["add_norm"]), rng.randrange(2**31)))
    print("  add_norm where h + c u is short next to h and c u (cancellation): ok")
    if args.graph:
        check_cuda_graph(fused)
    print(f"OK: {args.cases} cases passed")
    errs = ", ".join(f"{name} {w[0]:.1e}" for name, w in sorted(worst.items()))
    summary(f"kernel vs reference on {args.device}: {args.cases} cases OK, worst error {errs}")
    if args.graph:
        summary("CUDA graph: capture + 5 in-place updates, every replay == eager == reference: OK")


def summary(line: str) -> None:
    """Append a line to $FUSED_SUMMARY (bench/fused_gpu.sh prints the file at the end)."""
    path = os.environ.get("FUSED_SUMMARY")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
