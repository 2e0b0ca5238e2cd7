"""collect() and ActivationStore: exact activations, positions, resumption, clear errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

import steerlens
from steerlens import Example
from steerlens.errors import EmptyInput, SteerlensError, StoreMismatch
from steerlens.store import mmap_safetensors

from .conftest import TEXTS


def test_collected_equals_hidden_states(model, tmp_path):
    """Rows equal hf(..., output_hidden_states=True).hidden_states[l+1] at the same positions (<= 1e-5).

    HF's last hidden state is taken after the final norm, unlike TL's last resid_post, so the last layer is
    checked against the lens view in test_sites instead."""
    layers = [0, model.cfg.n_layers // 2, model.cfg.n_layers - 2]
    store = steerlens.collect(
        model,
        TEXTS,
        [f"blocks.{l}.hook_resid_post" for l in layers],
        path=tmp_path / "s",
        batch_size=3,
        progress=False,
    )
    assert store.complete and len(store) == sum(len(t) for t in model.tokenize(TEXTS))
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([model.tokenize(text)[0]])
        hs = model.hf(ids, output_hidden_states=True).hidden_states
        rows = store.example == i
        assert torch.equal(store.position[rows], torch.arange(ids.shape[1]))
        for l in layers:
            ref = hs[l + 1][0]
            got = store[f"blocks.{l}.hook_resid_post"][rows]
            # Padded batches run other matmul shapes than a single sequence: allow fp32 rounding relative to scale.
            assert (got - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item()), (i, l)


def test_unpadded_rows_match_exactly(gemma, tmp_path):
    text = TEXTS[0]  # batch of one: no padding, identical computation
    ids = torch.tensor([gemma.tokenize(text)[0]])
    hs = gemma.hf(ids, output_hidden_states=True).hidden_states
    store = steerlens.collect(gemma, [text], "blocks.*.hook_resid_post", path=tmp_path / "s", progress=False)
    for l in range(gemma.cfg.n_layers - 1):
        assert (store[f"blocks.{l}.hook_resid_post"] - hs[l + 1][0]).abs().max().item() <= 1e-5


def test_position_selectors(smol, tmp_path):
    ex = Example.from_segments([("question", "Q: What is 12 plus 7?"), (None, "\nA: "), ("answer", "19")])
    n = len(smol.tokenize(ex.text)[0])
    site = "blocks.4.hook_resid_post"
    full = steerlens.collect(smol, [ex], site, "all", path=tmp_path / "all", progress=False)
    last = steerlens.collect(smol, [ex], site, "last", path=tmp_path / "last", progress=False)
    span = steerlens.collect(smol, [ex], site, "span:answer", path=tmp_path / "span", progress=False)
    third = steerlens.collect(smol, [ex], site, 2, path=tmp_path / "idx", progress=False)
    expl = steerlens.collect(smol, [ex], site, [[0, 3]], path=tmp_path / "ex", progress=False)
    assert len(full) == n and last.position.tolist() == [n - 1] and third.position.tolist() == [2]
    assert expl.position.tolist() == [0, 3]
    answer_tokens = span.position.tolist()
    decoded = smol.tokenizer.decode(smol.tokenize(ex.text)[0][answer_tokens[0] : answer_tokens[-1] + 1])
    assert decoded.strip() == "19"
    for sub in (last, span, third, expl):
        assert torch.equal(sub[site], full[site][sub.position])


def test_streamed_reads_agree(gemma, tmp_path):
    store = steerlens.collect(
        gemma,
        TEXTS * 4,
        "blocks.3.hook_resid_post",
        path=tmp_path / "s",
        batch_size=2,
        shard_mb=0.05,
        progress=False,
    )
    assert len(store.manifest["shards"]) > 2
    site = "blocks.3.hook_resid_post"
    whole = store[site]
    assert torch.equal(torch.cat(list(store.iter_batches(site, rows=7))), whole)
    assert torch.allclose(store.mean(site), whole.double().mean(0).float(), atol=1e-5)
    shard = tmp_path / "s" / store.manifest["shards"][0]["file"]
    mm, ref = mmap_safetensors(shard), load_file(shard)
    assert all(torch.equal(mm[k], ref[k]) for k in ref)


def test_complete_store_is_reused(gemma, tmp_path):
    a = steerlens.collect(gemma, TEXTS, "blocks.1.hook_resid_post", path=tmp_path / "s", progress=False)
    mtime = (tmp_path / "s" / "manifest.json").stat().st_mtime_ns
    b = steerlens.collect(gemma, TEXTS, "blocks.1.hook_resid_post", path=tmp_path / "s", progress=False)
    assert (tmp_path / "s" / "manifest.json").stat().st_mtime_ns == mtime
    assert torch.equal(a["blocks.1.hook_resid_post"], b["blocks.1.hook_resid_post"])


RESUME_CHILD = textwrap.dedent("""
    import sys, time, steerlens
    model = steerlens.load("smollm2-135m-instruct")
    if sys.argv[2] == "slow":  # slow enough to be killed mid-run
        model.hf.model.layers[0].register_forward_hook(lambda *a: time.sleep(0.05))
    texts = [f"Example number {i}: the quick brown fox jumps {i % 7} times." for i in range(120)]
    steerlens.collect(model, texts, ["blocks.2.hook_resid_post", "blocks.5.attn.hook_z"], "all",
                      path=sys.argv[1], batch_size=3, shard_mb=0.001, progress=False)
""")


def _child(path, mode):
    return subprocess.Popen([sys.executable, "-c", RESUME_CHILD, str(path), mode], start_new_session=True)


def test_killed_collection_resumes_exactly(tmp_path):
    """SIGKILL a collection mid-run, rerun it: the rows equal those of an uninterrupted run, bit for bit."""
    path = tmp_path / "killed"
    child = _child(path, "slow")
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            mf = path / "manifest.json"
            if mf.exists() and len(json.loads(mf.read_text())["shards"]) >= 4:
                break
            assert child.poll() is None, "child finished or crashed before it could be killed"
            time.sleep(0.02)
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    killed = steerlens.ActivationStore(path)
    assert not killed.complete and 0 < killed.next_example < 120
    # The rerun and the reference run in fresh processes, as a user's rerun would.
    assert _child(path, "fast").wait() == 0 and _child(tmp_path / "clean", "fast").wait() == 0
    resumed, clean = steerlens.ActivationStore(path), steerlens.ActivationStore(tmp_path / "clean")
    assert resumed.complete and len(resumed) == len(clean) == resumed.manifest["n_rows"]
    assert torch.equal(resumed.example, clean.example) and torch.equal(resumed.position, clean.position)
    for s in resumed.sites:
        assert torch.equal(resumed[s], clean[s])


def test_errors(gemma, smol, tmp_path):
    with pytest.raises(EmptyInput, match="no inputs"):
        steerlens.collect(gemma, [], "blocks.0.hook_resid_post", path=tmp_path / "a")
    with pytest.raises(SteerlensError, match="no span named 'answer'"):
        steerlens.collect(
            gemma, ["plain text"], "blocks.0.hook_resid_post", "span:answer", path=tmp_path / "b"
        )
    with pytest.raises(EmptyInput, match="select no tokens"):
        steerlens.collect(gemma, ["plain text"], "blocks.0.hook_resid_post", [[]], path=tmp_path / "c")
    store = steerlens.collect(
        gemma, TEXTS[:2], "blocks.0.hook_resid_post", path=tmp_path / "d", progress=False
    )
    with pytest.raises(StoreMismatch, match="not of 'smollm2-135m-instruct'"):
        store.check_model(smol)
    with pytest.raises(StoreMismatch, match=r"other settings.*overwrite=True"):
        steerlens.collect(smol, TEXTS[:2], "blocks.0.hook_resid_post", path=tmp_path / "d", progress=False)
    with pytest.raises(StoreMismatch, match="different data"):
        steerlens.collect(gemma, TEXTS[2:4], "blocks.0.hook_resid_post", path=tmp_path / "d", progress=False)
    with pytest.raises(SteerlensError, match=r"site 'blocks\.1\.hook_resid_post' is not in this store"):
        store["blocks.1.hook_resid_post"]
