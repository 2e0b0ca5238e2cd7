"""Dequantize an embedded GGUF once and cache it as safetensors, so later loads take well under a second."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .errors import SteerlensError
from .files import read_json, write_json
from .registry import EmbeddedModel

_MARKER = "steerlens-cache.json"
_FORMAT = 2  # 2: the tokenizer adds BOS wherever the GGUF asks for it (whatever the transformers version)


def cache_root() -> Path:
    """Root of steerlens' cache: ``$STEERLENS_CACHE`` if set, else the user cache dir."""
    env = os.environ.get("STEERLENS_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("steerlens"))


def cached_model_dir(model: EmbeddedModel, verbose: bool = True) -> Path:
    """Directory of the dequantized safetensors checkpoint for ``model``, building it on first use."""
    version = model.version()
    # The tokenizer files are written by the running transformers, and versions differ in what they write
    # (5.19, the vLLM venv's, drops gemma's BOS from the post-processor): one cache per transformers minor.
    import transformers

    tf = ".".join(transformers.__version__.split(".")[:2])
    final = cache_root() / "models" / f"{model.name}-{version}-tf{tf}"
    if (final / _MARKER).exists() and read_json(final / _MARKER).get("format") == _FORMAT:
        return final
    if final.exists():  # interrupted, or written by an older steerlens: rebuild it
        shutil.rmtree(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if verbose:
            print(f"steerlens: dequantizing {model.name} once into {final} (about a minute)...", flush=True)
        _dequantize_into(model, tmp)
        write_json(
            tmp / _MARKER,
            {
                "complete": True,
                "format": _FORMAT,
                "model": model.name,
                "package_version": version,
                "transformers": tf,
            },
        )
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first; theirs is as good as ours
            if not (final / _MARKER).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _dequantize_into(model: EmbeddedModel, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = model.gguf(out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _keep_bos(tokenizer, gguf)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained until its quantizer is detached (DESIGN.md).
    hf.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if gguf.parent == out:  # an assembled copy we made: the safetensors replace it
        gguf.unlink()


def _keep_bos(tokenizer: Any, gguf: Path) -> None:
    """Make the tokenizer add BOS when the GGUF says so: transformers 5.19 (the vLLM venv's) converts gemma's
    GGUF tokenizer without it, and gemma without <bos> is a different, broken model."""
    bos = tokenizer.bos_token_id
    if bos is None or tokenizer("a")["input_ids"][:1] == [bos]:
        return  # nothing to add, or added already: the GGUF need not be parsed again
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.add_bos_token")
    if field is not None and field.contents():
        tokenizer.add_bos_token = True
        if tokenizer("a")["input_ids"][:1] != [bos]:
            raise SteerlensError(
                f"{gguf.name}: the GGUF asks for BOS but transformers' tokenizer will not add it; report the "
                "transformers version (pip show transformers)"
            )
