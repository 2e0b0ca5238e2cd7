"""llama.cpp control vectors (GGUF): export a ``SteeringVector`` and import one (also repeng's files).

Why its own module: the GGUF format is an exchange format beside the vector itself, and the only user of the
``gguf`` package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from steerlens.errors import SteerlensError
from steerlens.files import atomic_write, reading

from .vector import REBUILD_HINT, SteeringVector, Units

if TYPE_CHECKING:
    from steerlens.model import Model


def write_control_vector(
    vec: SteeringVector, path: str | Path, alpha: float = 1.0, units: Units = "vector", model_hint: str = ""
) -> Path:
    """Export as a llama.cpp control vector: ``direction.{l}`` holds the vector added to layer ``l``'s output.

    llama.cpp adds ``direction.N`` to the output of (0-based) layer N, i.e. our ``blocks.N.hook_resid_post``,
    and cannot steer layer 0; the tensors hold ``alpha`` times one unit of ``units``.
    """
    import gguf
    import numpy as np

    if vec.site_kind != "hook_resid_post":
        raise SteerlensError(
            f"llama.cpp control vectors act on resid_post; this vector is at {vec.site_kind}"
        )
    if 0 in vec.directions:
        raise SteerlensError("llama.cpp control vectors cannot steer layer 0; export vec.select(range(1, n))")
    path = Path(path)

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(str(tmp), "controlvector")
        w.add_string("controlvector.model_hint", model_hint or vec.model_id)
        w.add_uint32("controlvector.layer_count", len(vec.directions))
        w.add_string("steerlens.metadata", json.dumps({**vec.metadata(), "alpha": alpha, "units": units}))
        for l in vec.layers:
            v = vec.directions[l] * alpha * vec.scale(l, units)
            w.add_tensor(f"direction.{l}", v.detach().float().cpu().numpy().astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    return atomic_write(path, write)


def read_control_vector(
    path: str | Path, model: Model | None = None, model_id: str | None = None
) -> SteeringVector:
    """Import a llama.cpp / repeng control vector; raw norms are the stored tensors' norms (units="vector"
    with alpha 1 reproduces the file). steerlens' own exports round-trip their metadata too."""
    import gguf

    with reading(path, "llama.cpp control vector (GGUF)", REBUILD_HINT):
        reader = gguf.GGUFReader(str(path))
    fields = {f.name: f for f in reader.fields.values()}

    def field_str(name: str) -> str | None:
        f = fields.get(name)
        return None if f is None else bytes(f.parts[f.data[0]]).decode()

    dirs = {
        int(t.name.split(".")[1]): torch.tensor(t.data.copy()).float().reshape(-1)
        for t in reader.tensors
        if t.name.startswith("direction.")
    }
    if not dirs:
        raise SteerlensError(f"{path} holds no direction.N tensors; is it a control vector?")
    meta = json.loads(field_str("steerlens.metadata") or "{}")
    d_model = next(iter(dirs.values())).shape[0]
    norms = {l: float(v.norm()) for l, v in dirs.items()}
    resid = {int(k): v for k, v in meta.get("resid_norms", {}).items()}
    vec = SteeringVector(
        directions={l: v / norms[l] for l, v in dirs.items()},
        model_id=model_id
        or meta.get("model_id")
        or (model.name if model else field_str("controlvector.model_hint") or ""),
        d_model=d_model,
        site_kind="hook_resid_post",
        method=meta.get("method", "gguf"),
        raw_norms=norms,
        resid_norms=resid,
        dataset_hash=meta.get("dataset_hash", ""),
        settings={**meta.get("settings", {}), "imported_from": str(path)},
    )
    if model is not None:
        vec.check_model(model)
    return vec
