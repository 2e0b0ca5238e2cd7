"""Which token positions a steering intervention acts on, tracked across forward chunks of one sequence.

A sequence reaches the model as one forward (no KV cache), as a prefill then one-token steps (KV cache), or as
a growing prefix re-run each step (generation without a cache). ``SequenceState`` gives each chunk's tokens
their absolute positions in all three cases, so "prompt" and "generated" mean the same tokens whatever the
decoder does:

- a forward with a non-empty KV cache continues the sequence (its tokens are generated);
- a forward without a cache whose ``input_ids`` extend the previous forward's ids row for row (same rows,
  longer, equal prefix) is the same sequence re-run: the prompt stays what it was;
- any other forward starts a new sequence whose whole input is the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from steerlens.errors import SteerlensError

NEVER = 2**62  # "no trigger seen yet"


def _rows(x: int | Sequence[int] | None) -> int | tuple[int, ...] | None:
    return x if x is None or isinstance(x, int) else tuple(int(v) for v in x)


@dataclass(frozen=True)
class Window:
    """Token positions ``start <= i < end`` of each row, counted from the row's first real (unpadded) token.

    ``start`` / ``end`` are one int for every row or one value per batch row (e.g. each row's own prompt
    length, so a batch of different prompts steers exactly their continuations).
    """

    start: int | tuple[int, ...] = 0
    end: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _rows(self.start))
        object.__setattr__(self, "end", _rows(self.end))

    @property
    def per_row(self) -> bool:
        """Whether a bound has one value per row."""
        return isinstance(self.start, tuple) or isinstance(self.end, tuple)


@dataclass(frozen=True)
class Trigger:
    """Steer each row from the first occurrence of any of ``token_ids`` onwards (inclusive)."""

    token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "token_ids", tuple(int(t) for t in self.token_ids))


Selector = Literal["all", "prompt", "generated"]
Positions = Selector | Window | Trigger
SELECTORS: tuple[Selector, ...] = ("all", "prompt", "generated")


@dataclass
class SequenceState:
    """Where the current forward chunk sits in its sequence; shared by every hook of one ``steer`` context."""

    triggers: list[Trigger] = field(default_factory=list)
    offset: int = 0  # absolute index (padded coordinates) of the chunk's first token
    seq: int = 0
    batch: int = 0
    prompt_len: int = 0
    row_start: Tensor | None = None  # [batch] pad count per row
    pad_from: int = 0  # absolute index where each row's pads begin (0: left padding; after a shared prefix)
    prompt_continues: bool = False  # the next chunk after the cache is still prompt (see ``prefix_cached``)
    rows: Tensor | None = None  # original batch rows still decoding (after finished rows were dropped)
    trigger_from: dict[tuple[int, ...], Tensor] = field(
        default_factory=dict
    )  # per trigger: [batch] first hit
    ids: Tensor | None = None  # the sequence so far, to recognise a cacheless re-run of it
    pending_tokens: Tensor | None = None  # TransformerLens: ids embedded for the chunk about to begin
    masks: dict[object, Tensor] = field(default_factory=dict)

    def new_sequence(self) -> None:
        """Forget the sequence: the next forward is a new prompt whatever its ids."""
        self.row_start, self.rows, self.ids, self.trigger_from = None, None, None, {}
        self.pad_from, self.prompt_continues = 0, False

    def resume(self, ids: Tensor, attention_mask: Tensor | None = None) -> None:
        """Declare that a KV cache built outside this context holds ``ids`` (the prompt): the next forward
        continues it, triggers in the prompt count, and windows count from each row's first real token."""
        self.new_sequence()
        self.begin(ids, ids.shape[0], ids.shape[1], 0, attention_mask)
        self.offset = ids.shape[1]

    def prefix_cached(self, prefix: Tensor, pads: Tensor) -> None:
        """Declare a shared-prefix layout: the KV cache passed to the next forward holds ``prefix``
        ([batch, n], the same first tokens of every row's prompt) and that forward's tokens are the rest of
        the prompt, ``pads[r]`` pad tokens and then row r's own tokens. Windows count real tokens only."""
        self.new_sequence()
        self.begin(prefix, prefix.shape[0], prefix.shape[1], 0, None)
        self.row_start, self.pad_from, self.prompt_continues = pads.cpu(), prefix.shape[1], True

    def keep_rows(self, index: Tensor) -> None:
        """Follow a decoder that dropped finished rows from its batch (and KV cache)."""
        index = index.cpu()
        self.rows = index if self.rows is None else self.rows[index]
        if self.row_start is not None:
            self.row_start = self.row_start[index]
        if self.ids is not None:
            self.ids = self.ids[index.to(self.ids.device)]
        self.trigger_from = {k: v[index] for k, v in self.trigger_from.items()}

    def _extends(self, ids: Tensor | None, batch: int, seq: int) -> bool:
        old = self.ids
        return (
            old is not None
            and ids is not None
            and old.shape[0] == batch
            and seq > old.shape[1]
            and torch.equal(ids[:, : old.shape[1]], old)
        )

    def begin(
        self,
        ids: Tensor | None,
        batch: int,
        seq: int,
        offset: int,
        attention_mask: Tensor | None,
        key: Tensor | None = None,
    ) -> None:
        """Place a forward chunk of ``seq`` tokens after ``offset`` cached ones. ``key`` (default: ``ids``)
        identifies the chunk's inputs to recognise a re-run (TransformerLens passes the block-0 residual)."""
        self.batch, self.seq, self.masks = batch, seq, {}
        ids_or_key = key if key is not None else ids
        if offset > 0:
            if self.row_start is None:  # a decoder prefilled outside this context: its cache is the prompt
                self.prompt_len, self.row_start, self.ids = offset, torch.zeros(batch, dtype=torch.long), None
            if self.prompt_continues:  # the chunk after a shared prefix is the rest of the prompt
                self.prompt_len, self.prompt_continues = offset + seq, False
            if self.ids is not None and ids_or_key is not None and self.ids.shape[1] == offset:
                self.ids = torch.cat([self.ids, ids_or_key], dim=1)
            else:
                self.ids = None
        elif not self._extends(ids_or_key, batch, seq):
            self.prompt_len, self.rows, self.trigger_from, self.pad_from = seq, None, {}, 0
            self.prompt_continues = False
            if attention_mask is not None and attention_mask.shape == (batch, seq):
                self.row_start = (attention_mask.cumsum(-1) == 0).sum(-1).cpu()
            else:
                self.row_start = torch.zeros(batch, dtype=torch.long)
            self.ids = ids_or_key
        else:
            self.ids = ids_or_key
        self.offset = offset
        for trig in self.triggers:
            if ids is None:
                raise SteerlensError(
                    "Trigger positions need the token ids of every forward chunk: not inputs_embeds, and not "
                    "TransformerLens generate without its KV cache (it re-runs embeddings); use "
                    "use_past_kv_cache=True or model.hf.generate"
                )
            hit = torch.isin(ids, torch.tensor(trig.token_ids, device=ids.device))
            pos = torch.arange(offset, offset + seq, device=ids.device).expand(batch, seq)
            first = torch.where(hit, pos, torch.full_like(pos, NEVER)).min(-1).values.cpu()
            prev = self.trigger_from.get(trig.token_ids)
            self.trigger_from[trig.token_ids] = first if prev is None else torch.minimum(prev, first)

    def _per_row(self, value: int | tuple[int, ...], what: str) -> Tensor | int:
        if isinstance(value, int):
            return value
        if self.rows is None and len(value) != self.batch:
            raise SteerlensError(
                f"Window {what} has {len(value)} per-row values but the batch has {self.batch} rows; pass one "
                "per row"
            )
        t = torch.tensor(value)
        return (t if self.rows is None else t[self.rows])[:, None]

    def mask(self, positions: Positions, device: torch.device) -> Tensor | None:
        """[batch, seq] bool mask of steered positions in the current chunk, or None for all positions."""
        if positions == "all":
            return None
        if positions not in self.masks:
            absolute = torch.arange(self.offset, self.offset + self.seq).expand(self.batch, self.seq)
            assert self.row_start is not None
            if positions == "prompt":
                m = absolute < self.prompt_len
            elif positions == "generated":
                m = absolute >= self.prompt_len
            elif isinstance(positions, Window):
                pads = self.row_start[:, None]
                after = absolute >= self.pad_from + pads  # real tokens after the row's pads
                rel = torch.where(after, absolute - pads, absolute)  # index among the row's real tokens
                m = ((absolute < self.pad_from) | after) & (rel >= self._per_row(positions.start, "start"))
                if positions.end is not None:
                    m = m & (rel < self._per_row(positions.end, "end"))
            elif isinstance(positions, Trigger):
                m = absolute >= self.trigger_from[positions.token_ids][:, None]
            else:  # pragma: no cover - validated in Intervention
                raise SteerlensError(f"bad positions {positions!r}")
            self.masks[positions] = m.to(device)
        return self.masks[positions]


def spares_prefix(positions: Sequence[Positions], prefix: Tensor) -> bool:
    """Whether none of ``positions`` acts on any token of ``prefix`` ([batch, n], the first tokens of every
    row's prompt): only then may that prefix's KV cache be computed once, unsteered, and shared by the rows."""
    state = SequenceState(triggers=list(dict.fromkeys(p for p in positions if isinstance(p, Trigger))))
    state.begin(prefix, prefix.shape[0], prefix.shape[1], 0, None)
    for p in positions:
        m = state.mask(p, prefix.device)
        if m is None or bool(m.any()):
            return False
    return True
