"""SAEs through sae-lens on the real smollm2-135m-instruct: a small TopK SAE trained here (sae-lens' trainer on a
streamed store) beats a random decoder and zero-ablation, round-trips through sae-lens' own save/load, resumes
from a checkpoint to the same weights, reads a planted vector back as its feature, and steers exactly like
adding its decoder row. No mocks: every number comes from the model and the trained SAE."""

import shutil

import pytest
import torch
from sae_lens import SAE, JumpReLUSAE, StandardSAE, TopKSAE
from sae_lens.evals import get_recons_loss
from sae_lens.training.activation_scaler import ActivationScaler

from steerlens.analysis.sae import SAEConfig, SAEStudy, read_vectors, train_sae, vector_features
from steerlens.analysis.sae import run as run_sae
from steerlens.analysis.sae.features import _spread_rows
from steerlens.cli import main as cli
from steerlens.errors import SAEMismatch, SAENotAvailable, SteerlensError, StoreMismatch
from steerlens.steering import SteeringVector, steer
from steerlens.steering.sae import clamp_features, feature_vector, load_sae, splice_sae
from steerlens.store import ActivationStore

LAYER = 6
SITE = f"blocks.{LAYER}.hook_resid_post"
QUICK = dict(layer=LAYER, expansion=2, k=16, tokens=16_384, train_samples=65_536, batch_size=256, lr=4e-3)


@pytest.fixture(scope="module")
def study(smol, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae")
    return run_sae(smol, SAEConfig.quick(**QUICK), out, progress=False), out


@pytest.fixture(scope="module")
def sae(study):
    return study[0].trained.sae


@pytest.fixture(scope="module")
def store(study):
    return ActivationStore(study[1] / "store")


def test_sae_beats_random_decoder_and_zero_ablation(study, sae):
    st, _ = study
    m = st.trained.metrics
    assert isinstance(sae, TopKSAE) and sae.cfg.d_sae == 2 * 576
    assert m.explained_variance > 0.6, m
    assert m.explained_variance > m.explained_variance_random + 0.5
    assert m.l0 == pytest.approx(16, abs=0.5)
    assert m.dead_fraction < 0.6
    assert m.ce_clean < m.ce_spliced < m.ce_zero
    assert m.kl_spliced < m.kl_zero
    assert 0.3 < m.ce_loss_score <= 1
    assert st.trained.settings["train_samples"] == 65_536 and st.trained.tokens_per_s > 0


def test_splice_matches_sae_lens_evaluator(smol, sae):
    """Our CE with the reconstruction spliced in (no position skipped) equals sae-lens' get_recons_loss run on
    the TransformerLens view."""
    ids = torch.tensor(smol.tokenize(["The library on Garden Street opened at nine. Ruth arrived at eight."]))
    with splice_sae(smol, sae, skip=0):
        ours = smol.hf(ids, labels=ids).loss
    got = get_recons_loss(sae, smol.lens, ActivationScaler(), ids, compute_kl=True, compute_ce_loss=True)
    assert float(got["ce_loss_with_sae"].mean()) == pytest.approx(float(ours), abs=2e-3)
    assert float(got["kl_div_with_sae"].mean()) > 0


def test_sae_lens_round_trip_same_outputs(sae, store, tmp_path):
    x = next(store.iter_batches(SITE, rows=64)).float()
    sae.save_model(tmp_path / "copy")
    back = SAE.load_from_disk(tmp_path / "copy")
    assert type(back) is type(sae)
    assert torch.equal(back.encode(x), sae.encode(x))
    assert torch.equal(back(x), sae(x))


def test_resume_from_checkpoint_gives_same_weights(smol, study, store, tmp_path):
    """Train with checkpoints, then keep only the first checkpoint and train again: the resumed run continues
    the same data stream and optimizer state and ends at the same weights."""
    kw = dict(
        expansion=2, k=16, train_samples=16_384, batch_size=256, lr=4e-3, n_checkpoints=3, progress=False
    )
    full = train_sae(store, SITE, tmp_path / "full", **kw)
    ckpts = sorted((tmp_path / "full" / "checkpoints").iterdir(), key=lambda p: int(p.name))
    assert len(ckpts) == 3 and not list(ckpts[0].glob("*.pt"))  # no pickle anywhere
    shutil.copytree(ckpts[0], tmp_path / "resumed" / "checkpoints" / ckpts[0].name)
    resumed = train_sae(store, SITE, tmp_path / "resumed", **kw)
    assert resumed.resumed_from == int(ckpts[0].name) > 0
    torch.testing.assert_close(resumed.sae.W_dec, full.sae.W_dec, rtol=0, atol=1e-6)
    again = train_sae(store, SITE, tmp_path / "full", **kw)  # a finished run is loaded, not retrained
    assert torch.equal(again.sae.W_dec, full.sae.W_dec)
    with pytest.raises(SteerlensError, match="other settings"):
        train_sae(store, SITE, tmp_path / "full", **{**kw, "k": 8})


@pytest.mark.parametrize(("arch", "cls"), [("jumprelu", JumpReLUSAE), ("standard", StandardSAE)])
def test_other_architectures_train_to_real_sae_lens_classes(store, tmp_path, arch, cls):
    run = train_sae(store, SITE, tmp_path, architecture=arch, expansion=1, train_samples=4096, batch_size=256,
                    lr=4e-3, progress=False)  # fmt: skip
    assert isinstance(run.sae, cls) and run.metrics is None
    x = next(store.iter_batches(SITE, rows=32)).float()
    assert torch.isfinite(run.sae(x)).all()


def test_planted_vector_recovers_its_feature(smol, sae, store):
    fired = sae.encode(next(store.iter_batches(SITE, rows=2048)).float()).gt(0).float().mean(0)
    f = int(fired.masked_fill(fired > 0.5, 0).argmax())  # a live feature, not a dense one
    row = sae.W_dec[f].detach()
    noise = torch.randn(row.shape, generator=torch.Generator().manual_seed(1))
    planted = row + 0.3 * row.norm() * noise / noise.norm()
    vec = SteeringVector.from_directions({LAYER: planted}, model=smol, method="planted")
    vf = vector_features(smol, sae, vec, store, alpha=20.0, units="raw", k=5, n_contexts=3)
    assert vf.top("cosine", 1)[0][0] == f
    assert vf.top("cosine", 1)[0][1] > 0.9 > 5 * vf.top("cosine", 1, control=True)[0][1]
    assert vf.top("delta", 1)[0][0] == f
    assert vf.contexts[f] and "[[" in vf.contexts[f][0].text
    assert len(vf.figure().data) == 4 and len(vf.to_frame()) == 40


def test_dense_features_are_ranked_apart_from_the_encoder_change(smol, study, sae, store):
    """Features on for most tokens move under any shift (the random control too), so the change ranking leaves
    them out and lists them apart; their density is the fraction of the rows where they fire."""
    vec = SteeringVector.from_directions({LAYER: sae.W_dec[0].detach()}, model=smol, method="row0")
    vf = vector_features(smol, sae, vec, store, alpha=8.0, units="raw", k=5, n_contexts=1, n_rows=512)
    x = _spread_rows(store, SITE, 512)
    assert torch.equal(vf.density, sae.encode(x).gt(0).float().mean(0))
    dense = {d["feature"] for d in vf.dense_features()}
    assert dense, "the quick SAE has an always-on feature, so the exclusion is exercised"
    assert dense == set(torch.nonzero(vf.density > 0.5).flatten().tolist())
    assert all(vf.density[f] <= 0.5 for f, _ in vf.top("delta", 50) + vf.top("delta", 50, control=True))
    every = vf.top("delta", 5, dense=None)
    assert [f for f, _ in every] == vf.delta.topk(5).indices.tolist()
    back = type(vf).from_parts(vf.to_dict(), vf.tensors())
    assert torch.equal(back.density, vf.density) and back.top("delta", 5) == vf.top("delta", 5)
    tables = dict(SAEStudy(study[0].trained, {"row0": vf}, config=study[0].config).sections()[0].tables)
    listed = tables["Dense features (on > 50% of rows), left out of the encoder-change ranking"]
    assert [r["feature"] for r in listed] == [f"f{f}" for f in sorted(dense)]


def test_reading_vectors_together_equals_reading_each(smol, sae, store):
    """The study reads all its vectors in two passes over the store; each result must equal its own call."""
    rows = sae.W_dec.detach()
    vecs = {
        name: SteeringVector.from_directions({LAYER: d}, model=smol, method=name)
        for name, d in (("row3", rows[3] + rows[9]), ("rand", torch.randn(rows.shape[1]) * rows[3].norm()))
    }
    opts = dict(alpha=8.0, units="raw", k=4, n_contexts=2, n_rows=256, seed=5)
    together = read_vectors(smol, sae, vecs, store, **opts)
    for name, vec in vecs.items():
        alone = vector_features(smol, sae, vec, store, name=name, **opts)
        got = together[name]
        assert got.settings == alone.settings and got.contexts == alone.contexts and alone.contexts
        a, b = got.tensors(), alone.tensors()
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert together["row3"].contexts.keys() != together["rand"].contexts.keys()
    with pytest.raises(SteerlensError, match="rand: the vector has no layer 6"):
        read_vectors(smol, sae, {"rand": SteeringVector.from_directions({7: rows[3]}, model=smol)}, store)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 2048, 10**9])
def test_spread_rows_equals_every_step_th_row(store, n):
    # Steps longer than a chunk (n = 2, 3, 7 here; a shard's short last chunk on a 2M-row store) once
    # made torch.arange raise; the streamed pick must equal slicing the whole site.

    every = torch.cat(list(store.iter_batches(SITE))).float()
    want = every[:: max(1, len(every) // n)][:n]
    assert torch.equal(_spread_rows(store, SITE, n), want)


def _resid_after_layer(smol, ids):
    grab = {}
    h = smol.hf.model.layers[LAYER].register_forward_hook(
        lambda m, a, o: grab.setdefault("x", o[0] if isinstance(o, tuple) else o)
    )
    try:
        logits = smol.hf(ids).logits
    finally:
        h.remove()
    return grab["x"], logits


def test_feature_steering_equals_adding_the_decoder_row(smol, sae):
    """A feature set as a SteeringVector (alpha 2.5, units "vector") adds exactly 2.5 x the weighted decoder rows
    to resid_post: hooks to 1e-5, the folded down_proj bias to float rounding."""
    ids = torch.tensor(smol.tokenize(["When Mary and John went to the store, John gave a drink to"]))
    x, logits = _resid_after_layer(smol, ids)
    want = x + 2.5 * (sae.W_dec[3] - 0.5 * sae.W_dec[17])
    vec = feature_vector(smol, sae, {3: 1.0, 17: -0.5})
    assert vec.settings["features"] == {"3": 1.0, "17": -0.5}
    for fold in (False, "auto"):
        with steer(smol, vec, alpha=2.5, fold=fold):
            got, got_logits = _resid_after_layer(smol, ids)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 if fold is False else 1e-4)
        assert not torch.equal(got_logits, logits)


def test_clamp_sets_one_feature_through_the_error_term(smol, sae):
    ids = torch.tensor(smol.tokenize(["Steering vectors shift the residual stream of a language model."]))
    x, _ = _resid_after_layer(smol, ids)
    acts = sae.encode(x[0])
    f = int(acts[1:].gt(0).sum(0).argmax())
    with clamp_features(smol, sae, {f: 7.0}):
        y, _ = _resid_after_layer(smol, ids)
    want = x[0, 1:] + (7.0 - acts[1:, f : f + 1]) * sae.W_dec[f]
    torch.testing.assert_close(y[0, 1:], want, rtol=0, atol=1e-4)
    assert torch.equal(y[0, 0], x[0, 0])  # the attention sink is left alone
    with clamp_features(smol, sae, {f: 7.0}):  # KV-cached generation runs through the hook
        out = smol.hf.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3
    after, _ = _resid_after_layer(smol, ids)
    assert torch.equal(after, x)  # leaving the block restores the model exactly


def test_load_checks_the_model_and_site(smol, study, tmp_path):
    path = study[0].trained.path
    assert isinstance(load_sae(smol, path), TopKSAE)
    with pytest.raises(SAEMismatch, match=r"trained on 'blocks\.6"):
        load_sae(smol, path, site="blocks.7.hook_resid_post")
    with pytest.raises(SAENotAvailable, match=r"cfg\.json"):
        load_sae(smol, tmp_path)
    with pytest.raises(SAENotAvailable, match="release"):
        load_sae(smol, "no-such-release-anywhere")
    with pytest.raises(SAENotAvailable, match="cannot find"):
        load_sae(smol, "no-such-release-anywhere", "layer_6")  # sae-lens refuses before any download
    wrong = SAE.load_from_disk(path)
    wrong.cfg.metadata.model_name = "gemma-3-270m"
    wrong.save_model(tmp_path / "wrong")
    with pytest.raises(SAEMismatch, match="gemma-3-270m"):
        load_sae(smol, tmp_path / "wrong")


def test_study_saves_loads_and_cli_reuses_the_run(smol, study, sae):
    st, out = study
    back = SAEStudy.load(out, smol)
    assert back.config == st.config and torch.equal(back.trained.sae.W_dec, sae.W_dec)
    numbers = back.sections()[0].numbers
    assert numbers["explained variance"] == pytest.approx(st.trained.metrics.explained_variance)
    t = st.trained.trainer  # dead in training is the trainer's window count, apart from the eval-token count
    window = t["dead_window_rows"]
    assert window > 0 and window % QUICK["batch_size"] == 0
    assert (
        numbers[f"dead in training (no firing in its last {window} rows)"]
        == t["num_dead_features"] / sae.cfg.d_sae
    )
    assert f"not fired on the {st.trained.metrics.n_tokens} eval tokens" in numbers
    args = ["sae", "--quick", "--out", str(out)] + [f"--{k.replace('_', '-')}={v}" for k, v in QUICK.items()]
    assert cli(args) == 0  # the store and the SAE are reused: nothing is retrained
    assert torch.equal(SAEStudy.load(out).trained.sae.W_dec, sae.W_dec)


def test_study_reuses_another_runs_store(smol, study, sae, tmp_path):
    """``store=``: a second run trains from the first run's store without collecting again, and ends at the
    same SAE (same data stream, same seed); a store holding other tokens is refused, not silently used."""
    _, out = study
    cfg = SAEConfig.quick(**QUICK, store=str(out / "store"))
    again = run_sae(smol, cfg, tmp_path / "again", progress=False)
    assert not (tmp_path / "again" / "store").exists()
    assert torch.equal(again.trained.sae.W_dec, sae.W_dec)
    with pytest.raises(StoreMismatch, match="different data"):
        run_sae(
            smol,
            SAEConfig.quick(**{**QUICK, "tokens": 8192}, store=cfg.store),
            tmp_path / "other",
            progress=False,
        )


def test_two_runs_vectors_with_one_file_name_are_both_read(smol, tmp_path):
    """Two critique runs both write critique_vector.safetensors: each is read under its directory's name (before,
    the second silently replaced the first); one file passed twice is refused."""
    from steerlens.analysis.sae.study import _vectors

    paths = []
    for run, seed in (("run_a", 1), ("run_b", 2)):
        v = SteeringVector(
            {LAYER: torch.randn(576, generator=torch.Generator().manual_seed(seed))}, smol.name, 576
        )
        paths.append(str(v.save(tmp_path / run / "critique_vector.safetensors")))
    got = _vectors(smol, SAEConfig(layer=LAYER, vectors=tuple(paths), traits=False), LAYER)
    assert list(got) == ["run_a/critique_vector", "run_b/critique_vector"]
    assert not torch.equal(
        got["run_a/critique_vector"].directions[LAYER], got["run_b/critique_vector"].directions[LAYER]
    )
    with pytest.raises(SteerlensError, match="twice"):
        _vectors(smol, SAEConfig(layer=LAYER, vectors=(paths[0], paths[0]), traits=False), LAYER)
