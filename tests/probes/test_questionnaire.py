"""Likert scoring on hand-built logits (keying, renormalisation), data splits and loaders."""

import json

import pytest
import torch

from steerlens.errors import SteerlensError
from steerlens.probes.personality_data import (
    ITEMS,
    SITUATIONS,
    STATEMENTS,
    TRAITS,
    contrast_pairs,
    load_contrast_jsonl,
    split_pairs,
)
from steerlens.probes.questionnaire import answer_distribution, items, keyed_scores, option_ids


def test_keyed_scores_reverse_items():
    sure5 = torch.tensor([[0.0, 0, 0, 0, 1]])
    sure1 = torch.tensor([[1.0, 0, 0, 0, 0]])
    uniform = torch.full((1, 5), 0.2)
    assert keyed_scores(sure5, [False]).item() == 1.0  # "very accurate" on a forward item: top score
    assert keyed_scores(sure5, [True]).item() == 0.0  # ... on a reverse-keyed item: bottom score
    assert keyed_scores(sure1, [True]).item() == 1.0
    assert keyed_scores(uniform, [False]).item() == pytest.approx(0.5)
    assert keyed_scores(torch.tensor([[0, 0, 0.5, 0.5, 0]]), [False]).item() == pytest.approx(0.625)  # E=3.5
    with pytest.raises(SteerlensError, match="keys"):
        keyed_scores(sure5, [True, False])


def test_answer_distribution_merges_spellings_and_reports_mass():
    # columns: "1", " 1", "2", "3", "4", "5"; the digits hold half the probability mass
    p = torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.05, 0.05]])
    d = answer_distribution(p.log(), [[0, 1], [2], [3], [4], [5]])
    assert d.mass.item() == pytest.approx(0.5)
    assert d.probs[0].tolist() == pytest.approx([0.4, 0.2, 0.2, 0.1, 0.1])


def test_items_are_balanced_and_options_single_tokens(smol, gemma):
    qs = items()
    assert len(qs) == 40 and {q.trait for q in qs} == set(TRAITS)
    for t in TRAITS:
        assert sum(rev for _, rev in ITEMS[t]) == len(ITEMS[t]) // 2  # half reverse-keyed
    for m in (smol, gemma):
        groups = option_ids(m.tokenizer)
        assert len(groups) == 5 and all(groups)
        assert len({i for g in groups for i in g}) == sum(map(len, groups))  # no token shared by two options


def test_contrast_pairs_split_by_statement(tmp_path):
    pairs = contrast_pairs("openness")
    assert len(pairs) == len(SITUATIONS) * len(STATEMENTS["openness"])
    train, test = split_pairs(pairs, 0.25, seed=3)
    assert {p.group for p in train}.isdisjoint({p.group for p in test})
    assert len(test) == 2 * len(SITUATIONS)  # 2 of 8 statement pairs held out
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"trait": "x", "situation": "s", "high": "h", "low": "l"}) + "\n")
    assert load_contrast_jsonl(f)[0].group == "0"
    f.write_text(json.dumps({"trait": "x", "situation": "s", "high": "h"}) + "\n")
    with pytest.raises(SteerlensError, match="low"):
        load_contrast_jsonl(f)
