"""Metrics against hand-computed values."""

import numpy as np
import pytest

from steerlens.stats import auroc, bootstrap, brier, ece, mean_ci


def test_auroc_hand_cases():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5  # ties count one half
    assert auroc([0.9, 0.1], [0, 1]) == 0.0
    assert np.isnan(auroc([0.2, 0.3], [1, 1]))


def test_brier_ece_and_bootstrap():
    assert brier([1.0, 0.0, 0.5], [1, 0, 1]) == pytest.approx(0.25 / 3)
    assert ece([0.9] * 10, [1] * 9 + [0]) == pytest.approx(0.0)
    assert ece([0.9] * 10, [0] * 10) == pytest.approx(0.9)
    rng = np.random.default_rng(0)
    v = rng.normal(1.0, 1.0, 400)
    est = mean_ci(v, seed=1)
    assert est.lo < est.value < est.hi and est.lo < 1.0 < est.hi
    assert est == mean_ci(v, seed=1)  # seeded
    assert bootstrap(lambda i: float(v[i].mean()), len(v), seed=2).value == pytest.approx(v.mean())
