"""The critique vector: difference of means between corrupted and clean reasoning at a named span, with the
layer chosen by probing every layer (chosen on validation, scored on a held-out test split).

Held-out discipline: the vector is built on the training split of the injection run's problems and its layer
is chosen on the validation split.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.collect import collect
from steerlens.errors import SteerlensError
from steerlens.inputs import Example
from steerlens.model import Model
from steerlens.probes.linear import LayerSweep, Logistic, ProbeScore, fit_logistic, group_split, probe_layers
from steerlens.probes.trace_spans import trace_examples
from steerlens.probes.traces import InjectionRun
from steerlens.stats import N_BOOT
from steerlens.steering.build import Method, vector_from_activations
from steerlens.steering.vector import SteeringVector
from steerlens.store import ActivationStore

Span = Literal["injected", "after", "answer"]  # the trace tokens a vector and its probes read
Pool = Literal["mean", "last"]  # how a span's tokens become one row
Context = Literal["question", "prompt"]  # what precedes the trace when collecting
SPANS: tuple[Span, ...] = get_args(Span)
Control = Literal["random", "shuffled"]  # a random direction; the vector built with shuffled labels


@dataclass(frozen=True)
class CritiqueVector:
    """A critique vector at every layer (built on the training split) and the layer chosen on validation."""

    vector: SteeringVector
    layer: int
    sweep: LayerSweep
    span: Span
    probe: Logistic | None = None  # the error probe at ``layer``, fitted on the training split
    settings: dict[str, Any] = field(default_factory=dict)
    shuffled: SteeringVector | None = None  # the shuffled-label control (equal norms); None in older runs

    @property
    def at_layer(self) -> SteeringVector:
        return self.vector.select([self.layer])

    def controls(self, seed: int, layer: int | None = None) -> dict[Control, SteeringVector]:
        """The controls of equal norm at ``layer`` (default: the chosen one): a random direction (``seed``)
        and, where the vector was built with it, the shuffled-label vector."""
        at = self.layer if layer is None else layer
        out: dict[Control, SteeringVector] = {"random": self.vector.select([at]).random_like(seed)}
        if self.shuffled is not None:
            out["shuffled"] = self.shuffled.select([at])
        return out


def critique_vector(
    model: Model,
    run: InjectionRun,
    *,
    span: Span = "answer",
    method: Method = "mean",
    pool: Pool = "mean",
    seed: int = 0,
    context: Context = "question",
    batch_size: int = 8,
    n_boot: int = N_BOOT,
    store_dir: str | None = None,
    overwrite: bool = False,
) -> CritiqueVector:
    """Probe every layer for "this reasoning holds an injected error" at ``span`` and build the vector.

    Args:
        model: the model the traces were generated with.
        run: an error-injection run (``probes.traces.error_injected_reasoning``).
        span: the tokens read ("answer": the final answer's tokens).
        method: how the training rows become a direction (``steering.build.AGGREGATORS``).
        pool: how a span's tokens become one row.
        seed: the train / validation / test split of the problems (and the probes' shuffled control).
        context: "question" collects on "Question: ...\\n" + trace (short and fast), "prompt" on the full
            few-shot prompt the trace was generated with.
        batch_size, n_boot: collection batch size; resamples of the probes' test-AUROC intervals.
        store_dir, overwrite: keep the activation stores there (a rerun reuses them, unless ``overwrite``).

    Example:
        >>> cv = critique_vector(model, error_injected_reasoning(model, n=200), span="answer")
        >>> cv.layer, cv.sweep.score(cv.layer).auroc
    """
    if span not in SPANS:
        raise SteerlensError(f"span={span!r}: expected one of {SPANS}")
    feats, ids, stores = _span_features(model, run, span, pool, context, batch_size, store_dir, overwrite)
    n = len(ids)
    labels = [1] * n + [0] * n
    groups = ids + ids
    title = f"Probe: injected error vs clean at '{span}' tokens"
    sweep = probe_layers(feats, labels, groups, seed=seed, n_boot=n_boot, title=title)
    train = group_split(groups, (0.6, 0.2, 0.2), seed)[0]
    meta = dict(kind="critique", span=span, pool=pool, context=context)
    vec = _training_vector(model, feats, train, n, stores, method, seed, meta, run.settings)
    # units="resid" means multiples of the per-token residual norm (as for every other vector): span-pooled
    # rows are shorter than the tokens they average, so measure the norm on the training problems' tokens.
    train_ids = {ids[i] for i in train.tolist() if i < n}
    vec = dataclasses.replace(vec, resid_norms=_per_token_norms(stores, ids, train_ids))
    settings = dict(span=span, method=method, pool=pool, seed=seed, context=context, n_pairs=n)
    y = torch.tensor(labels)[torch.as_tensor(train)]
    probe = fit_logistic(feats[sweep.best_layer][torch.as_tensor(train)], y)
    shuffled = shuffled_control(vec, feats, train, n, method, seed)
    return CritiqueVector(vec, sweep.best_layer, sweep, span, probe, settings, shuffled)


def shuffled_control(
    vec: SteeringVector,
    feats: dict[int, Float[Tensor, "rows d"]],
    train: np.ndarray,
    n: int,
    method: Method,
    seed: int,
) -> SteeringVector:
    """The shuffled-label control of ``vec``: each training problem's corrupted and clean rows swap labels on
    a seeded coin flip (labels permuted within problems, as the pairing requires), the same ``method`` builds
    directions from them, and they take ``vec``'s norms, so every unit of alpha means the same for both.

    Why: a random direction is nearly orthogonal to everything the residual stream carries; this control
    lives in the span of the same activations and differs from the vector only in the labels.
    """
    bad = np.array([i for i in train if i < n])
    flip = np.random.default_rng(seed + 2).random(len(bad)) < 0.5
    pos, neg = torch.as_tensor(np.where(flip, bad + n, bad)), torch.as_tensor(np.where(flip, bad, bad + n))
    ctl = vector_from_activations(
        {l: x[pos] for l, x in feats.items()},
        {l: x[neg] for l, x in feats.items()},
        model_id=vec.model_id,
        d_model=vec.d_model,
        method=method,
        seed=seed,
    )
    return dataclasses.replace(
        vec,
        directions=ctl.directions,
        method=f"shuffled-labels({method}, seed={seed})",
        settings={**vec.settings, "control": "shuffled labels", "n_flipped": int(flip.sum())},
    )


def _span_features(
    model: Model,
    run: InjectionRun,
    span: Span,
    pool: Pool,
    context: Context,
    batch_size: int,
    store_dir: str | None,
    overwrite: bool,
) -> tuple[dict[int, Float[Tensor, "rows d"]], list[str], tuple[ActivationStore, ActivationStore]]:
    """resid_post at every layer, pooled over ``span``: corrupted rows then clean rows (one pair per problem
    id in the returned order), and the two stores they came from."""
    bad, good, ids = trace_examples(run)
    if context == "question":
        bad, good = _requestion(bad, run, ids), _requestion(good, run, ids)
    elif context != "prompt":
        raise SteerlensError(f"context={context!r}: expected 'question' or 'prompt'")
    sites = [_site(l) for l in range(model.cfg.n_layers)]
    kw: dict[str, Any] = dict(batch_size=batch_size, progress=False, overwrite=overwrite)
    pos_store = collect(
        model, bad, sites, f"span:{span}", path=None if store_dir is None else f"{store_dir}/corrupted", **kw
    )
    neg_store = collect(
        model, good, sites, f"span:{span}", path=None if store_dir is None else f"{store_dir}/clean", **kw
    )
    feats = {
        l: torch.cat([pos_store.pooled(s, pool), neg_store.pooled(s, pool)]) for l, s in enumerate(sites)
    }
    return feats, ids, (pos_store, neg_store)


def _site(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def _training_vector(
    model: Model,
    feats: dict[int, Float[Tensor, "rows d"]],
    train: np.ndarray,
    n: int,
    stores: tuple[ActivationStore, ActivationStore],
    method: Method,
    seed: int,
    settings: dict[str, Any],
    run_settings: dict[str, Any],
) -> SteeringVector:
    """The ``method`` vector of the training split's corrupted (rows < ``n``) vs clean rows."""
    dataset_hash = hashlib.sha256((stores[0].dataset_hash + stores[1].dataset_hash).encode()).hexdigest()
    tr_bad = torch.as_tensor([i for i in train if i < n])
    tr_good = torch.as_tensor([i for i in train if i >= n])
    return vector_from_activations(
        {l: x[tr_bad] for l, x in feats.items()},
        {l: x[tr_good] for l, x in feats.items()},
        model_id=model.name,
        d_model=model.cfg.d_model,
        method=method,
        seed=seed,
        dataset_hash=dataset_hash,
        settings={**settings, "n_train_pairs": len(tr_bad), "run": run_settings},
    )


def _per_token_norms(
    stores: tuple[ActivationStore, ActivationStore], ids: list[str], train_ids: set[str]
) -> dict[int, float]:
    """Mean per-token residual norm per layer over the training problems' span tokens (both stores)."""
    kept = [(st, torch.tensor([ids[int(e)] in train_ids for e in st.example])) for st in stores]
    return {
        l: float(torch.cat([st[s][keep].norm(dim=-1) for st, keep in kept]).mean())
        for l, s in enumerate(stores[0].sites)
    }


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


def sweep_from_dict(d: dict[str, Any]) -> LayerSweep:
    """Rebuild a ``LayerSweep`` from its ``to_dict()`` (as a critique run's ``metrics.json`` holds it)."""
    return LayerSweep(tuple(ProbeScore(**s) for s in d["scores"]), d["settings"])
