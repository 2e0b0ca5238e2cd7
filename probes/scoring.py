"""Error-detection benchmarks' formats and scorers: ProcessBench (earliest erroneous step, -1 for none) and
BIG-Bench-Mistake (``mistake_index``, None for none)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from steerlens.errors import EmptyInput, SteerlensError


@dataclass(frozen=True)
class StepItem:
    """A solution split into steps with the index of its earliest wrong step (-1: all steps correct)."""

    id: str
    problem: str
    steps: tuple[str, ...]
    label: int

    def __post_init__(self) -> None:
        if not -1 <= self.label < len(self.steps):
            raise SteerlensError(f"item {self.id!r}: label {self.label} outside -1..{len(self.steps) - 1}")


def processbench_score(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """ProcessBench: accuracy on erroneous items (predicted index == earliest error), accuracy on correct
    items (predicted -1), and their harmonic mean F1."""
    if len(predictions) != len(labels):
        raise SteerlensError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise EmptyInput("no items to score")
    err = [p == y for p, y in zip(predictions, labels, strict=True) if y != -1]
    ok = [p == -1 for p, y in zip(predictions, labels, strict=True) if y == -1]
    acc_err = sum(err) / len(err) if err else float("nan")
    acc_ok = sum(ok) / len(ok) if ok else float("nan")
    f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if (acc_err + acc_ok) > 0 else 0.0
    return {
        "error_accuracy": acc_err,
        "correct_accuracy": acc_ok,
        "f1": f1,
        "n_error": len(err),
        "n_correct": len(ok),
    }


def bigbench_mistake_score(
    predictions: Sequence[int | None], labels: Sequence[int | None]
) -> dict[str, float]:
    """BIG-Bench-Mistake: mistake-location accuracy on traces with a mistake (exact index), accuracy of
    saying "no mistake" on clean traces, binary has-mistake accuracy and F1 (positive class: has a mistake),
    and overall exact-match accuracy."""
    if len(predictions) != len(labels):
        raise SteerlensError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise EmptyInput("no items to score")
    pairs = list(zip(predictions, labels, strict=True))
    with_m = [p == y for p, y in pairs if y is not None]
    without = [p is None for p, y in pairs if y is None]
    tp = sum(p is not None and y is not None for p, y in pairs)
    flagged, actual = sum(p is not None for p, _ in pairs), sum(y is not None for _, y in pairs)
    return {
        "location_accuracy": sum(with_m) / len(with_m) if with_m else float("nan"),
        "no_mistake_accuracy": sum(without) / len(without) if without else float("nan"),
        "binary_accuracy": sum((p is None) == (y is None) for p, y in pairs) / len(pairs),
        "exact_accuracy": sum(p == y for p, y in pairs) / len(pairs),
        "mistake_f1": 2 * tp / (flagged + actual) if flagged + actual else 0.0,
        "n_mistake": len(with_m),
        "n_clean": len(without),
    }


def load_processbench(path: str | Path) -> list[StepItem]:
    """ProcessBench JSON/JSONL records: ``{"id", "problem", "steps": [...], "label": int}``."""
    return [
        StepItem(str(r.get("id", i)), r["problem"], tuple(r["steps"]), int(r["label"]))
        for i, r in enumerate(_records(path, ("problem", "steps", "label")))
    ]


def load_bigbench_mistake(path: str | Path) -> list[StepItem]:
    """BIG-Bench-Mistake JSONL records: ``{"input", "steps": [...], "mistake_index": int | null}``."""
    out = []
    for i, r in enumerate(_records(path, ("input", "steps", "mistake_index"))):
        m = r["mistake_index"]
        out.append(StepItem(str(r.get("id", i)), r["input"], tuple(r["steps"]), -1 if m is None else int(m)))
    return out


def _records(path: str | Path, keys: Sequence[str]) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise SteerlensError(f"no such file {str(p)!r}")
    text = p.read_text().strip()
    rows = (
        json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    )
    for i, r in enumerate(rows):
        missing = [k for k in keys if k not in r]
        if missing:
            raise SteerlensError(
                f"{p} record {i} lacks {missing} (has {sorted(r)}); expected keys {list(keys)}"
            )
    if not rows:
        raise EmptyInput(f"{p} holds no records")
    return rows
