"""Indirect-object-identification (IOI) prompts: seeded, with every name, place and object one token.

"When Mary and John went to the store, John gave a drink to" -> " Mary". Each prompt carries a corrupted
twin with a third name in the subject slot (the "ABC" distribution), used for resample ablation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

from steerlens.errors import SteerlensError

from .decompose import LensModel, tokenizer_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

NAMES = (
    "Mary", "John", "Tom", "James", "Anna", "Sarah", "Paul", "Lisa", "David", "Emma", "Peter", "Kate",
    "Michael", "Alice", "Robert", "Laura", "Daniel", "Grace", "Henry", "Rachel", "Thomas", "Helen", "George",
    "Lucy", "Jack", "Sophie", "Ben", "Clara", "Sam", "Amy", "Mark", "Jane", "Adam", "Ruth", "Frank", "Rose",
    "Eric", "Nancy", "Kevin", "Karen", "Brian", "Emily", "Susan", "Andrew", "Linda", "Oliver", "Victor", "Max",
)  # fmt: skip
PLACES = ("store", "park", "school", "station", "market", "garden", "office", "restaurant", "beach", "house")
OBJECTS = ("drink", "book", "ring", "letter", "ball", "gift", "bag", "key", "cake", "flower", "bone", "pen")
TEMPLATES = (
    "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "After {A} and {B} arrived at the {PLACE}, {S} handed a {OBJECT} to",
    "Then, {A} and {B} had a long day at the {PLACE}. {S} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} passed a {OBJECT} to",
    "Friends {A} and {B} found a {OBJECT} at the {PLACE}. {S} gave the {OBJECT} to",
)


@dataclass(frozen=True)
class IOIBatch:
    """IOI prompts of one template (equal token lengths), their ABC twins, and answer ids.

    ``io``/``s``: token ids of the indirect object (the right answer) and of the subject (the repeated name).
    """

    template: str
    texts: tuple[str, ...]
    abc_texts: tuple[str, ...]
    tokens: Int[Tensor, "batch pos"]
    abc_tokens: Int[Tensor, "batch pos"]
    io: Int[Tensor, " batch"]
    s: Int[Tensor, " batch"]
    settings: dict[str, Any]


def single_token_words(tokenizer: PreTrainedTokenizerBase, words: tuple[str, ...]) -> list[str]:
    """The words that are exactly one token after a space (so answers are one-token logits)."""
    return [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def ioi_prompts(
    model: LensModel,
    n: int = 60,
    *,
    seed: int = 0,
    templates: tuple[str, ...] = TEMPLATES,
) -> list[IOIBatch]:
    """``n`` IOI prompts spread over ``templates`` (half ABBA, half BABA), grouped per template so each
    group's prompts have one token length. Names/places/objects that are not single tokens are dropped.
    Prompts are tokenized with the tokenizer's own special tokens (BOS for Gemma), as ``Model.tokenize``."""
    tok = tokenizer_of(model)
    names = single_token_words(tok, NAMES)
    places = single_token_words(tok, PLACES)
    objects = single_token_words(tok, OBJECTS)
    if len(names) < 3 or not places or not objects:
        raise SteerlensError(
            f"this tokenizer has {len(names)} single-token names, {len(places)} places and {len(objects)} objects; "
            "expected at least 3, 1 and 1. Pass templates whose slots your tokenizer encodes as one token"
        )
    rng = random.Random(seed)
    per = [n // len(templates) + (i < n % len(templates)) for i in range(len(templates))]
    batches = []
    for template, k in zip(templates, per, strict=True):
        if k == 0:
            continue
        rows: list[tuple[str, str, str, str]] = []
        for i in range(k):
            a, b, c = rng.sample(names, 3)
            place, obj = rng.choice(places), rng.choice(objects)
            first, second = (a, b) if i % 2 == 0 else (b, a)  # ABBA / BABA
            text = template.format(A=first, B=second, S=b, PLACE=place, OBJECT=obj)
            abc = template.format(A=first, B=second, S=c, PLACE=place, OBJECT=obj)
            rows.append((text, abc, a, b))
        texts = [r[0] for r in rows]
        abc_texts = [r[1] for r in rows]
        ids = _tokenize(tok, texts)
        abc_ids = _tokenize(tok, abc_texts)
        lengths = {len(t) for t in ids + abc_ids}
        if len(lengths) != 1:
            raise SteerlensError(
                f"template {template!r} gives prompts of token lengths {sorted(lengths)}; expected one length. "
                "Use single-token slot fillers"
            )
        batches.append(
            IOIBatch(
                template=template,
                texts=tuple(texts),
                abc_texts=tuple(abc_texts),
                tokens=torch.tensor(ids),
                abc_tokens=torch.tensor(abc_ids),
                io=torch.tensor([tok(" " + r[2], add_special_tokens=False)["input_ids"][0] for r in rows]),
                s=torch.tensor([tok(" " + r[3], add_special_tokens=False)["input_ids"][0] for r in rows]),
                settings={"n": k, "seed": seed, "template": template},
            )
        )
    return batches


def _tokenize(tok: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]
