"""Hook-site names: parsing, clear errors, and the same tensor in every view."""

import pytest
import torch

from steerlens.errors import SiteError

from .conftest import TEXTS

KINDS = [
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "attn.hook_z",
    "mlp.hook_post",
]


def test_star_expands_to_every_layer(model):
    sites = model.sites("blocks.*.hook_resid_post")
    assert [s.layer for s in sites] == list(range(model.cfg.n_layers))


def test_layer_out_of_range(gemma):
    with pytest.raises(SiteError, match=r"layer 18 out of range.*18 layers \(0\.\.17\)"):
        gemma.site("blocks.18.hook_resid_post")


def test_unknown_kind_and_site(gemma):
    with pytest.raises(SiteError, match="unknown site kind 'hook_resid_sideways'"):
        gemma.site("blocks.3.hook_resid_sideways")
    with pytest.raises(SiteError, match="unknown site 'resid_post'"):
        gemma.site("resid_post")
    with pytest.raises(SiteError, match="no sites given"):
        gemma.sites([])


def test_every_site_matches_transformerlens_hook(model):
    """Our HF-side reading of each site equals the lens view's hook of the same name."""
    import steerlens

    layer = 2
    names = [f"blocks.{layer}.{k}" for k in KINDS]
    store = steerlens.collect(model, TEXTS[0], names, path=None, progress=False, overwrite=False)
    _, cache = model.lens.run_with_cache(torch.tensor([model.tokenize(TEXTS[0])[0]]), names_filter=names)
    for name in names:
        ref = cache[name][0]
        # Two fp32 implementations: 1e-4, widened by 1e-6 of the scale (Gemma's residual reaches ~6000, where
        # one fp32 ulp is ~5e-4).
        assert (store[name] - ref).abs().max().item() <= 1e-4 + 1e-6 * ref.abs().max().item(), name


def test_nnsight_envoy_reads_the_same_site(model):
    ids = torch.tensor([model.tokenize(TEXTS[2])[0]])
    sites = [model.site(f"blocks.{l}.hook_resid_post") for l in (1, 3)]
    saved = []
    with model.nn.trace(ids):
        for s in sites:
            env = s.nn_envoy(model.nn)
            saved.append((env.output if s.io == "output" else env.input).save())
    hs = model.hf(ids, output_hidden_states=True).hidden_states
    for s, x in zip(sites, saved, strict=True):
        x = x[0] if isinstance(x, tuple) else x
        assert (x - hs[s.layer + 1]).abs().max().item() <= 1e-5
