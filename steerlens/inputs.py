"""Inputs to activation collection: texts with named character spans, and which token positions to keep."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import EmptyInput, SteerlensError


@dataclass(frozen=True)
class Example:
    """A text with named character spans (e.g. ``{"answer": (40, 52)}``) that positions can select."""

    text: str
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_segments(cls, segments: Sequence[tuple[str | None, str]]) -> Example:
        """Concatenate ``(name, text)`` segments; each named segment becomes a span of that name."""
        text, spans, start = "", {}, 0
        for name, seg in segments:
            text += seg
            if name is not None:
                spans[name] = (start, start + len(seg))
            start += len(seg)
        return cls(text, spans)


@dataclass(frozen=True)
class Tokenized:
    ids: list[int]
    spans: dict[str, list[int]]  # span name -> token indices overlapping it


SelectionKind = Literal["all", "last", "index", "span", "explicit"]


@dataclass(frozen=True)
class TokenSelection:
    """Which token positions' activations ``collect`` keeps per example (steering positions are another
    thing: ``steering.Positions``): ``all``, ``last``, an index, a named span, or explicit lists."""

    kind: SelectionKind
    index: int = 0
    span: str = ""
    explicit: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def parse(cls, spec: TokenSelection | str | int | Sequence[Sequence[int]]) -> TokenSelection:
        if isinstance(spec, TokenSelection):
            return spec
        if isinstance(spec, int):
            return cls("index", index=spec)
        if isinstance(spec, str):
            if spec == "all":
                return cls("all")
            if spec == "last":
                return cls("last")
            if spec.startswith("span:"):
                return cls("span", span=spec[5:])
            raise SteerlensError(
                f"positions={spec!r}: expected 'all', 'last', an int index, 'span:NAME', or per-example "
                "index lists"
            )
        return cls("explicit", explicit=tuple(tuple(int(i) for i in row) for row in spec))

    @property
    def spec(self) -> str:
        return {"index": f"index:{self.index}", "span": f"span:{self.span}", "explicit": "explicit"}.get(
            self.kind, self.kind
        )

    def select(self, i: int, tok: Tokenized) -> list[int]:
        """Token indices to keep in example ``i``."""
        n = len(tok.ids)
        if self.kind == "all":
            return list(range(n))
        if self.kind == "last":
            return [n - 1]
        if self.kind == "index":
            j = self.index if self.index >= 0 else n + self.index
            if not 0 <= j < n:
                raise SteerlensError(f"position index {self.index} outside example {i} of {n} tokens")
            return [j]
        if self.kind == "span":
            if self.span not in tok.spans:
                raise SteerlensError(
                    f"example {i} has no span named {self.span!r} (has {sorted(tok.spans)}); build inputs with "
                    "Example(text, spans={...}) or Example.from_segments"
                )
            return tok.spans[self.span]
        if len(self.explicit) <= i:
            raise SteerlensError(f"explicit positions give {len(self.explicit)} rows but example {i} exists")
        bad = [j for j in self.explicit[i] if not 0 <= j < n]
        if bad:
            raise SteerlensError(f"explicit positions {bad} outside example {i} of {n} tokens")
        return sorted(set(self.explicit[i]))


def tokenize_inputs(tokenizer: Any, inputs: Any) -> list[Tokenized]:
    """Normalise texts / token lists / Examples to token ids plus token-level spans."""
    if isinstance(inputs, str | Example):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise EmptyInput("no inputs given: pass a non-empty list of texts, token-id lists or Examples")
    out: list[Tokenized] = []
    for i, x in enumerate(inputs):
        if isinstance(x, str):
            x = Example(x)
        if isinstance(x, Example):
            enc = tokenizer(x.text, add_special_tokens=True, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
            spans = {
                name: [t for t, (a, b) in enumerate(offsets) if b > a and a < e and b > s]
                for name, (s, e) in x.spans.items()
            }
            out.append(Tokenized(list(enc["input_ids"]), spans))
        else:
            out.append(Tokenized([int(t) for t in x], {}))
        if not out[-1].ids:
            raise EmptyInput(f"input {i} has no tokens; drop empty texts before collecting")
    return out


def dataset_hash(model_id: str, tokens: list[Tokenized], keep: list[list[int]]) -> str:
    """Hash of everything that fixes a store's rows: the model, every token id and every kept position."""
    h = hashlib.sha256(model_id.encode())
    for tok, pos in zip(tokens, keep, strict=True):
        h.update(b"|" + ",".join(map(str, tok.ids)).encode() + b"#" + ",".join(map(str, pos)).encode())
    return h.hexdigest()
