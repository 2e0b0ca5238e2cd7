"""``SteeringVector``: per-layer unit directions plus the metadata that says where they came from.

Saved as safetensors (tensors ``direction.{layer}``, metadata as JSON in the header) and exported to / imported
from llama.cpp control-vector GGUF. Never pickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.errors import SteerlensError, StoreMismatch
from steerlens.files import atomic_write, reading
from steerlens.sites import SiteKind

if TYPE_CHECKING:
    from steerlens.model import Model

FORMAT = "steerlens.vector/1"
Units = Literal["vector", "raw", "resid"]
UNITS: tuple[Units, ...] = ("vector", "raw", "resid")
PurifyMethod = Literal["project", "mix"]
REBUILD_HINT = (
    "Save the vector again (SteeringVector.save) or rebuild it with steerlens.steering.build_vector"
)


@dataclass(frozen=True)
class SteeringVector:
    """Unit directions per layer at one site kind, with raw norms and provenance.

    ``directions[l]`` has norm 1; ``raw_norms[l]`` is the norm of what the builder produced (e.g. the raw
    difference of means) and ``resid_norms[l]`` the mean residual norm at that layer on the build data, so a
    coefficient can be given in any of three units (see ``scale``).
    """

    directions: dict[int, Float[Tensor, " d_model"]]
    model_id: str
    d_model: int
    site_kind: SiteKind = "hook_resid_post"  # which residual site of every layer the directions live at
    method: str = "mean"
    raw_norms: dict[int, float] = field(default_factory=dict)
    resid_norms: dict[int, float] = field(default_factory=dict)
    dataset_hash: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise SteerlensError("a SteeringVector needs at least one layer; got no directions")
        for l, v in self.directions.items():
            if v.ndim != 1 or v.shape[0] != self.d_model:
                raise SteerlensError(
                    f"direction for layer {l} has shape {tuple(v.shape)}, expected ({self.d_model},) for d_model "
                    f"{self.d_model}; was this vector built for another model?"
                )
            if not torch.isfinite(v).all():
                raise SteerlensError(
                    f"direction for layer {l} contains NaN or inf; rebuild the vector from clean data"
                )
            n = float(v.norm())
            if n == 0:
                raise SteerlensError(
                    f"direction for layer {l} is all zeros: positive and negative data do not differ"
                )
            if abs(n - 1) > 1e-4:
                object.__setattr__(self, "directions", {**self.directions, l: v / n})
        for name in ("raw_norms", "resid_norms"):
            bad = {l: x for l, x in getattr(self, name).items() if not math.isfinite(x)}
            if bad:
                raise SteerlensError(
                    f"{name} has non-finite values {bad}; rebuild the vector from clean data"
                )

    # ---- facts --------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def __repr__(self) -> str:
        return (
            f"SteeringVector({self.model_id!r}, {self.method}, site_kind={self.site_kind}, layers={self.layers}, "
            f"d_model={self.d_model})"
        )

    def scale(self, layer: int, units: Units) -> float:
        """Length of one coefficient unit at ``layer``: 1 ("raw"), the raw norm ("vector"), the mean residual
        norm ("resid", so alphas compare across layers and models)."""
        if units == "raw":
            return 1.0
        table = {"vector": self.raw_norms, "resid": self.resid_norms}.get(units)
        if table is None:
            raise SteerlensError(f"units={units!r}: expected one of {UNITS}")
        if layer not in table:
            raise SteerlensError(
                f"this vector has no {units!r} scale for layer {layer} (built without it); use units='raw' or "
                "rebuild it with steerlens.steering.build_vector"
            )
        return table[layer]

    def check_model(self, model: Model) -> None:
        """Raise unless the vector fits ``model``: same d_model, layers in range, same model id."""
        cfg = model.cfg
        if self.d_model != cfg.d_model:
            raise StoreMismatch(
                f"vector has d_model {self.d_model} but {model.name} has d_model {cfg.d_model}: it was built for "
                f"{self.model_id!r}; build one for this model"
            )
        bad = [l for l in self.layers if not 0 <= l < cfg.n_layers]
        if bad:
            raise SteerlensError(f"vector layers {bad} out of range for {model.name} ({cfg.n_layers} layers)")
        if self.model_id != model.name:
            raise StoreMismatch(
                f"vector was built for {self.model_id!r}, not {model.name!r} (same d_model, but directions do not "
                "transfer between models); build one for this model, or pass a copy with model_id changed "
                "deliberately via dataclasses.replace"
            )

    # ---- algebra ------------------------------------------------------------------------------------
    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if other.d_model != self.d_model or other.site_kind != self.site_kind:
            raise SteerlensError("can only combine vectors with the same d_model and site")
        layers = sorted(set(self.directions) & set(other.directions))
        if not layers:
            raise SteerlensError(f"vectors share no layers ({self.layers} vs {other.layers})")
        raw = {
            l: self.directions[l] * self.raw_norms.get(l, 1.0)
            + sign * other.directions[l] * other.raw_norms.get(l, 1.0)
            for l in layers
        }
        return self._with(raw, method=f"({self.method}{'+' if sign > 0 else '-'}{other.method})")

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, k: float) -> SteeringVector:
        """Scale the raw vector (a negative factor flips the directions)."""
        return self._with(
            {l: self.directions[l] * self.raw_norms.get(l, 1.0) * k for l in self.layers}, method=self.method
        )

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def project_out(self, other: SteeringVector, keep: float = 0.0) -> SteeringVector:
        """Remove ``other``'s direction from this one per layer (``keep`` leaves that fraction of the shared
        component: 0 orthogonalises, as in Gram-Schmidt). Raw norms shrink accordingly."""
        out = {}
        for l in self.layers:
            if l not in other.directions:
                raise SteerlensError(f"cannot project out: other vector has no layer {l}")
            u = other.directions[l]
            v = self.directions[l] * self.raw_norms.get(l, 1.0)
            out[l] = v - (1 - keep) * (v @ u) * u
        return self._with(out, method=f"{self.method}⊥{other.method}")

    def cosine(self, other: SteeringVector) -> dict[int, float]:
        return {
            l: float(self.directions[l] @ other.directions[l]) for l in self.layers if l in other.directions
        }

    def select(self, layers: list[int] | range) -> SteeringVector:
        """A copy restricted to ``layers``."""
        missing = [l for l in layers if l not in self.directions]
        if missing:
            raise SteerlensError(f"vector has no layers {missing}; it has {self.layers}")
        keep = set(layers)
        return dataclasses.replace(
            self,
            directions={l: v for l, v in self.directions.items() if l in keep},
            raw_norms={l: v for l, v in self.raw_norms.items() if l in keep},
            resid_norms={l: v for l, v in self.resid_norms.items() if l in keep},
        )

    def purify(
        self,
        other: SteeringVector,
        *,
        target: float = 0.0,
        method: PurifyMethod = "project",
        mix: float = 1.0,
    ) -> SteeringVector:
        """Reduce what this vector shares with ``other``, per layer, keeping its raw norm.

        "project": rotate within span(v, u) so cos(v', u) equals ``target`` exactly (0 = Gram-Schmidt).
        "mix": v' = v/|v| - ``mix`` * cos(v, u) * u/|u|, rescaled to |v| (mix = 1 is again
        orthogonalisation; smaller values remove part of the overlap).

        Example:
            >>> o_only = openness.purify(conscientiousness)          # cos(o_only, c) == 0 at every layer
        """
        if method not in ("project", "mix"):
            raise SteerlensError(f"method={method!r}: expected 'project' or 'mix'")
        if not -1 < target < 1:
            raise SteerlensError(f"target cosine {target} must lie strictly between -1 and 1")
        raw = {}
        for l in self.layers:
            if l not in other.directions:
                raise SteerlensError(
                    f"cannot purify: the other vector has no layer {l} (it has {other.layers})"
                )
            v, u = self.directions[l].double(), other.directions[l].double()
            c = float(v @ u)
            resid = v - c * u
            if float(resid.norm()) < 1e-9:
                raise SteerlensError(
                    f"layer {l}: the vectors are parallel; nothing is left after purification"
                )
            if method == "project":
                d = target * u + math.sqrt(1 - target**2) * (resid / resid.norm())
            else:
                d = v - mix * c * u
                d = d / d.norm()
            raw[l] = (d * self.raw_norms.get(l, 1.0)).float()
        tag = f"purified({method}, target={target})" if method == "project" else f"purified(mix={mix})"
        return self._with(raw, method=f"{self.method}|{tag}")

    @classmethod
    def orthogonalize(
        cls, vectors: Mapping[str, SteeringVector], order: Sequence[str]
    ) -> dict[str, SteeringVector]:
        """Gram-Schmidt: the named vectors in ``order``, each purified against all earlier ones, per layer.

        Example:
            >>> ortho = SteeringVector.orthogonalize({"o": o, "c": c}, ["c", "o"])  # c kept, o made ⊥ c
        """
        out: dict[str, SteeringVector] = {}
        for name in order:
            v = vectors[name]
            for prev in out.values():
                v = v.purify(prev, target=0.0)
            out[name] = v
        return out

    def remove_span(self, others: Sequence[SteeringVector]) -> SteeringVector:
        """This vector with the span of ``others`` projected out per layer (raw norm kept).

        Example:
            >>> pure = {t: v.remove_span([o for s, o in vecs.items() if s != t]) for t, v in vecs.items()}
        """
        if not others:
            raise SteerlensError("remove_span needs at least one other vector; got none")
        raw = {}
        for l in self.layers:
            missing = [o for o in others if l not in o.directions]
            if missing:
                raise SteerlensError(f"cannot remove the span: {missing[0]!r} has no layer {l}")
            q, _ = torch.linalg.qr(torch.stack([o.directions[l].double() for o in others], 1))
            d = self.directions[l].double()
            d = d - q @ (q.T @ d)
            if float(d.norm()) < 1e-9:
                raise SteerlensError(
                    f"{self!r} lies in the span of the other vectors at layer {l}; nothing is left after purifying"
                )
            raw[l] = (d / d.norm() * self.raw_norms.get(l, 1.0)).float()
        return self._with(raw, f"{self.method}|purified(all)")

    @classmethod
    def from_directions(
        cls,
        raw: Mapping[int, Tensor],
        like: SteeringVector | None = None,
        model: Model | None = None,
        *,
        method: str | None = None,
    ) -> SteeringVector:
        """A vector from raw per-layer directions (any norm; the norms become ``raw_norms``).

        Metadata (model id, site, settings, residual norms of the layers kept) comes from ``like``; without it,
        ``model`` gives the model id and d_model (no residual norms: use units "raw" or "vector"). With both,
        the result is checked against ``model``. ``method`` defaults to ``like``'s, else "custom".

        Example:
            >>> mixed = SteeringVector.from_directions({6: 0.7 * a + 0.3 * b}, like=vec, method="mix")
        """
        if like is None:
            if model is None:
                raise SteerlensError("from_directions needs like= (a vector to copy metadata from) or model=")
            d_model = model.cfg.d_model
            like = cls({l: torch.ones(d_model) for l in raw}, model.name, d_model, method="custom")
        out = like._with(dict(raw), method=like.method if method is None else method)
        if model is not None:
            out.check_model(model)
        return out

    def _with(self, raw: dict[int, Tensor], method: str) -> SteeringVector:
        norms = {l: float(v.norm()) for l, v in raw.items()}
        return dataclasses.replace(
            self,
            directions={l: v / max(norms[l], 1e-30) for l, v in raw.items()},
            raw_norms=norms,
            method=method,
            resid_norms={l: x for l, x in self.resid_norms.items() if l in raw},
        )

    def random_like(self, seed: int) -> SteeringVector:
        """Control: random unit directions with the same layers, raw and residual norms (seeded)."""
        g = torch.Generator().manual_seed(seed)
        dirs = {l: torch.randn(self.d_model, generator=g) for l in self.layers}
        return dataclasses.replace(
            self, directions={l: v / v.norm() for l, v in dirs.items()}, method=f"random(seed={seed})"
        )

    # ---- files --------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_id": self.model_id,
            "d_model": self.d_model,
            "site": self.site_kind,  # the file key stays "site" (files written before the rename load)
            "method": self.method,
            "raw_norms": {str(k): v for k, v in self.raw_norms.items()},
            "resid_norms": {str(k): v for k, v in self.resid_norms.items()},
            "dataset_hash": self.dataset_hash,
            "settings": self.settings,
        }

    def save(self, path: str | Path) -> Path:
        """Write safetensors (``direction.{layer}`` tensors, JSON metadata in the header), atomically."""
        from safetensors.torch import save_file

        tensors = {
            f"direction.{l}": v.detach().float().contiguous().cpu() for l, v in self.directions.items()
        }
        meta = {"steerlens": json.dumps(self.metadata())}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> SteeringVector:
        """Read a vector saved by ``save``; with ``model``, also check it fits (d_model, layers, model id)."""
        from safetensors import safe_open

        path = Path(path)
        if path.suffix == ".gguf":
            raise SteerlensError(f"{path} is a GGUF file; use SteeringVector.from_gguf(path, model)")
        with (
            reading(path, "steerlens vector (safetensors)", REBUILD_HINT),
            safe_open(str(path), framework="pt") as f,
        ):
            raw_meta = (f.metadata() or {}).get("steerlens")
            if raw_meta is None:
                raise SteerlensError(f"{path} is a safetensors file without steerlens vector metadata")
            meta = json.loads(raw_meta)
            dirs = {int(k.split(".")[1]): f.get_tensor(k) for k in f.keys() if k.startswith("direction.")}  # noqa: SIM118
        if meta.get("format") != FORMAT:
            raise SteerlensError(f"{path}: unknown vector format {meta.get('format')!r}, expected {FORMAT!r}")
        vec = cls(
            directions=dirs,
            model_id=meta["model_id"],
            d_model=meta["d_model"],
            site_kind=meta["site"],
            method=meta["method"],
            raw_norms={int(k): v for k, v in meta["raw_norms"].items()},
            resid_norms={int(k): v for k, v in meta["resid_norms"].items()},
            dataset_hash=meta["dataset_hash"],
            settings=meta["settings"],
        )
        if model is not None:
            vec.check_model(model)
        return vec

    def to_gguf(
        self, path: str | Path, alpha: float = 1.0, units: Units = "vector", model_hint: str = ""
    ) -> Path:
        """Export as a llama.cpp control vector (``steering.gguf.write_control_vector``)."""
        from .gguf import write_control_vector

        return write_control_vector(self, path, alpha, units, model_hint)

    @classmethod
    def from_gguf(
        cls, path: str | Path, model: Model | None = None, model_id: str | None = None
    ) -> SteeringVector:
        """Import a llama.cpp / repeng control vector (``steering.gguf.read_control_vector``)."""
        from .gguf import read_control_vector

        return read_control_vector(path, model, model_id)
