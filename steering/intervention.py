"""``Intervention``: one vector, one operation, its positions, coefficients and units: what ``steer`` applies.

Why its own module: every steering entry point (``steer``, ``RowSteering``, ``sample``, the test-time-scaling
loops) takes this one value object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from steerlens.errors import SteerlensError

from .ops import OPS, Op
from .positions import SELECTORS, Positions, Trigger, Window
from .vector import UNITS, SteeringVector, Units


@dataclass(frozen=True, eq=False)
class Intervention:
    """One vector applied with one operation at chosen positions and coefficients.

    ``alpha`` is a float or one value per batch row (an alpha sweep or N differently steered samples in one
    batch). ``units``: "vector" (multiples of the raw vector), "raw" (activation units) or "resid" (multiples
    of the layer's mean per-token residual norm, comparable across layers and models). For ``ablate`` alpha is
    the fraction removed (1 = all); for ``clamp`` it is the target projection, in ``units``.
    """

    vector: SteeringVector
    alpha: float | Sequence[float] | Tensor = 1.0
    op: Op = "add"
    positions: Positions = "all"
    units: Units = "vector"
    layers: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise SteerlensError(f"op={self.op!r}: expected one of {OPS}")
        if self.units not in UNITS:
            raise SteerlensError(f"units={self.units!r}: expected one of {UNITS}")
        if not isinstance(self.positions, Window | Trigger) and self.positions not in SELECTORS:
            raise SteerlensError(
                f"positions={self.positions!r}: expected 'all', 'prompt', 'generated', Window(start, end) or "
                "Trigger(token_ids)"
            )
        a = torch.as_tensor(self.alpha, dtype=torch.float32)
        if a.ndim > 1 or not torch.isfinite(a).all():
            raise SteerlensError(
                f"alpha must be a finite float or a 1-D list of per-row floats, got {self.alpha!r}"
            )

    @property
    def steered_layers(self) -> list[int]:
        layers = self.vector.layers if self.layers is None else list(self.layers)
        missing = [l for l in layers if l not in self.vector.directions]
        if missing:
            raise SteerlensError(f"layers {missing} not in the vector (it has {self.vector.layers})")
        return layers

    @property
    def per_row(self) -> bool:
        return torch.as_tensor(self.alpha).ndim == 1

    def foldable(self) -> bool:
        """A static add at every position with one coefficient (may become a bias, where order allows)."""
        return self.op == "add" and self.positions == "all" and not self.per_row

    def fingerprint(self) -> str:
        """Everything that decides what this intervention does, hashed (for cache keys)."""
        h = hashlib.sha256()
        alpha = torch.as_tensor(self.alpha, dtype=torch.float32).reshape(-1).tolist()
        h.update(repr((self.vector.model_id, self.op, self.positions, self.units, alpha)).encode())
        for l in self.steered_layers:
            scale = self.vector.scale(l, self.units)
            h.update(repr((l, scale)).encode())
            h.update(self.vector.directions[l].detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]
