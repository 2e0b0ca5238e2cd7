"""Error detection read from the model: P(True) that a (partial) solution is correct, per step prefix, and a
synthetic error-detection set in ProcessBench format built from the task generator."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.generation import BatchSteering, left_padded_batches, next_token_logprobs, steered_batch
from steerlens.model import Model
from steerlens.sites import decoder_body
from steerlens.tasks import arithmetic_problems

from .scoring import StepItem
from .traces import wrong_value

JUDGE = "Question: {problem}\n{solution}\nIs every step above correct? Answer True or False.\nAnswer:"
CHECK = "Question: {problem}\nCheck each step of the solution; after each step say True if it is correct, else False.\n"
VERDICT = "\nCorrect?"


def synthetic_detection_set(
    n: int,
    *,
    seed: int = 0,
    steps: int = 3,
    error_rate: float = 0.5,
    propagate: bool = True,
    max_operand: int = 10,
) -> list[StepItem]:
    """``n`` reference solutions of synthetic problems; a seeded ``error_rate`` share get one wrong result at
    a random step (label = that step; later steps carry the wrong value on when ``propagate``)."""
    if not 0 <= error_rate <= 1:
        raise SteerlensError(f"error_rate={error_rate}: expected a fraction in [0, 1]")
    items = []
    for p in arithmetic_problems(n, seed=seed, steps=steps, ops="+", max_operand=max_operand):
        rng = random.Random(f"detect:{seed}:{p.id}")
        label = rng.randrange(steps) if rng.random() < error_rate else -1
        if label >= 0:
            sol = p.solution(
                error_step=label, wrong=wrong_value(_result_at(p.solution(), label), rng), propagate=propagate
            )
        else:
            sol = p.solution()
        lines = sol.split("\n")
        step_lines = [*lines[:-2], lines[-2] + "\n" + lines[-1]]  # the answer line belongs to the last step
        items.append(StepItem(p.id, p.question, tuple(step_lines), label))
    return items


def _result_at(solution: str, k: int) -> int:
    return int(solution.split("\n")[k].rsplit("=", 1)[1])


def judge_prompts(model: Model, item: StepItem, template: str = JUDGE) -> list[str]:
    """One prompt per step prefix of ``item`` (steps 1..k shown, asking whether all are correct)."""
    return [
        template.format(problem=item.problem, solution="\n".join(item.steps[: k + 1]))
        for k in range(len(item.steps))
    ]


def true_false_ids(model: Model) -> tuple[int, int]:
    """Token ids of " True" and " False" (each must be a single token in this tokenizer)."""
    ids = []
    for word in (" True", " False"):
        toks = model.tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise SteerlensError(
                f"{word!r} is {len(toks)} tokens for {model.name}; pass a template with one-token answers"
            )
        ids.append(toks[0])
    return ids[0], ids[1]


def p_true(
    model: Model,
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    steering: BatchSteering | None = None,
) -> np.ndarray:
    """P(" True") renormalised over {" True", " False"} as the next token after each prompt (Kadavath et al.)."""
    if not prompts:
        raise EmptyInput("p_true() got no prompts")
    lp = next_token_logprobs(model, prompts, true_false_ids(model), batch_size=batch_size, steering=steering)
    return (lp[:, 0] - lp.logsumexp(-1)).exp().numpy()


def verdict_text(item: StepItem) -> tuple[str, list[int]]:
    """One text judging every step: after each step the model is asked "Correct?"; earlier verdicts are
    filled in as " True" (teacher forcing), so the verdict at step k is P(step k right | steps before it
    accepted), which is what the earliest-error decision needs. Returns the text and, per step, the
    character offset where the model's verdict would start."""
    text = CHECK.format(problem=item.problem)
    ends = []
    for k, step in enumerate(item.steps):
        text += step + VERDICT
        ends.append(len(text))
        if k < len(item.steps) - 1:
            text += " True\n"
    return text, ends


def step_p_true(
    model: Model,
    items: Sequence[StepItem],
    *,
    batch_size: int = 16,
    steering: BatchSteering | None = None,
) -> list[np.ndarray]:
    """Per item, P(" True" | verdict prompt) at every step, from one forward pass per item (``verdict_text``).

    Only the two answer logits are computed from the final hidden states, so a batch costs one body
    forward. ``steering`` (a ``steering.RowSteering``) steers each batch with its rows' own values."""
    if not items:
        raise EmptyInput("step_p_true() got no items")
    t_id, f_id = true_false_ids(model)
    tok = model.tokenizer
    encoded = []
    for it in items:
        text, ends = verdict_text(it)
        enc = tok(text, add_special_tokens=True, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        where = [max(i for i, (a, b) in enumerate(offsets) if b <= e and b > a) for e in ends]
        encoded.append((list(enc["input_ids"]), where))
    head: Any = model.hf.get_output_embeddings()  # type: ignore[operator]
    w = head.weight[[t_id, f_id]]  # [2, d_model]
    cap = getattr(model.hf.config, "final_logit_softcapping", None)
    out: list[np.ndarray] = [np.empty(0)] * len(items)
    base = decoder_body(model.hf)
    for b in left_padded_batches(model, [e[0] for e in encoded], batch_size):
        rows, width = b.rows, b.width
        with steered_batch(steering, model, rows), torch.no_grad():
            h = base(input_ids=b.ids, attention_mask=b.mask, position_ids=b.position_ids).last_hidden_state
        for j, i in enumerate(rows):
            pos = [width - len(encoded[i][0]) + p for p in encoded[i][1]]
            logits = h[j, pos].float() @ w.detach().float().T  # [steps, 2]
            if cap:
                logits = cap * torch.tanh(logits / cap)
            out[i] = torch.sigmoid(logits[:, 0] - logits[:, 1]).cpu().numpy()
    return out


def earliest_error(p_by_step: Sequence[float] | np.ndarray, threshold: float = 0.5) -> int:
    """The first step whose prefix the model judges wrong (P(True) < threshold), or -1."""
    for k, p in enumerate(p_by_step):
        if p < threshold:
            return k
    return -1
