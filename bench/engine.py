"""Decode throughput on the vLLM engine vs HF generate, steered and unsteered, measured side by side in one run
(named engine.py: a bench/vllm.py would shadow the vllm package, since the scripts put bench/ on sys.path).

    .venv-vllm/bin/python bench/engine.py [--model smollm2-135m-instruct] [--batches 8 32 64] [--new 64]
        [--repeats 3] [--tts-problems 24] [--tts-n 16]

Needs the vLLM venv (`make vllm`). Paths, interleaved per round at each batch size (greedy, exactly --new
tokens per row: min_tokens = max_tokens, prompts are 16-token windows, no prefix-cache hits):
  HF unsteered            steerlens.generate, engine="hf", no steering
  steerlens-on-HF steered the same with one vector on every layer (RowSteering, the studies' path)
  vLLM unsteered          engine="vllm", no steering
  vLLM steered            one vector on every layer, the same alpha for every request
  vLLM alpha sweep        one vector on every layer, a different alpha for every request (per-request specs)
Then test-time scaling (`parallel`, N samples per problem, temperature 0.8) on each engine: accuracy with
its CI and wall time. Sampling RNGs differ between the engines, so accuracies agree only within noise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import token_windows
from steer import NEG, POS, round_robin

import steerlens
from steerlens.generation import generate_detailed
from steerlens.steering import RowSteering, vector_from_prompts
from steerlens.steering.tts.parallel import parallel
from steerlens.tasks import arithmetic_problems


def throughput(model, vec, batches: list[int], new: int, repeats: int, alpha: float) -> None:
    engine = model.engine("vllm", enable_prefix_caching=False)  # every round recomputes its prompts
    for b in batches:
        ids = token_windows(model.tokenizer, b, 16)
        one = RowSteering.sweep([vec], [alpha] * b)
        sweep = RowSteering.sweep([vec], [alpha * (2 * i / max(1, b - 1) - 1) for i in range(b)])

        def run(eng: str, rs: RowSteering | None, ids=ids, b=b):
            return lambda: generate_detailed(
                model, ids, max_new_tokens=new, min_tokens=new, batch_size=b, steering=rs, engine=eng
            )

        paths = {
            "HF unsteered": run("hf", None),
            "steerlens-on-HF steered": run("hf", one),
            "vLLM unsteered": run("vllm", None),
            "vLLM steered (1 vector, all layers)": run("vllm", one),
            "vLLM per-request alpha sweep": run("vllm", sweep),
        }
        times = round_robin(paths, repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\nbatch {b}, {new} new tokens, {repeats} interleaved rounds (median seconds)")
        print(f"{'path':40s} {'seconds':>8s} {'tokens/s':>9s}")
        for name, t in med.items():
            print(f"{name:40s} {t:8.2f} {b * new / t:9.1f}")
        print(
            f"vLLM steered / vLLM unsteered: {med['vLLM unsteered'] / med['vLLM steered (1 vector, all layers)']:.3f}x"
            f"  (sweep: {med['vLLM unsteered'] / med['vLLM per-request alpha sweep']:.3f}x);  "
            f"vLLM steered / steerlens-on-HF steered: "
            f"{med['steerlens-on-HF steered'] / med['vLLM steered (1 vector, all layers)']:.2f}x"
        )
    engine.close()


def tts(model, n_problems: int, n: int, new: int) -> None:
    problems = arithmetic_problems(n_problems, seed=7, steps=3, ops="+", max_operand=10)
    print(
        f"\nparallel TTS: {n_problems} problems (3 steps, operands <= 10), N={n}, temperature 0.8, {new} tokens"
    )
    print(f"{'engine':8s} {'N=1 acc':>22s} {f'N={n} majority':>22s} {'seconds':>8s}")
    walls = {}
    for eng in ("vllm", "hf"):
        t = time.perf_counter()
        res = parallel(model, problems, n=n, max_new_tokens=new, temperature=0.8, engine=eng)
        walls[eng] = time.perf_counter() - t
        a1, an = res.accuracy(1), res.accuracy(n)
        print(
            f"{eng:8s} {a1.value:8.3f} [{a1.lo:.2f}, {a1.hi:.2f}] {an.value:8.3f} [{an.lo:.2f}, {an.hi:.2f}] "
            f"{walls[eng]:8.1f}"
        )
    print(f"wall time HF / vLLM: {walls['hf'] / walls['vllm']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batches", type=int, nargs="*", default=[8, 32, 64])
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--tts-problems", type=int, default=24)
    ap.add_argument("--tts-n", type=int, default=16)
    ap.add_argument("--tts-new", type=int, default=96)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = steerlens.load(args.model)
    vec = vector_from_prompts(model, POS, NEG)
    print(f"model {model.name}, torch threads {torch.get_num_threads()}")
    if args.batches:
        throughput(model, vec, args.batches, args.new, args.repeats, args.alpha)
    if args.tts_problems:
        tts(model, args.tts_problems, args.tts_n, args.tts_new)


if __name__ == "__main__":
    main()
