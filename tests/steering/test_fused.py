"""The fused per-layer op: its Triton kernel equals the reference (under the Triton interpreter on CPU, on CUDA
when there is one), its CPU path is bit-identical to the per-step ops it replaced, ``torch.compile`` traces
it with no graph break, and its persistent buffers update in place (what CUDA graphs need).

``STEERLENS_FUSED_CASES`` sets the interpreter's random cases per run (default 120); their seed is
``STEERLENS_PROPERTY_SEED`` where set (CI pins it), else a fresh one, printed.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steerlens.steering import Intervention, Window, steer
from steerlens.steering.fused import UNIFORM, FusedLayer, apply_steps, reference
from steerlens.steering.ops import OPS, apply_op

from .fused_cases import random_case

CASES = int(os.environ.get("STEERLENS_FUSED_CASES", "120"))
SCRIPT = Path(__file__).with_name("fused_cases.py")
ROOT = SCRIPT.parents[2]
HEAVY = ("transformers", "transformer_lens", "nnsight", "sae_lens", "steerlens")


def _run_script(*args: str, **env: str) -> str:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_kernel_equals_reference_under_the_triton_interpreter():
    """>= 100 random step lists (fp32, bf16, fp16; masks, per-row and NaN clamp masks) in a fresh process:
    TRITON_INTERPRET=1 only works when it is set before triton is first imported."""
    pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[dev]')")
    seed = os.environ.get("STEERLENS_PROPERTY_SEED") or str(random.SystemRandom().randrange(2**31))
    got = _run_script("--device", "cpu", "--cases", str(CASES), "--seed", seed, TRITON_INTERPRET="1")
    assert f"OK: {CASES} cases passed" in got


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_kernel_equals_reference_on_cuda_and_survives_graph_replay():
    pytest.importorskip("triton", reason="triton is not installed")
    assert "OK: 300 cases" in _run_script("--device", "cuda", "--cases", "300", "--graph")


def test_kernel_module_runs_without_the_rest_of_steerlens():
    """bench/fused_gpu.sh loads steering/fused.py alone on a machine with torch and triton only."""
    code = (
        "import sys; sys.path.insert(0, 'tests/steering'); import fused_cases; f = fused_cases.load_fused(); "
        f"print(f.__name__, sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "STEERLENS_FUSED_STANDALONE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["steering.fused", "[]"], out.stdout


def _per_step(h, dirs, coefs, codes):
    """What the hooks did before the fused op: apply_op per step, a float where the coefficient is uniform
    and a [batch, pos] tensor in the residual's dtype elsewhere."""
    for i, code in enumerate(codes):
        c = float(coefs[i].reshape(-1)[0]) if code & UNIFORM else coefs[i].to(h.dtype)
        h = apply_op(h, dirs[i], OPS[code & 3], c)
    return h


def test_cpu_path_is_bit_identical_to_the_per_step_ops():
    rng = random.Random(0)
    for _ in range(150):
        case = random_case(rng, "cpu")
        h, dirs, codes = case["h"], case["dirs"], case["codes"]
        coefs = case["coefs"].to(h.dtype).float()  # the hooks' coefficients were in the residual's dtype
        got, want = apply_steps(h, dirs, coefs, codes), _per_step(h, dirs, coefs, codes)
        assert torch.equal(got.isnan(), want.isnan()), case["ops"]
        assert torch.equal(got.nan_to_num(), want.nan_to_num()), (case["ops"], h.dtype)


def test_gradients_flow_through_the_torch_composition():
    h = torch.randn(2, 3, 8, requires_grad=True)
    dirs, coefs = torch.randn(2, 8), torch.rand(2, 2, 3)
    with torch.enable_grad():
        apply_steps(h, dirs, coefs, [1, 2]).sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


class _Block(torch.nn.Module):
    """A decoder-like layer whose output goes through the fused op from persistent buffers."""

    def __init__(self, steer: FusedLayer) -> None:
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16))
        self.steer = steer

    def forward(self, h):
        return self.steer(h + self.mlp(h))


def test_fused_op_compiles_with_fullgraph_and_reads_updated_buffers():
    dirs = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    f = FusedLayer(["add", "add_norm", "ablate", "clamp"], dirs, lead=(3, 5))
    for i, alpha in enumerate([torch.tensor([1.0, -1.0, 0.5]), 0.7, 1.0, 2.0]):
        f.set(i, alpha, mask=torch.rand(3, 5) < 0.7)
    block, h = _Block(f), torch.randn(3, 5, 16)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")  # raises on any graph break
    expect = reference(h + block.mlp(h), f.dirs, f.coefs, f.codes)
    assert torch.equal(compiled(h), expect)
    ptr = f.coefs.data_ptr()
    f.set(3, -1.0)  # in place: the compiled graph reads the new value without recompiling
    assert f.coefs.data_ptr() == ptr
    assert torch.equal(compiled(h), reference(h + block.mlp(h), f.dirs, f.coefs, f.codes))
    explain = torch._dynamo.explain(block)(h)
    assert explain.graph_break_count == 0 and explain.graph_count == 1


def test_fused_layer_set_masks_rows_and_clamp_defaults_to_untouched():
    u = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    f = FusedLayer(["clamp", "add"], u, lead=(4, 2))
    h = torch.randn(4, 2, 8)
    assert torch.equal(f(h), h)  # nothing set: clamp NaN-masked, add zero
    f.set(0, 3.0, mask=torch.tensor([[True, False]] * 4))
    f.set(1, torch.tensor([0.0, 1.0, 2.0, 3.0]))
    out = f(h)
    assert torch.allclose(
        (out[:, 0] - f.coefs[1, :, 0, None] * u[1]) @ u[0], torch.full((4,), 3.0), atol=1e-5
    )
    assert torch.equal(out[0, 1], h[0, 1])
    with pytest.raises(ValueError, match="expected one of"):
        FusedLayer(["nudge"], u[:1], lead=(1,))  # type: ignore[list-item]


@pytest.mark.slow
def test_steered_decoder_layer_compiles_with_fullgraph(smol, smol_vec):
    """A real smollm2 decoder layer under steer(): its forward hook (three interventions, per-row alphas, a
    window and a clamp) runs the fused op, and dynamo traces layer + hook as one graph."""
    vec = smol_vec.select([3])
    ivs = [
        Intervention(vec, alpha=[0.5, -0.5], units="resid"),
        Intervention(vec.random_like(1), op="ablate", positions=Window(1, 4)),
        Intervention(vec.random_like(2), op="clamp", alpha=2.0, positions=Window(2)),
    ]
    ids = smol.tokenizer(
        ["The movie was", "Yesterday I went to"], return_tensors="pt", padding=True
    ).input_ids
    layer, body = smol.hf.model.layers[3], smol.hf.model
    h = body.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    rope = body.rotary_emb(h, pos)
    graphs = []

    def backend(gm, inputs):  # dynamo's graphs, then AOT autograd over them (the fake impl is used)
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, inputs)

    def run(x):  # compiling a caller of the layer inlines Module.__call__, forward hooks included
        out = layer(x, position_embeddings=rope, attention_mask=None)
        return out[0] if isinstance(out, tuple) else out

    with steer(smol, *ivs, fold=False):
        smol.hf(ids)  # begins the sequence: the hook's positions and rows refer to it
        eager = run(h)
        explain = torch._dynamo.explain(run)(h)
        if any("output_capturing" in str(r) for r in explain.break_reasons):
            # transformers' own output-capturing hook (installed on the layer once any earlier test asked for
            # hidden states) reads a ContextVar, which dynamo cannot trace: a break outside steerlens
            pytest.skip("graph break in transformers' output_capturing hook, not in the steering op")
        torch._dynamo.reset()
        try:
            got = torch.compile(run, fullgraph=True, backend=backend)(h)  # raises on any graph break
        except torch._dynamo.exc.Unsupported as e:
            if "output_capturing" not in str(e):
                raise
            pytest.skip("graph break in transformers' output_capturing hook, not in the steering op")
    assert explain.graph_count == 1 and explain.graph_break_count == 0, explain.break_reasons
    assert len(graphs) == 1 and "torch.ops.steerlens.steer_layer" in graphs[0].code
    assert (got - eager).abs().max().item() <= 1e-5
    assert (eager - run(h)).abs().max().item() > 1e-2  # it was steered (and is no longer)
