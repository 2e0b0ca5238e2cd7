"""``collect()``: stream activations at chosen sites and positions into a resumable ``ActivationStore``.

Only the requested sites are kept, and the forward stops after the last layer that holds one (the final
norm and the unembedding are never run unless asked for), which is why this beats ``run_with_cache``.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .errors import EmptyInput, StoreMismatch
from .inputs import Example, Tokenized, TokenSelection, dataset_hash, tokenize_inputs
from .model import Model
from .sites import Site, block_path, decoder_body, first_tensor
from .store import ActivationStore


class _StopForward(Exception):
    """Raised by a hook once every requested site has been captured."""


def collect(
    model: Model,
    inputs: str | Example | Sequence[str] | Sequence[Example] | Sequence[Sequence[int]],
    sites: str | list[str],
    positions: TokenSelection | str | int | Sequence[Sequence[int]] = "all",
    *,
    path: str | Path | None = None,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    shard_mb: float = 64.0,
    progress: bool = True,
    overwrite: bool = False,
) -> ActivationStore:
    """Collect activations of ``model`` on ``inputs`` at ``sites`` into a resumable safetensors store.

    Why: activations are the raw material of probes, vectors and SAEs; on disk they are reusable, bounded in
    RAM and survive a killed run.

    Args:
        model: the model (its active ``steer()`` contexts are part of the store's key).
        inputs: texts, ``Example`` objects (with named spans) or token-id lists.
        sites: TransformerLens names, ``blocks.*.X`` for every layer.
        positions: "all", "last", an int index, "span:NAME" (spans of ``Example`` inputs) or explicit
            per-example index lists.
        path: where the store lives (default: a cache dir keyed by model, data, sites, positions, dtype and
            active steering); an interrupted run resumes, a complete store is returned without recomputation.
        batch_size, dtype, shard_mb: batching, stored dtype and shard size.
        progress: a progress bar; overwrite: recompute even if a complete store exists.

    Example:
        >>> store = steerlens.collect(model, texts, "blocks.*.hook_resid_post", positions="last")
        >>> store["blocks.6.hook_resid_post"].shape        # [rows, d_model], memory-mapped
    """
    site_objs = model.sites(sites)
    _check_folded_sites(model, site_objs)
    pos = TokenSelection.parse(positions)
    tokens = tokenize_inputs(model.tokenizer, inputs)
    keep = [pos.select(i, t) for i, t in enumerate(tokens)]
    if not any(keep):
        raise EmptyInput(f"positions {pos.spec!r} select no tokens in any of the {len(tokens)} inputs")
    store = open_store(path, _manifest(model, site_objs, pos, tokens, keep, dtype), overwrite)
    if store.complete:
        return store
    _run(model, store, site_objs, tokens, keep, batch_size, dtype, int(shard_mb * 2**20), progress)
    store.mark_complete()
    return store


def _manifest(
    model: Model,
    sites: list[Site],
    pos: TokenSelection,
    tokens: list[Tokenized],
    keep: list[list[int]],
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Everything that decides a store's rows: the cache key and the check made before reusing a store."""
    return {
        "model": model.name,
        "d_model": model.cfg.d_model,
        "sites": [s.name for s in sites],
        "site_shapes": {s.name: list(s.shape) for s in sites},
        "positions": pos.spec,
        "dtype": str(dtype).removeprefix("torch."),
        "model_dtype": str(model.dtype).removeprefix("torch."),
        "steering": model.steering_key(),  # activations under steer() are not the unsteered ones
        "dataset_hash": dataset_hash(model.name, tokens, keep),
        "n_examples": len(tokens),
        "n_rows": sum(map(len, keep)),
    }


def _check_folded_sites(model: Model, sites: list[Site]) -> None:
    """A folded add lives in down_proj's bias, so ``hook_mlp_out`` there would include the steering vector."""
    folded = {l for s in model.steering for l in s.folded_layers}
    bad = [s.name for s in sites if s.kind == "hook_mlp_out" and s.layer in folded]
    if bad:
        raise StoreMismatch(
            f"sites {bad} sit at layers where the active steer() folded its add into down_proj's bias, so "
            "they would include the steering vector; steer with fold=False while collecting MLP outputs"
        )


def json_key(manifest: dict[str, Any]) -> str:
    return repr(sorted((k, str(v)) for k, v in manifest.items()))


def open_store(path: str | Path | None, manifest: dict[str, Any], overwrite: bool = False) -> ActivationStore:
    """The store for ``manifest`` at ``path`` (default: the activations cache, keyed by the manifest): an
    existing one with the same manifest is reused (complete or to resume), one with another manifest refused
    unless ``overwrite``, else a new one created."""
    if path is None:
        from .weights import cache_root

        path = cache_root() / "activations" / hashlib.sha256(json_key(manifest).encode()).hexdigest()[:16]
    path = Path(path)
    if (path / "manifest.json").exists():
        if overwrite:
            shutil.rmtree(path)
        else:
            store = ActivationStore(path)
            diffs = [k for k in manifest if store.manifest.get(k) != manifest[k]]
            if diffs:
                got = {k: store.manifest.get(k) for k in diffs if k != "dataset_hash"}
                want = {k: manifest[k] for k in diffs if k != "dataset_hash"}
                data = " and different data" if "dataset_hash" in diffs else ""
                raise StoreMismatch(
                    f"{path} already holds a store with other settings{data} (store: {got}; asked: {want}). "
                    "Collect into another path, or pass overwrite=True to replace it"
                )
            return store
    return ActivationStore.create(path, manifest)


def _run(
    model: Model,
    store: ActivationStore,
    sites: list[Site],
    tokens: list[Tokenized],
    keep: list[list[int]],
    batch_size: int,
    dtype: torch.dtype,
    shard_bytes: int,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    hf = model.hf
    device = model.device
    captured: dict[str, Tensor] = {}
    gather: dict[str, Tensor] = {}  # "b" / "p": row-wise batch and position indices for the current batch
    handles: list[RemovableHandle] = []
    body = decoder_body(hf)
    pad = model.tokenizer.pad_token_id or 0

    buffer: list[dict[str, Tensor]] = []
    buffered = 0
    shard_start = store.next_example
    bar = tqdm(total=len(tokens), initial=shard_start, desc="collect", unit="ex", disable=not progress)
    try:
        _capture_hooks(hf, sites, captured, gather, dtype, handles)
        with torch.no_grad():
            for start in range(shard_start, len(tokens), batch_size):
                idx = list(range(start, min(start + batch_size, len(tokens))))
                rows_b = [b for b, i in enumerate(idx) for _ in keep[i]]
                rows_p = [p for i in idx for p in keep[i]]
                if rows_b:
                    ids, mask = _right_padded([tokens[i].ids for i in idx], pad)
                    gather["b"], gather["p"] = (
                        torch.tensor(rows_b, device=device),
                        torch.tensor(rows_p, device=device),
                    )
                    captured.clear()
                    model.new_sequence()  # each batch is its own prompt, never a re-run of the last
                    with contextlib.suppress(_StopForward):
                        body(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                    part = {s.name: captured[s.name] for s in sites}
                    part["example"] = torch.tensor([idx[b] for b in rows_b], dtype=torch.long)
                    part["position"] = torch.tensor(rows_p, dtype=torch.long)
                    buffer.append(part)
                    buffered += sum(t.numel() * t.element_size() for t in part.values())
                end = idx[-1] + 1
                bar.update(len(idx))
                if buffered >= shard_bytes or end == len(tokens):
                    _flush(store, buffer, sites, shard_start, end)
                    buffer, buffered, shard_start = [], 0, end
    finally:
        bar.close()
        for h in handles:
            h.remove()


def _capture_hooks(
    hf: nn.Module,
    sites: list[Site],
    captured: dict[str, Tensor],
    gather: dict[str, Tensor],
    dtype: torch.dtype,
    handles: list[RemovableHandle],
) -> None:
    """Hooks that copy each site's kept rows into ``captured`` (recorded in ``handles`` as made), and one that
    stops the forward once the deepest requested layer has finished."""

    def grab(site: Site, x: Tensor) -> None:
        captured[site.name] = site.reshape(x[gather["b"], gather["p"]]).to(dtype).cpu()

    for s in sites:
        mod = s.hf_module(hf)
        if s.io == "output":
            handles.append(mod.register_forward_hook(lambda m, a, o, s=s: grab(s, first_tensor(o))))
        else:
            handles.append(
                mod.register_forward_pre_hook(
                    lambda m, a, kw, s=s: grab(s, a[0] if a else kw["hidden_states"]), with_kwargs=True
                )
            )
    layers = [s.layer for s in sites if s.layer is not None]
    if len(layers) == len(sites):

        def stop(m: Any, a: Any, o: Any) -> None:
            raise _StopForward

        handles.append(hf.get_submodule(block_path(max(layers))).register_forward_hook(stop))


def _right_padded(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Right padding: real tokens keep positions 0..n-1, so no position ids are needed."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
    return ids, mask


def _flush(
    store: ActivationStore, buffer: list[dict[str, Tensor]], sites: list[Site], start: int, end: int
) -> None:
    if not buffer:
        empty = {s.name: torch.empty(0, *s.shape) for s in sites}
        empty["example"], empty["position"] = (
            torch.empty(0, dtype=torch.long),
            torch.empty(0, dtype=torch.long),
        )
        store.append_shard(empty, (start, end))
        return
    store.append_shard({k: torch.cat([b[k] for b in buffer]) for k in buffer[0]}, (start, end))
