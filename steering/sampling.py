"""Seeded sampling. ``sample``: N samples from one prompt sharing a single prefill (the prompt's KV cache is
computed once and expanded to N rows), each row drawing from its own seeded generator (so a sample does not
depend on which others share the batch), finished rows leaving the batch early. ``sample_many``: the same
draws for many prompts decoded together, the fast path for test-time scaling, tested against ``sample``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import Cache, LogitsProcessor

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.generation import Engine, _generate_hf, cut_at, prompt_ids
from steerlens.model import Model
from steerlens.prefix import CACHE_KW, cache_of

from .apply import Intervention, steer
from .positions import Window
from .rows import RowSteering, as_row_steering


@dataclass(frozen=True)
class Sample:
    """One sampled continuation: its text (cut before a stop string), tokens, seed and why it ended."""

    text: str
    tokens: tuple[int, ...]
    seed: int
    finish: str  # "stop", "eos" or "length"


@dataclass(frozen=True)
class SampleSet:
    samples: tuple[Sample, ...]
    prompt_tokens: int
    forward_tokens: int  # tokens the model actually ran (prefill once + decode steps of live rows)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.samples]


def sample(
    model: Model,
    prompt: str | Sequence[int],
    seeds: Sequence[int],
    *,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    steering: RowSteering | Sequence[Intervention] | None = None,
    shared_prefill: bool = True,
    ignore_eos: bool = False,
    engine: Engine = "hf",
) -> SampleSet:
    """``len(seeds)`` samples of ``prompt``; sample i equals ``sample(model, prompt, [seeds[i]])`` whatever
    else is in the batch (up to float reassociation in batched matmuls).

    ``steering``: a ``RowSteering`` (or a list of ``Intervention`` objects) applied while sampling, whose rows
    are the samples: per-row alphas give each sample its own coefficient. The prefill is shared when it is the
    same for every row (per-row alphas that only act on generated positions, or one alpha); otherwise each row
    prefills (still one batched call). ``engine="vllm"``: the samples on vLLM (its own sampler: the same
    distribution, not the same draws; ``ignore_eos`` and ``shared_prefill`` do not apply, prefix caching shares).
    """
    if not seeds:
        raise EmptyInput("sample() needs at least one seed")
    _check_sampler(temperature, top_p)
    if engine == "vllm":
        kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop)
        return model.vllm.sample_many([prompt], [list(seeds)], steering=steering, **kw)[0]
    ids = model.tokenize(prompt)[0] if isinstance(prompt, str) else list(prompt)
    n = len(seeds)
    rs = _row_steering(steering, n)
    ivs = rs.for_rows(range(n))
    share = shared_prefill and all(iv.positions == "generated" for iv in ivs if _varies_by_row(iv))
    cache, logits = _prefill(model, ids, ivs, n, share)
    tokens, finish, decoded = _decode(
        model, ids, ivs, cache, logits, seeds, max_new_tokens, temperature, top_p, stop, ignore_eos
    )
    samples = []
    for r in range(n):
        text = model.tokenizer.decode(tokens[r], skip_special_tokens=True)
        if finish[r] == "stop":
            text = cut_at(text, stop)
        samples.append(Sample(text, tuple(tokens[r]), int(seeds[r]), finish[r]))
    settings = dict(
        model=model.name,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        shared_prefill=share,
        stop=list(stop),
    )
    return SampleSet(tuple(samples), len(ids), len(ids) * (1 if share else n) + decoded, settings)


def sample_many(
    model: Model,
    prompts: Sequence[str | Sequence[int]],
    seeds: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
    steering: RowSteering | Sequence[Intervention] | None = None,
    batch_size: int = 32,
    engine: Engine = "hf",
) -> list[SampleSet]:
    """``sample`` for many prompts at once: decoding is memory-bound, so one step over every prompt's samples
    costs about what one prompt's does.

    Prompt ``i`` gets ``len(seeds[i])`` samples; sample ``(i, j)`` draws from its own generator seeded
    ``seeds[i][j]`` and equals ``sample(model, prompts[i], [seeds[i][j]])`` up to float reassociation in the
    batched matmuls (tests/steering/test_sampling.py holds it to that). The prompts' common prefix (few-shot
    examples) is prefilled once where the steering spares it (``steerlens.prefix``). ``forward_tokens``
    counts each prompt once plus its samples' tokens (the work; finished rows riding along are not counted).

    Args:
        prompts: texts (tokenized as ``Model.tokenize`` does) or token-id lists.
        seeds: one list per prompt, all the same length ``n``.
        steering: a ``RowSteering`` or ``Intervention`` list whose rows are each prompt's ``n`` samples.
        batch_size: rows (samples) per decoding batch.
        engine: ``"vllm"`` runs ``model.vllm.sample_many`` (one continuous batch, its own draws).

    Example:
        >>> sets = sample_many(model, prompts, [[0, 1, 2, 3]] * len(prompts), max_new_tokens=64, stop=["\\n\\n"])
    """
    n = samples_per_prompt(prompts, seeds)
    _check_sampler(temperature, top_p)
    if engine == "vllm":
        kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stop)
        return model.vllm.sample_many(prompts, seeds, steering=steering, **kw)
    rs = _row_steering(steering, n)
    ids = prompt_ids(model, prompts)
    tiled = RowSteering(tuple(rs.for_rows([j for _ in ids for j in range(n)]))) if rs else None
    flat = [int(x) for row in seeds for x in row]
    draws: dict[int, list[int]] = {}

    def processors(rows: Sequence[int]) -> list[Any]:
        return [_SeededDraw(rows, flat, temperature, top_p, draws)]

    gens = _generate_hf(
        model, [x for x in ids for _ in range(n)], max_new_tokens=max_new_tokens, batch_size=batch_size,
        stop=stop, do_sample=False, temperature=1.0, seed=0, steering=tiled, progress=False, min_tokens=0,
        share_prefix=True, processors=processors,
    )  # fmt: skip
    settings = dict(model=model.name, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    settings |= dict(stop=list(stop), batched=True)  # the prefix is shared where steering spares it
    out = []
    for i, x in enumerate(ids):
        rows = range(i * n, (i + 1) * n)
        samples = [_as_sample(model, gens[r], draws[r], flat[r], stop) for r in rows]
        out.append(SampleSet(tuple(samples), len(x), len(x) + sum(len(s.tokens) for s in samples), settings))
    return out


class _SeededDraw(LogitsProcessor):
    """Each row draws its token from its own seeded generator (``_draw``, as ``sample`` does) and greedy
    decoding takes it: the scores become 0 at the drawn token and -inf elsewhere. ``draws[row]`` records them."""

    def __init__(
        self, rows: Sequence[int], seeds: list[int], temperature: float, top_p: float, draws: dict
    ) -> None:
        self.rows, self.temperature, self.top_p = list(rows), temperature, top_p
        self.gens = [torch.Generator(device="cpu").manual_seed(seeds[r]) for r in self.rows]
        for r in self.rows:
            draws[r] = []
        self.draws = draws

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        out = torch.full_like(scores, float("-inf"))
        for j, (r, gen) in enumerate(zip(self.rows, self.gens, strict=True)):
            t = _draw(scores[j].float(), self.temperature, self.top_p, gen)
            self.draws[r].append(t)
            out[j, t] = 0.0
        return out


def _as_sample(model: Model, g: Any, drawn: list[int], seed: int, stop: Sequence[str]) -> Sample:
    """``sample``'s record of one row: its tokens (with the EOS it ended on) and why it ended."""
    n = len(g.token_ids)
    full = model.tokenizer.decode(list(g.token_ids), skip_special_tokens=True)
    if stop and cut_at(full, stop) != full:
        return Sample(g.text, g.token_ids, seed, "stop")
    if n < len(drawn):  # generate stops a row only at a stop string, an end token or the budget
        return Sample(g.text, (*g.token_ids, drawn[n]), seed, "eos")
    return Sample(g.text, g.token_ids, seed, "length")


def samples_per_prompt(prompts: Sequence[Any], seeds: Sequence[Sequence[int]]) -> int:
    """``n``, the samples each prompt gets; refuses no prompts, a prompt without seeds or unequal counts
    (both engines' ``sample_many``)."""
    if not prompts or len(seeds) != len(prompts) or any(not s for s in seeds):
        raise EmptyInput("sample_many() needs prompts and a non-empty list of seeds for each")
    if any(len(s) != len(seeds[0]) for s in seeds):
        raise SteerlensError("sample_many(): give every prompt the same number of seeds")
    return len(seeds[0])


def _row_steering(steering: RowSteering | Sequence[Intervention] | None, n: int) -> RowSteering:
    """``steering`` as a ``RowSteering`` whose rows are ``n`` samples (per-row values must number ``n``)."""
    rs = as_row_steering(steering)
    if rs.n_rows is not None and rs.n_rows != n:
        raise SteerlensError(f"the steering has per-row values for {rs.n_rows} rows but there are {n} seeds")
    return rs


def _check_sampler(temperature: float, top_p: float) -> None:
    if temperature <= 0:
        raise SteerlensError(f"temperature={temperature}: must be > 0 (use steerlens.generate for greedy)")
    if not 0 < top_p <= 1:
        raise SteerlensError(f"top_p={top_p}: expected 0 < top_p <= 1")


def _varies_by_row(iv: Intervention) -> bool:
    """Per-row alphas that are not all equal, or per-row window bounds: rows' prompts are steered apart."""
    a = torch.as_tensor(iv.alpha)
    if a.ndim == 1 and len(set(a.tolist())) > 1:
        return True
    p = iv.positions
    return isinstance(p, Window) and (isinstance(p.start, tuple) or isinstance(p.end, tuple))


def _prefill(
    model: Model, ids: list[int], ivs: list[Intervention], n: int, share: bool
) -> tuple[Cache, Tensor]:
    """The prompt's KV cache and next-token logits for ``n`` rows: one row expanded when ``share`` (every row
    steers the prompt alike), else ``n`` rows in one batched call."""
    prefill_ivs = [
        dataclasses.replace(iv, alpha=float(torch.as_tensor(iv.alpha).reshape(-1)[0]))
        if share and torch.as_tensor(iv.alpha).ndim == 1
        else iv
        for iv in ivs
    ]
    x = torch.tensor([ids] * (1 if share else n), device=model.device)
    with ExitStack() as stack, torch.no_grad():
        if prefill_ivs:
            stack.enter_context(steer(model, *prefill_ivs))
        out = model.hf(x, use_cache=True, logits_to_keep=1)
    cache = cache_of(out)
    logits = out.logits[:, -1].float()
    if share and n > 1:
        cache.batch_repeat_interleave(n)
        logits = logits.expand(n, -1)
    return cache, logits


def _decode(
    model: Model,
    ids: list[int],
    ivs: list[Intervention],
    cache: Cache,
    logits: Tensor,
    seeds: Sequence[int],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: Sequence[str],
    ignore_eos: bool,
) -> tuple[list[list[int]], list[str], int]:
    """Draw each row from its own seeded generator; finished rows leave the batch (and the steering's rows).
    Returns the tokens and finish reason per row and the tokens the decode steps ran."""
    n, dev = len(seeds), model.device
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    eos = set() if ignore_eos else _eos_ids(model)
    tokens: list[list[int]] = [[] for _ in range(n)]
    finish = ["length"] * n
    alive, ran = list(range(n)), 0
    with ExitStack() as stack, torch.no_grad():
        handle = stack.enter_context(steer(model, *ivs)) if ivs else None
        if handle is not None:  # the cache holds the prompt: positions, windows and triggers continue from it
            handle.resume(torch.tensor([ids] * n, device=dev))
        for step in range(max_new_tokens):
            nxt = [_draw(logits[j], temperature, top_p, gens[r]) for j, r in enumerate(alive)]
            keep = []
            for j, r in enumerate(alive):
                tokens[r].append(nxt[j])
                if nxt[j] in eos:
                    finish[r] = "eos"
                elif stop and any(s in model.tokenizer.decode(tokens[r][-16:]) for s in stop):
                    finish[r] = "stop"
                else:
                    keep.append(j)
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(alive):
                idx = torch.tensor(keep, device=dev)
                cache.batch_select_indices(idx)
                if handle is not None:
                    handle.keep_rows(idx)
                alive, nxt = [alive[j] for j in keep], [nxt[j] for j in keep]
            out = model.hf(torch.tensor(nxt, device=dev).unsqueeze(-1), **{CACHE_KW: cache}, use_cache=True)
            cache, logits = cache_of(out), out.logits[:, -1].float()
            ran += len(alive)
    return tokens, finish, ran


def _draw(logits: Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    probs = torch.softmax(logits.cpu() / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


def _eos_ids(model: Model) -> set[int]:
    ids = (
        set()
    )  # the pad token ends a continuation too, as in ``generate`` (``steerlens.generation.finished``)
    tok = model.tokenizer
    for src in (
        tok.eos_token_id,
        tok.pad_token_id,
        getattr(model.hf.generation_config, "eos_token_id", None),
    ):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, list):
            ids.update(int(i) for i in src)
    return ids
