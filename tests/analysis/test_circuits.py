"""Weights-only tests on gemma-3-270m: effective embeddings match the model, OV/QK ranks match a dense
computation, are chunk- and scale-invariant, and the real model has strongly suppressive heads."""

import pytest
import torch

from steerlens.analysis import (
    effective_embedding,
    ov_ranks,
    qk_grid,
    qk_ranks,
    scan_heads,
    token_set,
)
from steerlens.analysis.circuits import EffectiveEmbedding
from steerlens.errors import SteerlensError


@pytest.fixture(scope="module")
def sample(gemma):
    return token_set(gemma, 300, seed=3)


def test_token_set_is_seeded_whole_words(gemma, sample):
    assert len(sample) == 300 and sample.settings == {"k": 300, "kind": "whole_words", "seed": 3, "n": 300}
    assert sample.ids == token_set(gemma, 300, seed=3).ids != token_set(gemma, 300, seed=4).ids
    words = [gemma.tokenizer.decode([i]) for i in sample.ids]
    assert all(w.startswith(" ") and w[1:].isalpha() and len(w) >= 4 for w in words)
    with pytest.raises(SteerlensError, match="whole_words"):
        token_set(gemma, 10, kind="frequent")


def test_self_attention_effective_embedding_is_layer0_output_of_a_lone_token(gemma, sample):
    """A one-token sequence attends only to itself at position 0 (rotary is the identity there), so the
    self-attention effective embedding must equal the model's own layer-0 output for that token."""
    ids = sample.tensor()[:5]
    ee = effective_embedding(gemma, ids, "self_attn")
    _, cache = gemma.lens.run_with_cache(
        ids[:, None], return_type=None, names_filter="blocks.0.hook_resid_post"
    )
    torch.testing.assert_close(ee.vectors, cache["blocks.0.hook_resid_post"][:, 0], rtol=1e-4, atol=1e-3)
    mlp0 = effective_embedding(gemma, ids, "mlp0")
    assert mlp0.variant == "mlp0" and not torch.allclose(mlp0.vectors, ee.vectors)
    b0 = gemma.lens.blocks[0]
    x = gemma.lens.W_E[ids][None]
    torch.testing.assert_close(mlp0.vectors, (x + b0.apply_mlp(b0.ln2(x)))[0])


def test_ov_ranks_match_a_dense_computation(gemma, sample):
    l, h = 7, 1
    res = ov_ranks(gemma, l, h, sample, chunk=64)
    lens, ids = gemma.lens, sample.tensor()
    x = effective_embedding(gemma, ids).vectors
    out = lens.blocks[l].ln1(x) @ lens.blocks[l].attn.W_V[h] @ lens.blocks[l].attn.W_O[h]
    out = out * lens.blocks[l].ln1_post.w * lens.ln_final.w
    logits = out @ lens.W_U[:, ids]  # [source, candidate]
    diag = logits.diagonal()
    assert res.ranks_suppression.tolist() == (logits < diag[:, None]).sum(1).tolist()
    assert res.ranks_copying.tolist() == (logits > diag[:, None]).sum(1).tolist()
    assert res.suppression.top1 == pytest.approx(
        float((logits.argmin(1) == torch.arange(len(ids))).float().mean())
    )
    assert res.settings["variant"] == "self_attn" and res.settings["rank_over"] == "sample"


def test_ov_ranks_ignore_positive_row_rescaling_and_chunking(gemma, sample):
    emb = effective_embedding(gemma, sample)
    scaled = EffectiveEmbedding(emb.ids, emb.vectors * (0.1 + 10 * torch.rand(len(sample), 1)), emb.variant)
    a = ov_ranks(gemma, 9, 1, sample, embedding=emb, chunk=1000)
    b = ov_ranks(gemma, 9, 1, sample, embedding=scaled, chunk=37)
    assert a.ranks_suppression.tolist() == b.ranks_suppression.tolist()
    assert a.ranks_copying.tolist() == b.ranks_copying.tolist()


def test_vocab_ranks_are_never_better_than_sample_ranks(gemma):
    small = token_set(gemma, 40, seed=5)
    s = ov_ranks(gemma, 7, 1, small, rank_over="sample")
    v = ov_ranks(gemma, 7, 1, small, rank_over="vocab", chunk=40)
    assert v.suppression.n_candidates == gemma.cfg.d_vocab
    assert (v.ranks_suppression >= s.ranks_suppression).all()
    assert (v.ranks_copying >= s.ranks_copying).all()
    # every other token beats the source in at most one direction, and the source never beats itself
    assert (v.ranks_suppression + v.ranks_copying <= gemma.cfg.d_vocab - 1).all()
    assert v.suppression.top10 > 0.5  # L7H1 suppresses its source token even among 262,144 candidates


def test_qk_grid_cells_match_single_tests_and_tied_embeddings_coincide(gemma, sample):
    grid = qk_grid(gemma, 8, 0, sample)
    single = qk_ranks(gemma, 8, 0, sample, query="unembedding", key="effective")
    assert grid.stats["unembedding"]["effective"] == single.stats
    # gemma ties W_U to W_E (up to sqrt(d_model)); the pre-norm removes the scale, so the rows agree
    for k in ("effective", "raw", "unembedding"):
        assert grid.stats["unembedding"][k].top10 == pytest.approx(grid.stats["raw"][k].top10, abs=0.02)
    df = grid.to_frame()
    assert df.shape == (3, 3) and ((df >= 0) & (df <= 1)).all().all()
    assert grid.figure().data[0].z.shape == (3, 3)


def test_scan_finds_strongly_suppressive_and_copying_heads(gemma, sample):
    scan = scan_heads(gemma, sample)
    m = scan.metrics
    assert m["ov_suppression_top10"].shape == (gemma.cfg.n_layers, gemma.cfg.n_heads)
    assert m["ov_suppression_top10"][7, 1] > 0.95  # gemma-3-270m's most suppressive OV circuit
    assert m["ov_copying_top10"].max() > 0.9
    assert (m["ov_suppression_top1"] <= m["ov_suppression_top10"]).all()
    assert len(scan.to_frame()) == gemma.cfg.n_layers * gemma.cfg.n_heads
