"""The error-detection evaluation a critique vector is judged by: the model judges solutions step by step
(P(True) per step) while steered, detection vs alpha, against two controls of equal norm: a random direction
and the vector built from the same activations with shuffled labels.

Held-out discipline: detection is measured on a separate synthetic set (another seed); the verdict threshold
is calibrated on a third set with the unsteered model and then held fixed for every alpha and vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from steerlens.errors import SteerlensError
from steerlens.figures import GREY, PALETTE, line_with_band, new_figure
from steerlens.model import Model
from steerlens.probes.detection import earliest_error, step_p_true
from steerlens.probes.scoring import StepItem, bigbench_mistake_score, processbench_score
from steerlens.stats import N_BOOT, Estimate, auroc, bootstrap
from steerlens.steering import RowSteering
from steerlens.steering.vector import SteeringVector, Units

from .vector import Control, CritiqueVector

Arm = Literal["critique", Control]  # the critique vector, or one of its controls of equal norm
CONTROLS: tuple[Control, ...] = get_args(Control)
LABELS: dict[str, str] = {  # figure legends; the verdict names the arms without ", equal norm"
    "critique": "critique vector",
    "random": "random direction, equal norm",
    "shuffled": "shuffled-label vector, equal norm",
}
ALPHAS = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class DetectionPoint:
    """Detection quality of the model judging with one vector at one alpha."""

    vector: Arm
    alpha: float
    accuracy: Estimate  # binary: flagged (some prefix judged wrong) == has an error
    f1: Estimate  # ProcessBench F1 of earliest-error prediction
    error_accuracy: float
    correct_accuracy: float
    mean_p_error_on_errors: float
    mean_p_error_on_clean: float
    bbm: dict[str, float] = field(default_factory=dict)  # the same predictions scored as BIG-Bench-Mistake

    def to_dict(self) -> dict[str, Any]:
        return {
            "vector": self.vector,
            "alpha": self.alpha,
            "accuracy": self.accuracy.to_dict(),
            "f1": self.f1.to_dict(),
            "error_accuracy": self.error_accuracy,
            "correct_accuracy": self.correct_accuracy,
            "mean_p_error_on_errors": self.mean_p_error_on_errors,
            "mean_p_error_on_clean": self.mean_p_error_on_clean,
            "bbm": self.bbm,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectionPoint:
        return cls(**{**d, "accuracy": Estimate(**d["accuracy"]), "f1": Estimate(**d["f1"])})


@dataclass(frozen=True)
class DetectionSweep:
    """Error detection vs steering strength for the critique vector and its controls (runs saved before the
    shuffled-label control have the random one only)."""

    points: tuple[DetectionPoint, ...]
    p_true_auroc: float  # unsteered P(True) of the full solution as a detector (baseline)
    settings: dict[str, Any] = field(default_factory=dict)

    def series(self, vector: Arm) -> list[DetectionPoint]:
        return sorted((p for p in self.points if p.vector == vector), key=lambda p: p.alpha)

    @property
    def controls(self) -> list[Control]:
        """The control arms this sweep has."""
        return [c for c in CONTROLS if self.series(c)]

    @property
    def arms(self) -> list[Arm]:
        """The critique vector, then its controls."""
        return ["critique", *self.controls]

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "p_true_auroc": self.p_true_auroc,
            "slope_p_error_per_alpha": {a: self.slope(a) for a in self.arms},
            "points": [p.to_dict() for p in self.points],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectionSweep:
        """Rebuild a sweep from ``to_dict()`` (the ``detection`` entry of a critique run's metrics)."""
        points = tuple(DetectionPoint.from_dict(p) for p in d["points"])
        return cls(points, d["p_true_auroc"], d["settings"])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "vector": p.vector,
                    "alpha": p.alpha,
                    "accuracy": p.accuracy.value,
                    "acc_lo": p.accuracy.lo,
                    "acc_hi": p.accuracy.hi,
                    "f1": p.f1.value,
                    "f1_lo": p.f1.lo,
                    "f1_hi": p.f1.hi,
                }
                for p in self.points
            ]
        )

    def slope(self, vector: Arm) -> float:
        """Least-squares slope of the mean P(error) (over all items) against alpha: the dose-response."""
        pts = self.series(vector)
        a = np.array([p.alpha for p in pts])
        y = np.array([(p.mean_p_error_on_errors + p.mean_p_error_on_clean) / 2 for p in pts])
        return float(np.polyfit(a, y, 1)[0]) if len(pts) > 1 else float("nan")

    def verdict(self) -> str:
        """One honest sentence: does the critique vector beat the unsteered model and every control at some
        alpha, beyond the CIs?"""
        crit = self.series("critique")
        base = next((p for p in crit if p.alpha == 0), crit[0])
        ctrls = [self.series(c) for c in self.controls]
        wins = [
            c.alpha
            for c, *rs in zip(crit, *ctrls, strict=True)
            if c.accuracy.lo > max([base.accuracy.hi] + [r.accuracy.hi for r in rs])
        ]
        names = " and ".join(LABELS[c].split(",")[0] for c in self.controls)
        slopes = "; mean P(error) vs alpha has slope " + ", ".join(
            f"{self.slope(a):+.3f} for the {LABELS[a].split(',')[0]}" for a in self.arms
        )
        if wins:
            return (
                f"critique steering raises detection accuracy above the unsteered model and every control "
                f"({names}) at alpha {wins}" + slopes
            )
        return (
            f"no alpha raises detection accuracy above the unsteered model and every control ({names}) "
            f"beyond the 95% CIs (unsteered accuracy {base.accuracy})" + slopes
        )

    def figure(self) -> go.Figure:
        """Left: binary detection accuracy vs alpha (critique vs its controls, 95% CIs). Right: the mean
        P(error) the model assigns to erroneous and to clean solutions, which shows the dose-response even
        where the thresholded decision does not move."""
        from plotly.subplots import make_subplots

        s = self.settings
        base = new_figure(
            f"Error detection vs steering ({s.get('model')}, layer {s.get('layer')}, n={s.get('n_items')}, "
            f"threshold {s.get('threshold', 0.5):.3g})",
            "",
            "",
        )
        fig = make_subplots(rows=1, cols=2, subplot_titles=("detection accuracy", "mean P(error)"))
        fig.update_layout(template=base.layout.template, title=base.layout.title, width=1000)
        style: dict[Arm, tuple[str, str | None]] = {
            "critique": (PALETTE[0], None),
            "random": (GREY, "dot"),
            "shuffled": (PALETTE[2], "dash"),
        }
        for name in self.arms:
            self._add_arm(fig, name, *style[name])
        fig.add_hline(y=0.5, line_color="#bbb", line_width=1, row=1, col=1)
        fig.update_xaxes(title_text=f"alpha ({s.get('units')} units)")
        return fig

    def _add_arm(self, fig: go.Figure, name: Arm, colour: str, dash: str | None) -> None:
        pts = self.series(name)
        label = LABELS[name]
        alphas = [p.alpha for p in pts]
        sub = line_with_band(
            new_figure("", "", ""),
            alphas,
            [p.accuracy.value for p in pts],
            [p.accuracy.lo for p in pts],
            [p.accuracy.hi for p in pts],
            label,
            colour,
            dash,
        )
        for tr in sub.data:
            fig.add_trace(tr, row=1, col=1)
        for key, sym, suffix in (
            ("mean_p_error_on_errors", "circle", "erroneous"),
            ("mean_p_error_on_clean", "x", "clean"),
        ):
            fig.add_scatter(
                x=alphas,
                y=[getattr(p, key) for p in pts],
                mode="lines+markers",
                row=1,
                col=2,
                name=f"{label}: {suffix}",
                line=dict(color=colour, dash=dash),
                marker=dict(symbol=sym),
            )


def detection_sweep(
    model: Model,
    cv: CritiqueVector,
    items: Sequence[StepItem],
    *,
    calibration: Sequence[StepItem] = (),
    alphas: Sequence[float] = ALPHAS,
    units: Units = "resid",
    seed: int = 0,
    n_boot: int = N_BOOT,
    batch_size: int = 16,
) -> DetectionSweep:
    """Judge every step of ``items`` (P(True) per step, one forward per item) while steering at ``cv.layer``
    with each alpha, for the critique vector and its controls of equal norm (``CritiqueVector.controls``:
    a random direction, and the shuffled-label vector where it was built; alpha 0, unsteered, is
    shared). A step counts as flagged when P(True) < threshold; the threshold is 0.5, or, given
    ``calibration`` items (a separate set), the one maximising the unsteered model's balanced accuracy there,
    then held fixed for every alpha and vector.

    Example:
        >>> det = detection_sweep(model, cv, synthetic_detection_set(100, seed=1000),
        ...                       calibration=synthetic_detection_set(60, seed=2000))
        >>> det.verdict(); det.figure()
    """
    items = list(items)
    if not items:
        raise SteerlensError("detection_sweep needs items (e.g. probes.detection.synthetic_detection_set)")
    labels = np.array([it.label for it in items])
    has_err = (labels != -1).astype(int)
    threshold = _calibrate(model, list(calibration), batch_size) if calibration else 0.5
    probs = _step_probs(model, cv, items, alphas, units, seed, batch_size)
    points = [
        _point(name, alpha, per_item, labels, threshold, seed, n_boot)
        for (name, alpha), per_item in sorted(probs.items())
    ]
    final = probs.get(("critique", 0.0)) or step_p_true(model, items, batch_size=batch_size)
    base_auroc = auroc(np.array([1 - ps[-1] for ps in final]), has_err)
    settings = dict(
        model=model.name,
        layer=cv.layer,
        units=units,
        alphas=list(alphas),
        seed=seed,
        n_items=len(items),
        n_boot=n_boot,
        span=cv.span,
        threshold=threshold,
        n_calibration=len(calibration),
    )
    return DetectionSweep(tuple(points), base_auroc, settings)


def _step_probs(
    model: Model,
    cv: CritiqueVector,
    items: list[StepItem],
    alphas: Sequence[float],
    units: Units,
    seed: int,
    batch_size: int,
) -> dict[tuple[Arm, float], list[np.ndarray]]:
    """P(True) per step of every item, per (vector, alpha); all steered alphas of a vector share one batch."""
    vectors: dict[Arm, SteeringVector] = {"critique": cv.at_layer}
    for control, vec in cv.controls(seed + 1).items():
        vectors[control] = vec
    steered = [a for a in alphas if a != 0]
    probs: dict[tuple[Arm, float], list[np.ndarray]] = {}
    if 0 in alphas or 0.0 in alphas:
        unsteered = step_p_true(model, items, batch_size=batch_size)
        probs.update({(name, 0.0): unsteered for name in vectors})
    for name, vec in vectors.items():
        if not steered:
            continue
        rows = [(i, a) for i in range(len(items)) for a in steered]
        batch_items = [items[i] for i, _ in rows]

        sweep = RowSteering.sweep([vec], [a for _, a in rows], units=units)
        got = step_p_true(model, batch_items, batch_size=batch_size, steering=sweep)
        for a_idx, alpha in enumerate(steered):
            probs[(name, float(alpha))] = got[a_idx :: len(steered)]
    return probs


def _point(
    name: Arm,
    alpha: float,
    per_item: list[np.ndarray],
    labels: np.ndarray,
    threshold: float,
    seed: int,
    n_boot: int,
) -> DetectionPoint:
    """Detection metrics of one (vector, alpha) from its per-step P(True), with bootstrap CIs over items."""
    has_err = (labels != -1).astype(int)
    preds = np.array([earliest_error(ps, threshold) for ps in per_item])
    flagged = (preds != -1).astype(int)
    p_err = np.array([1 - float(min(ps)) for ps in per_item])
    score = processbench_score(preds.tolist(), labels.tolist())
    as_bbm = [[None if int(x) == -1 else int(x) for x in v] for v in (preds, labels)]
    n = len(per_item)
    return DetectionPoint(
        vector=name,
        alpha=alpha,
        accuracy=bootstrap(_accuracy_at(flagged, has_err), n, n_boot=n_boot, seed=seed),
        f1=bootstrap(_f1_at(preds, labels), n, n_boot=n_boot, seed=seed),
        error_accuracy=score["error_accuracy"],
        correct_accuracy=score["correct_accuracy"],
        mean_p_error_on_errors=float(p_err[has_err == 1].mean()) if has_err.any() else float("nan"),
        mean_p_error_on_clean=float(p_err[has_err == 0].mean()) if (1 - has_err).any() else float("nan"),
        bbm=bigbench_mistake_score(*as_bbm),
    )


def _calibrate(model: Model, items: list[StepItem], batch_size: int) -> float:
    """The verdict threshold with the best balanced accuracy of the unsteered model on ``items``."""
    probs = step_p_true(model, items, batch_size=batch_size)
    has_err = np.array([it.label != -1 for it in items])
    if has_err.all() or not has_err.any():
        raise SteerlensError("calibration items need both erroneous and clean solutions")
    best, best_t = -1.0, 0.5
    for t in sorted({float(p) for ps in probs for p in ps} | {0.5}):
        flagged = np.array([earliest_error(ps, t + 1e-9) != -1 for ps in probs])
        bal = (flagged[has_err].mean() + (~flagged[~has_err]).mean()) / 2
        if bal > best:
            best, best_t = bal, t + 1e-9
    return best_t


def _accuracy_at(flagged: np.ndarray, truth: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda i: float((flagged[i] == truth[i]).mean())


def _f1_at(preds: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda i: processbench_score(preds[i].tolist(), labels[i].tolist())["f1"]
