"""Batched text generation from the HF view: left padding, stop strings, seeds, deterministic batching."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from .errors import EmptyInput, SteerlensError
from .model import Model
from .prefix import CACHE_KW, SharedPrefix

Engine = Literal["hf", "vllm"]  # "vllm": ``model.vllm`` (steering.engine.VLLMEngine), same arguments


class BatchSteering(Protocol):
    """What the decoding loops take to steer each batch: ``steerlens.steering.RowSteering`` (defined in the
    steering layer; core only needs this shape). ``rows`` are the caller's prompt indices in the batch."""

    def batch(self, model: Model, rows: Sequence[int]) -> AbstractContextManager[Any]: ...

    def spares_prefix(self, rows: Sequence[int], prefix: torch.Tensor) -> bool:
        """Whether steering ``rows`` leaves ``prefix`` ([len(rows), n] leading tokens) untouched."""
        ...


def steered_batch(
    steering: BatchSteering | None, model: Model, rows: Sequence[int]
) -> AbstractContextManager[Any]:
    """The batch's steering context (a no-op without steering)."""
    return steering.batch(model, rows) if steering is not None else nullcontext()


@dataclass(frozen=True)
class Batch:
    """Rows ``start:start+len(rows)`` of the length-sorted order: left-padded ids and their attention mask."""

    start: int
    rows: list[int]  # indices into the caller's list
    ids: torch.Tensor  # [batch, width]
    mask: torch.Tensor  # [batch, width], 0 on padding

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions counted from each row's first real token (what an unpadded forward would use)."""
        return (self.mask.cumsum(-1) - 1).clamp_min(0)


def left_padded_batches(model: Model, ids: Sequence[Sequence[int]], batch_size: int) -> Iterator[Batch]:
    """Token lists in length order (less padding), ``batch_size`` at a time, left-padded with the pad token.
    The batching depends only on the lengths, so the same inputs always batch the same way."""
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    pad = model.tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(ids[i]) for i in rows)
        x = [[pad] * (width - len(ids[i])) + list(ids[i]) for i in rows]
        m = [[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in rows]
        yield Batch(start, rows, torch.tensor(x, device=model.device), torch.tensor(m, device=model.device))


def generate(
    model: Model,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    stop: Sequence[str] = (),
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    steering: BatchSteering | None = None,
    progress: bool = False,
    engine: Engine = "hf",
    share_prefix: bool = True,
) -> list[str]:
    """Continuations of ``prompts`` (text after the prompt, cut before the first ``stop`` string).
    ``generate_detailed`` also returns token counts and whether the budget ran out.

    Prompts are batched in length order (less padding) with left padding; the batching depends only on the
    prompts, so the same call gives the same text. ``steering`` (a ``steering.RowSteering``) steers each
    batch with its own rows' values, e.g. one alpha per prompt. ``engine="vllm"`` decodes on vLLM instead
    (one continuous batch; ``batch_size`` and ``progress`` do not apply; its prefix caching shares).

    ``share_prefix``: the first tokens all prompts share (a few-shot preamble) are prefilled once and their KV
    cache reused by every batch (``steerlens.prefix``), unless steering acts on them; the outputs are those of
    separate prompts up to float reassociation. Turn it off if hooks of your own must see every row's prompt.
    """
    return [
        g.text
        for g in generate_detailed(
            model,
            prompts,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            stop=stop,
            do_sample=do_sample,
            temperature=temperature,
            seed=seed,
            steering=steering,
            progress=progress,
            engine=engine,
            share_prefix=share_prefix,
        )
    ]


@dataclass(frozen=True)
class Generated:
    text: str  # cut before the first stop string
    tokens: int  # tokens generated (up to the stop, EOS or the budget)
    exhausted: bool  # the budget ran out before a stop string or EOS
    token_ids: tuple[int, ...] = ()  # the ``tokens`` generated ids (up to, not including, EOS or pad)


def generate_detailed(
    model: Model,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    stop: Sequence[str] = (),
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    steering: BatchSteering | None = None,
    progress: bool = False,
    min_tokens: int = 0,
    engine: Engine = "hf",
    share_prefix: bool = True,
) -> list[Generated]:
    """``generate`` with the token count of each continuation and whether its budget ran out.

    ``min_tokens > 0`` is budget forcing: for the first ``min_tokens`` tokens EOS is banned and stop strings
    are ignored (only occurrences that start after them end the text), so a continuation cannot end at once.
    Prompts are texts or token-id lists (used as given: no BOS or template added).
    """
    if not prompts:
        raise EmptyInput("generate() got no prompts")
    if min_tokens < 0 or min_tokens > max_new_tokens:
        raise SteerlensError(
            f"min_tokens={min_tokens} must lie in [0, max_new_tokens={max_new_tokens}]; lower it or raise the budget"
        )
    if engine == "vllm":
        return model.vllm.generate_detailed(
            prompts,
            max_new_tokens=max_new_tokens,
            stop=stop,
            do_sample=do_sample,
            temperature=temperature,
            seed=seed,
            steering=steering,
            min_tokens=min_tokens,
            progress=progress,
        )
    if engine != "hf":
        raise SteerlensError(f"engine={engine!r}: expected 'hf' or 'vllm'")
    return _generate_hf(
        model, prompt_ids(model, prompts), max_new_tokens=max_new_tokens, batch_size=batch_size, stop=stop,
        do_sample=do_sample, temperature=temperature, seed=seed, steering=steering, progress=progress,
        min_tokens=min_tokens, share_prefix=share_prefix,
    )  # fmt: skip


def prompt_ids(model: Model, prompts: Sequence[str | Sequence[int]]) -> list[list[int]]:
    """Token ids of each prompt, for every engine: texts tokenized as ``Model.tokenize`` does, token-id lists
    used as given (no BOS or template added); one kind per call."""
    kinds = {isinstance(p, str) for p in prompts}
    if len(kinds) > 1:
        raise SteerlensError("prompts mix texts and token-id lists; give one kind")
    if True in kinds:
        return model.tokenize([str(p) for p in prompts])
    return [[int(t) for t in p] for p in prompts]


def finished(tok: Any, new: Sequence[int], min_tokens: int, stop: Sequence[str], budget: int) -> Generated:
    """One continuation's ``Generated`` from its new token ids (EOS or pad ends it; the text is cut before the
    first stop string that starts after the first ``min_tokens`` tokens), for every engine."""
    enders = {tok.pad_token_id, tok.eos_token_id} - {None}
    n = next((k for k, t in enumerate(new) if t in enders), len(new))
    text = tok.decode(list(new[:n]), skip_special_tokens=True)
    head = len(tok.decode(list(new[: min(min_tokens, n)]), skip_special_tokens=True))
    cut = text[:head] + cut_at(text[head:], stop)
    return Generated(cut, n, n >= budget and len(cut) == len(text), tuple(int(t) for t in new[:n]))


def _generate_hf(
    model: Model,
    ids: list[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop: Sequence[str],
    do_sample: bool,
    temperature: float,
    seed: int,
    steering: BatchSteering | None,
    progress: bool,
    min_tokens: int,
    share_prefix: bool,
    processors: Callable[[Sequence[int]], list[Any]] | None = None,
) -> list[Generated]:
    """The HF body of ``generate_detailed``; ``processors(rows)`` gives extra logits processors for the batch
    holding ``rows`` (``steering.sampling.sample_many``: per-row seeded draws)."""
    out: list[Generated] = [Generated("", 0, False)] * len(ids)
    longest = max(map(len, ids)) + max_new_tokens
    shared = SharedPrefix.plan(model, ids, longest, generating=True) if share_prefix else None
    batches: Any = left_padded_batches(model, ids, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="generate", unit="batch", total=-(-len(ids) // batch_size))
    for b in batches:
        sp = shared if shared is not None and shared.usable(model, steering, b.rows) else None
        if sp is not None:  # the prefix's cache first (outside this batch's steering), then its layout
            cache, b = sp.cache_for(model, len(b.rows)), sp.layout(b)
        kw = _generate_kwargs(model, b, max_new_tokens, do_sample, temperature, seed, stop, min_tokens)
        if processors is not None:
            kw["logits_processor"] = LogitsProcessorList(processors(b.rows))
        with steered_batch(steering, model, b.rows), torch.no_grad():
            if sp is not None:
                sp.declare(model, b)
                kw[CACHE_KW] = cache
            gen = model.hf.generate(b.ids, **kw)  # type: ignore[operator]
        for j, i in enumerate(b.rows):
            out[i] = finished(model.tokenizer, gen[j, b.width :].tolist(), min_tokens, stop, max_new_tokens)
    return out


def _generate_kwargs(
    model: Model,
    b: Batch,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    seed: int,
    stop: Sequence[str],
    min_tokens: int,
) -> dict[str, Any]:
    """``hf.generate`` arguments for one batch (seeding the sampler by the batch's first sorted index)."""
    tok = model.tokenizer
    kw: dict[str, Any] = dict(
        attention_mask=b.mask,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=tok.pad_token_id,
    )
    if do_sample:
        kw.update(temperature=temperature, top_k=0, top_p=1.0)
        torch.manual_seed(seed + b.start)
    if min_tokens:
        kw["min_new_tokens"] = min_tokens
    if stop:  # matched in generated text only (HF's stop_strings also match across the prompt's end)
        kw["stopping_criteria"] = StoppingCriteriaList([_StopAfter(tok, stop, b.width, min_tokens)])
    return kw


class _StopAfter(StoppingCriteria):
    """Stop a row once a stop string appears in its text generated after the first ``skip`` tokens.

    Called after every new token, so only a tail window is decoded: a stop string that was not there one step
    ago must end in the newest token, and ``L`` characters span at most ``L`` tokens (+ slack for byte-level
    pieces). Linear in the budget, where decoding the whole continuation each step was quadratic.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str], width: int, skip: int):
        self.tok, self.stop, self.start = tokenizer, list(stop), width + skip
        self.window = 4 * max((len(s) for s in self.stop), default=1) + 8

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if input_ids.shape[1] > self.start:
            lo = max(self.start, input_ids.shape[1] - self.window)
            for j, text in enumerate(self.tok.batch_decode(input_ids[:, lo:])):
                done[j] = any(s in text for s in self.stop)
        return done


def cut_at(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest of the ``stop`` strings."""
    cut = min((k for k in (text.find(s) for s in stop) if k >= 0), default=len(text))
    return text[:cut]


def next_token_logprobs(
    model: Model,
    prompts: Sequence[str],
    candidates: Sequence[int],
    *,
    batch_size: int = 16,
    steering: BatchSteering | None = None,
    share_prefix: bool = True,
) -> torch.Tensor:
    """``[len(prompts), len(candidates)]`` log-probabilities of each candidate token right after each prompt.

    Left padding with explicit position ids and only the last position's logits computed, so a batch costs
    one body forward plus one unembedding row per prompt; the prompts' shared prefix runs once (as in
    ``generate``). ``steering`` and ``share_prefix`` as in ``generate``.
    """
    if not prompts:
        raise EmptyInput("next_token_logprobs() got no prompts")
    ids = model.tokenize(list(prompts))
    out = torch.empty(len(ids), len(candidates))
    cand = torch.tensor(list(candidates), device=model.device)
    for b, logits, _ in _scored_batches(model, ids, ids, batch_size, steering, True, share_prefix):
        out[b.rows] = torch.log_softmax(logits[:, -1].float(), -1)[:, cand].cpu()
    return out


def continuation_logprobs(
    model: Model,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 16,
    steering: BatchSteering | None = None,
    share_prefix: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced ``(sum log-prob, every token the argmax)`` of each continuation after its prompt: the
    second is what greedy decoding would produce, at the cost of one forward pass. ``steering`` and
    ``share_prefix`` (the prompts' common prefix) as in ``generate``."""
    if len(prompts) != len(continuations) or not prompts:
        raise EmptyInput(
            f"need equal, non-empty prompts and continuations ({len(prompts)}, {len(continuations)})"
        )
    full = model.tokenize([p + c for p, c in zip(prompts, continuations, strict=True)])
    heads = model.tokenize(list(prompts))
    for k, (f, h) in enumerate(zip(full, heads, strict=True)):
        if f[: len(h)] != h or len(f) == len(h):
            raise SteerlensError(
                f"continuation {k} ({continuations[k]!r}) does not start on a token boundary after its prompt; "
                "begin it with a space or end the prompt with one"
            )
    total, greedy = torch.zeros(len(full)), torch.zeros(len(full), dtype=torch.bool)
    for b, logits, skip in _scored_batches(model, full, heads, batch_size, steering, False, share_prefix):
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        for j, i in enumerate(b.rows):
            n, k = len(full[i]), len(heads[i])
            pos = torch.arange(b.width - n + k - 1, b.width - 1)  # positions predicting the continuation
            target = b.ids[j, pos + 1]
            total[i] = lp[j, pos - skip, target].sum().cpu()
            greedy[i] = bool((lp[j, pos - skip].argmax(-1) == target).all())
    return total, greedy


def _scored_batches(
    model: Model,
    ids: list[list[int]],
    heads: list[list[int]],
    batch_size: int,
    steering: BatchSteering | None,
    last_only: bool,
    share_prefix: bool,
) -> Iterator[tuple[Batch, torch.Tensor, int]]:
    """One forward per batch of ``ids``, the shared prefix of ``heads`` (each a prefix of its row, and
    covering every position whose logits are read) run once. Yields ``(batch, logits, skip)``: ``logits``
    cover positions ``skip:`` of the batch (only the last with ``last_only``)."""
    longest = max(map(len, ids))
    shared = SharedPrefix.plan(model, heads, longest, generating=False) if share_prefix else None
    for b in left_padded_batches(model, ids, batch_size):
        sp = shared if shared is not None and shared.usable(model, steering, b.rows) else None
        kw: dict[str, Any] = {}
        if sp is not None:
            kw[CACHE_KW], b = sp.cache_for(model, len(b.rows)), sp.layout(b)
        skip = len(sp.ids) if sp is not None else 0
        with steered_batch(steering, model, b.rows), torch.no_grad():
            if sp is not None:
                sp.declare(model, b)
            else:
                model.new_sequence()
            out = model.hf(
                b.ids[:, skip:],
                attention_mask=b.mask,
                position_ids=b.position_ids[:, skip:],
                logits_to_keep=1 if last_only else 0,
                **kw,
            )
        yield b, out.logits, skip
