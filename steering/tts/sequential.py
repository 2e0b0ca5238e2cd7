"""Sequential test-time scaling, steered or not.

- ``wait_stacking``: budget forcing. At the end-of-thinking marker ("Answer:") the answer of the round is
  read, the marker is stripped, a continuation cue ("Wait, ...") is appended, and the model thinks on, for k
  rounds; a round that exhausts its token budget is closed by force.
- ``iterative_deepening``: self-correction cues inserted at growing budget intervals (b, 2b, 4b, ...).

Steering: ``steering`` (a ``RowSteering`` or ``Intervention`` list, e.g. a critique vector on generated
tokens) applies to every round; ``per_round`` gives each round its own list. Each round re-runs the earlier
ones as input, and every token is steered as it was when generated (``_Replay``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.generation import Engine, generate, generate_detailed
from steerlens.model import Model
from steerlens.stats import N_BOOT, Estimate, bootstrap
from steerlens.tasks import Problem, extract_answer, few_shot, grade, reasoning_prompt, shot_problems

from ..intervention import Intervention
from ..positions import Trigger, Window
from ..rows import RowSteering, as_row_steering

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

    def accuracy(self, n_boot: int = N_BOOT, seed: int = 0) -> list[Estimate]:
        c = self.correct()
        return [bootstrap(_column_mean(c, k), len(c), n_boot=n_boot, seed=seed) for k in range(c.shape[1])]

    def transitions(self, n_boot: int = N_BOOT, seed: int = 0) -> list[dict[str, Estimate]]:
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

    def steering(self) -> RowSteering:
        """Every round's interventions, each limited to the tokens that round wrote, as per-row windows
        over all rows (a batch of any rows takes its own rows' bounds)."""
        rows = range(len(self.prompt_lens))
        ivs = []
        for j, (seg_ivs, starts) in enumerate(self.segments):
            nxt = self.segments[j + 1][1] if j + 1 < len(self.segments) else None
            hi = [OPEN] * len(self.prompt_lens) if nxt is None else list(nxt)
            ivs += [_clip(iv, self.prompt_lens, [starts[r] for r in rows], hi) for iv in seg_ivs]
        return RowSteering(tuple(ivs))


def _read_answers(
    model: Model, texts: list[str], replay: _Replay, batch_size: int, engine: Engine
) -> list[str | None]:
    """Force the end-of-thinking marker after each text and read the answer the model gives, steered as the
    round that wrote the text (the marker and the answer are that round's tokens)."""
    outs = generate(
        model,
        [t + MARKER for t in texts],
        max_new_tokens=8,
        batch_size=batch_size,
        stop=["\n"],
        steering=replay.steering(),
        engine=engine,
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
    steering: RowSteering,
    per_round: Sequence[Sequence[Intervention]] | None,
    batch_size: int,
    min_tokens: int,
    engine: Engine,
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
        ivs = list(per_round[k]) if per_round is not None else list(steering.interventions)
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
            steering=replay.steering(),
            min_tokens=min(min_tokens, budget) if k > 0 else 0,
            engine=engine,
        )
        texts = [s + g.text for s, g in zip(starts, gens, strict=True)]
        answers = _read_answers(model, texts, replay, batch_size, engine)
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
    steering: RowSteering | Sequence[Intervention] | None = None,
    per_round: Sequence[Sequence[Intervention]] | None = None,
    batch_size: int = 16,
    min_tokens: int = 16,
    engine: Engine = "hf",
) -> SequentialResult:
    """Round 0 thinks until the end-of-thinking marker; each of ``rounds`` further rounds strips it, appends
    ``cue`` and thinks on. Every round's answer is read by forcing the marker; ``budget`` tokens per round.

    Budget forcing: in rounds after the first, the end markers (EOS, "Answer:", a blank line) are ignored for
    ``min_tokens`` tokens; otherwise a small model closes the round at once and no answer can change.
    ``engine="vllm"`` decodes every round on vLLM, each problem replaying its own steering windows."""
    if rounds < 0 or budget < 1:
        raise SteerlensError(f"need rounds >= 0 and budget >= 1 (got {rounds}, {budget})")
    res = _sequential(
        model,
        problems,
        [cue] * rounds,
        [budget] * (rounds + 1),
        stop_at_marker=True,
        shots=shots,
        steering=as_row_steering(steering),
        per_round=per_round,
        batch_size=batch_size,
        min_tokens=min_tokens,
        engine=engine,
    )
    settings = dict(
        loop="wait_stacking",
        model=model.name,
        rounds=rounds,
        budget=budget,
        min_tokens=min_tokens,
        cue=cue,
        shots=shots,
        steered=bool(as_row_steering(steering) or per_round),
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
    steering: RowSteering | Sequence[Intervention] | None = None,
    batch_size: int = 16,
    min_tokens: int = 8,
    engine: Engine = "hf",
) -> SequentialResult:
    """Think for ``first_budget`` tokens, insert a self-correction cue, think for ``growth`` times as long,
    and so on for ``steps`` intervals; the answer is read at the end of every interval. ``engine="vllm"``
    decodes every round on vLLM (as in ``wait_stacking``)."""
    budgets = [max(1, round(first_budget * growth**k)) for k in range(steps)]
    res = _sequential(
        model,
        problems,
        [cue] * (steps - 1),
        budgets,
        stop_at_marker=False,
        shots=shots,
        steering=as_row_steering(steering),
        per_round=None,
        batch_size=batch_size,
        min_tokens=min_tokens,
        engine=engine,
    )
    settings = dict(
        loop="iterative_deepening",
        model=model.name,
        budgets=budgets,
        min_tokens=min_tokens,
        cue=cue,
        shots=shots,
        steered=bool(as_row_steering(steering)),
    )
    return SequentialResult(res.problem_ids, res.rounds, settings)
