"""Deterministic token batches for the benchmarks: windows of a fixed length cut from a built-in text."""

from __future__ import annotations

PARAGRAPH = (
    "Researchers study how language models represent arithmetic, names and facts. They inject an error into a "
    "chain of thought, record the residual stream at every layer, and ask whether a linear direction separates "
    "corrupted from clean reasoning. When the direction is added back during generation, the model may notice "
    "the mistake more often, or it may not; controls with random directions of equal norm tell the two apart. "
)


def token_windows(tokenizer, n_windows: int, length: int) -> list[list[int]]:
    """``n_windows`` token lists of exactly ``length`` tokens (no padding needed), all different."""
    ids = tokenizer(PARAGRAPH * (2 + n_windows * length // 60), add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    step = max(1, (len(ids) - length) // max(1, n_windows))
    return [bos + ids[i * step : i * step + length - len(bos)] for i in range(n_windows)]
