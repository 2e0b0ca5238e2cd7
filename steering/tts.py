"""Test-time scaling loops, each usable with or without steering.

- ``wait_stacking``: sequential budget forcing. At the end-of-thinking marker ("Answer:") the answer of the
  round is read, the marker is stripped, a continuation cue ("Wait, ...") is appended, and the model thinks
  on, for k rounds; a round that exhausts its token budget is closed by force.
- ``iterative_deepening``: self-correction cues inserted at growing budget intervals (b, 2b, 4b, ...).
- ``parallel``: N samples per problem from one shared prefill; self-consistency (majority vote), best-of-N
  and weighted voting with any verifier.

Steering: ``interventions`` (``Intervention`` objects, e.g. a critique vector on generated tokens) apply to
every round / sample; ``per_round`` gives each sequential round its own list.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.generation import generate, generate_detailed
from steerlens.model import Model
from steerlens.probes.linear import Logistic
from steerlens.probes.traces import few_shot, reasoning_prompt, shot_problems
from steerlens.sites import first_tensor
from steerlens.stats import Estimate, bootstrap
from steerlens.tasks import Problem, extract_answer, grade, normalize_answer

from .apply import Intervention, steer
from .positions import Trigger, Window
from .sampling import sample

MARKER = "Answer:"
WAIT = "\nWait, let me check each step again.\n"
DEEPEN = "\nLet me double-check the steps so far.\n"


@dataclass(frozen=True)
class Round:
    """One round of a sequential loop: the text it added, the answer read at its end, the tokens it used."""

    text: str
    answer: str | None
    correct: bool
    tokens: int
    forced: bool  # the budget ran out and the answer was forced


@dataclass(frozen=True)
class SequentialResult:
    """Per problem, its rounds; accuracy per round and the round-to-round transition metrics."""

    problem_ids: tuple[str, ...]
    rounds: tuple[tuple[Round, ...], ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def correct(self) -> np.ndarray:
        """[problems, rounds] 0/1 matrix."""
        return np.array([[r.correct for r in rs] for rs in self.rounds], dtype=np.int64)

    def tokens(self) -> np.ndarray:
        """[problems, rounds] cumulative generated tokens."""
        return np.cumsum(np.array([[r.tokens for r in rs] for rs in self.rounds]), axis=1)

    def accuracy(self, n_boot: int = 1000, seed: int = 0) -> list[Estimate]:
        c = self.correct()
        return [bootstrap(_column_mean(c, k), len(c), n_boot=n_boot, seed=seed) for k in range(c.shape[1])]

    def transitions(self, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Estimate]]:
        """For rounds 1.., the confidence level P(right after | right before) and the critique score
        P(right after | wrong before) (Confidence v.s. Critique), with bootstrap CIs over problems."""
        c = self.correct()
        out = []
        for k in range(1, c.shape[1]):
            before, after = c[:, k - 1], c[:, k]
            out.append(
                {
                    "confidence_level": bootstrap(
                        _conditional(before, after, 1), len(c), n_boot=n_boot, seed=seed
                    ),
                    "critique_score": bootstrap(
                        _conditional(before, after, 0), len(c), n_boot=n_boot, seed=seed
                    ),
                }
            )
        return out


def _column_mean(c: np.ndarray, k: int) -> Callable[[np.ndarray], float]:
    return lambda i: float(c[i, k].mean())


def _conditional(before: np.ndarray, after: np.ndarray, given: int) -> Callable[[np.ndarray], float]:
    def stat(i: np.ndarray) -> float:
        m = before[i] == given
        return float(after[i][m].mean()) if m.any() else float("nan")

    return stat


def _prompts(model: Model, problems: Sequence[Problem], shots: int) -> list[str]:
    shot_pairs = few_shot(shot_problems(shots))
    return [reasoning_prompt(model, p.question, shot_pairs) for p in problems]


OPEN = 2**40  # "no end" for a per-row window bound


def _steered(model: Model, ivs: Sequence[Intervention]) -> Callable[[list[int]], Any]:
    """A ``generate`` context: the interventions (per-row alphas are not supported across problems here)."""

    def ctx(rows: list[int]) -> Any:
        stack = ExitStack()
        if ivs:
            stack.enter_context(steer(model, *ivs))
        return stack

    return ctx


def _clip(iv: Intervention, prompt: list[int], lo: list[int], hi: list[int]) -> Intervention:
    """``iv`` restricted to tokens ``lo[r] <= i < hi[r]`` of each row, with "prompt" / "generated" measured
    from each row's original prompt length ``prompt[r]`` (a replayed round is input, not prompt)."""
    p = iv.positions
    if iv.per_row:
        raise SteerlensError("sequential loops steer one alpha per intervention (rows are problems)")
    if isinstance(p, Trigger):
        if any(lo) or any(h < OPEN for h in hi):
            raise SteerlensError("Trigger positions cannot be combined with per_round steering; use a Window")
        return iv
    if p == "prompt":
        hi = [min(h, n) for h, n in zip(hi, prompt, strict=True)]
    elif p == "generated":
        lo = [max(a, n) for a, n in zip(lo, prompt, strict=True)]
    elif isinstance(p, Window):
        lo = [max(a, p.start if isinstance(p.start, int) else p.start[0]) for a in lo]
        if p.end is not None:
            hi = [min(h, p.end if isinstance(p.end, int) else p.end[0]) for h in hi]
    end = None if all(h >= OPEN for h in hi) else tuple(hi)
    return dataclasses.replace(iv, positions=Window(tuple(lo), end))


class _Replay:
    """Steering for a sequential loop that re-runs its earlier rounds as input: every token is steered as it
    was when generated (round j's interventions on round j's tokens), whatever the current round's prefill."""

    def __init__(self, model: Model, prompts: list[str]):
        self.model = model
        self.prompt_lens = [len(t) for t in model.tokenize(prompts)]
        self.segments: list[tuple[list[Intervention], list[int]]] = []  # (interventions, first token per row)

    def start_round(self, ivs: Sequence[Intervention], texts_before: list[str] | None) -> None:
        """Round k's tokens start after ``texts_before`` (None: at the prompt's first token)."""
        starts = (
            [0] * len(self.prompt_lens)
            if texts_before is None
            else [len(t) for t in self.model.tokenize(texts_before)]
        )
        self.segments.append((list(ivs), starts))

    def context(self, rows: list[int]) -> Any:
        stack = ExitStack()
        prompt = [self.prompt_lens[r] for r in rows]
        ivs = []
        for j, (seg_ivs, starts) in enumerate(self.segments):
            lo = [starts[r] for r in rows]
            nxt = self.segments[j + 1][1] if j + 1 < len(self.segments) else None
            hi = [OPEN] * len(rows) if nxt is None else [nxt[r] for r in rows]
            ivs += [_clip(iv, prompt, lo, hi) for iv in seg_ivs]
        if ivs:
            stack.enter_context(steer(self.model, *ivs))
        return stack


def _read_answers(model: Model, texts: list[str], replay: _Replay, batch_size: int) -> list[str | None]:
    """Force the end-of-thinking marker after each text and read the answer the model gives, steered as the
    round that wrote the text (the marker and the answer are that round's tokens)."""
    outs = generate(
        model,
        [t + MARKER for t in texts],
        max_new_tokens=8,
        batch_size=batch_size,
        stop=["\n"],
        context=replay.context,
    )
    return [extract_answer(MARKER + o) for o in outs]


def _sequential(
    model: Model,
    problems: Sequence[Problem],
    cues: Sequence[str],
    budgets: Sequence[int],
    *,
    stop_at_marker: bool,
    shots: int,
    interventions: Sequence[Intervention],
    per_round: Sequence[Sequence[Intervention]] | None,
    batch_size: int,
    min_tokens: int,
) -> SequentialResult:
    problems = list(problems)
    if not problems:
        raise EmptyInput("no problems")
    if per_round is not None and len(per_round) != len(budgets):
        raise SteerlensError(f"per_round has {len(per_round)} entries for {len(budgets)} rounds")
    prompts = _prompts(model, problems, shots)
    replay = _Replay(model, prompts)
    thinking = [""] * len(problems)
    rounds: list[list[Round]] = [[] for _ in problems]
    for k, budget in enumerate(budgets):
        ivs = list(per_round[k]) if per_round is not None else list(interventions)
        before = [p + t for p, t in zip(prompts, thinking, strict=True)]
        if k == 0 or per_round is not None:  # one set of interventions throughout: one open segment
            replay.start_round(ivs, None if k == 0 else before)
        starts = [b + (cues[k - 1] if k > 0 else "") for b in before]
        stop = [MARKER, "Question:", "\n\n"] if stop_at_marker else ["Question:", "\n\n"]
        gens = generate_detailed(
            model,
            starts,
            max_new_tokens=budget,
            batch_size=batch_size,
            stop=stop,
            context=replay.context,
            min_tokens=min(min_tokens, budget) if k > 0 else 0,
        )
        texts = [s + g.text for s, g in zip(starts, gens, strict=True)]
        answers = _read_answers(model, texts, replay, batch_size)
        for i, (g, ans) in enumerate(zip(gens, answers, strict=True)):
            rounds[i].append(Round(g.text, ans, grade(ans, problems[i].answer), g.tokens, g.exhausted))
            thinking[i] = texts[i][len(prompts[i]) :]
    return SequentialResult(tuple(p.id for p in problems), tuple(tuple(r) for r in rounds))


def wait_stacking(
    model: Model,
    problems: Sequence[Problem],
    *,
    rounds: int = 3,
    budget: int = 48,
    cue: str = WAIT,
    shots: int = 3,
    interventions: Sequence[Intervention] = (),
    per_round: Sequence[Sequence[Intervention]] | None = None,
    batch_size: int = 16,
    min_tokens: int = 16,
) -> SequentialResult:
    """Round 0 thinks until the end-of-thinking marker; each of ``rounds`` further rounds strips it, appends
    ``cue`` and thinks on. Every round's answer is read by forcing the marker; ``budget`` tokens per round.

    Budget forcing: in rounds after the first, the end markers (EOS, "Answer:", a blank line) are ignored for
    ``min_tokens`` tokens; otherwise a small model closes the round at once and no answer can change."""
    if rounds < 0 or budget < 1:
        raise SteerlensError(f"need rounds >= 0 and budget >= 1 (got {rounds}, {budget})")
    res = _sequential(
        model,
        problems,
        [cue] * rounds,
        [budget] * (rounds + 1),
        stop_at_marker=True,
        shots=shots,
        interventions=interventions,
        per_round=per_round,
        batch_size=batch_size,
        min_tokens=min_tokens,
    )
    settings = dict(
        loop="wait_stacking",
        model=model.name,
        rounds=rounds,
        budget=budget,
        min_tokens=min_tokens,
        cue=cue,
        shots=shots,
        steered=bool(interventions or per_round),
    )
    return SequentialResult(res.problem_ids, res.rounds, settings)


def iterative_deepening(
    model: Model,
    problems: Sequence[Problem],
    *,
    first_budget: int = 16,
    growth: float = 2.0,
    steps: int = 3,
    cue: str = DEEPEN,
    shots: int = 3,
    interventions: Sequence[Intervention] = (),
    batch_size: int = 16,
    min_tokens: int = 8,
) -> SequentialResult:
    """Think for ``first_budget`` tokens, insert a self-correction cue, think for ``growth`` times as long,
    and so on for ``steps`` intervals; the answer is read at the end of every interval."""
    budgets = [max(1, round(first_budget * growth**k)) for k in range(steps)]
    res = _sequential(
        model,
        problems,
        [cue] * (steps - 1),
        budgets,
        stop_at_marker=False,
        shots=shots,
        interventions=interventions,
        per_round=None,
        batch_size=batch_size,
        min_tokens=min_tokens,
    )
    settings = dict(
        loop="iterative_deepening",
        model=model.name,
        budgets=budgets,
        min_tokens=min_tokens,
        cue=cue,
        shots=shots,
        steered=bool(interventions),
    )
    return SequentialResult(res.problem_ids, res.rounds, settings)


# ---- parallel ----------------------------------------------------------------------------------------
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

    def pick(self, i: int, n: int, how: str) -> str | None:
        return aggregate(
            list(self.answers[i][:n]), None if self.scores is None else list(self.scores[i][:n]), how
        )

    def accuracy(self, n: int, how: str = "majority", n_boot: int = 1000, seed: int = 0) -> Estimate:
        ok = np.array([grade(self.pick(i, n, how), t) for i, t in enumerate(self.truths)], dtype=float)
        return bootstrap(lambda i: float(ok[i].mean()), len(ok), n_boot=n_boot, seed=seed)

    def aggregations(self) -> list[str]:
        """The ways these samples can be aggregated: majority, plus best-of-N and weighted with scores."""
        return ["majority", "best", "weighted"] if self.scores is not None else ["majority"]

    def curve(
        self, how: str = "majority", ns: Sequence[int] | None = None, n_boot: int = 1000
    ) -> list[tuple[int, float, Estimate]]:
        """(N, mean generated tokens per problem, accuracy) for N = 1, 2, 4, ... up to the samples drawn."""
        n_max = len(self.answers[0])
        ns = list(ns) if ns is not None else [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= n_max]
        toks = np.array(self.tokens)
        return [(n, float(toks[:, :n].sum(1).mean()), self.accuracy(n, how, n_boot)) for n in ns]


def aggregate(answers: list[str | None], scores: list[float] | None, how: str) -> str | None:
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
    interventions: Sequence[Intervention] = (),
    verifier: Verifier | None = None,
) -> ParallelResult:
    """``n`` samples per problem from one shared prefill (seeds ``seed*100000 + problem*1000 + j``), with
    optional verifier scores for best-of-N and weighted voting."""
    problems = list(problems)
    if not problems:
        raise EmptyInput("no problems")
    prompts = _prompts(model, problems, shots)
    answers, scores, tokens = [], [], []
    for pi, (p, prompt) in enumerate(zip(problems, prompts, strict=True)):
        seeds = [seed * 100_000 + pi * 1_000 + j for j in range(n)]
        got = sample(
            model,
            prompt,
            seeds,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop=["\n\n", "Question:"],
            interventions=interventions,
        )
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
        steered=bool(interventions),
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


def p_true_verifier(model: Model, interventions: Sequence[Intervention] = ()) -> Verifier:
    """A verifier scoring each sampled solution by the model's own P(True) that it is correct."""
    from steerlens.probes.detection import JUDGE, p_true

    def verify(problem: Problem, solutions: list[str]) -> Sequence[float]:
        prompts = [JUDGE.format(problem=problem.question, solution=s.strip()) for s in solutions]
        return p_true(model, prompts, context=_steered(model, interventions)).tolist()

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
