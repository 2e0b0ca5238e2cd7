"""Verifiable reasoning tasks: a seeded generator of multi-step arithmetic word problems with ground-truth
steps, an exact answer grader, and loaders for GSM8K / MATH-500 style JSONL files users bring."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import EmptyInput, SteerlensError
from .model import Model

OPS = ("+", "-", "*")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass(frozen=True)
class Step:
    """One ground-truth step ``a op b = result``."""

    a: int
    op: str
    b: int
    result: int

    def equation(self, result: int | None = None) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result if result is None else result}"


@dataclass(frozen=True)
class Problem:
    """A question with an exact answer; synthetic problems also carry their ground-truth steps."""

    id: str
    question: str
    answer: str
    steps: tuple[Step, ...] = ()
    source: str = "synthetic"
    meta: dict[str, object] = field(default_factory=dict, compare=False)

    def solution(
        self, error_step: int | None = None, wrong: int | None = None, propagate: bool = True
    ) -> str:
        """The reference solution in the trace format ("Step i: a op b = c" lines, then "Answer: N").

        With ``error_step`` (0-based) its result is replaced by ``wrong``; ``propagate`` carries the wrong
        value into later steps (a consistent but wrong trace) instead of leaving them correct.
        """
        if not self.steps:
            raise SteerlensError(f"problem {self.id!r} has no ground-truth steps (loaded from a file)")
        lines, carry = [], None
        for i, s in enumerate(self.steps):
            a = carry if (carry is not None and propagate and i > 0) else s.a
            res = _APPLY[s.op](a, s.b)
            if error_step is not None and i == error_step:
                if wrong is None:
                    raise SteerlensError("error_step needs a wrong value")
                res = wrong
            lines.append(f"Step {i + 1}: {Step(a, s.op, s.b, res).equation()}")
            carry = res
        return "\n".join(lines) + f"\nAnswer: {carry}"


_NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi", "Lena"]
_ITEMS = ["apples", "marbles", "stickers", "coins", "books", "shells", "cards", "pencils", "stamps", "beads"]
_PHRASES = {
    "+": ["{n} buys {b} more {i}.", "{n} finds {b} more {i}.", "A friend gives {n} {b} more {i}."],
    "-": ["{n} gives away {b} {i}.", "{n} loses {b} {i}.", "{n} sells {b} {i}."],
    "*": [
        "The number of {i} {n} has becomes {b} times as large.",
        "{n}'s pile of {i} grows to {b} times its size.",
    ],
}


def arithmetic_problems(
    n: int,
    *,
    seed: int = 0,
    steps: int = 3,
    max_operand: int = 20,
    ops: Sequence[str] = OPS,
    max_multiplier: int = 4,
) -> list[Problem]:
    """``n`` word problems, each a chain of ``steps`` operations on a running count (never negative).

    Difficulty knobs: ``steps``, ``max_operand`` (start value and +/- operands), ``ops`` and
    ``max_multiplier``. The same arguments give the same problems; problem ``i`` depends only on (seed, i).
    """
    if n < 1 or steps < 1 or max_operand < 2:
        raise SteerlensError(f"need n >= 1, steps >= 1, max_operand >= 2 (got {n}, {steps}, {max_operand})")
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise SteerlensError(f"ops {list(ops)}: expected a non-empty subset of {OPS}")
    out = []
    for k in range(n):
        rng = random.Random(f"{seed}:{k}")
        name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
        x = rng.randint(2, max_operand)
        sentences = [f"{name} has {x} {item}."]
        chain = []
        for _ in range(steps):
            op = rng.choice([o for o in ops if o != "-" or x >= 2])
            b = (
                rng.randint(2, max_multiplier)
                if op == "*"
                else rng.randint(1, x if op == "-" else max_operand)
            )
            y = _APPLY[op](x, b)
            chain.append(Step(x, op, b, y))
            sentence = rng.choice(_PHRASES[op]).format(n=name, b=b, i=item)
            if sentence.startswith(name) and rng.random() < 0.5:
                sentence = "Then " + sentence
            sentences.append(sentence)
            x = y
        sentences.append(f"How many {item} does {name} have now?")
        settings = dict(
            seed=seed, steps=steps, max_operand=max_operand, ops="".join(ops), max_multiplier=max_multiplier
        )
        out.append(Problem(f"arith-{seed}-{k}", " ".join(sentences), str(x), tuple(chain), meta=settings))
    return out


# ---- grading ------------------------------------------------------------------------------------------
_NUM = r"-?\d[\d,]*(?:\.\d+)?"
_ANSWER_PATTERNS = [
    re.compile(rf"Answer:\s*\$?({_NUM})"),
    re.compile(rf"####\s*\$?({_NUM})"),
    re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}"),
    re.compile(rf"answer is\s*\$?({_NUM})", re.IGNORECASE),
]


SHOT_SEED = 10_007  # few-shot examples come from their own seed, never from the evaluated problems


def shot_problems(shots: int) -> list[Problem]:
    """The few-shot examples every reasoning prompt uses: their own seed, never the evaluated problems."""
    return arithmetic_problems(shots, seed=SHOT_SEED, steps=3, ops="+", max_operand=10) if shots else []


def few_shot(problems: Sequence[Problem]) -> list[tuple[str, str]]:
    """(question, reference solution) pairs for the prompt."""
    return [(p.question, p.solution()) for p in problems]


def reasoning_prompt(
    model: Model, question: str, shots: Sequence[tuple[str, str]], chat: bool | str = "auto"
) -> str:
    """The prompt that makes the model write "Step i: a op b = c" lines and "Answer: N".

    Base models get plain few-shot text; with ``chat`` (default: when the tokenizer has a chat template) the
    shots become earlier user/assistant turns.
    """
    use_chat = bool(getattr(model.tokenizer, "chat_template", None)) if chat == "auto" else bool(chat)
    if not use_chat:
        return "".join(f"Question: {q}\n{s}\n\n" for q, s in shots) + f"Question: {question}\n"
    messages = []
    for q, s in shots:
        messages += [{"role": "user", "content": f"Question: {q}"}, {"role": "assistant", "content": s}]
    messages.append({"role": "user", "content": f"Question: {question}"})
    return model.chat_prompt(messages)


def one_step_items(n: int = 48, seed: int = 0) -> tuple[list[str], list[str]]:
    """One-step problems ``"Q: 23 + 45 =" -> " 68"`` for a cheap, teacher-forced capability probe."""
    rng = np.random.default_rng(seed)
    prompts, answers = [], []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(2, 60, size=2))
        prompts.append(f"Q: {a} + {b} =")
        answers.append(f" {a + b}")
    return prompts, answers


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text`` ("Answer: N", "#### N", \\boxed{...}, "the answer is N"), or None.

    Only an explicit answer marker counts: a trailing number in free text is not taken as an answer. Where a
    text states several (a first answer, then a revised one after "Wait"), the last one counts.
    """
    for pat in _ANSWER_PATTERNS:
        found = list(pat.finditer(text))
        if found:
            return found[-1].group(1).strip()
    return None


def normalize_answer(ans: str) -> str:
    """Canonical form for exact comparison: no $, commas, spaces or \\text{}; integral floats as integers."""
    s = ans.strip().strip("$").replace(",", "").replace(" ", "")
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    s = s.removeprefix("\\boxed{").removesuffix("}") if s.startswith("\\boxed{") else s
    s = s.rstrip(".")
    try:
        f = float(s)
        return str(int(f)) if f.is_integer() else repr(f)
    except ValueError:
        return s


def grade(text_or_answer: str | None, truth: str) -> bool:
    """Exact grading: the answer extracted from ``text_or_answer`` equals ``truth`` after normalisation."""
    if text_or_answer is None:
        return False
    ans = extract_answer(text_or_answer)
    if ans is None:
        ans = text_or_answer if re.fullmatch(r"\s*\$?" + _NUM + r"\s*", text_or_answer) else None
    return ans is not None and normalize_answer(ans) == normalize_answer(truth)


# ---- user datasets ---------------------------------------------------------------------------------------
def load_jsonl(
    path: str | Path, *, question_key: str | None = None, answer_key: str | None = None
) -> list[Problem]:
    """Problems from a GSM8K-style (``question``, ``answer`` ending "#### N") or MATH-500-style (``problem``,
    ``answer`` or a \\boxed{} ``solution``) JSONL file; pass the keys for other layouts."""
    p = Path(path)
    if not p.is_file():
        raise SteerlensError(f"no such file {str(p)!r}: pass a JSONL file with one problem per line")
    out = []
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SteerlensError(f"{p}:{lineno} is not valid JSON ({e.msg})") from e
        qk = question_key or next((k for k in ("question", "problem", "prompt") if k in rec), None)
        ak = answer_key or next((k for k in ("answer", "solution", "target") if k in rec), None)
        if qk is None or ak is None or qk not in rec or ak not in rec:
            raise SteerlensError(
                f"{p}:{lineno} has keys {sorted(rec)}; expected question/problem and answer/solution, or pass "
                "question_key= and answer_key="
            )
        raw = str(rec[ak])
        ans = extract_answer(raw) if ("####" in raw or "\\boxed" in raw) else raw
        if ans is None:
            raise SteerlensError(f"{p}:{lineno}: no final answer found in {ak!r} ({raw[:60]!r}...)")
        out.append(
            Problem(
                str(rec.get("id", rec.get("unique_id", f"{p.stem}-{lineno}"))), rec[qk], ans, source=p.name
            )
        )
    if not out:
        raise EmptyInput(f"{p} holds no problems")
    return out
