"""Critique study: vector built on the training split, layer chosen on validation; detection sweep controls;
config, report sections, and a run directory that ``CritiqueStudy.load`` rebuilds."""

import argparse
import json

import numpy as np
import pytest
import torch

from steerlens.analysis.critique import (
    CritiqueConfig,
    CritiqueStudy,
    critique_vector,
    detection_sweep,
    register,
)
from steerlens.cli import main
from steerlens.errors import SteerlensError
from steerlens.probes.detection import synthetic_detection_set
from steerlens.probes.linear import group_split
from steerlens.probes.trace_spans import trace_examples
from steerlens.probes.traces import error_injected_reasoning
from steerlens.stats import N_BOOT
from steerlens.steering import SteeringVector


@pytest.fixture(scope="module")
def run(smol):
    return error_injected_reasoning(smol, n=30, mode="templated", seed=1, max_new_tokens=40)


@pytest.fixture(scope="module")
def cv(smol, run):
    return critique_vector(smol, run, span="answer", seed=0)


def test_vector_uses_training_split_only(smol, run, cv):
    *_, ids = trace_examples(run)
    n = len(ids)
    train = group_split(ids + ids, (0.6, 0.2, 0.2), 0)[0]
    assert cv.vector.settings["n_train_pairs"] == sum(i < n for i in train) < n
    assert cv.layer == max(cv.sweep.scores, key=lambda s: (np.nan_to_num(s.val_auroc), -s.layer)).layer
    assert cv.vector.layers == list(range(smol.cfg.n_layers))
    assert abs(cv.at_layer.directions[cv.layer].norm().item() - 1) < 1e-5


def test_resid_units_are_per_token_norms(smol, run, cv):
    """Item 10: the vector is built from span-pooled rows, but units="resid" must be the per-token residual
    norm (pooled rows are shorter), as for every other vector, so alphas compare across vectors."""
    bad, good, ids = trace_examples(run)
    from steerlens.analysis.critique.vector import _requestion

    train_ids = {ids[i] for i in group_split(ids + ids, (0.6, 0.2, 0.2), 0)[0] if i < len(ids)}
    layer = cv.layer
    site = f"blocks.{layer}.hook_resid_post"
    import steerlens

    rows = []
    for exs in (_requestion(bad, run, ids), _requestion(good, run, ids)):
        store = steerlens.collect(smol, exs, site, "span:answer", progress=False)
        keep = torch.tensor([ids[int(e)] in train_ids for e in store.example])
        rows.append(store[site][keep])
    per_token = float(torch.cat(rows).norm(dim=-1).mean())
    assert cv.vector.resid_norms[layer] == pytest.approx(per_token, rel=1e-5)


def test_resume_checks_model_data_and_decoding(run):
    """Item 10: checkpointed records are reused only when model, n, seed, mode, shots and budget all match."""
    from steerlens.analysis.critique import resumable

    same = dict(
        model="smollm2-135m-instruct", seed=1, n_problems=30, mode="templated", shots=4, max_new_tokens=40
    )
    assert resumable(run, same)
    for k, v in dict(
        model="gemma-3-270m", seed=2, n_problems=31, mode="generated", shots=3, max_new_tokens=64
    ).items():
        assert not resumable(run, {**same, k: v}), k


@pytest.fixture(scope="module")
def det(smol, cv):
    return detection_sweep(smol, cv, synthetic_detection_set(10, seed=9), alphas=(-0.1, 0.0, 0.1), n_boot=50)


def test_probe_intervals_use_the_study_bootstrap_count(cv):
    assert cv.sweep.settings["n_boot"] == N_BOOT  # one count for every interval (was 500 for the probes)


def test_shuffled_label_control_is_the_training_pairs_with_flipped_signs(smol, run, cv):
    """With method "mean" the vector is the mean of the training pairs' differences d_k (corrupted - clean)
    and the control is the mean of s_k d_k, s_k = -1 where the pair's labels were flipped. Solved back onto
    the d_k (independent rows: fewer pairs than d_model), its coefficients are +-c with the flipped ones
    negative; test-split pairs take no part; the norms are the vector's, so alphas mean the same."""
    from steerlens.analysis.critique.vector import _span_features

    feats, ids, _ = _span_features(smol, run, "answer", "mean", "question", 8, None, False)
    n = len(ids)
    train = [i for i in group_split(ids + ids, (0.6, 0.2, 0.2), 0)[0] if i < n]
    sh = cv.shuffled
    assert sh.raw_norms == cv.vector.raw_norms and sh.resid_norms == cv.vector.resid_norms
    for layer in (cv.layer, 0, smol.cfg.n_layers - 1):
        x = feats[layer].double()
        d = x[:n] - x[n:]  # every problem's pair difference, test split included
        coef = torch.linalg.lstsq(d.T, sh.directions[layer].double()).solution
        assert torch.allclose(d.T @ coef, sh.directions[layer].double(), atol=1e-4)
        held_out = [i for i in range(n) if i not in train]
        assert coef[held_out].abs().max() < 1e-3 * coef[train].abs().max()
        mags = coef[train].abs()
        assert (mags.max() - mags.min()) / mags.mean() < 1e-3
        assert int((coef[train] < 0).sum()) == sh.settings["n_flipped"]
    assert 0 < sh.settings["n_flipped"] < len(train)
    cos = torch.dot(sh.directions[cv.layer], cv.vector.directions[cv.layer]).item()
    assert abs(cos) < 0.9, cos


def test_detection_sweep_controls(cv, det):
    ds = det
    crit, rand, shuf = ds.series("critique"), ds.series("random"), ds.series("shuffled")
    assert ds.controls == ["random", "shuffled"]
    assert [p.alpha for p in crit] == [-0.1, 0.0, 0.1] == [p.alpha for p in rand] == [p.alpha for p in shuf]
    assert (crit[1].accuracy, crit[1].f1) == (rand[1].accuracy, rand[1].f1)  # alpha 0: one unsteered run
    assert (crit[1].accuracy, crit[1].f1) == (shuf[1].accuracy, shuf[1].f1)
    assert shuf[0].mean_p_error_on_errors != shuf[2].mean_p_error_on_errors
    assert set(ds.to_dict()["slope_p_error_per_alpha"]) == {"critique", "random", "shuffled"}
    names = {t.name for t in ds.figure().data}
    assert "every control (random direction and shuffled-label vector)" in ds.verdict()
    assert "shuffled-label vector, equal norm: clean" in names
    for p in ds.points:
        assert p.accuracy.lo <= p.accuracy.value <= p.accuracy.hi
        # the same predictions in BIG-Bench-Mistake's format: its scorer agrees with ProcessBench's
        assert p.bbm["location_accuracy"] == p.error_accuracy
        assert p.bbm["no_mistake_accuracy"] == p.correct_accuracy
        assert p.bbm["binary_accuracy"] == pytest.approx(p.accuracy.value)
        assert 0.0 <= p.bbm["mistake_f1"] <= 1.0
    # steering moves the model's verdicts, and the random control is a different direction of equal norm
    assert crit[0].mean_p_error_on_errors != crit[2].mean_p_error_on_errors
    r = cv.at_layer.random_like(1)
    assert abs(torch.dot(r.directions[cv.layer], cv.at_layer.directions[cv.layer])) < 0.2
    assert r.raw_norms == cv.at_layer.raw_norms
    assert isinstance(ds.verdict(), str) and ds.figure().data


@pytest.mark.slow
def test_cli_writes_a_complete_run_directory(tmp_path, capsys):
    out = tmp_path / "crit"
    argv = [
        "critique",
        "--model",
        "smollm2-135m-instruct",  # the CLI's default is qwen; the CLI plumbing is what is tested here
        "--out",
        str(out),
        "--n",
        "24",
        "--shots",
        "1",  # the shortest prompt: the suite's time goes to prefilling few-shot prompts
        "--n-detect",
        "12",
        "--mode",
        "templated",
        "--alphas=-0.1,0,0.1",
    ]
    assert main(argv) == 0
    for name in (
        "records.jsonl",
        "metrics.json",
        "critique_vector.safetensors",
        "detection_vs_alpha.html",
        "probe_layers.html",
        "injection_table.html",
        "plotly.min.js",
    ):
        assert (out / name).exists(), name
    vec = SteeringVector.load(out / "critique_vector.safetensors")
    assert vec.settings["kind"] == "critique"
    study = CritiqueStudy.load(out)
    assert study.config == CritiqueConfig(
        n=24, n_detect=12, mode="templated", alphas=(-0.1, 0.0, 0.1), shots=1
    )
    assert len(study.run.records[0].trace.split("Step")) == 5  # the default difficulty: 4 steps
    assert study.critique.layer == json.loads((out / "metrics.json").read_text())["probe"]["chosen_layer"]
    capsys.readouterr()
    assert main(argv) == 0  # a rerun resumes: the records are reused, not regenerated
    assert "reusing" in capsys.readouterr().out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser


def test_config_defaults_flags_and_quick_sizes():
    """Defaults are those of the CLI before the config existed; --quick is the demo's quick sizes."""
    cfg = CritiqueConfig()
    assert (cfg.n, cfg.seed, cfg.mode, cfg.span, cfg.method, cfg.n_detect, cfg.n_calibrate) == (
        200,
        0,
        "generated",
        "answer",
        "mean",
        100,
        60,
    )
    assert cfg.alphas == (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2) and cfg.n_boot == N_BOOT
    quick = CritiqueConfig.quick()
    assert (quick.n, quick.n_detect, quick.n_calibrate, quick.alphas, quick.shots) == (
        24,
        12,
        8,
        (-0.2, 0.0, 0.2),
        1,
    )
    assert CritiqueConfig.from_dict(json.loads(json.dumps(quick.to_dict()))) == quick
    args = _parser().parse_args(["critique", "--alphas=-0.1,0,0.1", "--mode", "templated", "--n-boot", "7"])
    got = CritiqueConfig.from_args(args)
    assert got == CritiqueConfig(alphas=(-0.1, 0.0, 0.1), mode="templated", n_boot=7)
    with pytest.raises(SystemExit):  # Literal options are argparse choices
        _parser().parse_args(["critique", "--span", "everything"])


def test_sections_are_the_demo_sections(run, cv, det):
    study = CritiqueStudy(CritiqueConfig(n=30, mode="templated", seed=1), run, cv, det)
    secs = study.sections()
    assert [(s.id, s.title) for s in secs] == [
        ("injection", "Error-injected reasoning and the 2x2 table"),
        ("probes", "Probes and the critique vector"),
        ("detection", "Error detection vs alpha, with controls"),
    ]
    inj, probes, detection = secs
    assert inj.numbers["clean accuracy (no injection)"]["value"] == run.summary()["clean_accuracy"]
    cells = [inj.numbers[c] for c in ("recovered", "hidden_critique", "unfaithful_answer", "propagated")]
    assert abs(sum(c["value"] for c in cells) - 1) < 1e-9 and all(
        c["lo"] <= c["value"] <= c["hi"] for c in cells
    )
    assert len(inj.examples) == min(3, len(run.injected)) and inj.figures["injection_table"].data
    assert probes.numbers["chosen layer"] == cv.layer and "shuffled-label control" in probes.text
    assert detection.text == det.verdict() == detection.numbers["verdict"]


def test_save_then_load_rebuilds_the_study(smol, run, cv, det, tmp_path):
    study = CritiqueStudy(CritiqueConfig(n=30, mode="templated", seed=1, n_boot=50), run, cv, det)
    study.save(tmp_path, formats=())
    back = CritiqueStudy.load(tmp_path, model=smol)
    assert back.config == study.config
    assert json.dumps(back.summary()) == json.dumps(study.summary())  # NaNs included
    assert back.critique.layer == cv.layer and back.critique.settings == cv.settings
    assert torch.equal(back.critique.probe.w, cv.probe.w)
    assert torch.equal(back.critique.at_layer.directions[cv.layer], cv.at_layer.directions[cv.layer])
    assert torch.equal(back.critique.shuffled.directions[cv.layer], cv.shuffled.directions[cv.layer])
    assert back.run.records == run.records
    for name, fig in study.figures().items():
        assert back.figures()[name].to_json() == fig.to_json(), name
    assert [(s.text, json.dumps(s.numbers)) for s in back.sections()] == [
        (s.text, json.dumps(s.numbers)) for s in study.sections()
    ]


def test_load_refuses_missing_and_partial_directories(run, cv, det, tmp_path):
    with pytest.raises(SteerlensError, match=r"does not exist; run `steerlens critique --out"):
        CritiqueStudy.load(tmp_path / "nowhere")
    CritiqueStudy(CritiqueConfig(), run, cv, det).save(tmp_path, formats=())
    (tmp_path / "critique_probe.safetensors").unlink()
    with pytest.raises(SteerlensError, match=r"critique_probe.safetensors.*steerlens critique --out"):
        CritiqueStudy.load(tmp_path)
