"""Personality steering on the real model: held-out layer profile, purification identities, save/load
reproduces steered questionnaire logits, alpha 0 is the unsteered model, teacher-forced capability = greedy."""

import numpy as np
import pytest
import torch

from steerlens.errors import SteerlensError
from steerlens.generation import continuation_logprobs, generate
from steerlens.probes.personality_data import contrast_pairs
from steerlens.probes.questionnaire import items
from steerlens.steering import SteeringVector
from steerlens.steering.build import vector_from_activations
from steerlens.steering.personality import (
    dose_response,
    gram_schmidt,
    purify,
    questionnaire_scores,
    reaction_preference,
    trait_activations,
    trait_vectors,
)


def _random_vector(seed: int, shift: torch.Tensor | None = None) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    pos = {l: torch.randn(6, 16, generator=g) + (shift if shift is not None else 1.0) for l in (0, 1)}
    neg = {l: torch.randn(6, 16, generator=g) for l in (0, 1)}
    return vector_from_activations(pos, neg, model_id="m", d_model=16)


def test_purify_sets_the_mutual_projection():
    u = _random_vector(0)
    v = _random_vector(1, shift=u.directions[0] * 3 + 0.2)  # shares a large component with u
    assert abs(v.cosine(u)[0]) > 0.3
    for target in (0.0, 0.15, -0.3):
        p = purify(v, u, target=target)
        assert all(abs(c - target) < 1e-6 for c in p.cosine(u).values())
        assert p.raw_norms[0] == pytest.approx(v.raw_norms[0], rel=1e-6)  # the norm is kept
    half = purify(v, u, method="mix", mix=0.5)
    assert 0 < abs(half.cosine(u)[0]) < abs(v.cosine(u)[0])  # partial removal
    assert abs(purify(v, u, method="mix", mix=1.0).cosine(u)[0]) < 1e-6
    ortho = gram_schmidt({"a": u, "b": v, "c": _random_vector(2)}, ["a", "b", "c"])
    for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
        assert all(abs(c) < 1e-6 for c in ortho[x].cosine(ortho[y]).values())
    with pytest.raises(SteerlensError, match="between -1 and 1"):
        purify(v, u, target=1.0)


@pytest.fixture(scope="module")
def acts(smol):
    pairs = [p for t in ("extraversion", "conscientiousness") for p in contrast_pairs(t)[::4]]
    return trait_activations(smol, ("extraversion", "conscientiousness"), pairs)


def test_trait_vectors_layer_profile_held_out(smol, acts):
    tv = trait_vectors(smol, acts)
    n = smol.cfg.n_layers
    assert all(len(p) == n for p in tv.profile.values())
    assert n // 4 <= tv.layer < -(-3 * n // 4)  # chosen inside the middle band
    # reactions with unseen wording still separate along the training direction
    assert all(tv.profile[t][tv.layer] >= 0.8 for t in acts)
    assert len(tv.figure().data) >= 2


def test_saved_vector_reproduces_steered_scores(smol, acts, tmp_path):
    tv = trait_vectors(smol, acts)
    vec = tv.at_layer("extraversion")
    back = SteeringVector.load(vec.save(tmp_path / "extraversion.safetensors"), model=smol)
    qitems = items(["extraversion"])[:4]
    a = questionnaire_scores(smol, vec, (-0.3, 0.3), qitems)
    b = questionnaire_scores(smol, back, (-0.3, 0.3), qitems)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_alpha_zero_is_unsteered_and_dose_response_shapes(smol, acts):
    tv = trait_vectors(smol, acts)
    qitems = items(["extraversion", "conscientiousness"])
    plain, _ = questionnaire_scores(smol, None, (0.0,), qitems)
    dr = dose_response(
        smol,
        {"extraversion": tv.at_layer("extraversion"), "random": tv.at_layer("extraversion").random_like(1)},
        alphas=(-0.4, 0.0, 0.4),
        traits=("extraversion", "conscientiousness"),
    )
    assert dr.scores.shape == (2, 3, 16)
    assert np.abs(dr.scores[:, 1] - plain[0]).max() < 1e-4  # per-row alpha 0 rows are the unsteered model
    assert set(dr.leakage(n_boot=50)["random"]) == {"extraversion", "conscientiousness"}
    fig = dr.figure()  # bands: the steered trait in its panel, every trait in the control's panel
    assert sorted(t.xaxis for t in fig.data if t.fill) == ["x", "x2", "x2"]


def test_held_out_reactions_follow_the_trait_vector(smol, acts):
    tv = trait_vectors(smol, acts)
    vecs = {t: tv.at_layer(t) for t in acts}
    rp = reaction_preference(
        smol, acts, vecs, (-0.5, 0.0, 0.5), control=vecs["extraversion"].random_like(1), max_pairs=8
    )
    for t in acts:  # monotone dose-response on wording the vector never saw
        lo, mid, hi = rp.curve(t, n_boot=200)
        assert lo.value < mid.value < hi.value and rp.slope(t, 200).lo > 0
    assert rp.slope("extraversion", 200).value > rp.slope("random", 200).value
    assert rp.values["extraversion"].shape == (3, 8)


def test_teacher_forced_greedy_flag_matches_generation(smol):
    prompts = [
        "Q: 3 + 4 = 7\nQ: 12 + 30 = 42\nQ: " + q for q in ("5 + 6 =", "20 + 22 =", "41 + 9 =", "7 + 8 =")
    ]
    answers = [" 11", " 42", " 50", " 15"]
    lp, greedy = continuation_logprobs(smol, prompts, answers)
    outs = generate(smol, prompts, max_new_tokens=3)
    for g, o, a, p in zip(greedy.tolist(), outs, answers, lp.tolist(), strict=True):
        assert g == o.startswith(a)
        assert p < 0
