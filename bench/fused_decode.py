"""Steered decode at batch 64 under CUDA graphs: one decode step of a SmolLM2-135M-shaped model captured once
and replayed, unsteered vs steered. Run by ``bench/fused_gpu.sh`` (and ``bench/fused.py`` on a GPU).

    PYTHONPATH=. STEERLENS_FUSED_STANDALONE=1 python3 bench/fused_decode.py            # GPU, CUDA graphs
    PYTHONPATH=. python bench/fused_decode.py --device cpu --batch 4 --pos 16 --cache 24 --layers 3 --replays 40

Why a captured step: that is how serving engines (vLLM, hotwire) run decode, and where per-intervention torch
ops hurt most (EasySteer keeps CUDA graphs only for a single vector). The model is transformers'
``LlamaForCausalLM`` with SmolLM2-135M's configuration and random weights (the speed does not depend on the
values; the real weights need steerlens' model packages) and a static KV cache; if that cannot be built or
captured (an older or newer transformers), a stack of 30 decoder-like layers of the same shape stands in.

Replaying one step many times: the step writes position ``POS`` of the static cache every time. transformers
5 keeps the write position in the cache itself (``cumulative_length``, incremented in place on every update,
also inside a captured graph), so the step sets it back to ``POS`` first (captured too); ``position_ids`` and
(older versions) ``cache_position`` are fixed tensors. Before any capture the step runs eagerly
several times and the cache must still say ``POS + 1``. Each model runs in a child process (``auto``): a
device-side assert poisons the CUDA context, and the stand-in must still be able to run after one.

``--device cpu`` runs the same code eagerly (no graphs), at a size the CPU can take: it checks that the
replayed step stays inside the cache (an out-of-range write raises there instead of asserting on a GPU).

Steering: 3 steps per steered layer (per-row add, ablate, clamp), through ``FusedLayer`` (persistent buffers,
updated in place between replays) or through per-step torch ops, at one layer or at all of them.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

BATCH, CACHE, POS = 64, 256, 128  # decode rows, static cache length, position of the step being replayed
DEVICE = "cuda"
D, LAYERS, HEADS, KV, FFN, VOCAB = 576, 30, 9, 3, 1536, 49152
DTYPE = torch.bfloat16
HERE = Path(__file__).resolve().parent


def _cache_lengths(cache: Any) -> list[torch.Tensor]:
    """The write-position counters a transformers 5 StaticCache keeps per layer (none in older versions)."""
    layers = getattr(cache, "layers", None) or []
    return [t for t in (getattr(layer, "cumulative_length", None) for layer in layers) if torch.is_tensor(t)]


def hf_model() -> tuple[nn.Module, list[nn.Module], Callable[[], torch.Tensor]]:
    """transformers' Llama with SmolLM2-135M's shape and a static cache; returns (model, layers, step)."""
    from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device(DEVICE):
        model = LlamaForCausalLM(cfg).to(DTYPE).eval()
    cache = StaticCache(config=cfg, max_cache_len=CACHE)
    params = inspect.signature(model.forward).parameters  # the cache's keyword changed name in transformers 5
    cache_kw = "past_key_values" if "past_key_values" in params else "cache"

    def kwargs(start: int, n: int) -> dict[str, Any]:
        where = torch.arange(start, start + n, device=DEVICE)
        out = {cache_kw: cache, "position_ids": where[None].expand(BATCH, n), "use_cache": True}
        if "cache_position" in params:
            out["cache_position"] = where
        return out

    prompt = torch.randint(0, VOCAB, (BATCH, POS), device=DEVICE)
    with torch.no_grad():  # prefill: allocates the cache's tensors outside any capture
        model(prompt, **kwargs(0, POS))
    lengths = _cache_lengths(cache)
    if lengths and any(int(t) != POS for t in lengths):
        raise RuntimeError(f"after a {POS}-token prefill the cache says {[int(t) for t in lengths]}")
    ids = torch.randint(0, VOCAB, (BATCH, 1), device=DEVICE)
    fixed = kwargs(POS, 1)  # the same tensors every call: a graph replays them

    def step() -> torch.Tensor:
        for t in lengths:  # write position POS again (captured in the graph too)
            t.fill_(POS)
        return model(ids, **fixed).logits

    with torch.no_grad():  # several eager steps: the cache must stay at POS + 1, whatever the version
        for _ in range(3):
            step()
    if lengths and any(int(t) != POS + 1 for t in lengths):
        raise RuntimeError(f"replayed steps moved the cache to {sorted({int(t) for t in lengths})}")
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
    """LAYERS decoder-like layers, an embedding and an unembedding of SmolLM2-135M's shape."""
    with torch.device(DEVICE):
        emb = nn.Embedding(VOCAB, D)
        layers = nn.ModuleList(_Layer() for _ in range(LAYERS))
        model = nn.ModuleDict(dict(emb=emb, layers=layers)).to(DTYPE)
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
        dirs = nn.functional.normalize(torch.randn(3, D, device=DEVICE), dim=-1).to(DTYPE)
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
    """Capture ``step`` in a CUDA graph (after warm-up on a side stream) and time ``replays`` replays; on CPU,
    ``replays`` eager calls."""
    if DEVICE == "cpu":
        with torch.no_grad():
            out = step()
            t = time.perf_counter()
            for _ in range(replays):
                step()
        return (time.perf_counter() - t) / replays, out.clone()
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


def decode_bench(fused: Any, model_kind: str, replays: int) -> dict[str, Any]:
    """Tokens/s of the (captured) decode step, unsteered and steered; ratios measured in one run."""
    how = "one step captured in a CUDA graph" if DEVICE == "cuda" else "eager steps on CPU, no graphs"
    print(f"\nsteered decode on {DEVICE}, batch {BATCH}, {how}, {replays} replays per row")
    if model_kind == "hf":
        model, layers, step = hf_model()
        kind = f"transformers LlamaForCausalLM, SmolLM2-135M shape x {LAYERS} layers, random weights, StaticCache"
    else:
        model, layers, step = stand_in()
        kind = f"stand-in: {LAYERS} decoder-like layers of SmolLM2-135M's shape"
    print(f"model: {kind}")
    base, plain = _replay_seconds(step, replays)
    result: dict[str, Any] = {"model": kind, "unsteered": BATCH / base}
    print(f"{'steering':>34} {'ms/step':>8} {'tok/s':>9} {'vs unsteered':>13} {'max |dlogit|':>13}")
    print(f"{'unsteered':>34} {base * 1e3:>8.3f} {BATCH / base:>9.0f} {1.0:>12.3f}x {0.0:>13.3f}")
    for n_layers in (1, LAYERS):
        steerers = _steerers(fused, n_layers)
        for name, fns in steerers.items():
            handles = [layers[i].register_forward_hook(_hook(fn)) for i, fn in enumerate(fns)]
            try:
                t, logits = _replay_seconds(step, replays)
            finally:
                for handle in handles:
                    handle.remove()
            label = f"{name}, 3 steps at {n_layers} layer{'s' * (n_layers > 1)}"
            moved = (logits.float() - plain.float()).abs().max().item()  # the steering took effect
            print(f"{label:>34} {t * 1e3:>8.3f} {BATCH / t:>9.0f} {base / t:>12.3f}x {moved:>13.3f}")
            result[f"{name} {n_layers}"] = BATCH / t
            if not moved > 0:
                raise RuntimeError(f"{label}: the logits did not move: the steering hooks did not run")
    del model
    return result


def _summary(line: str) -> None:
    path = os.environ.get("FUSED_SUMMARY")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _summarize(r: dict[str, Any]) -> None:
    u = r["unsteered"]
    cells = [f"unsteered {u:,.0f} tok/s"]
    for n in (1, LAYERS):
        f, p = r.get(f"fused {n}"), r.get(f"per-step {n}")
        if f and p:
            cells.append(
                f"{n} layer{'s' * (n > 1)}: fused {f:,.0f} ({f / u:.3f}x), per-step {p:,.0f} ({p / u:.3f}x)"
            )
    _summary(f"decode batch {BATCH} ({r['model']}; goal fused >= 0.97x): " + "; ".join(cells))


def run_isolated(timeouts: tuple[float, float] = (60.0, 35.0)) -> bool:
    """transformers' model in a child process, and the stand-in in another if that fails: a device-side
    assert in one child cannot poison the other's CUDA context. True if one of them ran."""
    for kind, timeout in zip(("hf", "stand-in"), timeouts, strict=True):
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(
                [sys.executable, str(Path(__file__)), "--model", kind], timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        print(f"[decode, model {kind}: exit {rc} after {time.perf_counter() - t0:.0f}s]", flush=True)
        if rc == 0:
            return True
        if kind == "hf":
            print("transformers' model failed (above); the decoder-like stand-in instead, in a fresh process")
    _summary("decode: FAILED (both transformers' model and the stand-in; see the log)")
    return False


def main() -> None:
    global BATCH, CACHE, POS, DEVICE, LAYERS, DTYPE
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="auto", choices=["auto", "hf", "stand-in"],
                   help="auto: hf in a child process, the stand-in in another if hf fails")  # fmt: skip
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--pos", type=int, default=POS)
    p.add_argument("--cache", type=int, default=CACHE)
    p.add_argument("--layers", type=int, default=LAYERS)
    p.add_argument("--replays", type=int, default=200)
    a = p.parse_args()
    BATCH, POS, CACHE, DEVICE, LAYERS = a.batch, a.pos, a.cache, a.device, a.layers
    DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    if not POS < CACHE:
        sys.exit(f"--pos {POS} must be below --cache {CACHE}")
    if a.model == "auto" and DEVICE == "cuda":
        sys.exit(0 if run_isolated() else 1)
    sys.path.insert(0, str(HERE.parent / "tests" / "steering"))
    from fused_cases import load_fused

    torch.manual_seed(0)
    kinds = ["hf", "stand-in"] if a.model == "auto" else [a.model]
    for kind in kinds:
        try:
            _summarize(decode_bench(load_fused(), kind, a.replays))
        except Exception:
            traceback.print_exc()
            sys.exit(1)


if __name__ == "__main__":
    main()
