"""What every analysis result shares: JSON conversion and an atomic ``.save(dir)``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from steerlens.files import write_json


def jsonable(obj: Any) -> Any:
    """Plain JSON types for dataclasses, tensors, arrays and numbers (NaN and inf become None)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    return obj


class Saveable:
    """Mixin for frozen result dataclasses: ``save(dir)`` writes ``<dir>/<name>.json`` atomically."""

    name: str = "result"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)

    def save(self, directory: str | Path) -> Path:
        return write_json(Path(directory) / f"{self.name}.json", self.to_dict())


def head_frame(columns: dict[str, Any]) -> pd.DataFrame:
    """One row per (layer, head) from ``[n_layers, n_heads]`` arrays, indexed by layer and head."""
    n_layers, n_heads = np.shape(next(iter(columns.values())))
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    data = {"layer": layer.ravel(), "head": head.ravel()}
    data.update({k: np.asarray(v).ravel() for k, v in columns.items()})
    return pd.DataFrame(data).set_index(["layer", "head"])
