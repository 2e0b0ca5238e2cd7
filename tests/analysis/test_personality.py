"""Personality study on the real model: held-out layer profile, save/load reproduces steered questionnaire
logits, alpha 0 is the unsteered model, teacher-forced capability = greedy, the config and CLI flags, the
report section, and a saved study loads back with the same numbers."""

import argparse
import json

import numpy as np
import pytest

from steerlens.analysis.personality import (
    RANDOM,
    PersonalityConfig,
    PersonalityStudy,
    Stability,
    capability,
    dose_response,
    load_multiple_choice,
    prompting_baseline,
    purified_vectors,
    questionnaire_scores,
    reaction_preference,
    register,
    stability,
    trait_activations,
    trait_vectors,
)
from steerlens.errors import SteerlensError
from steerlens.generation import continuation_logprobs, generate
from steerlens.probes.personality_data import contrast_pairs
from steerlens.probes.questionnaire import items
from steerlens.steering import SteeringVector

TRAITS = ("extraversion", "conscientiousness")


@pytest.fixture(scope="module")
def acts(smol):
    pairs = [p for t in TRAITS for p in contrast_pairs(t)[::4]]
    return trait_activations(smol, TRAITS, pairs)


@pytest.fixture(scope="module")
def tv(smol, acts):
    return trait_vectors(smol, acts)


def test_trait_vectors_layer_profile_held_out(smol, acts, tv):
    n = smol.cfg.n_layers
    assert all(len(p) == n for p in tv.profile.values())
    assert n // 4 <= tv.layer < -(-3 * n // 4)  # chosen inside the middle band
    # reactions with unseen wording still separate along the training direction
    assert all(tv.profile[t][tv.layer] >= 0.8 for t in acts)
    assert len(tv.figure().data) >= 2


def test_saved_vector_reproduces_steered_scores(smol, tv, tmp_path):
    vec = tv.at_layer("extraversion")
    back = SteeringVector.load(vec.save(tmp_path / "extraversion.safetensors"), model=smol)
    qitems = items(["extraversion"])[:4]
    a = questionnaire_scores(smol, vec, (-0.3, 0.3), qitems)
    b = questionnaire_scores(smol, back, (-0.3, 0.3), qitems)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_alpha_zero_is_unsteered_and_dose_response_shapes(smol, tv):
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
    fig = dr.figure(n_boot=50)  # bands: the steered trait in its panel, every trait in the control's panel
    assert sorted(t.xaxis for t in fig.data if t.fill) == ["x", "x2", "x2"]


def test_held_out_reactions_follow_the_trait_vector(smol, acts, tv):
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


def test_config_quick_round_trip_and_cli_flags(tmp_path):
    cfg = PersonalityConfig.quick()
    assert (cfg.traits, cfg.alphas, cfg.with_stability) == (TRAITS[::-1], (-0.5, 0.0, 0.5), False)
    assert PersonalityConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    flags = "--traits openness,neuroticism --alphas=-0.3,0,0.3 --method pca --no-with-stability --mc mc.jsonl"
    args = parser.parse_args(
        ["personality", *flags.split(), "--layer", "9", "--units", "vector", "--n-boot", "200"]
    )
    got = PersonalityConfig.from_args(args)
    assert got == PersonalityConfig(
        traits=("openness", "neuroticism"),
        alphas=(-0.3, 0.0, 0.3),
        method="pca",
        layer=9,
        with_stability=False,
        units="vector",
        n_boot=200,
        mc="mc.jsonl",
    )
    assert args.model == "smollm2-135m-instruct"
    with pytest.raises(SystemExit):  # an unknown trait is refused by the flag's parser
        parser.parse_args(["personality", "--traits", "humour"])
    with pytest.raises(SteerlensError, match="unknown settings"):
        PersonalityConfig.from_dict({**cfg.to_dict(), "n": 3})


@pytest.fixture(scope="module")
def study(smol, acts, tv, tmp_path_factory):
    """A small study assembled from its parts (what ``run`` does, on a quarter of the pairs)."""
    cfg = PersonalityConfig.quick(n_boot=100, with_stability=True)
    singles = {t: tv.at_layer(t) for t in cfg.traits}
    conds = {**singles, RANDOM: singles[cfg.traits[0]].random_like(1)}
    mc = tmp_path_factory.mktemp("mc") / "mc.jsonl"
    mc.write_text(
        '{"question": "2 + 2 =", "choices": ["3", "4", "5"], "answer": "B"}\n'
        '{"question": "The sky is", "choices": ["blue", "green"], "answer": 0}\n'
    )
    return PersonalityStudy(
        tv,
        dose_response(smol, conds, cfg.alphas, traits=cfg.traits),
        dose_response(smol, purified_vectors(singles), cfg.alphas, traits=cfg.traits),
        prompting_baseline(smol, cfg.traits),
        capability(smol, conds, 0.5, n_problems=8, mc_items=load_multiple_choice(mc)),
        stability(smol, acts, tv.layer, alpha=0.5, seeds=(1,), methods=("mean", "pca"), n_boot=cfg.n_boot),
        reaction_preference(smol, acts, singles, cfg.alphas, control=conds[RANDOM], max_pairs=4),
        dict(model=smol.name, traits=list(cfg.traits), alphas=list(cfg.alphas), layer=tv.layer),
        cfg,
    )


def test_section_tells_the_study(study):
    (sec,) = study.sections()
    assert (sec.id, sec.title) == ("personality", "Personality: dose-response, leakage, prompting baseline")
    assert sec.numbers["steering layer"] == study.vectors.layer
    slope = study.reactions.slope(RANDOM, study.config.n_boot).to_dict()
    assert sec.numbers["held-out reaction slope, random control"] == slope
    caption, rows = sec.tables[0]
    assert [r["trait"] for r in rows] == list(study.vectors.vectors) and "verdict" in caption
    assert set(sec.figures) == set(study.figures()) and "personality_stability" in sec.figures
    pure = study.purified.conditions
    assert pure == TRAITS[::-1]  # no openness here, so no openness⊥conscientiousness pair


def test_one_bootstrap_count_everywhere(study):
    n = study.config.n_boot
    row = study.summary()["extraversion"]
    assert row["steering_slope"] == study.dose.slope("extraversion", "extraversion", n).to_dict()
    assert row["prompting_shift"] == study.prompting.shift("extraversion", "extraversion", n).to_dict()
    fig = study.comparison_figure()  # the bars' error bars are the JSON's intervals
    bar = next(t for t in fig.data if t.name.startswith("prompting"))
    e = study.prompting.shift(bar.x[0], bar.x[0], n)
    assert bar.y[0] == pytest.approx(e.value) and bar.error_y.array[0] == pytest.approx(e.hi - e.value)


def test_save_load_round_trip(smol, study, tmp_path):
    out = study.save(tmp_path / "run", formats=())
    assert sorted(p.name for p in out.glob("trait_*.safetensors")) == [
        "trait_conscientiousness.safetensors",
        "trait_extraversion.safetensors",
    ]
    back = PersonalityStudy.load(out, model=smol)
    assert back.config == study.config and back.settings == study.settings
    assert back.to_dict() == study.to_dict()
    assert json.loads((out / "personality.json").read_text())["config"] == study.config.to_dict()
    for t in TRAITS:  # the steering-layer vectors come back; the other layers are not saved
        assert back.vectors.vectors[t].layers == [study.vectors.layer]
        assert back.vectors.at_layer(t).metadata() == study.vectors.at_layer(t).metadata()
    assert back.vectors.profile_dprime == study.vectors.profile_dprime
    assert np.array_equal(back.capability.mc_correct, study.capability.mc_correct)
    assert set(back.figures()) == set(study.figures())
    assert isinstance(back.stability, Stability) and back.stability.to_dict() == study.stability.to_dict()
