"""Sampling many problems at once (``sample_many``) vs one ``sample`` call per problem, side by side in one run.

    python bench/sampling.py [--model smollm2-135m-instruct] [--problems 24] [--samples 8] [--new 64]
                             [--shots 1] [--repeats 2]

The workload of the test-time scaling study's parallel loop (``steering.tts.parallel``): ``problems`` held-out
additions in the few-shot chat prompt, ``samples`` seeded samples each, temperature 0.8, stopping at a blank
line. ``sample`` shares one prefill per problem and drops finished rows; ``sample_many`` decodes every
problem's samples together (32 rows a batch) with the same per-row seeded draws, so both paths must return the
same samples (checked and printed). Decoding is memory-bound on a CPU: a step over 32 rows reads the weights
once, as a step over 8 does.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import steerlens
from steerlens.steering.sampling import sample, sample_many
from steerlens.tasks import arithmetic_problems, few_shot, reasoning_prompt, shot_problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = steerlens.load(args.model)
    shots = few_shot(shot_problems(args.shots))
    problems = arithmetic_problems(args.problems, seed=5000, steps=3, ops="+", max_operand=10)
    prompts = [reasoning_prompt(model, p.question, shots, "auto") for p in problems]
    seeds = [[1000 * i + j for j in range(args.samples)] for i in range(len(prompts))]
    kw = dict(max_new_tokens=args.new, temperature=0.8, stop=["\n\n", "Question:"])

    def per_problem() -> list:
        return [sample(model, p, s, **kw) for p, s in zip(prompts, seeds, strict=True)]  # type: ignore[arg-type]

    def together() -> list:
        return sample_many(model, prompts, seeds, **kw)  # type: ignore[arg-type]

    a, b = together(), per_problem()
    pairs = [(x, y) for sa, sb in zip(a, b, strict=True) for x, y in zip(sa.samples, sb.samples, strict=True)]
    same = sum(x.tokens == y.tokens and x.text == y.text for x, y in pairs)
    tokens = sum(len(x.tokens) for x, _ in pairs)
    times: list[list[float]] = [[], []]
    for _ in range(args.repeats):
        for k, fn in enumerate((together, per_problem)):
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    ratio = statistics.median(u / s for s, u in zip(*times, strict=True))
    print(
        f"\nmodel {model.name}: {args.problems} problems x {args.samples} samples, up to {args.new} tokens "
        f"({tokens} generated), {args.shots}-shot prompts; {args.repeats} interleaved rounds (median), "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'sample_many s':>14s} {'per-problem sample s':>21s} {'speed-up':>9s}  outputs")
    print(
        f"{statistics.median(times[0]):14.2f} {statistics.median(times[1]):21.2f} {ratio:8.2f}x  "
        f"{same}/{len(pairs)} samples identical"
    )


if __name__ == "__main__":
    main()
