"""Sparse autoencoders (sae-lens) as steering mechanism: load one, check it fits a model, turn decoder rows into
``SteeringVector`` objects, and splice the SAE into the forward pass (reconstruct, zero-ablate, clamp features).

Which tool for which job:

- ``feature_vector(model, sae, 123)`` is a plain ``SteeringVector`` (the decoder row, or a weighted sum of rows),
  so every ``steer()`` option applies (alpha per row, positions, ``add_norm``, ``ablate``, ``clamp``...).
- ``clamp_features(model, sae, {123: 8.0})`` is a context manager of its own (not a ``steer()`` op): at the
  SAE's site it encodes the activation, sets the chosen features, decodes and adds back the SAE's error term,
  so only those features change: ``h' = h + decode(f') - decode(f)``.
- ``splice_sae(model, sae)`` replaces the site's activation by the reconstruction (``mode="zero"``: by zeros);
  the CE-loss / KL evaluation of ``steerlens.analysis.sae`` runs on it.

The splices skip the first ``skip`` positions of every sequence (default 1): position 0 is the attention sink,
whose residual norm is ~100x the others (smollm2-135m layer 12: 22,700 vs ~150), and SAEs are trained without
it. Positions are absolute, also across KV-cached decoding steps. Hooks go on the HF module tree (so the hf,
nn and TransformerBridge views see them) and on a HookedTransformer lens if one is built; leaving the block,
also by exception, removes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from steerlens.errors import SAEMismatch, SAENotAvailable, SteerlensError
from steerlens.model import Model
from steerlens.sites import Site, decoder_body, first_tensor

from .vector import SteeringVector

if TYPE_CHECKING:
    from sae_lens import SAE

SpliceMode = Literal["reconstruct", "zero"]
# observe(x, feature_acts, x_hat): the site's activations [rows, d_in] as the SAE saw them (skipped positions out)
Observer = Callable[[Tensor, Tensor, Tensor], None]


def load_sae(
    model: Model,
    source: str | Path,
    sae_id: str | None = None,
    *,
    site: str | None = None,
    device: str | None = None,
) -> SAE[Any]:
    """An SAE from a local sae-lens directory, or a pretrained one through sae-lens' loader, checked against
    ``model``.

    Why: an SAE trained on another model or site reads garbage without any error; this refuses it early.

    Args:
        model: the model the SAE will read.
        source: a directory written by ``SAE.save_model`` / ``train_sae`` (``cfg.json`` and
            ``sae_weights.safetensors``), or a sae-lens release name (needs ``sae_id`` and internet).
        sae_id: the SAE's id within the release.
        site: the hook site (TransformerLens name); default: the SAE's own ``metadata.hook_name``.
        device: where to load it (default: the model's device).

    Example:
        >>> sae = load_sae(model, "runs/sae/sae")                                   # trained here
        >>> sae = load_sae(model, "gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_small")  # online
    """
    from sae_lens import SAE

    dev = device or str(model.device)
    path = Path(source)
    if path.is_dir():
        if not (path / "cfg.json").exists() or not (path / "sae_weights.safetensors").exists():
            raise SAENotAvailable(
                f"{path} is not a sae-lens SAE directory (expected cfg.json and sae_weights.safetensors); "
                "write one with sae.save_model(dir) or steerlens.analysis.sae.train_sae"
            )
        sae = SAE.load_from_disk(path, device=dev)
    elif sae_id is None:
        raise SAENotAvailable(
            f"{str(source)!r} is not a local directory; to load a pretrained SAE pass its release and "
            "sae_id (e.g. load_sae(model, 'gemma-scope-2-270m-pt-res', 'layer_12_width_16k_l0_small'))"
        )
    else:
        sae = _from_pretrained(str(source), sae_id, dev)
    if site is not None and sae.cfg.metadata.hook_name is None:
        sae.cfg.metadata.hook_name = site
    sae_site(model, sae, site)
    return sae.eval()


def _from_pretrained(release: str, sae_id: str, device: str) -> SAE[Any]:
    from sae_lens import SAE

    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except ValueError as e:  # sae-lens: unknown release or id (it lists the valid ids)
        raise SAENotAvailable(f"sae-lens cannot find {release!r} / {sae_id!r}: {e}") from e
    except Exception as e:  # network and hub errors come in many types
        raise SAENotAvailable(
            f"could not download SAE {release!r} / {sae_id!r} ({type(e).__name__}: {str(e)[:200]}); this needs "
            "internet access to the Hugging Face hub. Offline, download it elsewhere, save it with "
            "sae.save_model(dir) and pass that directory"
        ) from e


def sae_site(model: Model, sae: SAE[Any], site: str | None = None) -> Site:
    """The site ``sae`` reads in ``model``, checked: the SAE's width matches the site's, its recorded hook
    name (if any) matches ``site``, and its recorded model (if any) is ``model``. Raises ``SAEMismatch``."""
    meta = sae.cfg.metadata
    hook = site or meta.hook_name
    if hook is None:
        raise SAEMismatch(
            "the SAE records no hook_name; pass site='blocks.{layer}.hook_resid_post' (its site)"
        )
    if site is not None and meta.hook_name is not None and meta.hook_name != site:
        raise SAEMismatch(
            f"the SAE was trained on {meta.hook_name!r}, not {site!r}; pass site={meta.hook_name!r} or load the "
            "SAE for that site"
        )
    s = model.site(hook)
    width = math.prod(s.shape)
    if sae.cfg.d_in != width:
        raise SAEMismatch(
            f"the SAE reads d_in={sae.cfg.d_in} but {s.name} of {model.name} has width {width}; load an SAE "
            "trained on this model and site"
        )
    trained_on = meta.model_name
    if trained_on and not _same_model(str(trained_on), model.name):
        raise SAEMismatch(
            f"the SAE was trained on {trained_on!r}, not {model.name!r} (same width, but features do not transfer "
            "between models); load one for this model, or set sae.cfg.metadata.model_name deliberately"
        )
    return s


def _same_model(a: str, b: str) -> bool:
    return a == b or a.rsplit("/", 1)[-1].lower() == b.rsplit("/", 1)[-1].lower()


def feature_vector(
    model: Model,
    sae: SAE[Any],
    features: int | Sequence[int] | Mapping[int, float],
    *,
    site: str | None = None,
) -> SteeringVector:
    """Decoder rows as a ``SteeringVector`` at the SAE's layer: one feature, the sum of several, or a weighted
    sum (``{feature: weight}``). With ``units="vector"`` (the default), ``alpha=1`` adds exactly that sum.

    Args:
        model: the model the vector will steer.
        sae: an SAE at a ``hook_resid_post`` site (where ``steer()`` acts).
        features: feature index, indices, or ``{index: weight}``.
        site: the SAE's site if it records none.

    Example:
        >>> with steer(model, feature_vector(model, sae, 123), alpha=4.0, positions="generated"):
        ...     text = generate(model, ["I think"], max_new_tokens=20)
    """
    s = sae_site(model, sae, site)
    if s.kind != "hook_resid_post" or s.layer is None:
        raise SAEMismatch(
            f"steer() acts on blocks.L.hook_resid_post, but this SAE reads {s.name}; use clamp_features for "
            "other sites, or an SAE trained on a resid_post site"
        )
    weights = _weights(features, sae.cfg.d_sae)
    w_dec = sae.W_dec.detach().float().cpu()
    raw = sum((w * w_dec[f] for f, w in weights.items()), torch.zeros(sae.cfg.d_in))
    label = "+".join(f"{w:g}*{f}" if w != 1 else str(f) for f, w in weights.items())
    vec = SteeringVector.from_directions({s.layer: raw}, model=model, method=f"sae_feature({label})")
    settings = {
        "sae_site": s.name,
        "features": {str(f): w for f, w in weights.items()},
        "d_sae": sae.cfg.d_sae,
    }
    return dataclasses.replace(vec, settings=settings)


def _weights(features: int | Sequence[int] | Mapping[int, float], d_sae: int) -> dict[int, float]:
    if isinstance(features, int):
        weights = {features: 1.0}
    elif isinstance(features, Mapping):
        weights = {int(f): float(w) for f, w in features.items()}
    else:
        weights = {int(f): 1.0 for f in features}
    bad = [f for f in weights if not 0 <= f < d_sae]
    if not weights or bad:
        raise SteerlensError(f"features {bad or '(none)'}: expected indices in 0..{d_sae - 1} of this SAE")
    return weights


@contextlib.contextmanager
def splice_sae(
    model: Model,
    sae: SAE[Any],
    mode: SpliceMode = "reconstruct",
    *,
    site: str | None = None,
    skip: int = 1,
    observe: Observer | None = None,
) -> Iterator[None]:
    """Inside the block, the SAE's site carries the SAE's reconstruction (``mode="zero"``: zeros) at every
    position from ``skip`` on.

    Args:
        model, sae: the model and an SAE that fits it (checked).
        mode: "reconstruct" (x -> decode(encode(x))) or "zero" (zero ablation, the usual baseline).
        site: the SAE's site if it records none.
        skip: leave the first ``skip`` positions of each sequence as they are (the attention sink).
        observe: called per forward with (x, feature_acts, x_hat) of the spliced rows, for metrics.

    Example:
        >>> with splice_sae(model, sae):
        ...     loss = model.hf(ids, labels=ids).loss           # CE with the reconstruction spliced in
    """
    if mode not in ("reconstruct", "zero"):
        raise SteerlensError(f"mode={mode!r}: expected 'reconstruct' or 'zero'")
    s = sae_site(model, sae, site)

    def edit(x: Tensor) -> Tensor:
        if mode == "zero":
            return torch.zeros_like(x)
        acts = sae.encode(x.to(sae.dtype))
        x_hat = sae.decode(acts)
        if observe is not None:
            observe(x, acts, x_hat)
        return x_hat.to(x.dtype)

    with _edit_site(model, s, edit, skip):
        yield


@contextlib.contextmanager
def clamp_features(
    model: Model,
    sae: SAE[Any],
    values: Mapping[int, float],
    *,
    site: str | None = None,
    skip: int = 1,
) -> Iterator[None]:
    """Inside the block, the chosen SAE features are set to fixed activations through the SAE: encode, set,
    decode, plus the SAE's error term, so nothing else about the activation changes
    (``h' = h + decode(f with features set) - decode(f)``). A context manager of its own, nestable with
    ``steer()`` (the clamp then sees the steered activation when ``steer`` acts at the same layer).

    Args:
        model, sae: the model and an SAE that fits it (checked).
        values: ``{feature: activation}`` (0 turns a feature off; a large value turns it on).
        site: the SAE's site if it records none.
        skip: leave the first ``skip`` positions of each sequence as they are (the attention sink).

    Example:
        >>> with clamp_features(model, sae, {123: 10.0}):
        ...     text = generate(model, ["Tell me about"], max_new_tokens=20)
    """
    s = sae_site(model, sae, site)
    weights = _weights(dict(values), sae.cfg.d_sae)
    idx = torch.tensor(list(weights), device=sae.W_dec.device)
    target = torch.tensor(list(weights.values()), dtype=sae.dtype, device=sae.W_dec.device)

    def edit(x: Tensor) -> Tensor:
        acts = sae.encode(x.to(sae.dtype))
        clamped = acts.clone()
        clamped[..., idx] = target
        return x + (sae.decode(clamped) - sae.decode(acts)).to(x.dtype)

    with _edit_site(model, s, edit, skip):
        yield


class _Offset:
    """Absolute position of the current forward chunk's first token (KV-cache length, 0 without a cache)."""

    value = 0


@contextlib.contextmanager
def _edit_site(model: Model, site: Site, edit: Callable[[Tensor], Tensor], skip: int) -> Iterator[None]:
    """Apply ``edit`` to the site's activation [rows, width] at absolute positions >= ``skip``; every hook is
    recorded as soon as it exists and removed on exit."""
    width = math.prod(site.shape)
    offset = _Offset()

    def apply(x: Tensor) -> Tensor:
        start = max(0, skip - offset.value)
        if start >= x.shape[1]:
            return x
        flat = x.reshape(*x.shape[:2], width)
        head, tail = flat[:, :start], flat[:, start:]
        new = edit(tail.reshape(-1, width)).reshape(tail.shape)
        return torch.cat([head, new], 1).reshape(x.shape)

    handles: list[RemovableHandle] = []
    try:
        for tree in model.hf_trees():
            handles.append(
                decoder_body(tree).register_forward_pre_hook(
                    lambda m, a, kw: _begin_hf(offset, kw), with_kwargs=True
                )
            )
            _hook_module(site.hf_module(tree), site, apply, handles)
        lens = model.built_lens
        if lens is not None and model.lens_kind == "hooked":
            handles.append(
                lens.blocks[0].register_forward_pre_hook(
                    lambda m, a, kw: _begin_tl(offset, kw), with_kwargs=True
                )
            )
            handles.append(lens.hook_dict[site.name].register_forward_hook(lambda m, a, o: apply(o)))
        yield
    finally:
        for h in handles:
            h.remove()


def _hook_module(mod: torch.nn.Module, site: Site, apply: Callable[[Tensor], Tensor], handles: list) -> None:
    if site.io == "output":

        def out_hook(m: Any, a: Any, o: Any) -> Any:
            h = apply(first_tensor(o))
            return (h, *o[1:]) if isinstance(o, tuple) else h

        handles.append(mod.register_forward_hook(out_hook))
        return

    def in_hook(m: Any, args: tuple, kw: dict) -> Any:
        if args:
            return (apply(args[0]), *args[1:]), kw
        return args, {**kw, "hidden_states": apply(kw["hidden_states"])}

    handles.append(mod.register_forward_pre_hook(in_hook, with_kwargs=True))


def _begin_hf(offset: _Offset, kw: dict) -> None:
    cache = kw.get("past_key_values", kw.get("cache"))
    offset.value = int(cache.get_seq_length()) if cache is not None else 0


def _begin_tl(offset: _Offset, kw: dict) -> None:
    entry = kw.get("past_kv_cache_entry")
    offset.value = int(entry.past_keys.shape[1]) if entry is not None else 0
