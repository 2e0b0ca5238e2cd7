"""load(), the Model wrapper and its three views, on both embedded models."""

import time

import pytest
import torch

import steerlens
from steerlens.errors import ModelNotAvailable, SteerlensError
from steerlens.registry import EMBEDDED, EmbeddedModel

from .conftest import IOI


def test_gemma_predicts_mary(gemma):
    logits = gemma.logits(IOI)
    assert gemma.tokenizer.decode(int(logits[-1].argmax())) == " Mary"


def test_config_facts(gemma, smol):
    g, s = gemma.cfg, smol.cfg
    assert (g.model_type, g.n_layers, g.d_model, g.n_heads, g.n_kv_heads, g.d_vocab) == (
        "gemma3_text",
        18,
        640,
        4,
        1,
        262144,
    )
    assert (s.model_type, s.n_layers, s.d_model, s.n_heads, s.d_vocab) == ("llama", 30, 576, 9, 49152)


def test_three_views_same_logits(model):
    """HF vs lens vs nnsight on a fixed prompt: max abs logit diff <= 1e-4 in fp32."""
    ids = torch.tensor([model.tokenize(IOI)[0]])
    hf = model.hf(ids).logits
    lens = model.lens(ids)
    with model.nn.trace(ids):
        out = model.nn.output.save()
    assert (lens - hf).abs().max().item() <= 1e-4
    assert (out.logits - hf).abs().max().item() <= 1e-4
    assert model.tokenizer.decode(int(lens[0, -1].argmax())) == model.tokenizer.decode(
        int(hf[0, -1].argmax())
    )


def test_lens_shares_weight_storage(model):
    """No weight copies per view: the lens' matrices are views of the HF tensors."""
    lens = model.lens
    q_hf = model.hf.model.layers[2].self_attn.q_proj.weight
    if model.cfg.model_type == "gemma3_text":  # HookedTransformer: shared by share_hooked_weights
        assert lens.blocks[2].attn.W_Q.untyped_storage().data_ptr() == q_hf.untyped_storage().data_ptr()
        assert (
            lens.unembed.W_U.untyped_storage().data_ptr()
            == model.hf.lm_head.weight.untyped_storage().data_ptr()
        )
        # Only the sqrt(d_model)-scaled embedding and the +1 norm weights are stored transformed.
        assert model.lens_shared_fraction > 0.55
    else:  # TransformerBridge wraps a structural twin of hf whose tensors are hf's own
        twin = lens.original_model
        assert twin is not model.hf and type(model.hf.model.layers[2]).__name__ == "LlamaDecoderLayer"
        hf_ptrs = {p.data_ptr() for p in model.hf.parameters()}
        assert hf_ptrs <= {p.data_ptr() for p in twin.parameters()}
        extra = sum(p.numel() for p in twin.parameters() if p.data_ptr() not in hf_ptrs)
        assert extra <= 1e-3 * sum(p.numel() for p in model.hf.parameters())  # the bridge's zero lm_head bias
        assert model.hf.config._attn_implementation == "sdpa"  # hf keeps its fast attention
        assert model.lens_shared_fraction > 0.999


def test_weight_edit_in_hf_is_seen_by_lens(gemma):
    ids = torch.tensor([gemma.tokenize(IOI)[0]])
    w = gemma.hf.model.layers[4].mlp.down_proj.weight
    before = gemma.lens(ids)
    saved = w.detach().clone()
    try:
        w.data.mul_(0.0)
        after = gemma.lens(ids)
        assert (after - before).abs().max().item() > 1e-2
        assert (after - gemma.hf(ids).logits).abs().max().item() <= 1e-4
    finally:
        w.data.copy_(saved)


def test_cached_reload_is_fast(gemma):
    t = time.perf_counter()
    again = steerlens.load("gemma-3-270m")
    assert time.perf_counter() - t < 20  # safetensors cache, not a second dequantization
    assert torch.equal(
        again.hf.model.layers[0].self_attn.q_proj.weight, gemma.hf.model.layers[0].self_attn.q_proj.weight
    )


def test_cache_is_per_transformers_version_and_keeps_gemmas_bos(gemma):
    """The cache dir names the transformers minor that wrote its tokenizer: one written by the vLLM venv's 5.19
    tokenized gemma prompts without <bos>, and every gemma result read in the main venv went wrong."""
    import transformers

    from steerlens.weights import cached_model_dir

    tf = ".".join(transformers.__version__.split(".")[:2])
    assert cached_model_dir(EMBEDDED["gemma-3-270m"]).name.endswith(f"-tf{tf}")
    assert gemma.tokenize("When Mary and John went")[0][0] == gemma.tokenizer.bos_token_id


def test_chat_prompt(smol, gemma):
    text = smol.chat_prompt("What is 2+2?")
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    with pytest.raises(SteerlensError, match="no chat template"):
        gemma.chat_prompt("hi")


def test_unknown_model_name():
    with pytest.raises(ModelNotAvailable, match=r"unknown model 'gemma-9000'.*gemma-3-270m"):
        steerlens.load("gemma-9000")


def test_missing_model_package_names_install_command():
    fake = EmbeddedModel(
        "fake",
        "org/fake",
        "no-such-dist-steerlens",
        "pip install no-such-dist-steerlens",
        "bridge",
        "",
        lambda d: d,
    )
    with pytest.raises(ModelNotAvailable, match="pip install no-such-dist-steerlens"):
        fake.gguf(__import__("pathlib").Path("."))
    assert set(EMBEDDED) == {"gemma-3-270m", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"}
