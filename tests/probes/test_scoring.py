"""ProcessBench and BIG-Bench-Mistake scorers on hand-built items."""

import json

import pytest

from steerlens.errors import SteerlensError
from steerlens.probes.scoring import (
    StepItem,
    bigbench_mistake_score,
    load_bigbench_mistake,
    load_processbench,
    processbench_score,
)


def test_processbench_score_by_hand():
    labels = [2, 0, -1, -1, 1]
    preds = [2, 1, -1, 0, 1]  # erroneous: 2/3 right; correct: 1/2 right
    s = processbench_score(preds, labels)
    assert s["error_accuracy"] == pytest.approx(2 / 3)
    assert s["correct_accuracy"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert processbench_score([-1, -1], [0, 1])["f1"] == 0.0  # never flags: F1 collapses to 0


def test_bigbench_mistake_score_by_hand():
    labels = [None, 3, 0, None]
    preds = [None, 3, 2, 1]
    s = bigbench_mistake_score(preds, labels)
    assert s["location_accuracy"] == 0.5
    assert s["no_mistake_accuracy"] == 0.5
    assert s["binary_accuracy"] == 0.75
    assert s["exact_accuracy"] == 0.5
    assert s["mistake_f1"] == 0.8  # flags 3 traces, 2 of the 2 with a mistake: precision 2/3, recall 1


def test_loaders_and_validation(tmp_path):
    pb = tmp_path / "pb.json"
    pb.write_text(json.dumps([{"id": "a", "problem": "p", "steps": ["s1", "s2"], "label": 1}]))
    assert load_processbench(pb) == [StepItem("a", "p", ("s1", "s2"), 1)]
    bbm = tmp_path / "bbm.jsonl"
    bbm.write_text(json.dumps({"input": "q", "steps": ["x", "y", "z"], "mistake_index": None}) + "\n")
    assert load_bigbench_mistake(bbm)[0].label == -1
    with pytest.raises(SteerlensError, match="label 5"):
        StepItem("b", "p", ("s",), 5)
    with pytest.raises(SteerlensError, match="predictions"):
        processbench_score([1], [1, 2])
