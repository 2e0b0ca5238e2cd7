"""Frozen-scale decomposition and ablations on gemma-3-270m: contributions add up to the model's own
activations and logits, a broken decomposition is refused, CSPA's identities hold, and the direct effect of
one head equals the same intervention done with TransformerLens hooks."""

import dataclasses

import numpy as np
import pytest

from steerlens.analysis import LinearisationError, corpus_windows, cspa, direct_effects, run_decomposed
from steerlens.analysis.decompose import attn_bias, check_additivity, head_results
from steerlens.errors import SteerlensError


@pytest.fixture(scope="module")
def text(gemma):
    # 4 x 20 tokens: 72 scored positions, each a full-vocabulary softmax per variant; every identity below
    # holds at any size, and L15H1 still matters here (mean-ablation KL ~0.07, CSPA explains ~0.3)
    return corpus_windows(gemma, 4, 20)


@pytest.fixture(scope="module")
def run(gemma, text):
    return run_decomposed(gemma, text)


def test_gemma_needs_and_gets_the_post_norm_linearisation(gemma, run):
    assert gemma.lens.cfg.use_normalization_before_and_after
    assert run.post_scale is not None and run.post_scale.shape[:3] == (gemma.cfg.n_layers, *run.tokens.shape)
    assert check_additivity(gemma, run) < 1e-5


def test_per_head_contributions_add_up_to_the_residual_and_the_logits(gemma, text, run):
    lens = gemma.lens
    _, cache = lens.run_with_cache(
        text, return_type=None, names_filter=lambda n: n.endswith(("hook_embed", "mlp_out"))
    )
    total = cache["hook_embed"].clone()
    for l in range(gemma.cfg.n_layers):
        total += (
            head_results(gemma, run, l).sum(2) + attn_bias(gemma, run, l) + cache[f"blocks.{l}.hook_mlp_out"]
        )
    rel = (total - run.resid_final).norm() / run.resid_final.norm()
    assert rel < 1e-4
    logits = lens(text)
    ours = run.final(total) @ lens.W_U + lens.b_U
    assert ((ours - logits).norm() / logits.norm()) < 1e-4


def test_a_decomposition_that_does_not_add_up_is_refused(gemma, run):
    broken = run.attn_out.clone()
    broken[5] *= 1.01
    with pytest.raises(LinearisationError, match=r"layer 5: .*hook_attn_out.*path-patching"):
        check_additivity(gemma, dataclasses.replace(run, attn_out=broken))


def test_cspa_keeping_everything_explains_all_and_keeping_nothing_explains_none(gemma, text, run):
    everything = cspa(gemma, 15, 1, text, qk="all", ov="full", run=run)
    nothing = cspa(gemma, 15, 1, text, qk="none", run=run)
    assert everything.kl_mean_ablation > 1e-3  # the head matters, so the ratio is meaningful
    assert everything.effect_explained == pytest.approx(1.0, abs=1e-3)
    assert nothing.effect_explained == pytest.approx(0.0, abs=1e-3)
    assert nothing.kl_cspa == pytest.approx(nothing.kl_mean_ablation, rel=1e-4)
    real = cspa(gemma, 15, 1, text, run=run)
    assert 0.0 < real.effect_explained < 1.0
    assert real.curve.shape == real.percentiles.shape and real.curve[0] == pytest.approx(
        real.effect_explained
    )
    assert real.settings["qk"] == "predicted" and real.settings["predicted_fraction"] == 0.05
    with pytest.raises(SteerlensError, match="qk="):
        cspa(gemma, 15, 1, text, qk="some", run=run)


def test_direct_effect_equals_the_same_intervention_with_hooks(gemma, text, run):
    """Mean-ablating L15H1's direct path with the final-norm scale frozen, done independently with TL hooks."""
    lens, l, h = gemma.lens, 15, 1
    de = direct_effects(gemma, text, max_positions=None, run=run, heads=[(l, h), (7, 1)])
    assert de.loss.shape == (gemma.cfg.n_layers, gemma.cfg.n_heads) and de.kl[7, 1] >= 0
    assert int((~np.isnan(de.kl)).sum()) == 2
    c = head_results(gemma, run, l)[:, :, h]
    delta = c.mean(0, keepdim=True) - c
    _, cache = lens.run_with_cache(text, return_type=None, names_filter="ln_final.hook_scale")
    scale = cache["ln_final.hook_scale"]
    hooks = [
        (f"blocks.{gemma.cfg.n_layers - 1}.hook_resid_post", lambda x, hook: x + delta),
        ("ln_final.hook_scale", lambda s, hook: scale),
    ]
    with lens.hooks(fwd_hooks=hooks):
        ablated = lens(text).log_softmax(-1)
    clean = lens(text).log_softmax(-1)
    kl = (clean.exp() * (clean - ablated)).sum(-1)[:, 1:-1]
    assert de.kl[l, h] == pytest.approx(float(kl.mean()), rel=1e-3)
    tgt = text[:, 2:]
    dloss = -(ablated[:, 1:-1].gather(-1, tgt[..., None]) - clean[:, 1:-1].gather(-1, tgt[..., None]))
    assert de.loss[l, h] == pytest.approx(float(dloss.mean()), rel=1e-3, abs=1e-5)
    assert de.entropy[15, 1] > 0.05  # L15H1 raises the output entropy: a calibrating head
