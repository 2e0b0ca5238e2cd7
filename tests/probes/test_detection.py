"""P(True) judging: the one-pass step verdicts equal separate prefix prompts; the synthetic set is labelled right."""

import numpy as np
import torch

from steerlens.generation import next_token_logprobs
from steerlens.probes.detection import (
    earliest_error,
    p_true,
    step_p_true,
    synthetic_detection_set,
    true_false_ids,
    verdict_text,
)


def test_synthetic_detection_labels_mark_the_first_wrong_step():
    items = synthetic_detection_set(60, seed=1)
    assert items == synthetic_detection_set(60, seed=1)
    n_err = sum(it.label != -1 for it in items)
    assert 15 < n_err < 45
    for it in items:
        wrong = []
        for k, step in enumerate(it.steps):
            eq = step.split("\n")[0].split(": ", 1)[1]
            lhs, rhs = eq.split(" = ")
            a, b = lhs.split(" + ")
            if int(a) + int(b) != int(rhs):
                wrong.append(k)
        assert wrong == ([] if it.label == -1 else [it.label])  # propagated: later steps are consistent


def test_step_verdicts_equal_separate_prompts(model):
    items = synthetic_detection_set(5, seed=2)
    got = step_p_true(model, items, batch_size=3)
    t, f = true_false_ids(model)
    for it, ps in zip(items, got, strict=True):
        text, ends = verdict_text(it)
        lp = next_token_logprobs(model, [text[:e] for e in ends], [t, f])
        ref = (lp[:, 0] - lp.logsumexp(-1)).exp().numpy()
        assert np.abs(ps - ref).max() <= 1e-4
    whole = p_true(model, [verdict_text(it)[0] for it in items])
    assert np.abs(whole - np.array([ps[-1] for ps in got])).max() <= 1e-4
    assert earliest_error([0.9, 0.4, 0.1]) == 1 and earliest_error([0.9, 0.8]) == -1
    assert torch.is_grad_enabled() is False
