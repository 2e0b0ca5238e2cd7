"""Likert questionnaire read from logits: each item's answer distribution over "1".."5", keyed per trait.

A trait score is the mean keyed expected answer mapped to [0, 1] (0 = lowest possible, 1 = highest):
reverse-keyed items count ``6 - E[answer]``. ``mass`` (probability on the five digits before renormalising)
says whether the model was answering the question at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.errors import SteerlensError
from steerlens.generation import BatchSteering, next_token_logprobs
from steerlens.model import Model

from .personality_data import ITEMS, TRAITS

SCALE = (
    "1 = very inaccurate, 2 = moderately inaccurate, 3 = neither, 4 = moderately accurate, 5 = very accurate"
)
PREFILL = "Rating: "  # the answer's first words, so the next token is the digit (small chat models else chat)
QUESTION = (
    'Statement: "{item}"\nHow accurately does this statement describe you? Reply with one digit ({scale}).'
)


@dataclass(frozen=True)
class Item:
    trait: str
    text: str
    reverse: bool


def items(traits: Sequence[str] = TRAITS) -> list[Item]:
    """The built-in items of ``traits`` in a fixed order."""
    return [Item(t, text, rev) for t in traits for text, rev in ITEMS[t]]


def item_prompt(model: Model, item: Item, persona: str | None = None) -> str:
    """The question as the model sees it: a chat turn when it has a template (``persona`` as the system
    message), else plain text (``persona`` as a first line); either way the answer is begun with
    ``PREFILL`` so the next token is the rating."""
    q = QUESTION.format(item=item.text, scale=SCALE)
    if getattr(model.tokenizer, "chat_template", None):
        msgs = ([{"role": "system", "content": f"You are {persona}."}] if persona else []) + [
            {"role": "user", "content": q}
        ]
        return model.chat_prompt(msgs) + PREFILL
    head = f"The following answers are from a person who is {persona}.\n\n" if persona else ""
    return f"{head}{q}\n{PREFILL}"


def option_ids(tokenizer: Any) -> list[list[int]]:
    """Per option 1..5, the single-token spellings ("3" and " 3") the model may use to answer."""
    out = []
    for k in range(1, 6):
        ids = {
            enc[0]
            for s in (str(k), f" {k}")
            if len(enc := tokenizer(s, add_special_tokens=False)["input_ids"]) == 1
        }
        if not ids:
            raise SteerlensError(
                f"the tokenizer has no single token for the digit {k}; Likert scoring needs one"
            )
        out.append(sorted(ids))
    return out


@dataclass(frozen=True)
class Answers:
    """Per item: the renormalised distribution over 1..5 and the probability mass on the digits."""

    probs: Float[Tensor, "items 5"]
    mass: Float[Tensor, " items"]


def answer_distribution(logprobs: Float[Tensor, "items options"], groups: list[list[int]]) -> Answers:
    """Collapse next-token log-probs over candidate columns into 5 options (``groups[k]`` = the columns of
    option k+1), then renormalise."""
    per = torch.stack([torch.logsumexp(logprobs[:, g], -1) for g in groups], -1)
    mass = per.exp().sum(-1)
    return Answers(torch.softmax(per, -1), mass)


def keyed_scores(probs: Float[Tensor, "items 5"], reverse: Sequence[bool]) -> Float[Tensor, " items"]:
    """Each item's keyed expected answer in [0, 1]: (E - 1) / 4, or (5 - E) / 4 when reverse-keyed."""
    if probs.shape[0] != len(reverse):
        raise SteerlensError(f"{probs.shape[0]} answer rows but {len(reverse)} keys")
    e = probs @ torch.arange(1, 6, dtype=probs.dtype)
    rev = torch.tensor(list(reverse), dtype=torch.bool)
    return torch.where(rev, (5 - e) / 4, (e - 1) / 4)


def administer(
    model: Model,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    steering: BatchSteering | None = None,
) -> Answers:
    """Answer distributions of ``prompts`` (from ``item_prompt``) read from one forward pass each."""
    groups = option_ids(model.tokenizer)
    flat = [i for g in groups for i in g]
    cols, k = [], 0
    for g in groups:
        cols.append(list(range(k, k + len(g))))
        k += len(g)
    lp = next_token_logprobs(model, prompts, flat, batch_size=batch_size, steering=steering)
    return answer_distribution(lp, cols)
