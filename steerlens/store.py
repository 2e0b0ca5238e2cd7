"""``ActivationStore``: activations as sharded safetensors plus a JSON manifest, read through memory maps.

Layout of a store directory::

    manifest.json               model, sites, positions, dtype, dataset hash, committed shards
    shard-00000.safetensors     one tensor per site [rows, *shape], plus "example" and "position" [rows]

A shard is written to a temporary file and renamed, then the manifest is rewritten atomically: a killed
collection loses at most the shard in flight and resumes exactly after the last committed one.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from safetensors.torch import save_file
from torch import Tensor

from .errors import EmptyInput, SteerlensError, StoreMismatch
from .files import atomic_write, read_json, reading, write_json

if TYPE_CHECKING:
    from .model import Model

FORMAT = "steerlens.activations/1"
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def mmap_safetensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file as zero-copy views of a private memory map (pages load on touch)."""
    fix = "collect into a fresh path, or pass overwrite=True to collect() to rebuild the store"
    with reading(path, "activation-store shard (safetensors)", fix):
        return _mmap_safetensors(path)


def _mmap_safetensors(path: str | Path) -> dict[str, Tensor]:
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    (header_len,) = struct.unpack("<Q", mm[:8])
    header = json.loads(mm[8 : 8 + header_len])
    base = 8 + header_len
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        if base + end > len(mm):
            raise SteerlensError(
                f"{path} is truncated: tensor {name!r} ends at byte {base + end} of {len(mm)}"
            )
        flat = (
            torch.frombuffer(mm, dtype=dtype, count=count, offset=base + start)
            if count
            else torch.empty(0, dtype=dtype)
        )
        out[name] = flat.reshape(info["shape"])
    return out


class ActivationStore:
    """Read access to a collected store (``store["blocks.3.hook_resid_post"]`` -> ``[rows, d_model]``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.exists():
            raise SteerlensError(
                f"{self.path} is not an activation store (no manifest.json); create one with collect()"
            )
        self.manifest: dict[str, Any] = read_json(mf)
        if self.manifest.get("format") != FORMAT:
            raise SteerlensError(f"{mf} has format {self.manifest.get('format')!r}, expected {FORMAT!r}")

    # ---- facts --------------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def dataset_hash(self) -> str:
        return self.manifest["dataset_hash"]

    def __len__(self) -> int:
        return sum(s["rows"] for s in self.manifest["shards"])

    def __repr__(self) -> str:
        state = "complete" if self.complete else "partial"
        return f"ActivationStore({str(self.path)!r}, model={self.model!r}, rows={len(self)}, sites={len(self.sites)}, {state})"

    def check_model(self, model: Model) -> None:
        """Raise ``StoreMismatch`` unless this store was collected from ``model`` (same id and d_model)."""
        if self.model != model.name or self.manifest["d_model"] != model.cfg.d_model:
            raise StoreMismatch(
                f"store {self.path} holds activations of {self.model!r} (d_model {self.manifest['d_model']}), "
                f"not of {model.name!r} (d_model {model.cfg.d_model}); collect again with this model"
            )

    # ---- reads --------------------------------------------------------------------------------------
    def _shards(self) -> Iterator[dict[str, Tensor]]:
        for s in self.manifest["shards"]:
            yield mmap_safetensors(self.path / s["file"])

    def _check_site(self, site: str) -> None:
        if site not in self.manifest["sites"]:
            raise SteerlensError(f"site {site!r} is not in this store; it holds {self.sites}")

    def __getitem__(self, site: str) -> Float[Tensor, " rows *shape"]:
        """All rows of one site, concatenated (use ``iter_batches`` to stay within a RAM budget)."""
        self._check_site(site)
        parts = [t[site] for t in self._shards()]
        return torch.cat(parts) if parts else torch.empty(0, *self.manifest["site_shapes"][site])

    def iter_batches(self, site: str, rows: int = 4096) -> Iterator[Float[Tensor, " batch *shape"]]:
        """Stream a site in chunks of at most ``rows`` rows, touching one memory-mapped shard at a time."""
        self._check_site(site)
        for t in self._shards():
            x = t[site]
            for i in range(0, len(x), rows):
                yield x[i : i + rows]

    @property
    def example(self) -> Int[Tensor, " rows"]:
        """Index of the input example each row came from."""
        return (
            torch.cat([t["example"] for t in self._shards()])
            if self.manifest["shards"]
            else torch.empty(0, dtype=torch.long)
        )

    @property
    def position(self) -> Int[Tensor, " rows"]:
        """Token position of each row within its example."""
        return (
            torch.cat([t["position"] for t in self._shards()])
            if self.manifest["shards"]
            else torch.empty(0, dtype=torch.long)
        )

    def pooled(self, site: str, how: str = "mean") -> Float[Tensor, " examples *shape"]:
        """One row per input example: the mean (or the last) of its kept positions. Examples with no kept
        position raise, naming them."""
        if how not in ("mean", "last"):
            raise SteerlensError(f"how={how!r}: expected 'mean' or 'last'")
        n = int(self.manifest["n_examples"])
        x, ex, pos = self[site].double(), self.example, self.position
        counts = torch.bincount(ex, minlength=n)
        if (counts == 0).any():
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise EmptyInput(f"examples {missing[:10]} have no rows at {site}; check their spans / positions")
        if how == "mean":
            out = torch.zeros((n, *x.shape[1:]), dtype=torch.float64).index_add_(0, ex, x)
            return (out / counts.reshape(-1, *[1] * (x.dim() - 1))).float()
        top = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, ex, pos, "amax")
        rows = torch.nonzero(pos == top[ex]).flatten()  # one row per example: its largest position
        return x[rows[torch.argsort(ex[rows])]].float()

    def mean(self, site: str) -> Float[Tensor, "*shape"]:
        """Mean over all rows, streamed in float64 so RAM stays at one chunk."""
        total, n = None, 0
        for x in self.iter_batches(site):
            s = x.double().sum(0)
            total = s if total is None else total + s
            n += len(x)
        if total is None or n == 0:
            raise SteerlensError(f"store {self.path} has no rows for {site!r}")
        return (total / n).float()

    # ---- writes (used by collect) ------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, manifest: dict[str, Any]) -> ActivationStore:
        write_json(path / "manifest.json", {"format": FORMAT, **manifest, "shards": [], "complete": False})
        return cls(path)

    @property
    def next_example(self) -> int:
        """First example not yet committed to a shard (where a resumed collection starts)."""
        shards = self.manifest["shards"]
        return shards[-1]["examples"][1] if shards else 0

    def append_shard(self, tensors: dict[str, Tensor], examples: tuple[int, int]) -> None:
        """Commit rows for examples ``[start, end)``: shard file first, then the manifest that names it."""
        if examples[0] != self.next_example:
            raise SteerlensError(f"shard starts at example {examples[0]}, store expects {self.next_example}")
        name = f"shard-{len(self.manifest['shards']):05d}.safetensors"
        contiguous = {k: v.contiguous() for k, v in tensors.items()}
        atomic_write(self.path / name, lambda tmp: save_file(contiguous, str(tmp)))
        rows = len(tensors["example"])
        self.manifest["shards"].append({"file": name, "examples": list(examples), "rows": rows})
        write_json(self.path / "manifest.json", self.manifest)

    def mark_complete(self) -> None:
        self.manifest["complete"] = True
        write_json(self.path / "manifest.json", self.manifest)
