"""SteeringVector: builders, algebra, files (safetensors, llama.cpp GGUF), validation."""

import dataclasses

import pytest
import torch

import steerlens
from steerlens.errors import SteerlensError, StoreMismatch
from steerlens.steering import SteeringVector, build_vector, steer
from steerlens.steering.build import vector_from_activations

from .conftest import NEG, POS


def test_mean_vector_is_difference_of_store_means(smol, smol_vec):
    site = "blocks.7.hook_resid_post"
    pos = steerlens.collect(smol, POS, site, "last", progress=False)
    neg = steerlens.collect(smol, NEG, site, "last", progress=False)
    raw = pos[site].mean(0) - neg[site].mean(0)
    assert torch.allclose(smol_vec.directions[7] * smol_vec.raw_norms[7], raw, atol=1e-4)
    assert abs(float(smol_vec.directions[7].norm()) - 1) < 1e-5
    assert smol_vec.resid_norms[7] == pytest.approx(
        float(torch.cat([pos[site], neg[site]]).norm(dim=-1).mean()), rel=1e-5
    )


def test_pca_and_probe_agree_with_mean_in_sign(smol):
    sites = ["blocks.10.hook_resid_post"]
    pos = steerlens.collect(smol, POS, sites, "last", progress=False)
    neg = steerlens.collect(smol, NEG, sites, "last", progress=False)
    mean = build_vector(pos, neg, "mean")
    for method in ("pca", "probe"):
        v = build_vector(pos, neg, method)
        assert v.method == method and v.cosine(mean)[10] > 0.3
        u = v.directions[10]
        if method == "pca":  # each pair's difference points along the axis
            assert ((pos[sites[0]] - neg[sites[0]]) @ u).min() > 0
        else:  # the probe separates its training data: every positive projects above every negative
            assert (pos[sites[0]] @ u).min() > (neg[sites[0]] @ u).max()


def test_algebra(smol_vec):
    rnd = smol_vec.random_like(seed=0)
    assert rnd.raw_norms == smol_vec.raw_norms and abs(rnd.cosine(smol_vec)[5]) < 0.2
    ortho = smol_vec.project_out(rnd)
    assert max(abs(c) for c in ortho.cosine(rnd).values()) < 1e-5
    half = smol_vec.project_out(rnd, keep=0.5)
    for l in smol_vec.layers:  # the shared component is exactly halved
        shared = smol_vec.directions[l] @ rnd.directions[l] * smol_vec.raw_norms[l]
        got = half.directions[l] @ rnd.directions[l] * half.raw_norms[l]
        assert float(got) == pytest.approx(0.5 * float(shared), abs=1e-4)
    doubled = smol_vec * 2.0
    assert doubled.raw_norms[3] == pytest.approx(2 * smol_vec.raw_norms[3])
    assert (-smol_vec).cosine(smol_vec)[3] == pytest.approx(-1.0)
    assert (smol_vec + smol_vec).raw_norms[4] == pytest.approx(2 * smol_vec.raw_norms[4], rel=1e-5)
    assert smol_vec.select([2, 3]).layers == [2, 3]


def _random_vector(seed: int, shift: torch.Tensor | None = None) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    pos = {l: torch.randn(6, 16, generator=g) + (shift if shift is not None else 1.0) for l in (0, 1)}
    neg = {l: torch.randn(6, 16, generator=g) for l in (0, 1)}
    return vector_from_activations(pos, neg, model_id="m", d_model=16)


def test_purify_sets_the_mutual_projection():
    u = _random_vector(0)
    v = _random_vector(1, shift=u.directions[0] * 3 + 0.2)  # shares a large component with u
    assert abs(v.cosine(u)[0]) > 0.3
    for target in (0.0, 0.15, -0.3):
        p = v.purify(u, target=target)
        assert all(abs(c - target) < 1e-6 for c in p.cosine(u).values())
        assert p.raw_norms[0] == pytest.approx(v.raw_norms[0], rel=1e-6)  # the norm is kept
    half = v.purify(u, method="mix", mix=0.5)
    assert 0 < abs(half.cosine(u)[0]) < abs(v.cosine(u)[0])  # partial removal
    assert abs(v.purify(u, method="mix", mix=1.0).cosine(u)[0]) < 1e-6
    ortho = SteeringVector.orthogonalize({"a": u, "b": v, "c": _random_vector(2)}, ["a", "b", "c"])
    for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
        assert all(abs(c) < 1e-6 for c in ortho[x].cosine(ortho[y]).values())
    with pytest.raises(SteerlensError, match="between -1 and 1"):
        v.purify(u, target=1.0)


def test_remove_span_is_gram_schmidt_against_all_others():
    u, w, x = _random_vector(0), _random_vector(2), _random_vector(3)
    v = _random_vector(1, shift=u.directions[0] * 3 + w.directions[0])
    pure = v.remove_span([u, w, x])
    assert pure.layers == v.layers and pure.method == "mean|purified(all)"
    for o in (u, w, x):
        assert all(abs(c) < 1e-6 for c in pure.cosine(o).values())
    assert pure.raw_norms[1] == pytest.approx(v.raw_norms[1], rel=1e-6)
    last = SteeringVector.orthogonalize({"u": u, "w": w, "x": x, "v": v}, ["u", "w", "x", "v"])["v"]
    assert all(c == pytest.approx(1.0, abs=1e-6) for c in pure.cosine(last).values())  # the same direction
    with pytest.raises(SteerlensError, match="span of the other vectors"):
        u.remove_span([u, w])
    with pytest.raises(SteerlensError, match="at least one other"):
        v.remove_span([])
    with pytest.raises(SteerlensError, match="has no layer 0"):
        v.remove_span([u.select([1])])


def test_from_directions(smol, gemma, smol_vec):
    raw = {l: smol_vec.directions[l] * smol_vec.raw_norms[l] for l in (4, 5)}
    same = SteeringVector.from_directions(raw, like=smol_vec)
    assert same.layers == [4, 5] and same.method == smol_vec.method
    assert same.resid_norms == {l: smol_vec.resid_norms[l] for l in (4, 5)}
    for l in (4, 5):
        assert torch.allclose(same.directions[l], smol_vec.directions[l], atol=1e-6)
        assert same.raw_norms[l] == pytest.approx(smol_vec.raw_norms[l], rel=1e-6)
    bare = SteeringVector.from_directions({7: torch.ones(576) * 3}, model=smol, method="ones")
    assert (bare.model_id, bare.d_model, bare.method, bare.resid_norms) == (smol.name, 576, "ones", {})
    assert bare.raw_norms[7] == pytest.approx(3 * 576**0.5)
    with pytest.raises(SteerlensError, match=r"like= .* or model="):
        SteeringVector.from_directions(raw)
    with pytest.raises(StoreMismatch, match="d_model 576 but gemma-3-270m"):
        SteeringVector.from_directions(raw, like=smol_vec, model=gemma)


def test_safetensors_round_trip_reproduces_steered_logits(smol, smol_vec, tmp_path):
    path = smol_vec.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(path, model=smol)
    assert back.metadata() == smol_vec.metadata()
    assert all(torch.equal(back.directions[l], smol_vec.directions[l]) for l in smol_vec.layers)
    ids = torch.tensor([smol.tokenize("The movie was")[0]])
    with steer(smol, smol_vec.select([5, 9]), alpha=1.5):
        a = smol.hf(ids).logits
    with steer(smol, back.select([5, 9]), alpha=1.5):
        b = smol.hf(ids).logits
    assert torch.equal(a, b)


def test_gguf_round_trip(smol, smol_vec, tmp_path):
    import gguf

    vec = smol_vec.select(range(1, smol.cfg.n_layers))
    path = vec.to_gguf(tmp_path / "v.gguf", alpha=0.5)
    reader = gguf.GGUFReader(str(path))
    names = sorted(t.name for t in reader.tensors)
    assert names == sorted(f"direction.{l}" for l in vec.layers)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    back = SteeringVector.from_gguf(path, model=smol)
    for l in vec.layers:
        assert torch.allclose(back.directions[l], vec.directions[l], atol=1e-6)
        assert back.raw_norms[l] == pytest.approx(0.5 * vec.raw_norms[l], rel=1e-6)
    ids = torch.tensor([smol.tokenize("The movie was")[0]])
    with steer(smol, vec, alpha=0.5):
        a = smol.hf(ids).logits
    with steer(smol, back, alpha=1.0):  # the file stores alpha x raw vector
        b = smol.hf(ids).logits
    assert (a - b).abs().max().item() <= 1e-4
    with pytest.raises(SteerlensError, match="cannot steer layer 0"):
        smol_vec.to_gguf(tmp_path / "bad.gguf")


def test_validation(smol, gemma, smol_vec):
    with pytest.raises(StoreMismatch, match="d_model 576 but gemma-3-270m has d_model 640"):
        smol_vec.check_model(gemma)
    with (
        pytest.raises(StoreMismatch, match="d_model 576 but gemma-3-270m"),
        steer(gemma, smol_vec, alpha=1.0),
    ):
        pass
    nan = torch.full((576,), float("nan"))
    with pytest.raises(SteerlensError, match="NaN or inf"):
        SteeringVector({3: nan}, "smollm2-135m-instruct", 576)
    with pytest.raises(SteerlensError, match=r"shape \(640,\), expected \(576,\)"):
        SteeringVector({3: torch.ones(640)}, "smollm2-135m-instruct", 576)
    with pytest.raises(SteerlensError, match="all zeros"):
        SteeringVector({3: torch.zeros(576)}, "smollm2-135m-instruct", 576)
    far = dataclasses.replace(smol_vec, directions={40: torch.ones(576)}, raw_norms={}, resid_norms={})
    with pytest.raises(SteerlensError, match=r"layers \[40\] out of range"):
        far.check_model(smol)
    with pytest.raises(SteerlensError, match="no 'resid' scale"):
        dataclasses.replace(smol_vec, resid_norms={}).scale(3, "resid")


def test_truncated_or_foreign_files_raise_steerlens_errors(smol, smol_vec, tmp_path):
    """Item 10: every loader names the file and the fix instead of raising a library's raw error."""
    import numpy as np

    import steerlens
    from steerlens.probes.linear import Logistic, fit_logistic
    from steerlens.probes.traces import InjectionRun

    def chop(path, keep=0.5):
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return path

    vec = chop(smol_vec.save(tmp_path / "v.safetensors"))
    with pytest.raises(SteerlensError, match=r"v\.safetensors is not a readable steerlens vector"):
        SteeringVector.load(vec)
    gguf = chop(smol_vec.select([3, 4]).to_gguf(tmp_path / "v.gguf"))
    with pytest.raises(SteerlensError, match=r"v\.gguf is not a readable llama.cpp control vector"):
        SteeringVector.from_gguf(gguf)
    x = torch.tensor(np.random.default_rng(0).normal(size=(20, 4)))
    probe = chop(fit_logistic(x, [0, 1] * 10).save(tmp_path / "p.safetensors"))
    with pytest.raises(SteerlensError, match=r"p\.safetensors is not a readable steerlens probe"):
        Logistic.load(probe)
    store = steerlens.collect(
        smol, ["a b c"], "blocks.2.hook_resid_post", path=tmp_path / "s", progress=False
    )
    chop(store.path / "shard-00000.safetensors", 0.7)
    with pytest.raises(SteerlensError, match=r"shard-00000\.safetensors is .*truncated"):
        steerlens.ActivationStore(store.path)["blocks.2.hook_resid_post"]
    chop(store.path / "manifest.json")
    with pytest.raises(SteerlensError, match=r"manifest\.json is not a readable JSON file"):
        steerlens.ActivationStore(store.path)
    (tmp_path / "r.jsonl").write_text('{"settings": {}}\n{"id": "x", "trunc')
    with pytest.raises(SteerlensError, match=r"r\.jsonl is not a readable InjectionRun"):
        InjectionRun.load(tmp_path / "r.jsonl")
    with pytest.raises(SteerlensError, match="does not exist"):
        SteeringVector.load(tmp_path / "missing.safetensors")
