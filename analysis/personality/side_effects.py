"""Side effects of trait steering: teacher-forced arithmetic and (optional) multiple-choice accuracy while
steering, each paired with the unsteered run on the same problems."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.model import Model
from steerlens.stats import N_BOOT, Estimate, bootstrap
from steerlens.steering import RowSteering, SteeringVector
from steerlens.steering.vector import Units
from steerlens.tasks import one_step_items

from .measures import row_steering

Measure = Literal["accuracy", "logprob", "mc_accuracy"]


class MCItem(TypedDict):
    """One multiple-choice question; ``answer`` indexes ``choices``."""

    question: str
    choices: list[str]
    answer: int


@dataclass(frozen=True)
class Capability:
    """Teacher-forced arithmetic (and optional multiple-choice) results per steered condition, paired with
    the unsteered run on the same problems."""

    conditions: tuple[str, ...]
    logprob: np.ndarray  # [conditions, problems] log-prob of the right answer
    correct: np.ndarray  # [conditions, problems] greedy answer right
    baseline_logprob: np.ndarray  # [problems]
    baseline_correct: np.ndarray
    mc_correct: np.ndarray | None = None  # [conditions, mc items]
    baseline_mc: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def delta(self, condition: str, what: Measure = "accuracy", n_boot: int = N_BOOT) -> Estimate:
        """Steered minus unsteered, paired over problems: "accuracy", "logprob" or "mc_accuracy"."""
        k = self.conditions.index(condition)
        if what == "accuracy":
            d = self.correct[k].astype(float) - self.baseline_correct.astype(float)
        elif what == "logprob":
            d = self.logprob[k] - self.baseline_logprob
        elif what == "mc_accuracy" and self.mc_correct is not None and self.baseline_mc is not None:
            d = self.mc_correct[k].astype(float) - self.baseline_mc.astype(float)
        else:
            raise SteerlensError(
                f"what={what!r}: expected 'accuracy', 'logprob' or (with MC items) 'mc_accuracy'"
            )
        return bootstrap(lambda i: float(d[i].mean()), len(d), n_boot=n_boot)

    @property
    def measures(self) -> list[Measure]:
        out: list[Measure] = ["accuracy", "logprob"]
        return out + (["mc_accuracy"] if self.mc_correct is not None else [])

    def to_dict(self, n_boot: int = N_BOOT) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "baseline_accuracy": float(self.baseline_correct.mean()),
            "delta": {
                c: {h: self.delta(c, h, n_boot).to_dict() for h in self.measures} for c in self.conditions
            },
        }


def capability(
    model: Model,
    vectors: dict[str, SteeringVector],
    alpha: float,
    *,
    units: Units = "resid",
    n_problems: int = 48,
    seed: int = 0,
    mc_items: Sequence[MCItem] | None = None,
    batch_size: int = 32,
) -> Capability:
    """Arithmetic answer log-prob and greedy accuracy while steering each vector at ``alpha`` vs unsteered;
    ``mc_items`` (``load_multiple_choice``) add multiple-choice accuracy.

    Example:
        >>> cap = capability(model, {"openness": tv.at_layer("openness")}, 0.5)
        >>> cap.delta("openness", "accuracy")
    """
    from steerlens.generation import continuation_logprobs

    shots = "Q: 3 + 4 = 7\nQ: 12 + 30 = 42\n"
    prompts, answers = one_step_items(n_problems, seed)
    prompts = [shots + p for p in prompts]

    def run(vec: SteeringVector | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        rs = row_steering(vec, [alpha] * max(len(prompts), len(mc_items or [])), units)
        lp, ok = continuation_logprobs(model, prompts, answers, batch_size=batch_size, steering=rs)
        mc = multiple_choice_correct(model, mc_items, rs, batch_size) if mc_items else None
        return lp.numpy(), ok.numpy(), mc

    b_lp, b_ok, b_mc = run(None)
    got = [run(v) for v in vectors.values()]
    n_mc = len(mc_items or [])
    return Capability(
        tuple(vectors),
        np.stack([g[0] for g in got]),
        np.stack([g[1] for g in got]),
        b_lp,
        b_ok,
        np.stack([g[2] for g in got if g[2] is not None]) if mc_items else None,
        b_mc,
        dict(model=model.name, alpha=alpha, units=units, n_problems=n_problems, seed=seed, n_mc=n_mc),
    )


def load_multiple_choice(path: str | Path) -> list[MCItem]:
    """Multiple-choice JSONL: ``{"question": str, "choices": [str, ...], "answer": index or letter}``.

    Example:
        >>> mc = load_multiple_choice("mmlu_sample.jsonl")       # [{"question", "choices", "answer": 2}, ...]
    """
    out: list[MCItem] = []
    for k, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if not {"question", "choices", "answer"} <= set(row) or not 2 <= len(row["choices"]) <= 26:
            raise SteerlensError(f"{path}:{k + 1}: need question, 2-26 choices and answer (index or letter)")
        ans = row["answer"]
        idx = ord(ans.upper()) - ord("A") if isinstance(ans, str) else int(ans)
        if not 0 <= idx < len(row["choices"]):
            raise SteerlensError(
                f"{path}:{k + 1}: answer {ans!r} is not one of the {len(row['choices'])} choices"
            )
        out.append({"question": row["question"], "choices": list(row["choices"]), "answer": idx})
    if not out:
        raise EmptyInput(f"{path} holds no multiple-choice items")
    return out


def multiple_choice_correct(
    model: Model, mc: Sequence[MCItem], steering: RowSteering | None = None, batch_size: int = 32
) -> np.ndarray:
    """Whether the letter with the highest next-token probability is the right one, per item."""
    from steerlens.generation import next_token_logprobs

    letters = [chr(ord("A") + k) for k in range(max(len(m["choices"]) for m in mc))]
    ids = []
    for c in letters:
        enc = model.tokenizer(f" {c}", add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise SteerlensError(f"' {c}' is not one token for {model.name}; multiple choice needs it to be")
        ids.append(enc[0])
    prompts = [
        m["question"] + "\n" + "".join(f"{letters[k]}. {c}\n" for k, c in enumerate(m["choices"])) + "Answer:"
        for m in mc
    ]
    lp = next_token_logprobs(model, prompts, ids, batch_size=batch_size, steering=steering)
    pick = [int(lp[i, : len(m["choices"])].argmax()) for i, m in enumerate(mc)]
    return np.array([p == m["answer"] for p, m in zip(pick, mc, strict=True)])
