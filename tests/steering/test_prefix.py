"""Randomized differential test of the shared-prefix prefill (``steerlens.prefix``): every token ``generate``
emits, with the prefix shared or not, is the greedy choice of the plain reference (``reference.py``: one
unpadded, uncached forward of that row alone, steering as explicit per-position hooks).

Cases draw prompts with a common prefix, batch sizes, a ``RowSteering`` (per-row alphas and windows) and an
outer ``steer()`` context, over every position kind: those that spare the prefix keep it shared, the others
must switch sharing off. Replay with ``STEERLENS_PROPERTY_SEED=<seed>``.
"""

from __future__ import annotations

import contextlib
import os
import random

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from steerlens.generation import continuation_logprobs, generate_detailed, next_token_logprobs
from steerlens.prefix import MIN_SHARED, SharedPrefix, common_prefix
from steerlens.steering import Intervention, RowSteering, Trigger, Window, steer
from steerlens.steering.positions import spares_prefix

from .reference import hf_reference

SEED = int(os.environ.setdefault("STEERLENS_PROPERTY_SEED", str(random.SystemRandom().randrange(2**31))))
CASES = {"smollm2-135m-instruct": 16, "gemma-3-270m": 8}
LAYERS = (1, 3, 6)
BUDGET = 6
TOL = 1e-4  # a chosen token may trail the reference's best logit by this (relative): float near-ties only
TALLY: dict[str, int] = {
    "cases": 0,
    "shared": 0,
    "unshared": 0,
    "steered_changed": 0,
    "scored_shared": 0,
    "scored_unshared": 0,
}


def test_common_prefix_leaves_each_prompt_a_token():
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == [1, 2]
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5]]) == [1, 2]
    assert common_prefix([[1, 2], [3, 2]]) == []
    assert common_prefix([[1, 2, 3]]) == []  # one prompt: nothing to share


def test_which_positions_spare_a_prefix():
    prefix = torch.tensor([[5, 6, 7, 8]] * 2)
    assert spares_prefix(["generated"], prefix)
    assert not spares_prefix(["all"], prefix) and not spares_prefix(["prompt"], prefix)
    assert spares_prefix([Window(4)], prefix) and not spares_prefix([Window(3)], prefix)
    assert spares_prefix([Window(0, 0)], prefix)
    assert not spares_prefix([Window((4, 2))], prefix)  # row 2 starts inside the prefix
    assert spares_prefix([Trigger((9,))], prefix) and not spares_prefix([Trigger((7,))], prefix)


def test_plan_refuses_what_could_change_a_number(gemma, monkeypatch):
    """No sharing past gemma's 512-token sliding window (pads stretch a row's distance to the prefix), with
    RoPE scaled by length, or where ``generate`` refuses a given cache; otherwise the common prefix."""
    heads = [[5] * 20 + [6], [5] * 20 + [7, 8]]
    assert SharedPrefix.plan(gemma, heads, 512, generating=True).ids == [5] * 20
    assert SharedPrefix.plan(gemma, heads, 513, generating=False) is None
    assert SharedPrefix.plan(gemma, [[5] * 15 + [6], [5] * 15 + [7]], 100, generating=True) is None  # short
    monkeypatch.setattr(gemma.hf.generation_config, "cache_implementation", "static")
    assert SharedPrefix.plan(gemma, heads, 100, generating=True) is None
    assert SharedPrefix.plan(gemma, heads, 100, generating=False) is not None
    monkeypatch.setattr(gemma.hf.generation_config, "cache_implementation", None)
    rope = {"sliding_attention": {"rope_type": "default"}, "full_attention": {"rope_type": "dynamic"}}
    monkeypatch.setattr(gemma.hf.config.get_text_config(), "rope_parameters", rope)
    assert SharedPrefix.plan(gemma, heads, 100, generating=False) is None


@st.composite
def cases(draw, vectors):
    n_prefix = draw(st.sampled_from([0, MIN_SHARED, MIN_SHARED + 9]))
    token = st.integers(10, 3000)
    prefix = draw(st.lists(token, min_size=n_prefix, max_size=n_prefix))
    n = draw(st.integers(2, 5))
    prompts = [prefix + draw(st.lists(token, min_size=1, max_size=7)) for _ in range(n)]
    pool = [t for p in prompts for t in p]
    row_ivs = [draw(interventions(vectors, n, pool, True)) for _ in range(draw(st.integers(0, 2)))]
    outer = [draw(interventions(vectors, n, pool, False)) for _ in range(draw(st.integers(0, 1)))]
    return dict(prompts=prompts, batch=draw(st.integers(1, 4)), row_ivs=row_ivs, outer=outer)


@st.composite
def interventions(draw, vectors, n, pool, per_row_ok):
    kind = draw(st.sampled_from(["all", "prompt", "generated", "generated", "window", "rows", "trigger"]))
    if kind == "window":
        start = draw(st.integers(0, 40))
        positions = Window(start, draw(st.one_of(st.none(), st.integers(start + 1, 45))))
    elif kind == "rows" and per_row_ok:
        positions = Window([draw(st.integers(0, 40)) for _ in range(n)])
    elif kind == "trigger":
        positions = Trigger((draw(st.sampled_from(pool)),))
    else:
        positions = "generated" if kind == "rows" else kind
    op = draw(st.sampled_from(["add", "add", "ablate", "clamp"]))
    big = st.floats(-4, 4, allow_nan=False).map(lambda a: round(a, 2))
    alpha = [draw(big) for _ in range(n)] if per_row_ok and draw(st.booleans()) else draw(big)
    if op == "ablate":
        alpha = [abs(a) / 4 for a in alpha] if isinstance(alpha, list) else abs(alpha) / 4
    vec = draw(st.sampled_from(vectors))
    layers = draw(st.lists(st.sampled_from(LAYERS), min_size=1, max_size=2, unique=True))
    return Intervention(vec, alpha=alpha, op=op, positions=positions, units="resid", layers=layers)


def _row(iv: Intervention, r: int) -> Intervention:
    return RowSteering((iv,)).for_rows([r])[0]


def _check_against_reference(model, case, got):
    """Each emitted token is the reference's argmax (to TOL) at its step, for that row alone."""
    for r, (prompt, g) in enumerate(zip(case["prompts"], got, strict=True)):
        ids = torch.tensor([prompt + list(g.token_ids)])
        ivs = [*case["outer"], *(_row(iv, r) for iv in case["row_ivs"])]
        ref = hf_reference(model, ivs, ids, torch.ones_like(ids), [len(prompt)])[0].float()
        for k, tok in enumerate(g.token_ids):
            logits = ref[len(prompt) + k - 1]
            slack = TOL * max(1.0, float(logits.abs().max()))
            assert float(logits[tok]) >= float(logits.max()) - slack, (
                f"replay with STEERLENS_PROPERTY_SEED={SEED}",
                r,
                k,
                case,
            )


def _generate(model, case, share):
    rs = RowSteering(tuple(case["row_ivs"]))
    with steer(model, *case["outer"]) if case["outer"] else contextlib.nullcontext():
        return generate_detailed(
            model,
            case["prompts"],
            max_new_tokens=BUDGET,
            batch_size=case["batch"],
            steering=rs,
            share_prefix=share,
        )


@pytest.fixture(scope="module")
def vectors(model, smol_vec, gemma_vec):
    vec = (smol_vec if model.cfg.d_model == smol_vec.d_model else gemma_vec).select(list(LAYERS))
    return [vec, vec.random_like(3)]


def test_shared_prefix_generation_equals_reference(model, vectors, monkeypatch):
    used = []
    layout = SharedPrefix.layout
    monkeypatch.setattr(SharedPrefix, "layout", lambda self, b: used.append(1) or layout(self, b))

    @seed(SEED)
    @settings(
        max_examples=CASES[model.name],
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data):
        case = data.draw(cases(vectors))
        used.clear()
        got = _generate(model, case, share=True)
        TALLY["cases"] += 1
        TALLY["shared" if used else "unshared"] += 1
        _check_against_reference(model, case, got)
        if case["row_ivs"] or case["outer"]:
            bare = generate_detailed(model, case["prompts"], max_new_tokens=BUDGET, share_prefix=False)
            TALLY["steered_changed"] += any(
                a.token_ids != b.token_ids for a, b in zip(got, bare, strict=True)
            )

    run()


def test_prefix_tally_is_not_vacuous():
    """Both branches ran (shared and switched off) and steering changed the tokens in many cases."""
    if not TALLY["cases"]:
        pytest.skip("the randomized prefix test did not run")
    print(f"prefix test: {TALLY}")
    assert TALLY["shared"] >= 5 and TALLY["unshared"] >= 5, TALLY
    assert TALLY["steered_changed"] >= 5, TALLY
    assert TALLY["scored_shared"] >= 2 and TALLY["scored_unshared"] >= 2, TALLY


PREAMBLE = "Answer each question with care, checking every step of the working before you reply. "
WORDS = [
    "Is",
    "the",
    "sum",
    "of",
    "seven",
    "and",
    "five",
    "twelve",
    "?",
    "Yes",
    "no",
    "maybe",
    "river",
    "blue",
]


@st.composite
def text_cases(draw, model, vectors):
    shared = draw(st.booleans())
    n = draw(st.integers(2, 4))
    prompts = [
        (PREAMBLE if shared else draw(st.sampled_from(WORDS)) + " ")
        + " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6)))
        for _ in range(n)
    ]
    pool = [t for p in model.tokenize(prompts) for t in p]
    row_ivs = [draw(interventions(vectors, n, pool, True)) for _ in range(draw(st.integers(0, 2)))]
    conts = [" " + draw(st.sampled_from(WORDS)) + " " + draw(st.sampled_from(WORDS)) for _ in range(n)]
    return dict(prompts=prompts, conts=conts, batch=draw(st.integers(1, 3)), row_ivs=row_ivs)


def test_shared_prefix_scoring_equals_reference(model, vectors, monkeypatch):
    """``next_token_logprobs`` and ``continuation_logprobs`` (prefix shared where steering allows) equal the
    reference's log-probabilities of each row alone."""
    used = []
    layout = SharedPrefix.layout
    monkeypatch.setattr(SharedPrefix, "layout", lambda self, b: used.append(1) or layout(self, b))
    cand = model.tokenize([" Yes", " no"])
    cand = [cand[0][-1], cand[1][-1]]

    @seed(SEED)
    @settings(max_examples=CASES[model.name] // 2, deadline=None, database=None, phases=[Phase.generate])
    @given(data=st.data())
    def run(data):
        case = data.draw(text_cases(model, vectors))
        rs = RowSteering(tuple(case["row_ivs"]))
        nt = next_token_logprobs(model, case["prompts"], cand, batch_size=case["batch"], steering=rs)
        total, _ = continuation_logprobs(
            model, case["prompts"], case["conts"], batch_size=case["batch"], steering=rs
        )
        TALLY["scored_shared" if used else "scored_unshared"] += 1
        used.clear()
        for r, (p, c) in enumerate(zip(case["prompts"], case["conts"], strict=True)):
            head, ids = model.tokenize(p)[0], model.tokenize(p + c)[0]
            ivs = [_row(iv, r) for iv in case["row_ivs"]]
            x = torch.tensor([ids])
            ref = torch.log_softmax(
                hf_reference(model, ivs, x, torch.ones_like(x), [len(ids)])[0].float(), -1
            )
            x = torch.tensor([head])
            last = torch.log_softmax(hf_reference(model, ivs, x, torch.ones_like(x), [len(head)])[0, -1], -1)
            assert torch.allclose(nt[r], last[cand].float(), atol=1e-4), (SEED, r, case)
            want = sum(float(ref[t - 1, ids[t]]) for t in range(len(head), len(ids)))
            assert abs(float(total[r]) - want) < 1e-3, (SEED, r, case)

    run()
