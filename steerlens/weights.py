"""Dequantize an embedded GGUF once and cache it as safetensors, so later loads take well under a second."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .files import read_json, write_json
from .registry import EmbeddedModel

_MARKER = "steerlens-cache.json"


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
    if (final / _MARKER).exists() and read_json(final / _MARKER).get("complete"):
        return final
    if final.exists():  # left over from an older, interrupted layout: rebuild it
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
            {"complete": True, "model": model.name, "package_version": version, "transformers": tf},
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
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained until its quantizer is detached (DESIGN.md).
    hf.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if gguf.parent == out:  # an assembled copy we made: the safetensors replace it
        gguf.unlink()
