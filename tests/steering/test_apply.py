"""steer(): exactness of every path, positions under the KV cache, per-row coefficients, restoration."""

import itertools

import pytest
import torch

from steerlens.errors import SteerlensError
from steerlens.steering import Intervention, Trigger, Window, steer

PROMPT = "The movie was"


def ids_of(model, text=PROMPT):
    return torch.tensor([model.tokenize(text)[0]])


def manual_hook_logits(model, vec, layers, alpha, ids):
    """Reference: a hand-written forward hook adding alpha * raw vector to each layer's output."""
    handles = []
    for l in layers:
        v = alpha * vec.raw_norms[l] * vec.directions[l]
        handles.append(model.hf.model.layers[l].register_forward_hook(lambda m, a, o, v=v: o + v))
    try:
        return model.hf(ids).logits
    finally:
        for h in handles:
            h.remove()


def test_fold_fused_and_plain_hook_agree(smol, smol_vec):
    ids = ids_of(smol)
    layers = [3, 8, 15]
    vec = smol_vec.select(layers)
    ref = manual_hook_logits(smol, vec, layers, 1.5, ids)
    with steer(smol, vec, alpha=1.5, fold=True):
        assert smol.hf.model.layers[8].mlp.down_proj.bias is not None  # really folded
        folded = smol.hf(ids).logits
    with steer(smol, vec, alpha=1.5, fold=False):
        fused = smol.hf(ids).logits
    assert (folded - ref).abs().max().item() <= 1e-4
    assert (fused - ref).abs().max().item() <= 1e-4
    assert (ref - smol.hf(ids).logits).abs().max().item() > 0.1  # the steering did something
    assert smol.hf.model.layers[8].mlp.down_proj.bias is None


def test_gemma_cannot_fold_but_hooks_match(gemma, gemma_vec):
    ids = ids_of(gemma)
    vec = gemma_vec.select([4, 9])
    with pytest.raises(SteerlensError, match="post-MLP norms"), steer(gemma, vec, alpha=1.0, fold=True):
        pass
    ref = manual_hook_logits(gemma, vec, [4, 9], 1.0, ids)
    with steer(gemma, vec, alpha=1.0):
        got = gemma.hf(ids).logits
    assert (got - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("fold", [True, False])
def test_alpha_zero_is_bit_identical(smol, smol_vec, fold):
    ids = ids_of(smol)
    base = smol.hf(ids).logits
    with steer(smol, smol_vec, alpha=0.0, fold=fold):
        assert torch.equal(smol.hf(ids).logits, base)


def test_leaving_restores_bit_identical_even_after_exception(smol, smol_vec):
    ids = ids_of(smol)
    base = smol.hf(ids).logits
    n_hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in smol.hf.modules())  # noqa: E731
    before = n_hooks()
    with (
        pytest.raises(RuntimeError, match="boom"),
        steer(smol, Intervention(smol_vec, alpha=[1.0], positions="generated")),
    ):
        smol.hf(ids)
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"), steer(smol, smol_vec, alpha=2.0):
        raise RuntimeError("boom")
    assert n_hooks() == before
    assert all(smol.hf.model.layers[l].mlp.down_proj.bias is None for l in range(smol.cfg.n_layers))
    assert torch.equal(smol.hf(ids).logits, base)


def _deltas(model, iv, layer, prompt_ids, new_tokens=4):
    """Greedy generation under ``iv``; returns per-position (steered - unsteered) residual at ``layer`` and
    the generated ids. Capture hooks registered before/after steer() see the layer output before/after it."""
    pre, post = [], []
    h1 = model.hf.model.layers[layer].register_forward_hook(lambda m, a, o: pre.append(o.clone()))
    try:
        with steer(model, iv):
            h2 = model.hf.model.layers[layer].register_forward_hook(lambda m, a, o: post.append(o.clone()))
            try:
                out = model.hf.generate(
                    prompt_ids,
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    output_logits=True,
                    return_dict_in_generate=True,
                )
            finally:
                h2.remove()
    finally:
        h1.remove()
    delta = torch.cat([b - a for a, b in zip(pre, post, strict=True)], dim=1)[0]  # [positions, d_model]
    return delta, out


def test_generated_only_includes_first_generated_token(smol, smol_vec):
    ids = ids_of(smol)
    n = ids.shape[1]
    vec = smol_vec.select([6])
    unsteered = smol.hf.generate(
        ids, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    delta, out = _deltas(smol, Intervention(vec, alpha=3.0, positions="generated"), 6, ids)
    expected = 3.0 * vec.raw_norms[6] * vec.directions[6]
    assert torch.equal(delta[:n], torch.zeros_like(delta[:n]))  # prompt untouched
    # every generated token that was fed back, the first one included
    assert delta.shape[0] == n + 3 and torch.allclose(delta[n:], expected.expand(3, -1), atol=1e-3)
    # prompt logits (which choose the first token) are untouched, bit for bit; the distribution computed at the
    # first generated token's position is changed
    assert torch.equal(out.logits[0], unsteered.logits[0])
    assert (out.logits[1] - unsteered.logits[1]).abs().max().item() > 1e-3


def test_prompt_only_and_window_and_trigger(smol, smol_vec):
    ids = ids_of(smol, "Tell me: the movie was")
    n = ids.shape[1]
    vec = smol_vec.select([6])
    unit = vec.raw_norms[6] * vec.directions[6]
    delta, _ = _deltas(smol, Intervention(vec, alpha=2.0, positions="prompt"), 6, ids)
    steered = delta.norm(dim=-1) > 1e-3
    assert steered[:n].all() and not steered[n:].any()
    delta, _ = _deltas(smol, Intervention(vec, alpha=2.0, positions=Window(2, n + 1)), 6, ids)
    steered = delta.norm(dim=-1) > 1e-3
    assert steered.tolist() == [2 <= i < n + 1 for i in range(delta.shape[0])]
    colon = smol.tokenizer(":", add_special_tokens=False)["input_ids"][0]
    where = ids[0].tolist().index(colon)
    delta, _ = _deltas(smol, Intervention(vec, alpha=2.0, positions=Trigger((colon,))), 6, ids)
    steered = delta.norm(dim=-1) > 1e-3
    assert steered.tolist() == [i >= where for i in range(delta.shape[0])]
    assert torch.allclose(delta[where], 2.0 * unit, atol=1e-3)


def test_per_row_coefficients_equal_separate_runs(smol, smol_vec):
    alphas = [-2.0, 0.0, 1.0, 3.0]
    ids = ids_of(smol).repeat(len(alphas), 1)
    vec = smol_vec.select([4, 10])
    with steer(smol, vec, alpha=alphas):
        batched = smol.hf(ids).logits
    for i, a in enumerate(alphas):
        with steer(smol, vec, alpha=a):
            single = smol.hf(ids[:1]).logits
        assert (batched[i] - single[0]).abs().max().item() <= 1e-4
    with (
        pytest.raises(SteerlensError, match="alpha has 4 per-row values but the batch has 1 rows"),
        steer(smol, vec, alpha=alphas),
    ):
        smol.hf(ids[:1])


def test_per_row_generation_in_one_batch(smol, smol_vec):
    """An alpha sweep in one generate call reproduces each alpha's own generation."""
    alphas = [-3.0, 0.0, 3.0]
    ids = ids_of(smol)
    vec = smol_vec.select(range(2, 20))
    with steer(smol, vec, alpha=alphas, fold=False):
        batched = smol.hf.generate(ids.repeat(3, 1), max_new_tokens=8, do_sample=False)
    for i, a in enumerate(alphas):
        with steer(smol, vec, alpha=a):
            single = smol.hf.generate(ids, max_new_tokens=8, do_sample=False)
        assert batched[i].tolist() == single[0].tolist()
    assert len({tuple(r.tolist()) for r in batched}) == 3  # the alphas really differ


def test_dose_response_is_monotone(smol, smol_vec):
    """Steer at layer 8; downstream residual projections on the vector rise strictly with alpha."""
    ids = ids_of(smol, "I think that the weather today is")
    alphas = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
    downstream = (12, 20, 28)
    projections = {l: [] for l in downstream}
    for a in alphas:
        with steer(smol, smol_vec.select([8]), alpha=a):
            hs = smol.hf(ids, output_hidden_states=True).hidden_states
        for l in downstream:  # hidden_states[l + 1] is layer l's output
            projections[l].append(float(hs[l + 1][0, -1] @ smol_vec.directions[l]))
    for l, p in projections.items():
        assert all(b > a for a, b in itertools.pairwise(p)), (l, p)


def test_ops(smol, smol_vec):
    ids = ids_of(smol)
    vec = smol_vec.select([7])
    u = vec.directions[7]

    def out7(iv):
        got = []
        h = None
        with steer(smol, iv):
            h = smol.hf.model.layers[7].register_forward_hook(lambda m, a, o: got.append(o.clone()))
            try:
                smol.hf(ids)
            finally:
                h.remove()
        return got[0][0]

    got = []
    h = smol.hf.model.layers[7].register_forward_hook(lambda m, a, o: got.append(o.clone()))
    smol.hf(ids)
    h.remove()
    base = got[0][0]
    kept = out7(Intervention(vec, alpha=2.0, op="add_norm"))
    assert torch.allclose(kept.norm(dim=-1), base.norm(dim=-1), rtol=1e-5)
    assert ((kept - base) @ u).min() > 0
    ablated = out7(Intervention(vec, op="ablate"))
    assert (ablated @ u).abs().max() < 1e-3
    clamped = out7(Intervention(vec, alpha=5.0, op="clamp", units="raw"))
    assert torch.allclose(clamped @ u, torch.full((ids.shape[1],), 5.0), atol=1e-3)
    half = out7(Intervention(vec, alpha=0.5, op="ablate", positions=Window(1)))
    assert torch.equal(half[0], base[0])
    assert torch.allclose(half[1:] @ u, 0.5 * (base[1:] @ u), atol=1e-3)


def test_same_spec_through_lens_and_nnsight(model, smol_vec, gemma_vec):
    vec = (smol_vec if model.cfg.d_model == 576 else gemma_vec).select([3, 6])
    ids = ids_of(model)
    assert model.lens is not None  # build the view before entering, so steer() can reach it
    iv = Intervention(vec, alpha=[1.0], positions="generated")
    lens_plain = model.lens(ids)
    with steer(model, vec, alpha=1.0, positions=Window(1)):
        hf = model.hf(ids).logits
        lens = model.lens(ids)
        with model.nn.trace(ids):
            nn_out = model.nn.output.save()
    assert (lens - hf).abs().max().item() <= 1e-4
    assert (nn_out.logits - hf).abs().max().item() <= 1e-4
    assert (hf - model.hf(ids).logits).abs().max().item() > 1e-2
    assert (lens - lens_plain).abs().max().item() > 1e-2  # the lens view was steered too
    with steer(model, iv):  # nothing generated in a plain forward: identical to unsteered
        assert torch.equal(model.lens(ids), lens_plain)


@pytest.mark.slow
def test_model_compiled_before_steering_sees_every_spec(smol, smol_vec):
    """torch.compile skips hooks added after compilation unless it guards on them: steer() makes it do so."""
    enc = smol.tokenizer(
        ["The movie was", "Yesterday I went to the old shop"], return_tensors="pt", padding=True
    )
    ids = enc.input_ids
    base = smol.hf(ids).logits
    compiled = torch.compile(smol.hf, backend="aot_eager")  # dynamo's tracing is what matters; no codegen
    assert torch.equal(compiled(ids).logits, base)
    vec = smol_vec.select([4, 12, 20])
    specs = [
        dict(alpha=0.5, fold=False),
        dict(alpha=0.5, fold=True),
        dict(alpha=[0.5, -0.5]),
        dict(alpha=0.5, op="add_norm", positions=Window(2, 5)),
    ]
    for spec in specs:
        with steer(smol, vec, **spec):
            eager = smol.hf(ids).logits
            got = compiled(ids).logits
        assert (eager - base).abs().max().item() > 0.1, spec
        assert (got - eager).abs().max().item() <= 1e-4, spec
    assert torch.equal(compiled(ids).logits, base)
