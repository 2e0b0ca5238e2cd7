"""Generation speed under steering: steerlens vs unsteered vs peers, measured side by side in one run.

    python bench/steer.py [--model smollm2-135m-instruct] [--batch 8] [--new 64] [--repeats 7]

One vector on every layer, batch 8, 64 new tokens (forced: min_new_tokens = max_new_tokens), greedy.
Peers: steering-vectors 0.12.2 (`pip install --no-deps steering-vectors==0.12.2 scikit-learn`), a
TransformerLens hook (TransformerBridge.generate with hooks) and an nnsight intervention (model.generate with a
tracer.iter loop). Also: an 8-alpha sweep in one batched call vs 8 sequential calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import token_windows

import steerlens
from steerlens.steering import Intervention, steer, vector_from_prompts

POS = [
    "I love this, it is wonderful.",
    "What a fantastic day.",
    "This is great news.",
    "The food was delicious.",
]
NEG = [
    "I hate this, it is awful.",
    "What a horrible day.",
    "This is terrible news.",
    "The food was disgusting.",
]


def round_robin(paths: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per path per round, the paths interleaved in each round so machine noise hits all alike."""
    for fn in paths.values():
        fn()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            t = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--alpha", type=float, default=0.3)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = steerlens.load(args.model)
    vec = vector_from_prompts(model, POS, NEG)
    layers = vec.layers
    ids = torch.tensor(token_windows(model.tokenizer, args.batch, 16))
    gen_kw = dict(
        max_new_tokens=args.new,
        min_new_tokens=args.new,
        do_sample=False,
        attention_mask=torch.ones_like(ids),
        pad_token_id=model.tokenizer.pad_token_id,
    )
    n_new = args.batch * args.new
    added = {l: args.alpha * vec.raw_norms[l] * vec.directions[l] for l in layers}

    def hf_generate(x: torch.Tensor = ids) -> torch.Tensor:
        kw = {**gen_kw, "attention_mask": torch.ones_like(x)}
        return model.hf.generate(x, **kw)

    def ours(**opts: object) -> Callable[[], object]:
        def run() -> object:
            with steer(model, vec, alpha=args.alpha, **opts):
                return hf_generate()

        return run

    paths: dict[str, Callable[[], object]] = {
        "unsteered (HF generate)": hf_generate,
        "steerlens, static add (bias fold)": ours(),
        "steerlens, static add (fused hook)": ours(fold=False),
        "steerlens, generated tokens only": ours(positions="generated"),
    }
    try:
        from steering_vectors import SteeringVector as SVVector

        sv = SVVector({l: added[l] for l in layers}, "decoder_block")

        def peer_sv() -> object:
            with sv.apply(model.hf, multiplier=1.0):
                return hf_generate()

        paths["steering-vectors 0.12.2"] = peer_sv
    except ImportError:
        print("steering-vectors not installed: pip install --no-deps steering-vectors==0.12.2 scikit-learn")

    bridge = model.lens  # TransformerBridge for smollm2 (HookedTransformer does not support it)

    def peer_tl() -> object:
        hooks = [(f"blocks.{l}.hook_resid_post", lambda x, hook, v=added[l]: x + v) for l in layers]
        with bridge.hooks(fwd_hooks=hooks):
            return bridge.generate(
                ids, max_new_tokens=args.new, do_sample=False, stop_at_eos=False, verbose=False
            )

    paths["TransformerLens hook (bridge.generate)"] = peer_tl

    def peer_nnsight() -> object:
        with model.nn.generate(ids, **gen_kw) as tracer:
            # a bounded range (one step per forward: prefill + new - 1 decodes): code after an unbounded
            # tracer.all() loop never runs
            for _ in tracer.iter[: args.new]:
                for l in layers:
                    model.nn.model.layers[l].output[:] += added[l]
            out = tracer.result.save()
        return out

    paths["nnsight intervention (tracer.iter)"] = peer_nnsight

    times = round_robin(paths, args.repeats)

    base = times["unsteered (HF generate)"]
    print(
        f"\nmodel {model.name}, {len(layers)} steered layers, batch {args.batch}, {args.new} new tokens, "
        f"{args.repeats} interleaved rounds (median seconds; ratio = median over rounds of unsteered/path)"
    )
    print(f"{'path':44s} {'seconds':>8s} {'tokens/s':>9s} {'vs unsteered':>13s}")
    for name, ts in times.items():
        t = statistics.median(ts)
        ratio = statistics.median(b / x for b, x in zip(base, ts, strict=True))
        print(f"{name:44s} {t:8.2f} {n_new / t:9.1f} {ratio:12.3f}x")

    # An 8-point alpha sweep on one prompt: one batched call with per-row alphas vs 8 sequential calls.
    alphas = [-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8]
    one = ids[:1]

    def sweep_batched() -> object:
        with steer(model, Intervention(vec, alpha=alphas)):
            return hf_generate(one.repeat(len(alphas), 1))

    def sweep_sequential() -> object:
        outs = []
        for a in alphas:
            with steer(model, vec, alpha=a):
                outs.append(hf_generate(one))
        return outs

    sweep = round_robin({"batched": sweep_batched, "sequential": sweep_sequential}, max(1, args.repeats // 2))
    tb, ts = statistics.median(sweep["batched"]), statistics.median(sweep["sequential"])
    print(
        f"\n8-alpha sweep: one batched call {tb:.2f} s, 8 sequential calls {ts:.2f} s, ratio {ts / tb:.2f}x"
    )


if __name__ == "__main__":
    main()
