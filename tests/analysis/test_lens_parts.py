"""The copy-suppression analyses on both TransformerLens views: ``lens_parts`` reads per-query-head weights that
reproduce each model's own attention (smollm2's TransformerBridge, 9 query / 3 KV heads, no biases; qwen's
HookedTransformer, 14 / 2 heads with Q/K/V biases), norms that linearise exactly, and the same OV/QK/direct-
effect numbers on smollm2's bridge as on a HookedTransformer built over the very same weights."""

import numpy as np
import pytest
import torch
from torch import nn

from steerlens.analysis import (
    CopySuppressionConfig,
    LinearisationError,
    corpus_windows,
    cspa,
    direct_effects,
    effective_embedding,
    find_negative_heads,
    ov_ranks,
    planted_suppression_head,
    qk_grid,
    run_decomposed,
    scan_heads,
    token_set,
)
from steerlens.analysis.copy_suppression import run
from steerlens.analysis.decompose import attn_bias, frozen_norm, head_results
from steerlens.analysis.lens_parts import head_weights, is_bridge, norm_spec
from steerlens.analysis.qk import qk_vectors
from steerlens.model import EMBEDDED, Model
from steerlens.weights import cached_model_dir

TEXT = "When Mary and John went to the store, John gave a drink to Mary"


@pytest.fixture(scope="module")
def smol_hooked(smol):
    """smollm2 as a HookedTransformer over the same HF tensors (TL supports Llama; the registry picks a bridge)."""
    path = cached_model_dir(EMBEDDED["smollm2-135m-instruct"])
    return Model(smol.name, smol.hf, smol.tokenizer, tl_name=str(path), lens_kind="hooked")


@pytest.fixture(params=["smol", "qwen"])
def lensed(request):
    return request.getfixturevalue(request.param)


def test_bridge_weights_are_expanded_per_query_head_like_transformer_lens(smol, smol_hooked):
    bridge, hooked = smol.lens, smol_hooked.lens
    assert is_bridge(bridge) and not is_bridge(hooked)
    assert bridge.blocks[3].attn.W_K.shape == (3, 576, 64) and bridge.blocks[3].attn.b_V is None
    for l in (0, 17):
        b, h = head_weights(bridge, l), head_weights(hooked, l)
        for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            assert torch.equal(getattr(b, k), getattr(h, k)), k
        assert b.W_K.shape == (9, 576, 64) and not b.b_V.any() and not b.b_O.any()
        # query heads 0-2 share KV head 0, 3-5 KV head 1, ... (repeat_interleave, not repeat)
        raw = bridge.blocks[l].attn.W_V
        assert torch.equal(b.W_V[4], raw[1]) and torch.equal(hooked.blocks[l].attn.W_V[8], raw[2])


def test_head_weights_reproduce_the_models_own_attention(lensed):
    """z from the weights and the cached pattern equals hook_z; at position 0 (rotary is the identity) the
    query-key products equal hook_attn_scores. Qwen checks the biases, both check the GQA head mapping."""
    lens = lensed.lens
    toks = torch.tensor([lensed.tokenize(TEXT)[0]])
    d_head = lens.cfg.d_head
    for l in (1, lens.cfg.n_layers - 2):
        _, cache = lens.run_with_cache(
            toks, return_type=None, names_filter=lambda n, l=l: n.startswith(f"blocks.{l}.")
        )
        w = head_weights(lens, l)
        v = (
            torch.einsum("bpm,hmd->bphd", lens.blocks[l].ln1(cache[f"blocks.{l}.hook_resid_pre"]), w.W_V)
            + w.b_V
        )
        z = torch.einsum("bhqk,bkhd->bqhd", cache[f"blocks.{l}.attn.hook_pattern"], v)
        torch.testing.assert_close(z, cache[f"blocks.{l}.attn.hook_z"], rtol=1e-4, atol=1e-4)
        x0 = cache[f"blocks.{l}.hook_resid_pre"][:, 0]  # [1, d_model]
        scores = [
            float((q * k).sum()) / d_head**0.5
            for q, k in (qk_vectors(lens, l, h, x0, x0) for h in range(w.W_Q.shape[0]))
        ]
        torch.testing.assert_close(
            torch.tensor(scores), cache[f"blocks.{l}.attn.hook_attn_scores"][0, :, 0, 0], rtol=1e-4, atol=1e-4
        )


def test_effective_embedding_is_layer0_output_of_a_lone_token(lensed):
    ids = token_set(lensed, 6, seed=1).tensor()
    ee = effective_embedding(lensed, ids, "self_attn")
    _, cache = lensed.lens.run_with_cache(
        ids[:, None], return_type=None, names_filter="blocks.0.hook_resid_post"
    )
    want = cache["blocks.0.hook_resid_post"][:, 0]
    torch.testing.assert_close(ee.vectors, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_norms_linearise_exactly_at_the_recorded_scale_or_are_refused(smol, qwen):
    for model in (smol, qwen):
        lens = model.lens
        toks = torch.tensor([model.tokenize(TEXT)[0]])
        _, cache = lens.run_with_cache(toks, return_type=None)
        last = f"blocks.{lens.cfg.n_layers - 1}.hook_resid_post"
        for site, module, x in (
            ("blocks.5.ln1", lens.blocks[5].ln1, cache["blocks.5.hook_resid_pre"]),
            ("ln_final", lens.ln_final, cache[last]),
        ):
            got = frozen_norm(module, cache[f"{site}.hook_scale"])(x)
            torch.testing.assert_close(got, module(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(LinearisationError, match="'Identity' has no frozen-scale linearisation"):
        norm_spec(nn.Identity())

    class RMSNorm(nn.Module):  # named like TL's, computes something else: the random-input check refuses it
        w = nn.Parameter(torch.ones(4))

        def forward(self, x):
            return 2 * x

    with pytest.raises(LinearisationError, match="differs from the module's output"):
        norm_spec(RMSNorm())


def test_bridge_and_hooked_transformer_give_the_same_copy_suppression_numbers(smol, smol_hooked):
    sample = token_set(smol, 120, seed=2)
    for variant in ("self_attn", "mlp0"):
        a, b = effective_embedding(smol, sample, variant), effective_embedding(smol_hooked, sample, variant)
        torch.testing.assert_close(a.vectors, b.vectors, rtol=1e-4, atol=1e-4)
    sa, sb = scan_heads(smol, sample), scan_heads(smol_hooked, sample)
    for k in sa.metrics:
        np.testing.assert_allclose(sa.metrics[k], sb.metrics[k], atol=1e-4, err_msg=k)
    few = token_set(smol, 6, seed=4)
    va, vb = (
        ov_ranks(smol, 24, 4, few, rank_over="vocab"),
        ov_ranks(smol_hooked, 24, 4, few, rank_over="vocab"),
    )
    assert va.ranks_suppression.tolist() == vb.ranks_suppression.tolist()
    assert qk_grid(smol, 24, 4, sample).stats == qk_grid(smol_hooked, 24, 4, sample).stats
    toks = torch.tensor([smol.tokenize(TEXT)[0]])
    da = direct_effects(smol, toks, max_positions=3, heads=[(24, 4), (29, 0)])
    db = direct_effects(smol_hooked, toks, max_positions=3, heads=[(24, 4), (29, 0)])
    np.testing.assert_allclose(da.kl, db.kl, rtol=1e-3, atol=1e-5)


def test_planted_head_on_the_bridge_writes_through_to_the_weights_and_restores_them(smol):
    sample = token_set(smol, 60, seed=11)  # <= d_head (64) tokens: the least-squares OV fit is exact
    o_proj = smol.hf.model.layers[20].self_attn.o_proj.weight  # the bridge's twin shares hf's tensors
    before = o_proj.detach().clone()
    with planted_suppression_head(smol, 20, 7, sample):
        assert not torch.equal(o_proj, before)
        assert ov_ranks(smol, 20, 7, sample).suppression.top1 >= 0.9
        assert find_negative_heads(smol, methods=("ov",), token_sample=sample).top(1) == [(20, 7)]
    assert torch.equal(o_proj, before)


def test_decomposition_adds_up_to_the_logits_and_cspa_identities_hold(lensed):
    lens, text = lensed.lens, corpus_windows(lensed, 2, 12)
    fwd = run_decomposed(lensed, text)  # checks per-head additivity at every layer
    _, cache = lens.run_with_cache(
        text, return_type=None, names_filter=lambda n: n.endswith(("hook_embed", "mlp_out"))
    )
    total = cache["hook_embed"].clone()
    for l in range(lens.cfg.n_layers):
        total += (
            head_results(lensed, fwd, l).sum(2)
            + attn_bias(lensed, fwd, l)
            + cache[f"blocks.{l}.hook_mlp_out"]
        )
    logits = lens(text)
    ours = fwd.final(total) @ lens.W_U + lens.b_U
    assert float((ours - logits).norm() / logits.norm()) < 1e-4
    l, h = lens.cfg.n_layers - 2, 0
    assert cspa(lensed, l, h, text, qk="all", ov="full", run=fwd).effect_explained == pytest.approx(
        1.0, abs=1e-3
    )
    assert cspa(lensed, l, h, text, qk="none", run=fwd).effect_explained == pytest.approx(0.0, abs=1e-3)


@pytest.mark.slow
def test_study_runs_end_to_end_on_the_bridge(smol):
    """Every stage on smollm2's TransformerBridge (the study on qwen: bench/RESULTS.md)."""
    cfg = CopySuppressionConfig(
        n_tokens=80, vocab_tokens=4, n_sequences=2, seq_len=12, max_positions=3, n_ioi=3
    )
    report = run(smol, cfg)
    s = report.summary()
    assert s["additivity_error"] < 1e-4 and report.head == report.negative_heads.top(1)[0]
    assert 0.0 <= s["ov_suppression"]["top10"] <= 1.0 and np.isfinite(s["cspa_effect_explained"])
