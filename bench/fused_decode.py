"""Steered decode at batch 64 under CUDA graphs: one decode step of a SmolLM2-135M-shaped model captured once
and replayed, unsteered vs steered. Called by ``bench/fused.py`` on a GPU.

Why a captured step: that is how serving engines (vLLM, hotwire) run decode, and where per-intervention torch
ops hurt most (EasySteer keeps CUDA graphs only for a single vector). The model is transformers'
``LlamaForCausalLM`` with SmolLM2-135M's configuration and random weights (the speed does not depend on the
values; the real weights need steerlens' model packages) and a static KV cache; if that cannot be built or
captured (an older or newer transformers), a stack of 30 decoder-like layers of the same shape stands in.

Steering: 3 steps per steered layer (per-row add, ablate, clamp), through ``FusedLayer`` (persistent buffers,
updated in place between replays) or through per-step torch ops, at one layer or at all 30.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

BATCH, CACHE, POS = 64, 256, 128  # decode rows, static cache length, position of the step being replayed
DEVICE = "cuda"
D, LAYERS, HEADS, KV, FFN, VOCAB = 576, 30, 9, 3, 1536, 49152


def hf_model() -> tuple[nn.Module, list[nn.Module], Callable[[], torch.Tensor]]:
    """transformers' Llama with SmolLM2-135M's shape and a static cache; returns (model, layers, step)."""
    from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device(DEVICE):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    cache = StaticCache(config=cfg, max_cache_len=CACHE)
    prompt = torch.randint(0, VOCAB, (BATCH, POS), device=DEVICE)
    with torch.no_grad():  # prefill: allocates the cache's tensors outside any capture
        model(prompt, past_key_values=cache, cache_position=torch.arange(POS, device=DEVICE), use_cache=True)
    ids = torch.randint(0, VOCAB, (BATCH, 1), device=DEVICE)
    where = torch.tensor([POS], device=DEVICE)

    def step() -> torch.Tensor:
        return model(ids, past_key_values=cache, cache_position=where, use_cache=True).logits

    return model, list(model.model.layers), step


class _Layer(nn.Module):
    """RMSNorm, grouped-query attention over a static KV cache, RMSNorm, SwiGLU MLP: a Llama block's work."""

    def __init__(self) -> None:
        super().__init__()
        dh = D // HEADS
        self.n1, self.n2 = nn.RMSNorm(D), nn.RMSNorm(D)
        self.qkv = nn.Linear(D, (HEADS + 2 * KV) * dh, bias=False)
        self.o = nn.Linear(HEADS * dh, D, bias=False)
        self.up = nn.Linear(D, 2 * FFN, bias=False)
        self.down = nn.Linear(FFN, D, bias=False)
        self.register_buffer("k", torch.randn(BATCH, KV, CACHE, dh) * 0.1)  # the static KV cache
        self.register_buffer("v", torch.randn(BATCH, KV, CACHE, dh) * 0.1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, dh = h.shape[0], D // HEADS
        q, k, v = self.qkv(self.n1(h)).split([HEADS * dh, KV * dh, KV * dh], dim=-1)
        self.k[:, :, POS] = k.view(b, KV, dh)
        self.v[:, :, POS] = v.view(b, KV, dh)
        q = q.view(b, 1, HEADS, dh).transpose(1, 2)
        keys, values = self.k[:, :, : POS + 1], self.v[:, :, : POS + 1]
        a = nn.functional.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
        h = h + self.o(a.transpose(1, 2).reshape(b, 1, HEADS * dh))
        gate, up = self.up(self.n2(h)).chunk(2, dim=-1)
        return h + self.down(nn.functional.silu(gate) * up)


def stand_in() -> tuple[nn.Module, list[nn.Module], Callable[[], torch.Tensor]]:
    """30 decoder-like layers, an embedding and an unembedding of SmolLM2-135M's shape."""
    with torch.device(DEVICE):
        emb = nn.Embedding(VOCAB, D)
        layers = nn.ModuleList(_Layer() for _ in range(LAYERS))
        model = nn.ModuleDict(dict(emb=emb, layers=layers)).to(torch.bfloat16)
    ids = torch.randint(0, VOCAB, (BATCH, 1), device=DEVICE)

    def step() -> torch.Tensor:
        h = emb(ids)
        for layer in layers:
            h = layer(h)
        return h @ emb.weight.T

    return model, list(layers), step


def _hook(steer: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    def hook(module: nn.Module, args: Any, out: Any) -> Any:
        if isinstance(out, tuple):
            return (steer(out[0]), *out[1:])
        return steer(out)

    return hook


def _steerers(fused: Any, n_layers: int) -> dict[str, list[Callable[[torch.Tensor], torch.Tensor]]]:
    """Per steered layer: the fused op on persistent buffers, or the same steps as per-step torch ops."""
    out: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {"fused": [], "per-step": []}
    for _ in range(n_layers):
        dirs = nn.functional.normalize(torch.randn(3, D, device=DEVICE), dim=-1).to(torch.bfloat16)
        f = fused.FusedLayer(["add", "ablate", "clamp"], dirs, lead=(BATCH, 1))
        f.set(0, torch.linspace(-4, 4, BATCH))
        f.set(1, 1.0)
        f.set(2, 2.0, mask=torch.arange(BATCH, device=DEVICE)[:, None] % 2 == 0)
        out["fused"].append(f)
        out["per-step"].append(
            lambda h, f=f: fused.reference(h, f.dirs, f.coefs, f.codes)  # apply_op once per step
        )
    return out


def _replay_seconds(step: Callable[[], torch.Tensor], replays: int) -> tuple[float, torch.Tensor]:
    """Capture ``step`` in a CUDA graph (after warm-up on a side stream) and time ``replays`` replays."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = step()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / replays)
    return best, out.clone()


def decode_bench(fused: Any, replays: int = 200) -> None:
    """Tokens/s of the captured decode step, unsteered and steered; ratios measured in one run."""
    print(
        f"\nsteered decode, batch {BATCH}, one step captured in a CUDA graph (best of 3 x {replays} replays)"
    )
    try:
        model, layers, step = hf_model()
        _replay_seconds(step, 2)
        kind = "transformers LlamaForCausalLM, SmolLM2-135M shape, random weights, StaticCache"
    except Exception:
        traceback.print_exc()
        print("transformers' model could not be captured (above); using decoder-like stand-in layers")
        model, layers, step = stand_in()
        kind = "stand-in: 30 decoder-like layers of SmolLM2-135M's shape"
    print(f"model: {kind}")
    base, plain = _replay_seconds(step, replays)
    print(f"{'steering':>34} {'ms/step':>8} {'tok/s':>9} {'vs unsteered':>13} {'max |dlogit|':>13}")
    print(f"{'unsteered':>34} {base * 1e3:>8.3f} {BATCH / base:>9.0f} {1.0:>12.3f}x {0.0:>13.3f}")
    for n_layers in (1, LAYERS):
        steerers = _steerers(fused, n_layers)
        for name, fns in steerers.items():
            handles = [layers[l].register_forward_hook(_hook(fn)) for l, fn in enumerate(fns)]
            try:
                t, logits = _replay_seconds(step, replays)
            finally:
                for h in handles:
                    h.remove()
            label = f"{name}, 3 steps at {n_layers} layer{'s' * (n_layers > 1)}"
            moved = (logits.float() - plain.float()).abs().max().item()  # the steering took effect
            print(f"{label:>34} {t * 1e3:>8.3f} {BATCH / t:>9.0f} {base / t:>12.3f}x {moved:>13.3f}")
    del model
