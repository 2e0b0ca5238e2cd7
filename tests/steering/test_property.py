"""Randomized differential test: ``steer()`` (fold, hooks, every view, with and without KV cache) equals the
plain reference in ``reference.py`` on random intervention lists, positions, padding and chunking.

The seed is printed; replay a failure with ``STEERLENS_PROPERTY_SEED=<seed> pytest tests/steering/test_property.py``.
``STEERLENS_PROPERTY_CASES`` sets the cases per model (default 150, so 300 per run over both models).
"""

from __future__ import annotations

import os
import random

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from steerlens.steering import Intervention, Trigger, Window, steer

from .reference import hf_reference, lens_reference

SEED = int(os.environ.setdefault("STEERLENS_PROPERTY_SEED", str(random.SystemRandom().randrange(2**31))))
CASES = int(os.environ.get("STEERLENS_PROPERTY_CASES", "150"))
LAYERS = (1, 3, 6)
TOL = 1e-5  # max |logit difference| at real positions relative to max |logit| (fp32); the tally prints the worst
# one forward ("single") is held to TOL; prefill + cached chunks and cacheless re-runs, whose kernels see other
# shapes, to 2 * TOL (the worst seen over 300 cases was 9.7e-6)
TALLY: dict[str, list[float]] = {"diff": [], "effect": []}


@st.composite
def cases(draw, model, vectors):
    hooked = model.lens_kind == "hooked"
    view = draw(st.sampled_from(["hf", "nn", "lens"]))
    modes = {"hf": ["single", "cache", "rerun"], "nn": ["single", "rerun"], "lens": ["single", "rerun"]}[view]
    mode = draw(st.sampled_from(modes + (["cache"] if view == "lens" and hooked else [])))
    padding = draw(st.sampled_from(["none", "left", "right"] if mode == "single" else ["none", "left"]))
    batch = draw(st.integers(1, 3))
    n0 = draw(st.integers(2, 6))
    lens = [n0 if padding == "none" else draw(st.integers(2, 6)) for _ in range(batch)]
    gen = 0 if mode == "single" else draw(st.integers(1, 4))
    rows = [draw(st.lists(st.integers(10, 3000), min_size=n + gen, max_size=n + gen)) for n in lens]
    chunks = []
    left = gen
    while left:
        c = draw(st.integers(1, left))
        chunks.append(c)
        left -= c
    ivs = [draw(interventions(vectors, batch, rows)) for _ in range(draw(st.integers(1, 4)))]
    fold = draw(st.sampled_from(["auto", False]))
    return dict(
        view=view,
        mode=mode,
        padding=padding,
        lens=lens,
        gen=gen,
        rows=rows,
        chunks=chunks,
        ivs=ivs,
        fold=fold,
    )


@st.composite
def interventions(draw, vectors, batch, rows):
    vec = draw(st.sampled_from(vectors))
    layers = draw(st.lists(st.sampled_from(LAYERS), min_size=1, max_size=3, unique=True))
    op = draw(st.sampled_from(["add", "add", "add_norm", "ablate", "clamp"]))
    kind = draw(st.sampled_from(["all", "all", "prompt", "generated", "window", "rows", "trigger"]))
    if kind == "window":
        start = draw(st.integers(0, 5))
        positions = Window(start, draw(st.one_of(st.none(), st.integers(start, 9))))
    elif kind == "rows":
        positions = Window([draw(st.integers(0, 5)) for _ in range(batch)])
    elif kind == "trigger":
        positions = Trigger((draw(st.sampled_from(draw(st.sampled_from(rows)))),))
    else:
        positions = kind
    scalar = st.floats(-3, 3, allow_nan=False).map(lambda a: round(a, 3))
    per_row = draw(st.booleans())
    alpha = [draw(scalar) for _ in range(batch)] if per_row else draw(scalar)
    units = draw(st.sampled_from(["vector", "raw", "resid"] if op != "ablate" else ["vector"]))
    if op == "ablate":
        alpha = [abs(a) / 3 for a in alpha] if per_row else abs(alpha) / 3
    return Intervention(vec, alpha=alpha, op=op, positions=positions, units=units, layers=layers)


def _batch(model, case):
    """Left/right padded ids and mask of the whole sequences, and each row's real prompt length."""
    pad = model.tokenizer.pad_token_id
    width = max(len(r) for r in case["rows"])
    ids, mask = [], []
    for r in case["rows"]:
        fill = [pad] * (width - len(r))
        ids.append(r + fill if case["padding"] == "right" else fill + r)
        m = [1] * len(r) + [0] * len(fill)
        mask.append(m if case["padding"] == "right" else m[::-1] if fill else m)
    ids, mask = torch.tensor(ids), torch.tensor(mask)
    prompt_lens = [len(r) - case["gen"] for r in case["rows"]]
    return ids, mask, prompt_lens


def _forward(model, view, ids, mask, **kw):
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    if view == "hf":
        return model.hf(ids, attention_mask=mask, position_ids=pos[:, -ids.shape[1] :], **kw)
    if view == "nn":
        with model.nn.trace(ids, attention_mask=mask, position_ids=pos):
            out = model.nn.output.save()
        return out
    return model.lens(ids, attention_mask=mask[:, -ids.shape[1] :], **kw)


def _engine(model, case, ids, mask):
    view, width = case["view"], ids.shape[1] - case["gen"]
    with steer(model, *case["ivs"], fold=case["fold"]):
        if case["mode"] == "single":
            out = _forward(model, view, ids, mask)
            return out if view == "lens" else out.logits
        if case["mode"] == "rerun":  # generation without a cache: the growing prefix is re-run each step
            end = width
            out = _forward(model, view, ids[:, :end], mask[:, :end])
            for c in case["chunks"]:
                end += c
                out = _forward(model, view, ids[:, :end], mask[:, :end])
            return out if view == "lens" else out.logits
        if view == "lens":
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            cache = TransformerLensKeyValueCache.init_cache(model.lens.cfg, model.device, ids.shape[0])
            parts = [model.lens(ids[:, :width], attention_mask=mask[:, :width], past_kv_cache=cache)]
            end = width
            for c in case["chunks"]:
                parts.append(
                    model.lens(
                        ids[:, end : end + c], attention_mask=mask[:, end : end + c], past_kv_cache=cache
                    )
                )
                end += c
            return torch.cat(parts, dim=1)
        out = _forward(model, "hf", ids[:, :width], mask[:, :width], use_cache=True)
        parts, cache, end = [out.logits], out.cache, width
        for c in case["chunks"]:
            out = _forward(
                model, "hf", ids[:, end : end + c], mask[:, : end + c], cache=cache, use_cache=True
            )
            parts.append(out.logits)
            cache, end = out.cache, end + c
        return torch.cat(parts, dim=1)


def _check(model, case):
    ids, mask, prompt_lens = _batch(model, case)
    ref_fn = lens_reference if case["view"] == "lens" else hf_reference
    ref = ref_fn(model, case["ivs"], ids, mask, prompt_lens)
    got = _engine(model, case, ids, mask)
    real = mask.bool()
    diff = float((got - ref)[real].abs().max())
    TALLY["diff"].append(diff / max(1.0, float(ref[real].abs().max())))
    TALLY.setdefault("kind", []).append(
        f"{model.name} {case['view']} {case['mode']} {case['padding']} fold={case['fold']}"
    )
    base = ref_fn(model, [], ids, mask, prompt_lens)
    TALLY["effect"].append(float((ref - base)[real].abs().max()))
    scale = float(ref[real].abs().max())
    tol = TOL if case["mode"] == "single" else 2 * TOL  # other shapes, other kernels: rounding differs
    assert diff <= tol * max(1.0, scale), (f"replay with STEERLENS_PROPERTY_SEED={SEED}", diff, scale, case)


@pytest.fixture(scope="module")
def vectors(model, smol_vec, gemma_vec):
    vec = (smol_vec if model.cfg.d_model == smol_vec.d_model else gemma_vec).select(list(LAYERS))
    return [vec, vec.random_like(7)]


def test_steer_equals_reference(model, vectors):
    assert model.lens is not None  # built before steer(), so it is steered too

    @seed(SEED)
    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate],  # no shrinking (costly forwards): the seed replays it
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data):
        _check(model, data.draw(cases(model, vectors)))

    run()


def test_tally_is_not_vacuous():
    """The randomized cases really steered (most change the logits) and the worst difference is printed."""
    if not TALLY["diff"]:
        pytest.skip("the property test did not run")
    effects = TALLY["effect"]
    print(f"property test: {len(effects)} cases, max |steer - reference| {max(TALLY['diff']):.2e}")
    worst = sorted(zip(TALLY["diff"], TALLY["kind"], strict=True), reverse=True)[:8]
    print("worst cases:", *[f"{d:.1e} {k}" for d, k in worst], sep="\n  ")
    # many cases legitimately change nothing (generated-only steering on a single forward, alpha 0): seed 12345
    # steers 149 of 300
    assert sum(e > 1e-2 for e in effects) >= 0.4 * len(effects)
