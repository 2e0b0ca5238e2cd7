"""Parallel test-time scaling cost: N samples sharing one prefill vs N separate generate calls, in one run.

    python bench/tts.py [--model smollm2-135m-instruct] [--n 16] [--new 48] [--repeats 3]

Prompt: the 3-shot arithmetic reasoning prompt the critique and TTS loops use. Paths, interleaved per round:
steerlens `sample` (one prefill, KV cache expanded to N rows, per-row generators, finished rows dropped),
HF `generate(num_return_sequences=N)` (one batched call that prefills the prompt N times), and N separate
HF `generate` calls (what a plain loop does). All sample at temperature 0.8 with the same budget.
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
import steerlens
from steerlens.steering.sampling import sample
from steerlens.tasks import arithmetic_problems, few_shot, reasoning_prompt, shot_problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = steerlens.load(args.model)
    shots = few_shot(shot_problems(3))
    question = arithmetic_problems(1, seed=42, steps=3, ops="+", max_operand=10)[0].question
    prompt = reasoning_prompt(model, question, shots)
    ids = torch.tensor([model.tokenize(prompt)[0]])
    kw = dict(
        max_new_tokens=args.new,
        min_new_tokens=args.new,
        do_sample=True,
        temperature=0.8,
        top_k=0,
        pad_token_id=model.tokenizer.pad_token_id,
    )

    def ours() -> object:
        # no stop strings and no EOS cut, so every path decodes exactly args.new tokens per sample
        return sample(
            model,
            ids[0].tolist(),
            list(range(args.n)),
            max_new_tokens=args.new,
            temperature=0.8,
            ignore_eos=True,
        )

    def hf_batched() -> object:
        return model.hf.generate(ids, num_return_sequences=args.n, attention_mask=torch.ones_like(ids), **kw)

    def hf_separate() -> object:
        return [model.hf.generate(ids, attention_mask=torch.ones_like(ids), **kw) for _ in range(args.n)]

    paths: dict[str, Callable[[], object]] = {
        "steerlens sample (shared prefill)": ours,
        f"HF generate(num_return_sequences={args.n})": hf_batched,
        f"{args.n} separate HF generate calls": hf_separate,
    }
    for fn in paths.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    ref = times[f"{args.n} separate HF generate calls"]
    print(
        f"\nmodel {model.name}, prompt {ids.shape[1]} tokens, N={args.n} samples x {args.new} new tokens, "
        f"{args.repeats} interleaved rounds (median)"
    )
    print(f"{'path':44s} {'seconds':>8s} {'speed-up vs separate calls':>28s}")
    for name, ts in times.items():
        ratio = statistics.median(r / t for r, t in zip(ref, ts, strict=True))
        print(f"{name:44s} {statistics.median(ts):8.2f} {ratio:27.2f}x")


if __name__ == "__main__":
    main()
