"""What every analysis result shares: JSON conversion and back, an atomic ``.save(dir)``, and per-head
tables and heatmaps (one cell per layer and head)."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from steerlens.figures import TEMPLATE, new_figure
from steerlens.files import write_json

T = TypeVar("T")


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


def revive(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a result dataclass from what ``jsonable`` wrote, led by the field types: arrays, nested
    dataclasses, tuples and dicts come back as such (None in a float array or field as NaN). Fields that
    ``jsonable`` leaves out (``repr=False``: per-token or per-position arrays) come back as empty arrays."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _revive_value(hints[f.name], data[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs[f.name] = np.empty(0)
    return cls(**kwargs)


def _revive_value(tp: Any, v: Any) -> Any:
    if v is None:
        return float("nan") if tp is float else None
    if tp is np.ndarray:
        a = np.array(v)
        return np.array(v, dtype=float) if a.dtype == object else a
    if dataclasses.is_dataclass(tp):
        return revive(tp, v)  # type: ignore[arg-type]
    args = get_args(tp)
    if get_origin(tp) is dict:
        return {k: _revive_value(args[1], x) for k, x in v.items()}
    if get_origin(tp) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_revive_value(args[0], x) for x in v)
        return tuple(_revive_value(a, x) for a, x in zip(args, v, strict=True))
    return v


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


def layer_head_heatmap(
    values: np.ndarray, title: str, colorscale: str = "RdBu", zmid: float | None = None
) -> go.Figure:
    """A layer x head heatmap in the steerlens template (layers down, heads across)."""
    n_layers, n_heads = values.shape
    fig = new_figure(title, "head", "layer", height=max(320, 22 * n_layers + 120))
    fig.add_trace(
        go.Heatmap(
            z=values,
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            colorscale=colorscale,
            zmid=zmid,
            text=np.round(values, 2),
            texttemplate="%{text}" if n_heads * n_layers <= 400 else None,
        )
    )
    fig.update_layout(template=TEMPLATE)
    fig.update_yaxes(autorange="reversed", dtick=1)
    fig.update_xaxes(dtick=1)
    return fig
