"""Parallel test-time scaling: N samples per problem from one shared prefill, aggregated by self-consistency
(majority vote), best-of-N or weighted voting with any verifier, steered or not (``steering`` rows are the
samples, so per-row alphas give each sample its own coefficient).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.generation import Engine
from steerlens.model import Model
from steerlens.probes.linear import Logistic
from steerlens.sites import first_tensor
from steerlens.stats import N_BOOT, Estimate, bootstrap
from steerlens.tasks import Problem, extract_answer, grade, normalize_answer

from ..intervention import Intervention
from ..rows import RowSteering, as_row_steering
from ..sampling import sample_many
from .sequential import MARKER, _prompts

Aggregation = Literal["majority", "best", "weighted", "first"]

Verifier = Callable[[Problem, list[str]], Sequence[float]]


@dataclass(frozen=True)
class ParallelResult:
    """N sampled answers per problem (and optional verifier scores), scored by any aggregation and N."""

    problem_ids: tuple[str, ...]
    truths: tuple[str, ...]
    answers: tuple[tuple[str | None, ...], ...]
    scores: tuple[tuple[float, ...], ...] | None
    tokens: tuple[tuple[int, ...], ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def pick(self, i: int, n: int, how: Aggregation) -> str | None:
        return aggregate(
            list(self.answers[i][:n]), None if self.scores is None else list(self.scores[i][:n]), how
        )

    def accuracy(
        self, n: int, how: Aggregation = "majority", n_boot: int = N_BOOT, seed: int = 0
    ) -> Estimate:
        ok = np.array([grade(self.pick(i, n, how), t) for i, t in enumerate(self.truths)], dtype=float)
        return bootstrap(lambda i: float(ok[i].mean()), len(ok), n_boot=n_boot, seed=seed)

    def aggregations(self) -> list[Aggregation]:
        """The ways these samples can be aggregated: majority, plus best-of-N and weighted with scores."""
        return ["majority", "best", "weighted"] if self.scores is not None else ["majority"]

    def curve(
        self, how: Aggregation = "majority", ns: Sequence[int] | None = None, n_boot: int = N_BOOT
    ) -> list[tuple[int, float, Estimate]]:
        """(N, mean generated tokens per problem, accuracy) for N = 1, 2, 4, ... up to the samples drawn."""
        n_max = len(self.answers[0])
        ns = list(ns) if ns is not None else [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= n_max]
        toks = np.array(self.tokens)
        return [(n, float(toks[:, :n].sum(1).mean()), self.accuracy(n, how, n_boot)) for n in ns]


def aggregate(answers: list[str | None], scores: list[float] | None, how: Aggregation) -> str | None:
    """Pick one answer: "majority" (most frequent; ties to the earliest), "best" (highest verifier score),
    "weighted" (answer with the largest summed score), or "first"."""
    valid = [(k, a) for k, a in enumerate(answers) if a is not None]
    if not valid:
        return None
    norm = {k: normalize_answer(a) for k, a in valid}
    if how == "first":
        return answers[0]
    if how == "majority":
        counts = Counter(norm.values())
        top = max(counts.values())
        return next(a for k, a in valid if counts[norm[k]] == top)
    if scores is None:
        raise SteerlensError(f"how={how!r} needs verifier scores; pass verifier= to parallel()")
    if how == "best":
        k = max((k for k, _ in valid), key=lambda k: (scores[k], -k))
        return answers[k]
    if how == "weighted":
        tot: dict[str, float] = {}
        for k, _ in valid:
            tot[norm[k]] = tot.get(norm[k], 0.0) + scores[k]
        best = max(tot.values())
        return next(a for k, a in valid if tot[norm[k]] == best)
    raise SteerlensError(f"how={how!r}: expected 'majority', 'best', 'weighted' or 'first'")


def parallel(
    model: Model,
    problems: Sequence[Problem],
    *,
    n: int = 16,
    seed: int = 0,
    temperature: float = 0.8,
    max_new_tokens: int = 64,
    shots: int = 3,
    steering: RowSteering | Sequence[Intervention] | None = None,
    verifier: Verifier | None = None,
    engine: Engine = "hf",
) -> ParallelResult:
    """``n`` samples per problem (seeds ``seed*100000 + problem*1000 + j``), every problem decoded together
    (``sample_many``), with optional verifier scores for best-of-N and weighted voting. ``engine="vllm"``
    samples every problem in one continuous batch on vLLM (verifiers still score on the HF view)."""
    problems = list(problems)
    if not problems:
        raise EmptyInput("no problems")
    prompts = _prompts(model, problems, shots)
    answers, scores, tokens = [], [], []
    seeds = [[seed * 100_000 + pi * 1_000 + j for j in range(n)] for pi in range(len(problems))]
    kw: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, temperature=temperature, stop=["\n\n", "Question:"]
    )
    sets = sample_many(model, prompts, seeds, steering=steering, engine=engine, **kw)
    for p, got in zip(problems, sets, strict=True):
        answers.append(tuple(extract_answer(t) for t in got.texts))
        tokens.append(tuple(len(s.tokens) for s in got.samples))
        if verifier is not None:
            scores.append(tuple(float(v) for v in verifier(p, got.texts)))
    settings = dict(
        loop="parallel",
        model=model.name,
        n=n,
        seed=seed,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        shots=shots,
        steered=bool(as_row_steering(steering)),
        engine=engine,
        verifier=getattr(verifier, "__name__", None) if verifier else None,
    )
    return ParallelResult(
        tuple(p.id for p in problems),
        tuple(p.answer for p in problems),
        tuple(answers),
        tuple(scores) if verifier is not None else None,
        tuple(tokens),
        settings,
    )


def p_true_verifier(model: Model, steering: RowSteering | Sequence[Intervention] | None = None) -> Verifier:
    """A verifier scoring each sampled solution by the model's own P(True) that it is correct."""
    from steerlens.probes.detection import JUDGE, p_true

    def verify(problem: Problem, solutions: list[str]) -> Sequence[float]:
        prompts = [JUDGE.format(problem=problem.question, solution=s.strip()) for s in solutions]
        return p_true(model, prompts, steering=as_row_steering(steering)).tolist()

    verify.__name__ = "p_true"
    return verify


def probe_verifier(model: Model, probe: Logistic, layer: int, name: str = "probe") -> Verifier:
    """A verifier scoring each sampled solution by 1 - P(error) of a linear probe (e.g. an error probe
    fitted on reasoning traces) on resid_post at ``layer``, averaged over the final-answer tokens (the last
    token when a sample states no answer). ``name`` labels it in results' settings."""

    def verify(problem: Problem, solutions: list[str]) -> Sequence[float]:
        import torch

        scores = []
        for sol in solutions:
            head = f"Question: {problem.question}\n"
            k = sol.find(MARKER)
            text = head + sol
            enc = model.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
            offs = enc["offset_mapping"]
            if k >= 0:
                a = len(head) + k + len(MARKER)
                b = a + len(sol[k + len(MARKER) :].split("\n", 1)[0])
                pos = [i for i, (s, e) in enumerate(offs) if e > s and s < b and e > a]
            else:
                pos = []
            pos = pos or [len(enc["input_ids"]) - 1]
            grabbed: list[torch.Tensor] = []
            module = model.site(f"blocks.{layer}.hook_resid_post").hf_module(model.hf)
            handle = module.register_forward_hook(lambda m, a, o, g=grabbed: g.append(first_tensor(o)))
            try:
                with torch.no_grad():
                    model.hf(torch.tensor([enc["input_ids"]], device=model.device))
            finally:
                handle.remove()
            feat = grabbed[0][0, pos].mean(0, keepdim=True).cpu()
            scores.append(1.0 - float(probe.prob(feat)[0]))
        return scores

    verify.__name__ = name
    return verify
