"""The fused per-layer steering op vs the per-step torch ops it replaced, measured side by side in one run.

    python bench/fused.py                      # CPU: per-layer op time for 1 / 3 / 6 steps (+ GPU if present)
    STEERLENS_FUSED_STANDALONE=1 PYTHONPATH=. python3 bench/fused.py --gpu    # GPU only (bench/fused_gpu.sh)
    STEERLENS_FUSED_SHAPE=576:2x4 ...           # launch shapes (BLOCK_M x num_warps) other than the defaults

CPU: "per-step" is what the hooks ran before (``apply_op`` once per intervention), "fused" what they run now
(``apply_steps``: on CPU the same composition, called directly in eager mode), "op" the registered
``torch.ops.steerlens.steer_layer`` (what ``torch.compile`` graphs call; its CPU kernel is that composition,
so the difference is the custom op's dispatch cost). GPU: the same table (per-step torch ops on CUDA vs the Triton kernel); the kernel's
bandwidth against a plain copy of the residual (goal >= 90%); and a batch-64 decode step of a SmolLM2-135M-shaped
Llama (random weights: the speed is the same) under CUDA graphs, unsteered vs steered by the fused op vs steered
by per-step torch ops (goal >= 0.97x unsteered). Imports only torch, triton, jaxtyping and (for the decode
step) transformers, so it runs on a GPU machine without steerlens installed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "steering"))
from fused_cases import load_fused

OPS = ("add", "ablate", "clamp", "add_norm", "add", "ablate")  # the first n of these for n steps
SMOL = dict(d=576, layers=30, heads=9, kv_heads=3, ffn=1536, vocab=49152)


def steps(n: int, lead: tuple[int, ...], d: int, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """n steps with per-row alphas and position masks (the general path; no uniform shortcut)."""
    g = torch.Generator().manual_seed(n)
    ops = OPS[:n]
    dirs = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    coefs = torch.rand((n, *lead), generator=g)
    for i, op in enumerate(ops):
        on = torch.rand(lead, generator=g) < 0.8
        coefs[i] = torch.where(on, coefs[i], torch.tensor(float("nan") if op == "clamp" else 0.0))
    codes = [("add", "add_norm", "ablate", "clamp").index(op) for op in ops]
    return dict(ops=ops, dirs=dirs.to(device, dtype), coefs=coefs.to(device), codes=codes)


def per_step(fused: Any, h: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    """What steer()'s hooks ran before: one torch op per step, coefficients cast to the residual's dtype."""
    for i, op in enumerate(s["ops"]):
        h = fused.apply_op(h, s["dirs"][i], op, s["coefs"][i].to(h.dtype))
    return h


def cpu_time(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median microseconds per call over rounds of 10 calls, the paths interleaved in each round so machine
    noise hits all alike."""
    inner = 10
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - t) / inner * 1e6)
    return {k: statistics.median(v) for k, v in samples.items()}


def op_table(fused: Any, device: str, repeats: int) -> None:
    """Per-layer op time, per-step ops vs the fused op, for smollm2's d_model at decode and prefill shapes.
    On CUDA two numbers per path: host (us of Python + launch per call, the GPU kept busy) and GPU (us per call
    replayed from a CUDA graph, as a decode loop runs it): eagerly a call costs the larger of the two."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    name = str(dtype).removeprefix("torch.")
    print(f"\nper-layer op time on {device} ({name}), median microseconds per call")
    print(
        "fused: what steer()'s hooks call (apply_steps); op: torch.ops.steerlens.steer_layer, dispatch included"
    )
    paths = ("per-step", "fused", "op")
    if device == "cpu":
        print(
            f"{'residual':>16} {'steps':>5} {'per-step':>10} {'fused':>10} {'op':>10} {'per-step / fused':>17}"
        )
    else:
        print("host: us per call to launch it; graph: us per call replayed in a CUDA graph")
        cols = "".join(f"{p + ' ' + k:>16}" for p in paths for k in ("host", "graph"))
        print(f"{'residual':>16} {'steps':>5}{cols}")
    for lead in [(64, 1), (8, 128)]:
        h = torch.randn(*lead, SMOL["d"], device=device).to(dtype)
        for n in (1, 3, 6):
            s = steps(n, lead, SMOL["d"], device, dtype)
            args = (h, s["dirs"], s["coefs"], s["codes"])
            fns = {
                "per-step": lambda h=h, s=s: per_step(fused, h, s),
                "fused": lambda args=args: fused.apply_steps(*args),
                "op": lambda args=args: torch.ops.steerlens.steer_layer(*args),
            }
            shape = "x".join(map(str, (*lead, SMOL["d"])))
            if device == "cpu":
                t = cpu_time(fns, repeats)
                cells = f"{t['per-step']:>10.1f} {t['fused']:>10.1f} {t['op']:>10.1f}"
                print(f"{shape:>16} {n:>5} {cells} {t['per-step'] / t['fused']:>16.2f}x")
                continue
            host, graph = (
                {k: host_time(fn) for k, fn in fns.items()},
                {k: graph_time(fn) for k, fn in fns.items()},
            )
            print(f"{shape:>16} {n:>5}" + "".join(f"{host[k]:>16.1f}{graph[k]:>16.1f}" for k in paths))
            if lead == (64, 1):
                SUMMARY.append(
                    f"op 64x1x576 bf16, {n} step{'s' * (n > 1)}: fused host {host['fused']:.1f} us / GPU "
                    f"{graph['fused']:.1f} us; per-step host {host['per-step']:.1f} / GPU {graph['per-step']:.1f}; "
                    f"custom op host {host['op']:.1f}"
                )


def host_time(fn: Callable[[], object], calls: int = 300) -> float:
    """Microseconds of host time per call: ``calls`` calls back to back, then one sync (median of 5)."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(out)


def graph_time(fn: Callable[[], object], calls: int = 20) -> float:
    """Microseconds of GPU time per call: ``calls`` calls captured in one CUDA graph, replayed (median of 20)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def gpu_time(fns: dict[str, Callable[[], object]], rep: int = 100) -> dict[str, float]:
    """Microseconds per call from triton's do_bench (CUDA events, L2 flushed between calls, median)."""
    import triton

    return {
        k: triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median") * 1e3
        for k, fn in fns.items()
    }


def candidates(fused: Any, d: int) -> list[tuple[int, int]]:
    """(BLOCK_M, num_warps) to try for d_model ``d``: 8 / 16 / 32 elements per thread at 1-16 warps, the
    default first."""
    bd = 1 << (d - 1).bit_length()
    default = fused._launch_shape(d, 2)[::2]  # (BLOCK_M, warps): the table / env / default in force
    out = [default]
    for warps in (1, 2, 4, 8, 16):
        for per_thread in (8, 16, 32):
            m = per_thread * 32 * warps // bd
            if m * bd == per_thread * 32 * warps and 1 <= m <= 32 and (m, warps) not in out:
                out.append((m, warps))
    keep = [s for s in out if 1 <= s[1] <= (8 if bd <= 2048 else 16) and s[1] >= (4 if bd >= 4096 else 1)]
    return keep[:8]


def bandwidth(fused: Any, budget_s: float) -> None:
    """Bytes read + written per second by the fused kernel vs a plain copy of the same residual (256 MiB),
    for a sweep of launch shapes (BLOCK_M, num_warps) per d_model: the default first, then the others while
    the time budget lasts. Prints the best shape per (d_model, dtype, steps) and a STEERLENS_FUSED_SHAPE line."""
    t0 = time.perf_counter()
    print("\nfused kernel bandwidth vs a plain copy of the residual (read + write, 256 MiB residual)")
    print(
        "shape BMxW: BLOCK_M rows per program x num_warps; * = the default; fraction = copy time / fused time"
    )
    print(f"{'d_model':>8} {'dtype':>9} {'copy TB/s':>10} {'shape':>6}   fused/copy for 1 / 3 / 6 steps")
    best: dict[tuple[int, str, int], tuple[float, tuple[int, int]]] = {}
    default_frac: dict[tuple[int, str, int], float] = {}
    skipped = 0
    for d in (576, 896, 2048, 4096, 8192):
        for dtype in (torch.bfloat16, torch.float32):
            name = str(dtype).removeprefix("torch.")
            rows = (256 << 20) // (d * dtype.itemsize)
            h = torch.randn(rows, d, device="cuda", dtype=dtype)
            out = torch.empty_like(h)
            moved = 2 * h.numel() * h.element_size()
            copy = gpu_time({"copy": lambda h=h, out=out: out.copy_(h)}, rep=40)["copy"]
            step_sets = {n: steps(n, (rows,), d, "cuda", dtype) for n in (1, 3, 6)}
            for i, shape in enumerate(candidates(fused, d)):
                if i and time.perf_counter() - t0 > budget_s:
                    skipped += 1
                    continue
                fracs = []
                for n, s in step_sets.items():
                    args = (h, s["dirs"], s["coefs"], s["codes"])
                    t = gpu_time({"f": lambda a=args, sh=shape: fused.triton_steer(*a, shape=sh)}, rep=40)[
                        "f"
                    ]
                    frac = copy / t
                    fracs.append(frac)
                    key = (d, name, n)
                    if frac > best.get(key, (0.0, shape))[0]:
                        best[key] = (frac, shape)
                    if i == 0:
                        default_frac[key] = frac
                label = f"{shape[0]}x{shape[1]}" + ("*" if i == 0 else "")
                cells = " ".join(f"{f:>6.1%}" for f in fracs)
                print(f"{d:>8} {name:>9} {moved / copy / 1e6:>10.2f} {label:>6}   {cells}")
            del h, out, step_sets
    if skipped:
        print(f"({skipped} shapes skipped: the sweep's {budget_s:.0f} s budget ran out)")
    print("\nbest shape per (d_model, dtype, steps): fused/copy (default's)")
    for (d, name, n), (frac, shape) in sorted(best.items()):
        print(
            f"{d:>8} {name:>9} {n:>2} steps: {frac:6.1%} at {shape[0]}x{shape[1]} (default {default_frac[(d, name, n)]:.1%})"
        )
    for name in ("bfloat16", "float32"):
        cells = [
            f"d{d}: " + "/".join(f"{best[(d, name, n)][0]:.0%}@{best[(d, name, n)][1][0]}x{best[(d, name, n)][1][1]}"
                                 for n in (1, 3, 6))
            for d in (576, 896, 2048, 4096, 8192) if (d, name, 1) in best
        ]  # fmt: skip
        SUMMARY.append(f"bandwidth {name}, best fused/copy @ BMxW for 1/3/6 steps: " + "; ".join(cells))
    worst_default = min(default_frac.values())
    SUMMARY.append(f"bandwidth: worst with the default shapes {worst_default:.1%} (goal >= 90%)")
    votes: dict[int, dict[tuple[int, int], float]] = {}
    for (d, _, _), (_, shape) in best.items():  # per d_model: the shape best in most (dtype, steps)
        votes.setdefault(d, {}).setdefault(shape, 0.0)
        votes[d][shape] += 1
    spec = ",".join(
        f"{d}:{max(v, key=v.__getitem__)[0]}x{max(v, key=v.__getitem__)[1]}" for d, v in votes.items()
    )
    print(f"\nto try the winners: STEERLENS_FUSED_SHAPE={spec}")
    SUMMARY.append(f"most-often-best shapes: STEERLENS_FUSED_SHAPE={spec}")


SUMMARY: list[str] = []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="the GPU sections only")
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--sweep-seconds", type=float, default=90.0, help="time budget of the launch-shape sweep")
    p.add_argument(
        "--skip-decode", action="store_true", help="not the decode benchmark (fused_gpu.sh runs it)"
    )
    args = p.parse_args()
    fused = load_fused()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if not args.gpu:
        op_table(fused, "cpu", args.repeats)
    if not torch.cuda.is_available():
        print(
            "\nno CUDA device: the GPU sections (kernel time, bandwidth, CUDA-graph decode) were not measured"
        )
        return
    import triton

    print(f"\n{torch.cuda.get_device_name()}, triton {triton.__version__}")
    try:
        op_table(fused, "cuda", args.repeats)
        bandwidth(fused, args.sweep_seconds)
    finally:
        path = os.environ.get("FUSED_SUMMARY")
        if path:
            with open(path, "a") as f:
                f.writelines(line + "\n" for line in SUMMARY)
    if not args.skip_decode:
        from fused_decode import run_isolated  # beside this file

        run_isolated()


if __name__ == "__main__":
    main()
