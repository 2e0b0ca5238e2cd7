"""External cross-check: CAA vectors built by steerlens equal steering-vectors' ``train_steering_vector`` on the
same prompts and layers, and steering with either gives the same logits (an implementation we did not write)."""

import pytest
import torch

from steerlens.steering import steer, vector_from_prompts

from .conftest import NEG, POS

sv = pytest.importorskip(
    "steering_vectors",
    reason="steering-vectors is not installed (`make bench` and .ci/run install it: "
    "pip install --no-deps steering-vectors==0.12.2)",
)

LAYERS = [2, 7, 12, 20]


def test_caa_vectors_and_steering_equal_steering_vectors(smol):
    ours = vector_from_prompts(smol, POS, NEG, layers=LAYERS, positions="last")
    theirs = sv.train_steering_vector(
        smol.hf, smol.tokenizer, list(zip(POS, NEG, strict=True)), layers=LAYERS
    )
    for l in LAYERS:
        raw = ours.directions[l] * ours.raw_norms[l]
        cos = torch.nn.functional.cosine_similarity(raw, theirs.layer_activations[l].float(), dim=0)
        assert cos >= 0.9999, (l, float(cos))
        assert abs(raw.norm() - theirs.layer_activations[l].norm()) <= 1e-4 * raw.norm()
    ids = torch.tensor(smol.tokenize("I think the weather today is"))
    plain = smol.hf(ids).logits
    with theirs.apply(smol.hf, multiplier=1.5):
        peer = smol.hf(ids).logits
    for fold in ("auto", False):
        with steer(smol, ours, alpha=1.5, fold=fold):
            got = smol.hf(ids).logits
        assert (got - peer).abs().max() <= 1e-4, fold
    assert (peer - plain).abs().max() > 0.1
