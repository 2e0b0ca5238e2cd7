"""The fused per-layer steering op vs the per-step torch ops it replaced, measured side by side in one run.

    python bench/fused.py                      # CPU: per-layer op time for 1 / 3 / 6 steps (+ GPU if present)
    STEERLENS_FUSED_STANDALONE=1 PYTHONPATH=. python3 bench/fused.py --gpu    # GPU only (bench/fused_gpu.sh)

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
    """Per-layer op time, per-step ops vs the fused op, for smollm2's d_model at decode and prefill shapes."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    name = str(dtype).removeprefix("torch.")
    print(f"\nper-layer op time on {device} ({name}), median microseconds per call")
    print(
        "fused: what steer()'s hooks call (apply_steps); op: torch.ops.steerlens.steer_layer, dispatch included"
    )
    print(f"{'residual':>16} {'steps':>5} {'per-step':>10} {'fused':>10} {'op':>10} {'per-step / fused':>17}")
    for lead in [(64, 1), (8, 128)]:
        h = torch.randn(*lead, SMOL["d"], device=device).to(dtype)
        for n in (1, 3, 6):
            s = steps(n, lead, SMOL["d"], device, dtype)
            args = (h, s["dirs"], s["coefs"], s["codes"])
            paths = {
                "per-step": lambda h=h, s=s: per_step(fused, h, s),
                "fused": lambda args=args: fused.apply_steps(*args),
                "op": lambda args=args: torch.ops.steerlens.steer_layer(*args),
            }
            t = cpu_time(paths, repeats) if device == "cpu" else gpu_time(paths)
            shape = "x".join(map(str, (*lead, SMOL["d"])))
            cells = f"{t['per-step']:>10.1f} {t['fused']:>10.1f} {t['op']:>10.1f}"
            print(f"{shape:>16} {n:>5} {cells} {t['per-step'] / t['fused']:>16.2f}x")


def gpu_time(fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Microseconds per call from triton's do_bench (CUDA events, L2 flushed between calls)."""
    import triton

    return {k: triton.testing.do_bench(fn, warmup=25, rep=100) * 1e3 for k, fn in fns.items()}


def bandwidth(fused: Any) -> None:
    """Bytes read + written per second by the fused kernel vs a plain copy of the same residual (512 MiB)."""
    print("\nfused kernel bandwidth vs a plain copy of the residual (read + write, 512 MiB residual)")
    print(f"{'d_model':>8} {'dtype':>9} {'steps':>5} {'copy TB/s':>10} {'fused TB/s':>11} {'fused/copy':>11}")
    worst = 1.0
    for d in (576, 896, 2048, 4096, 8192):
        for dtype in (torch.bfloat16, torch.float32):
            rows = (512 << 20) // (d * dtype.itemsize)
            h = torch.randn(rows, d, device="cuda", dtype=dtype)
            out = torch.empty_like(h)
            moved = 2 * h.numel() * h.element_size()
            copy = gpu_time({"copy": lambda h=h, out=out: out.copy_(h)})["copy"]
            for n in (1, 3, 6):
                s = steps(n, (rows,), d, "cuda", dtype)
                t = gpu_time(
                    {"f": lambda h=h, s=s: fused.triton_steer(h, s["dirs"], s["coefs"], s["codes"])}
                )["f"]
                ratio = copy / t
                worst = min(worst, ratio)
                name = str(dtype).removeprefix("torch.")
                print(
                    f"{d:>8} {name:>9} {n:>5} {moved / copy / 1e6:>10.2f} {moved / t / 1e6:>11.2f} {ratio:>10.1%}"
                )
            del h, out
    print(f"worst fused/copy: {worst:.1%} (goal >= 90%)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="the GPU sections only")
    p.add_argument("--repeats", type=int, default=40)
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
    op_table(fused, "cuda", args.repeats)
    bandwidth(fused)
    from fused_decode import decode_bench  # beside this file

    decode_bench(fused)


if __name__ == "__main__":
    main()
