"""Scaling study: the comparison's curves and figure, one bootstrap count for JSON and figure, the critique
probe read at its own layer, save / load, and ``steerlens tts --critique DIR``."""

import argparse
import json

import numpy as np
import pytest
import torch

from steerlens.analysis import scaling
from steerlens.analysis.critique import (
    CritiqueConfig,
    CritiqueStudy,
    CritiqueVector,
    DetectionPoint,
    DetectionSweep,
)
from steerlens.analysis.scaling import (
    ScalingComparison,
    ScalingConfig,
    ScalingStudy,
    register,
    scaling_comparison,
)
from steerlens.cli import main
from steerlens.errors import SteerlensError
from steerlens.probes.linear import LayerSweep, ProbeScore, fit_logistic
from steerlens.probes.traces import InjectionRun
from steerlens.stats import N_BOOT, Estimate
from steerlens.steering import vector_from_prompts
from steerlens.steering.tts import ParallelResult, Round, SequentialResult


def _comparison(n_boot: int, n_problems: int = 2, seed: int = 0) -> ScalingComparison:
    rng = np.random.default_rng(seed)
    if n_problems == 2:
        res = ParallelResult(
            problem_ids=("a", "b"),
            truths=("7", "3"),
            answers=(("5", "7", "7", "7"), ("3", "4", "4", "3")),
            scores=((0.1, 0.9, 0.2, 0.2), (0.8, 0.1, 0.1, 0.2)),
            tokens=((10, 10, 10, 10), (5, 5, 5, 5)),
        )
        seq = SequentialResult(("a", "b"), tuple((Round("", "7", True, 3, False),) * 2 for _ in "ab"))
    else:  # random right / wrong answers: wide intervals that depend on the number of resamples
        ids = tuple(str(i) for i in range(n_problems))
        res = ParallelResult(
            problem_ids=ids,
            truths=("1",) * n_problems,
            answers=tuple(tuple(str(a) for a in rng.integers(1, 3, 4)) for _ in ids),
            scores=None,
            tokens=((8,) * 4,) * n_problems,
        )
        rounds = tuple(tuple(Round("", None, bool(c), 4, False) for c in rng.integers(0, 2, 3)) for _ in ids)
        seq = SequentialResult(ids, rounds)
    return ScalingComparison({"unsteered": res}, {"unsteered": seq}, {"model": "m"}, n_boot=n_boot)


def test_comparison_curves_and_figure():
    comp = _comparison(n_boot=50)
    d = comp.to_dict()
    assert [p["samples"] for p in d["parallel"]["unsteered"]["best"]] == [1, 2, 4]
    assert d["sequential"]["unsteered"]["tokens"] == [3.0, 6.0]  # cumulative per round
    fig = comp.figure()
    named = [t.name for t in fig.data if t.showlegend]
    assert named == ["unsteered", "unsteered, best", "unsteered, weighted"]  # one legend entry per curve
    assert {t.xaxis for t in fig.data} == {"x", "x2", "x3"}  # vs N, vs rounds, vs tokens
    bands = [t.xaxis for t in fig.data if t.fill]
    assert sorted(bands) == ["x", "x2", "x3", "x3"]  # one band per condition and panel (majority/greedy)


def test_json_and_figure_share_one_bootstrap_count():
    """The demo's JSON used 500 resamples while the figure drew 1000: now both read ``n_boot``."""
    comp = _comparison(n_boot=20, n_problems=12)
    d = comp.to_dict()
    fig = comp.figure()
    for axis, est in (
        ("x", d["parallel"]["unsteered"]["majority"]),
        ("x2", d["sequential"]["unsteered"]["accuracy"]),
    ):
        band = next(t for t in fig.data if t.fill and t.xaxis == axis)
        assert list(band.y) == [e["hi"] for e in est] + [e["lo"] for e in est][::-1], axis
    other = _comparison(n_boot=N_BOOT, n_problems=12).to_dict()
    assert other["parallel"] != d["parallel"] or other["sequential"] != d["sequential"]  # the test can tell


def test_config_defaults_flags_and_quick_sizes():
    cfg = ScalingConfig()
    assert (cfg.n_problems, cfg.samples, cfg.rounds, cfg.budget, cfg.alpha, cfg.seed, cfg.layer) == (
        24,
        8,
        2,
        96,
        0.1,
        0,
        None,
    )
    assert cfg.n_boot == N_BOOT
    quick = ScalingConfig.quick()
    assert (quick.n_problems, quick.samples, quick.rounds) == (3, 2, 1)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tts", "--critique", "somewhere", "--samples", "4", "--layer", "7"])
    assert ScalingConfig.from_args(args) == ScalingConfig(samples=4, layer=7) and args.critique == "somewhere"
    assert cfg.controls == ("random", "shuffled")
    args = parser.parse_args(["tts", "--controls", "random"])
    assert ScalingConfig.from_args(args).controls == ("random",)


@pytest.fixture(scope="module")
def vec(smol):
    return vector_from_prompts(
        smol,
        ["I love this, it is wonderful.", "What a happy day."],
        ["I hate this, it is awful.", "A sad day."],
    )


@pytest.fixture(scope="module")
def probe(smol):
    g = torch.Generator().manual_seed(0)
    return fit_logistic(torch.randn(20, smol.cfg.d_model, generator=g), [0, 1] * 10)


def test_controls_are_the_configured_ones_of_equal_norm(vec):
    """The critique run's controls at the steering layer (which may differ from the run's chosen layer): the
    random direction of that layer's vector and the shuffled-label vector selected there."""
    cv = CritiqueVector(vec, 20, LayerSweep((), {}), "answer", shuffled=vec.random_like(99))
    at, controls = vec.select([10]), cv.controls(1, 10)
    shuffled = controls["shuffled"]
    assert torch.equal(controls["random"].directions[10], at.random_like(1).directions[10])
    assert controls["random"].layers == shuffled.layers == [10]
    assert torch.equal(shuffled.directions[10], vec.random_like(99).directions[10])
    cfg = ScalingConfig.quick()
    conds = scaling._conditions(at, cfg, controls)
    names = [
        "unsteered",
        "critique (alpha 0.1)",
        "random control (alpha 0.1)",
        "shuffled-label control (alpha 0.1)",
    ]
    assert list(conds) == names and conds["unsteered"] == []
    iv = {name: ivs[0] for name, ivs in conds.items() if ivs}
    assert iv[names[3]].vector is shuffled and iv[names[1]].vector is at
    for name in names[1:]:
        assert (iv[name].alpha, iv[name].units, iv[name].positions) == (0.1, "resid", "generated")
        assert iv[name].vector.resid_norms == at.resid_norms and iv[name].vector.raw_norms == at.raw_norms
    assert list(scaling._conditions(at, cfg.replace(controls=("random",)), controls)) == names[:3]
    with pytest.raises(SteerlensError, match=r"no shuffled-label vector .* pass --controls random"):
        scaling._conditions(at, cfg, {"random": controls["random"]})


def _tiny_critique(vec, layer: int, probe, shuffled: bool = True) -> CritiqueStudy:
    """A critique study holding just what the scaling study reads: the vector, its layer, the probe and (a
    stand-in for) the shuffled-label control."""
    score = ProbeScore(layer, 0.5, 0.4, 0.6, 0.5, 0.25, 0.0, 0.5, 0.5, 6, 2, 2)
    est = Estimate(0.5, 0.0, 1.0, 2)
    points = tuple(DetectionPoint(arm, 0.0, est, est, 0.5, 0.5, 0.5, 0.5) for arm in ("critique", "random"))
    ctl = vec.random_like(99) if shuffled else None
    cv = CritiqueVector(vec, layer, LayerSweep((score,), {}), "answer", probe, shuffled=ctl)
    run = InjectionRun((), {"model": "smollm2-135m-instruct"})
    return CritiqueStudy(CritiqueConfig(steps=2, max_operand=7), run, cv, DetectionSweep(points, 0.5, {}))


def test_probe_is_read_at_its_own_layer_and_the_study_round_trips(smol, vec, probe, monkeypatch, tmp_path):
    """Item 7: `steerlens tts --layer X` used to score best-of-N with the critique probe read at X."""
    seen = []
    real = scaling.probe_verifier
    monkeypatch.setattr(
        scaling, "probe_verifier", lambda m, p, layer, name: seen.append(layer) or real(m, p, layer, name)
    )
    cfg = ScalingConfig(n_problems=1, steps=2, max_operand=7, samples=1, rounds=0, budget=4, n_boot=50)
    with pytest.raises(SteerlensError, match="probe_layer"):
        scaling_comparison(smol, cfg, vec, 10, probe=probe, progress=False)
    study = scaling.run(smol, cfg.replace(layer=10), _tiny_critique(vec, 20, probe), progress=False)
    assert seen == [20]  # one verifier, at the probe's layer, scores all four conditions
    assert list(study.comparison.parallel) == [
        "unsteered", "critique (alpha 0.1)", "random control (alpha 0.1)", "shuffled-label control (alpha 0.1)",
    ]  # fmt: skip
    assert (study.comparison.settings["layer"], study.comparison.settings["probe_layer"]) == (10, 20)
    # the problems have the critique run's difficulty, where the vector was built
    assert (
        (study.config.steps, study.config.max_operand)
        == (2, 7)
        == (
            study.comparison.settings["steps"],
            study.comparison.settings["max_operand"],
        )
    )
    assert study.comparison.parallel["unsteered"].settings["verifier"] == "critique_probe"
    study.save(tmp_path, formats=())
    back = ScalingStudy.load(tmp_path)
    assert back.config == study.config and back.comparison == study.comparison
    assert json.dumps(back.summary()) == json.dumps(study.summary())
    assert back.figures()["tts_curves"].to_json() == study.figures()["tts_curves"].to_json()
    (sec,) = back.sections()
    assert (sec.id, sec.title) == ("tts", "Test-time scaling, steered vs unsteered")
    assert json.dumps(sec.numbers) == json.dumps(study.sections()[0].numbers)
    with pytest.raises(SteerlensError, match="steerlens tts --critique DIR --out"):
        ScalingStudy.load(tmp_path / "nowhere")


@pytest.mark.slow
def test_cli_reads_a_critique_run_directory(smol, vec, probe, tmp_path, capsys):
    crit, out = tmp_path / "crit", tmp_path / "tts"
    smol_only = ["--model", "smollm2-135m-instruct"]  # the CLI's default is qwen; the plumbing is tested here
    assert main(["tts", "--quick", *smol_only, "--critique", str(crit), "--out", str(out)]) == 2  # no run yet
    assert f"steerlens critique --out {crit}" in capsys.readouterr().err
    _tiny_critique(vec, 20, probe).save(crit, formats=())
    argv = [
        "tts",
        "--quick",
        *smol_only,
        "--critique",
        str(crit),
        "--out",
        str(out),
        "--n-problems",
        "1",
        "--budget",
        "8",
    ]
    assert main([*argv, "--layer", "10"]) == 0
    for name in ("tts.json", "tts_results.json", "config.json", "tts_curves.html"):
        assert (out / name).exists(), name
    study = ScalingStudy.load(out)
    want = ScalingConfig.quick(n_problems=1, budget=8, layer=10, steps=2, max_operand=7, shots=3)
    assert study.config == want  # difficulty and prompt (shots) from the critique run
    assert (study.comparison.settings["layer"], study.comparison.settings["probe_layer"]) == (10, 20)
    # the problems have the critique run's difficulty, where the vector was built
    assert (
        (study.config.steps, study.config.max_operand)
        == (2, 7)
        == (
            study.comparison.settings["steps"],
            study.comparison.settings["max_operand"],
        )
    )
