"""Shared-prefix prefill vs prefilling every row, measured side by side in one run.

    python bench/prefix.py [--model smollm2-135m-instruct] [--n 32] [--new 64] [--shots 3] [--repeats 2]

Prompts: ``n`` held-out problems in the 3-shot chat prompt of the critique and test-time-scaling studies
(their common prefix is the instructions and worked examples). Paths, interleaved per round:

- ``generate_detailed`` greedy, ``share_prefix=True`` (the prefix's KV cache computed once, each batch
  laid out ``[prefix | pads | own tokens]``) vs ``share_prefix=False`` (every row prefills its whole prompt);
- ``next_token_logprobs`` on the same prompts (one forward each), shared vs per row.

Each pair must give the same greedy texts / log-probs (checked, and printed as the max difference).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch

import steerlens
from steerlens import prefix as prefix_mod
from steerlens.generation import generate_detailed, next_token_logprobs
from steerlens.tasks import arithmetic_problems, few_shot, reasoning_prompt, shot_problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = steerlens.load(args.model)
    shots = few_shot(shot_problems(args.shots))
    problems = arithmetic_problems(args.n, seed=7, steps=3, ops="+", max_operand=10)
    prompts = [reasoning_prompt(model, p.question, shots, "auto") for p in problems]
    ids = model.tokenize(prompts)
    shared = len(prefix_mod.common_prefix(ids))
    cand = [model.tokenize(" Yes")[0][-1], model.tokenize(" No")[0][-1]]

    def gen(share: bool) -> Callable[[], object]:
        return lambda: generate_detailed(model, prompts, max_new_tokens=args.new, share_prefix=share)

    def score(share: bool) -> Callable[[], object]:
        def run() -> object:
            if share:
                return next_token_logprobs(model, prompts, cand)
            with mock.patch.object(prefix_mod, "MIN_SHARED", 10**9):  # the per-row path
                return next_token_logprobs(model, prompts, cand)

        return run

    pairs = {"generate_detailed": (gen(True), gen(False)), "next_token_logprobs": (score(True), score(False))}
    same = {}
    for name, (a, b) in pairs.items():
        x, y = a(), b()
        if isinstance(x, torch.Tensor):
            same[name] = f"max |logprob diff| {float((x - y).abs().max()):.1e}"  # type: ignore[operator]
        else:
            equal = sum(g.text == h.text for g, h in zip(x, y, strict=True))  # type: ignore[call-overload]
            same[name] = f"{equal}/{len(prompts)} greedy texts identical"
    times: dict[str, list[list[float]]] = {k: [[], []] for k in pairs}
    for _ in range(args.repeats):
        for name, fns in pairs.items():
            for k, fn in enumerate(fns):
                t = time.perf_counter()
                fn()
                times[name][k].append(time.perf_counter() - t)
    print(
        f"\nmodel {model.name}, {args.n} prompts of {min(map(len, ids))}-{max(map(len, ids))} tokens, "
        f"{shared} shared; {args.new} new tokens; {args.repeats} interleaved rounds (median), "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'call':22s} {'shared s':>9s} {'per-row s':>10s} {'speed-up':>9s}  outputs")
    for name, (ts, tu) in times.items():
        ratio = statistics.median(u / s for s, u in zip(ts, tu, strict=True))
        print(
            f"{name:22s} {statistics.median(ts):9.2f} {statistics.median(tu):10.2f} {ratio:8.2f}x  {same[name]}"
        )


if __name__ == "__main__":
    main()
