"""Metrics and uncertainty every result reports: AUROC, Brier, ECE, and seeded bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import EmptyInput, SteerlensError

N_BOOT = 1000  # bootstrap resamples for every interval steerlens reports (studies pass cfg.n_boot)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile-bootstrap confidence interval."""

    value: float
    lo: float
    hi: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}] (n={self.n})"

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}


def _arrays(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if s.shape != y.shape or s.ndim != 1:
        raise SteerlensError(f"scores {s.shape} and labels {y.shape} must be 1-D and the same length")
    if len(s) == 0:
        raise EmptyInput("no scores to evaluate")
    if not set(np.unique(y)) <= {0, 1}:
        raise SteerlensError(f"labels must be 0/1, got values {sorted(set(np.unique(y)))}")
    return s, y


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve (probability a random positive outscores a random negative; ties count 1/2).
    NaN when only one class is present."""
    s, y = _arrays(scores, labels)
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def brier(probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Mean squared error of probabilities against 0/1 labels."""
    p, y = _arrays(probs, labels)
    return float(np.mean((p - y) ** 2))


def ece(probs: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, bins: int = 10) -> float:
    """Expected calibration error with equal-width bins on P(label = 1)."""
    p, y = _arrays(probs, labels)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(err)


def bootstrap(
    stat: Callable[[np.ndarray], float],
    n_items: int,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    groups: Sequence[object] | None = None,
) -> Estimate:
    """Percentile bootstrap of ``stat(indices)`` over items resampled with replacement (seeded).

    ``stat`` receives an index array into the caller's data, so paired quantities (e.g. the same items
    scored at two alphas) are resampled together. Resamples where ``stat`` is NaN are dropped.

    ``groups`` (one label per item) resamples whole groups instead of items: rows that are not independent
    (the clean and the corrupted trace of one problem) stay together, so the interval reflects the number of
    problems, not of rows. ``Estimate.n`` is then the number of groups.
    """
    if n_items < 1:
        raise EmptyInput("bootstrap over zero items")
    rng = np.random.default_rng(seed)
    point = float(stat(np.arange(n_items)))
    if groups is not None:
        if len(groups) != n_items:
            raise SteerlensError(f"groups has {len(groups)} labels for {n_items} items; pass one per item")
        labels = list(dict.fromkeys(groups))
        where = {g: k for k, g in enumerate(labels)}
        members = [np.flatnonzero(np.array([where[g] for g in groups]) == k) for k in range(len(labels))]
        draws = (rng.integers(0, len(labels), len(labels)) for _ in range(n_boot))
        reps = np.array([stat(np.concatenate([members[k] for k in d])) for d in draws], dtype=np.float64)
        n_items = len(labels)
    else:
        reps = np.array([stat(rng.integers(0, n_items, n_items)) for _ in range(n_boot)], dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if len(reps) == 0:
        return Estimate(point, float("nan"), float("nan"), n_items)
    a = (1 - level) / 2
    return Estimate(point, float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a)), n_items)


def mean_ci(values: Sequence[float] | np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> Estimate:
    """Mean with a bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    return bootstrap(lambda i: float(v[i].mean()), len(v), n_boot=n_boot, seed=seed)
