"""Clean accuracy of greedy chain of thought vs problem difficulty, with the critique study's prompt.

Why: the critique and test-time-scaling studies need a model that is right often but not always (the issue
asks for 50-85% clean accuracy); this picks their default ``steps`` x ``max_operand``.

    python bench/difficulty.py qwen2.5-coder-0.5b-instruct 24 3x50,4x50,4x100,5x100
"""

from __future__ import annotations

import json
import sys
import time

import torch

import steerlens
from steerlens.generation import generate_detailed
from steerlens.probes.traces import STOP
from steerlens.stats import mean_ci
from steerlens.tasks import arithmetic_problems, few_shot, grade, reasoning_prompt, shot_problems


def main(name: str, n: int, grid: list[tuple[int, int]]) -> dict[str, dict[str, float]]:
    torch.set_grad_enabled(False)
    model = steerlens.load(name)
    shots = few_shot(shot_problems(3))  # the critique study's default: 3 worked examples, chat template
    out = {}
    for steps, max_operand in grid:
        problems = arithmetic_problems(n, seed=0, steps=steps, ops="+", max_operand=max_operand)
        prompts = [reasoning_prompt(model, p.question, shots, "auto") for p in problems]
        t0 = time.perf_counter()
        gens = generate_detailed(model, prompts, max_new_tokens=24 * steps + 24, batch_size=16, stop=STOP)
        est = mean_ci([grade(g.text, p.answer) for g, p in zip(gens, problems, strict=True)])
        cut = sum(g.exhausted for g in gens)
        out[f"{steps}x{max_operand}"] = est.to_dict()
        print(
            f"steps {steps} max_operand {max_operand}: accuracy {est} cut {cut} ({time.perf_counter() - t0:.0f} s)"
        )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    cells = [tuple(int(x) for x in c.split("x")) for c in sys.argv[3].split(",")]
    main(sys.argv[1], int(sys.argv[2]), [(s, m) for s, m in cells])
