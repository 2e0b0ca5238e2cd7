"""The critique vector (difference of means between corrupted and clean reasoning at a named span) and the
error-detection evaluation it is judged by: detection vs alpha, against a random direction of equal norm.

Held-out discipline: the vector is built on the training split of the injection run's problems, its layer
is chosen on the validation split, and detection is measured on a separate synthetic set (other seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerlens.collect import collect
from steerlens.errors import SteerlensError
from steerlens.figures import GREY, PALETTE, line_with_band, new_figure, save_figures
from steerlens.files import write_json
from steerlens.inputs import Example
from steerlens.model import Model
from steerlens.probes.detection import earliest_error, step_p_true, synthetic_detection_set
from steerlens.probes.linear import LayerSweep, Logistic, fit_logistic, group_split, probe_layers
from steerlens.probes.scoring import StepItem, processbench_score
from steerlens.probes.traces import InjectionRun, error_injected_reasoning, trace_examples
from steerlens.stats import Estimate, auroc, bootstrap

from .apply import Intervention, steer
from .build import vector_from_activations
from .vector import SteeringVector, Units

SPANS = ("injected", "after", "answer")


@dataclass(frozen=True)
class CritiqueVector:
    """A critique vector at every layer (built on the training split) and the layer chosen on validation."""

    vector: SteeringVector
    layer: int
    sweep: LayerSweep
    span: str
    probe: Logistic | None = None  # the error probe at ``layer``, fitted on the training split
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def at_layer(self) -> SteeringVector:
        return self.vector.select([self.layer])


def critique_vector(
    model: Model,
    run: InjectionRun,
    *,
    span: str = "answer",
    method: str = "mean",
    pool: str = "mean",
    seed: int = 0,
    context: str = "question",
    batch_size: int = 8,
    store_dir: str | None = None,
    overwrite: bool = False,
) -> CritiqueVector:
    """Probe every layer for "this reasoning holds an injected error" at ``span`` and build the vector.

    ``context``: "question" collects on "Question: ...\\n" + trace (short and fast), "prompt" on the full
    few-shot prompt the trace was generated with.
    """
    if span not in SPANS:
        raise SteerlensError(f"span={span!r}: expected one of {SPANS}")
    bad, good, ids = trace_examples(run)
    if context == "question":
        bad, good = _requestion(bad, run, ids), _requestion(good, run, ids)
    elif context != "prompt":
        raise SteerlensError(f"context={context!r}: expected 'question' or 'prompt'")
    sites = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    kw: dict[str, Any] = dict(batch_size=batch_size, progress=False, overwrite=overwrite)
    pos_store = collect(
        model, bad, sites, f"span:{span}", path=None if store_dir is None else f"{store_dir}/corrupted", **kw
    )
    neg_store = collect(
        model, good, sites, f"span:{span}", path=None if store_dir is None else f"{store_dir}/clean", **kw
    )
    n = len(ids)
    feats = {
        l: torch.cat([pos_store.pooled(s, pool), neg_store.pooled(s, pool)]) for l, s in enumerate(sites)
    }
    labels = [1] * n + [0] * n
    groups = ids + ids
    sweep = probe_layers(
        feats, labels, groups, seed=seed, title=f"Probe: injected error vs clean at '{span}' tokens"
    )
    train = group_split(groups, (0.6, 0.2, 0.2), seed)[0]
    tr_bad = torch.as_tensor([i for i in train if i < n])
    tr_good = torch.as_tensor([i for i in train if i >= n])
    vec = vector_from_activations(
        {l: x[tr_bad] for l, x in feats.items()},
        {l: x[tr_good] for l, x in feats.items()},
        model_id=model.name,
        d_model=model.cfg.d_model,
        method=method,
        seed=seed,
        dataset_hash=hashlib.sha256((pos_store.dataset_hash + neg_store.dataset_hash).encode()).hexdigest(),
        settings=dict(
            kind="critique",
            span=span,
            pool=pool,
            context=context,
            n_train_pairs=len(tr_bad),
            run=run.settings,
        ),
    )
    # units="resid" means multiples of the per-token residual norm (as for every other vector): span-pooled
    # rows are shorter than the tokens they average, so measure the norm on the training problems' tokens.
    train_ids = {ids[i] for i in tr_bad.tolist()}
    stores = [
        (st, torch.tensor([ids[int(e)] in train_ids for e in st.example])) for st in (pos_store, neg_store)
    ]
    per_token = {
        l: float(torch.cat([st[s][keep].norm(dim=-1) for st, keep in stores]).mean())
        for l, s in enumerate(sites)
    }
    vec = dataclasses.replace(vec, resid_norms=per_token)
    settings = dict(span=span, method=method, pool=pool, seed=seed, context=context, n_pairs=n)
    y = torch.tensor(labels)[torch.as_tensor(train)]
    probe = fit_logistic(feats[sweep.best_layer][torch.as_tensor(train)], y)
    return CritiqueVector(vec, sweep.best_layer, sweep, span, probe, settings)


def _requestion(examples: list[Example], run: InjectionRun, ids: list[str]) -> list[Example]:
    """Swap each example's few-shot prompt for the bare question (spans shifted accordingly)."""
    by_id = {r.id: r for r in run.records}
    out = []
    for ex, pid in zip(examples, ids, strict=True):
        r = by_id[pid]
        short = f"Question: {r.question}\n"
        cut = len(r.prompt)
        text = short + ex.text[cut:]
        shift = len(short) - cut
        out.append(Example(text, {k: (a + shift, b + shift) for k, (a, b) in ex.spans.items()}))
    return out


@dataclass(frozen=True)
class DetectionPoint:
    """Detection quality of the model judging with one vector at one alpha."""

    vector: str  # "critique" or "random"
    alpha: float
    accuracy: Estimate  # binary: flagged (some prefix judged wrong) == has an error
    f1: Estimate  # ProcessBench F1 of earliest-error prediction
    error_accuracy: float
    correct_accuracy: float
    mean_p_error_on_errors: float
    mean_p_error_on_clean: float


@dataclass(frozen=True)
class DetectionSweep:
    """Error detection vs steering strength for the critique vector and its random control."""

    points: tuple[DetectionPoint, ...]
    p_true_auroc: float  # unsteered P(True) of the full solution as a detector (baseline)
    settings: dict[str, Any] = field(default_factory=dict)

    def series(self, vector: str) -> list[DetectionPoint]:
        return sorted((p for p in self.points if p.vector == vector), key=lambda p: p.alpha)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "p_true_auroc": self.p_true_auroc,
            "slope_p_error_per_alpha": {"critique": self.slope("critique"), "random": self.slope("random")},
            "points": [
                {
                    "vector": p.vector,
                    "alpha": p.alpha,
                    "accuracy": p.accuracy.to_dict(),
                    "f1": p.f1.to_dict(),
                    "error_accuracy": p.error_accuracy,
                    "correct_accuracy": p.correct_accuracy,
                    "mean_p_error_on_errors": p.mean_p_error_on_errors,
                    "mean_p_error_on_clean": p.mean_p_error_on_clean,
                }
                for p in self.points
            ],
        }

    def to_frame(self) -> Any:
        import pandas as pd

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

    def slope(self, vector: str) -> float:
        """Least-squares slope of the mean P(error) (over all items) against alpha: the dose-response."""
        pts = self.series(vector)
        a = np.array([p.alpha for p in pts])
        y = np.array([(p.mean_p_error_on_errors + p.mean_p_error_on_clean) / 2 for p in pts])
        return float(np.polyfit(a, y, 1)[0]) if len(pts) > 1 else float("nan")

    def verdict(self) -> str:
        """One honest sentence: does the critique vector beat its random control anywhere, beyond the CIs?"""
        crit, rand = self.series("critique"), self.series("random")
        base = next((p for p in crit if p.alpha == 0), crit[0])
        wins = [
            c.alpha
            for c, r in zip(crit, rand, strict=True)
            if c.accuracy.lo > max(r.accuracy.hi, base.accuracy.hi)
        ]
        slopes = (
            f"; mean P(error) vs alpha has slope {self.slope('critique'):+.3f} for the critique vector and "
            f"{self.slope('random'):+.3f} for the random control"
        )
        if wins:
            return (
                "critique steering raises detection accuracy above both the unsteered model and the random "
                f"control at alpha {wins}" + slopes
            )
        return (
            "no alpha raises detection accuracy above both the unsteered model and the random control beyond "
            f"the 95% CIs (unsteered accuracy {base.accuracy})" + slopes
        )

    def figure(self) -> Any:
        """Left: binary detection accuracy vs alpha (critique vs random control, 95% CIs). Right: the mean
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
        for name, colour, dash in (("critique", PALETTE[0], None), ("random", GREY, "dot")):
            pts = self.series(name)
            label = "critique vector" if name == "critique" else "random direction, equal norm"
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
        fig.add_hline(y=0.5, line_color="#bbb", line_width=1, row=1, col=1)
        fig.update_xaxes(title_text=f"alpha ({s.get('units')} units)")
        return fig


def detection_sweep(
    model: Model,
    cv: CritiqueVector,
    items: Sequence[StepItem],
    *,
    calibration: Sequence[StepItem] = (),
    alphas: Sequence[float] = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2),
    units: Units = "resid",
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 16,
) -> DetectionSweep:
    """Judge every step of ``items`` (P(True) per step, one forward per item) while steering at ``cv.layer``
    with each alpha, for the critique vector and a random direction of equal norm (alpha 0, unsteered, is
    shared). A step counts as flagged when P(True) < threshold; the threshold is 0.5, or, given
    ``calibration`` items (a separate set), the one maximising the unsteered model's balanced accuracy there,
    then held fixed for every alpha and vector."""
    items = list(items)
    if not items:
        raise SteerlensError("detection_sweep needs items (e.g. probes.detection.synthetic_detection_set)")
    labels = np.array([it.label for it in items])
    has_err = (labels != -1).astype(int)
    threshold = _calibrate(model, list(calibration), batch_size) if calibration else 0.5
    vectors = {"critique": cv.at_layer, "random": cv.at_layer.random_like(seed + 1)}
    steered = [a for a in alphas if a != 0]
    probs: dict[tuple[str, float], list[np.ndarray]] = {}
    if 0 in alphas or 0.0 in alphas:
        unsteered = step_p_true(model, items, batch_size=batch_size)
        probs[("critique", 0.0)] = probs[("random", 0.0)] = unsteered
    for name, vec in vectors.items():
        if not steered:
            continue
        rows = [(i, a) for i in range(len(items)) for a in steered]
        batch_items = [items[i] for i, _ in rows]

        def ctx(batch: list[int], vec: SteeringVector = vec, rows: list[tuple[int, float]] = rows) -> Any:
            return steer(model, Intervention(vec, alpha=[rows[r][1] for r in batch], units=units))

        got = step_p_true(model, batch_items, batch_size=batch_size, context=ctx)
        for a_idx, alpha in enumerate(steered):
            probs[(name, float(alpha))] = got[a_idx :: len(steered)]
    points = []
    for (name, alpha), per_item in sorted(probs.items()):
        preds = np.array([earliest_error(ps, threshold) for ps in per_item])
        flagged = (preds != -1).astype(int)
        p_err = np.array([1 - float(min(ps)) for ps in per_item])
        score = processbench_score(preds.tolist(), labels.tolist())
        points.append(
            DetectionPoint(
                vector=name,
                alpha=alpha,
                accuracy=bootstrap(_accuracy_at(flagged, has_err), len(items), n_boot=n_boot, seed=seed),
                f1=bootstrap(_f1_at(preds, labels), len(items), n_boot=n_boot, seed=seed),
                error_accuracy=score["error_accuracy"],
                correct_accuracy=score["correct_accuracy"],
                mean_p_error_on_errors=float(p_err[has_err == 1].mean()) if has_err.any() else float("nan"),
                mean_p_error_on_clean=float(p_err[has_err == 0].mean())
                if (1 - has_err).any()
                else float("nan"),
            )
        )
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


def _accuracy_at(flagged: np.ndarray, truth: np.ndarray) -> Any:
    return lambda i: float((flagged[i] == truth[i]).mean())


def _f1_at(preds: np.ndarray, labels: np.ndarray) -> Any:
    return lambda i: processbench_score(preds[i].tolist(), labels[i].tolist())["f1"]


@dataclass(frozen=True)
class CritiqueStudy:
    """Everything one ``steerlens critique`` run produced, with the settings that made it."""

    run: InjectionRun
    critique: CritiqueVector
    detection: DetectionSweep
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        best = self.critique.sweep.score(self.critique.layer)
        return {
            "settings": self.settings,
            "injection": self.run.summary(),
            "probe": {
                "span": self.critique.span,
                "chosen_layer": self.critique.layer,
                "chosen_on": "validation split",
                "test_auroc_at_chosen_layer": best.auroc,
                "test_auroc_ci": [best.auroc_lo, best.auroc_hi],
                "shuffled_label_auroc_at_chosen_layer": best.shuffled_auroc,
                "sweep": self.critique.sweep.to_dict(),
            },
            "detection": self.detection.to_dict(),
            "verdict": self.detection.verdict(),
        }

    def figures(self) -> dict[str, Any]:
        return {
            "injection_table": self.run.figure(),
            "probe_layers": self.critique.sweep.figure(),
            "detection_vs_alpha": self.detection.figure(),
        }

    def save(self, out: str | Path, formats: Sequence[str] = ("html",)) -> Path:
        """Write records, vector, metrics JSON and the figures in ``formats`` (HTML shares one plotly.js;
        ``()`` for none, e.g. when a report collects them) under ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.run.save(out / "records.jsonl")
        self.critique.vector.save(out / "critique_vector.safetensors")
        if self.critique.probe is not None:
            self.critique.probe.save(out / "critique_probe.safetensors", layer=self.critique.layer)
        write_json(out / "metrics.json", self.summary())
        save_figures(self.figures(), out, formats=formats)
        return out


def resumable(run: InjectionRun, wanted: dict[str, Any]) -> bool:
    """Whether checkpointed records were made with every setting in ``wanted`` (model, data, decoding)."""
    return all(run.settings.get(k) == v for k, v in wanted.items())


def critique_study(
    model: Model,
    out: str | Path | None = None,
    *,
    n: int = 200,
    seed: int = 0,
    mode: str = "generated",
    shots: int = 3,
    span: str = "answer",
    method: str = "mean",
    n_detect: int = 100,
    n_calibrate: int = 60,
    alphas: Sequence[float] = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2),
    units: Units = "resid",
    n_boot: int = 1000,
    max_new_tokens: int = 64,
    formats: Sequence[str] = ("html",),
    progress: bool = True,
) -> CritiqueStudy:
    """The critique pipeline end to end: error-injected reasoning on ``n`` problems, probes per layer and the
    critique vector (layer chosen on validation), then error detection vs alpha with a random control on a
    separate synthetic set. With ``out``, stages are checkpointed there and a rerun resumes."""
    say = print if progress else (lambda *a, **k: None)
    out_p = Path(out) if out is not None else None
    records = out_p / "records.jsonl" if out_p else None
    settings = dict(
        model=model.name,
        n=n,
        seed=seed,
        mode=mode,
        shots=shots,
        span=span,
        method=method,
        n_detect=n_detect,
        n_calibrate=n_calibrate,
        alphas=list(alphas),
        units=units,
        max_new_tokens=max_new_tokens,
    )
    run = InjectionRun.load(records) if records is not None and records.exists() else None
    wanted = dict(
        model=model.name, seed=seed, n_problems=n, mode=mode, shots=shots, max_new_tokens=max_new_tokens
    )
    fresh = run is not None and not resumable(run, wanted)
    if fresh:
        say(f"[critique 1/3] {records} holds another run's records ({wanted} asked): recomputing", flush=True)
        run = None
    if run is None:
        say(f"[critique 1/3] error-injected reasoning on {n} problems ({mode})", flush=True)
        run = error_injected_reasoning(
            model,
            n=n,
            mode=mode,
            seed=seed,
            shots=shots,
            chat="auto",
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
        if records is not None:
            run.save(records)
    else:
        say(f"[critique 1/3] reusing {records}", flush=True)
    t = run.table()
    say(f"      2x2 on {t['n']} injected: {t['fractions']}", flush=True)
    say(f"[critique 2/3] probes per layer at '{span}' tokens and the critique vector", flush=True)
    cv = critique_vector(
        model,
        run,
        span=span,
        method=method,
        seed=seed,
        store_dir=str(out_p / "activations") if out_p else None,
        overwrite=fresh,  # stores of a replaced run hold its traces, not these
    )
    sc = cv.sweep.score(cv.layer)
    say(
        f"      layer {cv.layer} (chosen on validation): test AUROC {sc.auroc:.3f}, shuffled {sc.shuffled_auroc:.3f}",
        flush=True,
    )
    say(
        f"[critique 3/3] error detection vs alpha on {n_detect} held-out items (+ random control)", flush=True
    )
    items = synthetic_detection_set(n_detect, seed=seed + 1_000)
    calib = synthetic_detection_set(n_calibrate, seed=seed + 2_000) if n_calibrate else []
    det = detection_sweep(
        model, cv, items, calibration=calib, alphas=alphas, units=units, seed=seed, n_boot=n_boot
    )
    say(f"      {det.verdict()}", flush=True)
    study = CritiqueStudy(run, cv, det, settings)
    if out_p is not None:
        study.save(out_p, formats)
    return study


# ---- command line (registered through the ``steerlens.commands`` entry point) -------------------------


def register(sub: Any) -> None:
    """Add this study's subcommand to the ``steerlens`` CLI."""
    p = sub.add_parser(
        "critique", help="error-injected reasoning, probes, critique vector, detection vs alpha"
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default="runs/critique")
    p.add_argument("--n", type=int, default=200, help="synthetic problems for error injection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=["generated", "templated"], default="generated")
    p.add_argument("--span", choices=["injected", "after", "answer"], default="answer")
    p.add_argument("--method", choices=["mean", "pca", "probe"], default="mean")
    p.add_argument("--n-detect", type=int, default=100, help="held-out error-detection items")
    p.add_argument("--alphas", default="-0.2,-0.1,-0.05,0,0.05,0.1,0.2", help="in residual-norm units")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from steerlens import load
    from steerlens.steering.critique import critique_study

    t0 = time.perf_counter()
    study = critique_study(
        load(args.model),
        args.out,
        n=args.n,
        seed=args.seed,
        mode=args.mode,
        span=args.span,
        method=args.method,
        n_detect=args.n_detect,
        alphas=[float(a) for a in args.alphas.split(",")],
    )
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s: {study.detection.verdict()}")
    return 0
