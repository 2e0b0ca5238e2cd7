"""Probes on real activations: held-out AUROC per layer, the shuffled-label control near 0.5, splits by group."""

import numpy as np
import pytest
import torch

import steerlens
from steerlens.probes.linear import fit_logistic, group_split, probe_layers


def test_group_split_keeps_groups_whole():
    groups = [i // 2 for i in range(100)]
    tr, va, te = group_split(groups, (0.6, 0.2, 0.2), seed=0)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(100))
    sets = [{groups[i] for i in s} for s in (tr, va, te)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert (len(tr), len(va), len(te)) == (60, 20, 20)


def test_logistic_recovers_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    w = torch.zeros(16)
    w[3] = 1.0
    y = (x @ w > 0).long()
    probe = fit_logistic(x, y, l2=1e-3)
    assert torch.nn.functional.cosine_similarity(probe.direction, w, dim=0) > 0.95


@pytest.fixture(scope="module")
def equation_features(smol):
    """resid_post (last token) of "a + b = c" lines, half with a wrong c: a real, weak signal."""
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for i in range(240):
        a, b = rng.integers(1, 10, 2)
        wrong = i % 2 == 1
        c = a + b + (int(rng.choice([-2, -1, 1, 2])) if wrong else 0)
        texts.append(f"{a} + {b} = {c}")
        labels.append(int(wrong))
    sites = [f"blocks.{l}.hook_resid_post" for l in range(0, 30, 3)]
    store = steerlens.collect(smol, texts, sites, "last", progress=False)
    return {int(s.split(".")[1]): store[s] for s in sites}, labels, list(range(240))


def test_probe_sweep_with_shuffled_control(equation_features):
    feats, labels, groups = equation_features
    sweep = probe_layers(feats, labels, groups, seed=0, n_boot=200)
    shuffled = np.array([s.shuffled_auroc for s in sweep.scores])
    assert abs(shuffled.mean() - 0.5) < 0.08  # the control carries no signal
    best = sweep.score(sweep.best_layer)
    assert best.auroc_lo <= best.auroc <= best.auroc_hi
    assert max(s.auroc for s in sweep.scores) > shuffled.max()  # the real probe beats every control
    assert sweep.best_layer == max(sweep.scores, key=lambda s: (s.val_auroc, -s.layer)).layer
    assert set(sweep.to_frame().columns) >= {"auroc", "shuffled_auroc", "val_auroc", "brier", "ece"}
    fig = sweep.figure()
    assert len(fig.data) >= 2


def test_auroc_interval_resamples_problems_not_rows(equation_features):
    """Item 8: two rows of one problem are one unit. With each problem's rows duplicated, the grouped interval
    equals the row interval of the undoubled data (same draws), where a row bootstrap would shrink it."""
    from steerlens.stats import auroc, bootstrap

    feats, labels, groups = equation_features
    sweep = probe_layers(feats, labels, groups, seed=0, n_boot=200)
    doubled = {l: torch.cat([x, x]) for l, x in feats.items()}
    sweep2 = probe_layers(doubled, labels + labels, groups + groups, seed=0, n_boot=200)
    for a, b in zip(sweep.scores, sweep2.scores, strict=True):
        assert b.n_test == 2 * a.n_test
        assert (b.auroc, b.auroc_lo, b.auroc_hi) == pytest.approx((a.auroc, a.auroc_lo, a.auroc_hi), abs=1e-9)
    p, y = np.random.default_rng(0).random(40), np.array([0, 1] * 20)
    g = list(range(40))
    rows = bootstrap(lambda i: auroc(p[i], y[i]), 40, n_boot=300, seed=1)
    grouped = bootstrap(lambda i: auroc(np.r_[p, p][i], np.r_[y, y][i]), 80, n_boot=300, seed=1, groups=g + g)
    assert grouped.n == 40 and (grouped.lo, grouped.hi) == pytest.approx((rows.lo, rows.hi))
