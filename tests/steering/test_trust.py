"""Regression tests for the silent-wrong-number cases of issue 14 (each failed on the code before the fix)."""

import threading

import pytest
import torch

from steerlens import collect
from steerlens.errors import SteerlensError, StoreMismatch
from steerlens.steering import Intervention, Trigger, Window, steer
from steerlens.steering.sampling import sample

from .reference import hf_reference

PROMPT = "The movie was"


def _out(model, layer, ivs, ids, fold="auto"):
    got = []
    with steer(model, *ivs, fold=fold):
        h = model.hf.model.layers[layer].register_forward_hook(lambda m, a, o: got.append(o.clone()))
        try:
            model.hf(ids)
        finally:
            h.remove()
    return got[0][0]


@pytest.mark.parametrize("fold", ["auto", False])
def test_order_is_kept_when_folding(model, smol_vec, gemma_vec, fold):
    """Item 1: clamp-then-add leaves projection 2 + 3 = 5 and ablate-then-add leaves 3, on both families."""
    vec = (smol_vec if model.cfg.d_model == smol_vec.d_model else gemma_vec).select([5])
    ids = torch.tensor(model.tokenize(PROMPT))
    u = vec.directions[5]
    tol = 1e-5 * float(_out(model, 5, [Intervention(vec, alpha=0.0)], ids).norm(dim=-1).max())  # fp32 at |h|

    def proj(ivs):
        return _out(model, 5, ivs, ids, fold) @ u

    clamp_add = [
        Intervention(vec, op="clamp", alpha=2.0, units="raw"),
        Intervention(vec, alpha=3.0, units="raw"),
    ]
    assert torch.allclose(proj(clamp_add), torch.tensor(5.0), atol=tol)
    ablate_add = [Intervention(vec, op="ablate"), Intervention(vec, alpha=3.0, units="raw")]
    assert torch.allclose(proj(ablate_add), torch.tensor(3.0), atol=tol)
    add_clamp = [
        Intervention(vec, alpha=3.0, units="raw"),
        Intervention(vec, op="clamp", alpha=2.0, units="raw"),
    ]
    assert torch.allclose(proj(add_clamp), torch.tensor(2.0), atol=tol)


def test_fold_happens_only_where_exact(smol, smol_vec):
    vec = smol_vec.select([4, 8])
    with steer(smol, Intervention(vec, alpha=1.0), Intervention(vec.select([8]), op="ablate")) as s:
        assert s.folded_layers == {4, 8}  # the add comes first at both layers
    with steer(smol, Intervention(vec.select([8]), op="ablate"), Intervention(vec, alpha=1.0)) as s:
        assert s.folded_layers == {4}  # at layer 8 the add follows an ablation: it must stay a hook
    with (
        pytest.raises(SteerlensError, match="fold=True"),
        steer(smol, Intervention(vec, op="ablate"), Intervention(vec, alpha=1.0), fold=True),
    ):
        pass


def test_readme_example_mixing_vectors_runs_and_is_exact(smol, smol_vec):
    """Item 2: a foldable add beside another vector used to crash comparing dataclasses holding tensors."""
    other = smol_vec.random_like(3)
    ivs = [Intervention(smol_vec, op="ablate"), Intervention(other, alpha=0.2, units="resid")]
    ids = torch.tensor(smol.tokenize(PROMPT))
    mask = torch.ones_like(ids)
    with steer(smol, *ivs):
        got = smol.hf(ids).logits
    ref = hf_reference(smol, ivs, ids, mask, [ids.shape[1]])
    assert (got - ref).abs().max() <= 1e-4


@pytest.mark.parametrize("positions", ["generated", "prompt"])
def test_positions_do_not_depend_on_the_kv_cache(smol, smol_vec, positions):
    """Item 3: without a cache every forward used to count as a new prompt."""
    enc = smol.tokenizer(
        ["The movie was", "Yesterday I went to the old shop"], return_tensors="pt", padding=True
    )
    with steer(smol, smol_vec.select(range(3, 12)), alpha=2.0, positions=positions):
        cached = smol.hf.generate(**enc, max_new_tokens=6, do_sample=False)
        plain = smol.hf.generate(**enc, max_new_tokens=6, do_sample=False, use_cache=False)
    unsteered = smol.hf.generate(**enc, max_new_tokens=6, do_sample=False)
    assert plain.tolist() == cached.tolist()
    assert cached.tolist() != unsteered.tolist()  # the steering acts


def test_lens_generate_with_and_without_cache(gemma, smol, gemma_vec, smol_vec):
    """Item 3 in the lens views: HookedTransformer (gemma) with and without its cache, and the bridge (smollm2)
    without a cache, all equal HF generate under generated-only steering."""
    for model, vec in ((gemma, gemma_vec), (smol, smol_vec)):
        ids = torch.tensor(model.tokenize("The weather today is"))
        caches = [False] + ([True] if not hasattr(model.lens, "original_model") else [])  # builds the lens
        with steer(model, vec.select([3, 6]), alpha=3.0, positions="generated"):
            hf = model.hf.generate(ids, max_new_tokens=5, do_sample=False)[0, ids.shape[1] :].tolist()
            for cache in caches:
                tl = model.lens.generate(
                    ids,
                    max_new_tokens=5,
                    do_sample=False,
                    use_past_kv_cache=cache,
                    verbose=False,
                    stop_at_eos=False,
                )
                assert tl[0, ids.shape[1] :].tolist() == hf, (model.name, cache)
        assert model.hf.generate(ids, max_new_tokens=5, do_sample=False)[0, ids.shape[1] :].tolist() != hf


def test_collect_under_steering_is_not_the_unsteered_store(smol, smol_vec, tmp_path):
    """Item 4: the store key now holds the active steering; a store made otherwise is refused at a path."""
    texts = ["The movie was", "A short one."]
    site = "blocks.10.hook_resid_post"
    plain = collect(smol, texts, site, progress=False)[site]
    with steer(smol, smol_vec.select([5]), alpha=4.0):
        steered = collect(smol, texts, site, progress=False)[site]
    assert (steered - plain).abs().max() > 1e-2
    assert torch.equal(collect(smol, texts, site, progress=False)[site], plain)
    collect(smol, texts, site, path=tmp_path / "s", progress=False)
    with pytest.raises(StoreMismatch, match="steering"), steer(smol, smol_vec.select([5]), alpha=4.0):
        collect(smol, texts, site, path=tmp_path / "s", progress=False)
    with pytest.raises(StoreMismatch, match="fold=False"), steer(smol, smol_vec.select([5]), alpha=4.0):
        collect(smol, texts, "blocks.5.hook_mlp_out", progress=False)


def test_sample_rows_finishing_on_their_first_token(smol, smol_vec):
    """Item 6: per-row alphas crashed when a row finished on its first token (before any decode forward)."""
    seeds = list(range(12))
    alphas = [0.1 * (i % 4) for i in seeds]
    iv = Intervention(smol_vec.select([5]), alpha=alphas, positions="generated")
    got = sample(smol, PROMPT, seeds, max_new_tokens=4, temperature=3.0, stop=["e"], steering=[iv])
    firsts = [len(s.tokens) == 1 for s in got.samples]
    assert any(firsts) and not all(firsts)  # the case that crashed
    for s, a in zip(got.samples, alphas, strict=True):
        alone = sample(
            smol,
            PROMPT,
            [s.seed],
            max_new_tokens=4,
            temperature=3.0,
            stop=["e"],
            steering=[Intervention(smol_vec.select([5]), alpha=a, positions="generated")],
        )
        assert alone.samples[0].tokens == s.tokens


def test_sample_sees_a_trigger_in_the_prompt(smol, smol_vec):
    """Item 10: a trigger token in the prompt now starts steering there, as in generate."""
    prompt = "Tell me: the movie was"
    ids = smol.tokenize(prompt)[0]
    colon = smol.tokenizer(":", add_special_tokens=False)["input_ids"][0]
    where = ids.index(colon)
    vec = smol_vec.select([4, 8])
    trig = sample(
        smol,
        prompt,
        [5],
        max_new_tokens=8,
        steering=[Intervention(vec, alpha=3.0, positions=Trigger((colon,)))],
    )
    win = sample(
        smol,
        prompt,
        [5],
        max_new_tokens=8,
        steering=[Intervention(vec, alpha=3.0, positions=Window(where))],
    )
    plain = sample(smol, prompt, [5], max_new_tokens=8)
    assert trig.samples[0].tokens == win.samples[0].tokens != plain.samples[0].tokens


def test_failed_fold_changes_nothing(smol, smol_vec):
    """Item 10: a fold that fails part-way used to leave the earlier layers' biases changed."""
    layer = smol.hf.model.layers[9].mlp
    real = layer.down_proj
    layer.down_proj = torch.nn.Sequential(real)  # not a Linear: cannot take a bias
    try:
        with (
            pytest.raises(SteerlensError, match="cannot fold"),
            steer(smol, smol_vec.select([2, 9]), alpha=1.0),
        ):
            pass
    finally:
        layer.down_proj = real
    assert smol.hf.model.layers[2].mlp.down_proj.bias is None


def test_steer_from_a_second_thread_is_refused(smol, smol_vec):
    errors = []

    def other():
        try:
            with steer(smol, smol_vec.select([3]), alpha=1.0):
                pass
        except SteerlensError as e:
            errors.append(str(e))

    with steer(smol, smol_vec.select([3]), alpha=1.0):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert errors and "another thread" in errors[0]
    assert smol.steering == ()
