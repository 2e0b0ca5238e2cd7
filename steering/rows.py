"""``RowSteering``: interventions whose per-row values belong to the caller's rows, not to one batch.

Why: every loop that steers a dataset (an alpha sweep over items, one alpha per sample, a round-by-round
replay) batches its rows its own way; this object holds one value per dataset row and hands each batch the
values of the rows it holds, so no loop writes its own per-row context again. ``generate``,
``next_token_logprobs``, ``continuation_logprobs``, ``sample`` and the test-time-scaling loops all take it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steerlens.errors import SteerlensError
from steerlens.model import Model

from .apply import Intervention, Steering, steer
from .positions import Positions, Window, spares_prefix
from .vector import SteeringVector, Units


@dataclass(frozen=True, eq=False)
class RowSteering:
    """Interventions for a whole dataset: a per-row alpha (or per-row ``Window`` bound) has one value per
    dataset row, and ``batch(model, rows)`` steers a batch holding ``rows`` with exactly those rows' values.

    Args:
        interventions: applied at each layer in the order given (see ``steer``).

    Example:
        >>> rs = RowSteering.sweep([vec], alphas=[-1.0, 0.0, 1.0] * 10, units="resid")
        >>> generate(model, prompts_30, steering=rs)      # prompt i steered with alphas[i], any batching
    """

    interventions: tuple[Intervention, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "interventions", tuple(self.interventions))
        bad = [x for x in self.interventions if not isinstance(x, Intervention)]
        if bad:
            raise SteerlensError(f"RowSteering takes Intervention objects, got {type(bad[0]).__name__}")
        sizes = {n for iv in self.interventions if (n := _rows_of(iv)) is not None}
        if len(sizes) > 1:
            raise SteerlensError(f"per-row values of different lengths {sorted(sizes)}; give one per row")

    @classmethod
    def sweep(
        cls,
        vectors: Sequence[SteeringVector],
        alphas: Sequence[float],
        *,
        units: Units = "vector",
        positions: Positions = "all",
    ) -> RowSteering:
        """Every vector in ``vectors`` added together, row ``i`` with coefficient ``alphas[i]``."""
        a = [float(x) for x in alphas]
        return cls(tuple(Intervention(v, alpha=a, units=units, positions=positions) for v in vectors))

    @property
    def n_rows(self) -> int | None:
        """How many dataset rows the per-row values cover (None: no per-row values, any number of rows)."""
        return next((n for iv in self.interventions if (n := _rows_of(iv)) is not None), None)

    def __bool__(self) -> bool:
        return bool(self.interventions)

    def for_rows(self, rows: Sequence[int]) -> list[Intervention]:
        """The interventions for a batch holding dataset rows ``rows`` (in batch order)."""
        n = self.n_rows
        if n is not None and any(not 0 <= r < n for r in rows):
            raise SteerlensError(f"rows {list(rows)} outside the {n} rows the per-row values cover")
        return [_select(iv, list(rows)) for iv in self.interventions]

    def spares_prefix(self, rows: Sequence[int], prefix: torch.Tensor) -> bool:
        """Whether steering the batch of ``rows`` leaves ``prefix`` ([len(rows), n], the first tokens of every
        prompt) untouched, so its KV cache may be computed once without this steering and shared."""
        return spares_prefix([iv.positions for iv in self.for_rows(rows)], prefix)

    @contextlib.contextmanager
    def batch(self, model: Model, rows: Sequence[int]) -> Iterator[Steering | None]:
        """Steer ``model`` for one batch of ``rows`` (nothing when there are no interventions)."""
        if not self.interventions:
            yield None
            return
        with steer(model, *self.for_rows(rows)) as handle:
            yield handle


def as_row_steering(steering: RowSteering | Sequence[Intervention] | None) -> RowSteering:
    """Accept a ``RowSteering``, a list of ``Intervention`` objects or None (no steering)."""
    if steering is None:
        return RowSteering()
    return steering if isinstance(steering, RowSteering) else RowSteering(tuple(steering))


def _rows_of(iv: Intervention) -> int | None:
    a = torch.as_tensor(iv.alpha)
    if a.ndim == 1:
        return len(a)
    p = iv.positions
    if isinstance(p, Window):
        for bound in (p.start, p.end):
            if isinstance(bound, tuple):
                return len(bound)
    return None


def _pick(bound: int | tuple[int, ...], rows: list[int]) -> int | tuple[int, ...]:
    return tuple(bound[r] for r in rows) if isinstance(bound, tuple) else bound


def _select(iv: Intervention, rows: list[int]) -> Intervention:
    changes: dict[str, Any] = {}
    a = torch.as_tensor(iv.alpha, dtype=torch.float32)
    if a.ndim == 1:
        changes["alpha"] = [float(a[r]) for r in rows]
    p = iv.positions
    if isinstance(p, Window) and (isinstance(p.start, tuple) or isinstance(p.end, tuple)):
        changes["positions"] = Window(_pick(p.start, rows), None if p.end is None else _pick(p.end, rows))
    return dataclasses.replace(iv, **changes) if changes else iv
