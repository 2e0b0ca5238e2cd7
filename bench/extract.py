"""Throughput of collecting resid_post vs TransformerLens run_with_cache on the same tokens, as ratios.

    python bench/extract.py [--model gemma-3-270m] [--windows 48] [--length 128] [--batch 8]

All paths see identical unpadded batches. "ours" includes writing safetensors shards to disk; the TL paths
keep activations in RAM (a best case for them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import token_windows

import steerlens


def timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--windows", type=int, default=48)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = steerlens.load(args.model)
    lens = model.lens
    windows = token_windows(model.tokenizer, args.windows, args.length)
    n_tokens = sum(map(len, windows))
    batches = [torch.tensor(windows[i : i + args.batch]) for i in range(0, len(windows), args.batch)]
    tmp = Path(tempfile.mkdtemp(prefix="steerlens-bench-"))
    results: dict[str, float] = {}

    for label, pattern, layers in [
        ("all layers", "blocks.*.hook_resid_post", range(model.cfg.n_layers)),
        ("layers 0-5", [f"blocks.{l}.hook_resid_post" for l in range(6)], range(6)),
    ]:
        names = {f"blocks.{l}.hook_resid_post" for l in layers}

        def ours(pattern=pattern) -> None:
            # a fresh path per run: a complete store would otherwise be reused without any work
            fresh = tempfile.mkdtemp(dir=tmp)
            steerlens.collect(model, windows, pattern, path=fresh, batch_size=args.batch, progress=False)

        def tl_filtered(names=names) -> None:
            for b in batches:
                _, cache = lens.run_with_cache(b, names_filter=lambda n: n in names)
                for n in names:
                    cache[n].clone()

        def tl_full() -> None:
            for b in batches:
                lens.run_with_cache(b)

        def hf_hidden() -> None:
            for b in batches:
                model.hf(b, output_hidden_states=True)

        results[f"steerlens collect ({label})"] = timed(ours)
        results[f"TL run_with_cache, names_filter ({label})"] = timed(tl_filtered)
        if label == "all layers":
            results["TL run_with_cache, no filter"] = timed(tl_full, repeats=1)
            results["HF output_hidden_states"] = timed(hf_hidden)

    print(
        f"model {model.name}, {len(windows)} windows x {args.length} tokens = {n_tokens} tokens, batch {args.batch}"
    )
    print(f"{'path':48s} {'seconds':>8s} {'tokens/s':>9s}")
    for k, v in results.items():
        print(f"{k:48s} {v:8.2f} {n_tokens / v:9.0f}")
    for label in ("all layers", "layers 0-5"):
        ours = results[f"steerlens collect ({label})"]
        tl = results[f"TL run_with_cache, names_filter ({label})"]
        print(f"ratio steerlens / TL run_with_cache(names_filter), {label}: {tl / ours:.2f}x")
    print(
        f"ratio steerlens / TL run_with_cache(no filter), all layers: "
        f"{results['TL run_with_cache, no filter'] / results['steerlens collect (all layers)']:.2f}x"
    )


if __name__ == "__main__":
    main()
