"""sae-lens' own ``SAETrainer`` fed from a steerlens ``ActivationStore`` streamed shard by shard, with its
checkpoints kept pickle-free.

Why a subclass: ``SAETrainer`` saves its optimizer and counters with ``torch.save`` (a pickle); steerlens never
unpickles. ``SafeTrainer`` overrides exactly ``save_trainer_state`` / ``load_trainer_state`` to write the same
state as ``trainer_state.safetensors`` (tensors) + ``trainer_state.json`` (numbers); everything else in a
checkpoint directory is sae-lens' own (``cfg.json``, ``sae_weights.safetensors``, ``sparsity.safetensors``,
``activation_scaler.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from sae_lens import SAETrainer
from sae_lens.constants import ACTIVATION_SCALER_CFG_FILENAME
from safetensors.torch import load_file, save_file
from torch import Tensor

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.files import atomic_write, read_json, write_json
from steerlens.store import ActivationStore, mmap_safetensors

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"  # written last: its presence marks a complete checkpoint


class StoreBatches(Iterator[Tensor]):
    """Endless training batches of ``site`` rows from ``store``, one memory-mapped shard at a time (RAM stays at
    one shard plus one batch, whatever the store's size).

    Each pass visits the shards in a seeded random order and each shard's rows in a seeded random order; rows
    left over at a shard's end open the next batch. ``rows_served`` counts rows handed out, so a resumed run
    starts exactly where the checkpoint stopped (``start``), skipping whole shards without reading them.
    """

    def __init__(self, store: ActivationStore, site: str, batch_size: int, seed: int, start: int = 0):
        if site not in store.sites:
            raise SteerlensError(f"site {site!r} is not in store {store.path}; it holds {store.sites}")
        self.files = [store.path / s["file"] for s in store.manifest["shards"] if s["rows"] > 0]
        self.rows = [s["rows"] for s in store.manifest["shards"] if s["rows"] > 0]
        if not self.files:
            raise EmptyInput(f"store {store.path} has no rows to train on")
        self.site, self.batch_size, self.seed = site, batch_size, seed
        self.rows_served = start
        self._it = self._batches(start)

    def __next__(self) -> Tensor:
        batch = next(self._it)
        self.rows_served += len(batch)
        return batch

    def _batches(self, start: int) -> Iterator[Float[Tensor, "batch d_in"]]:
        per_pass = sum(self.rows)
        epoch, skip = divmod(start, per_pass)
        carry: list[Tensor] = []
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            for i in torch.randperm(len(self.files), generator=g).tolist():
                perm = torch.randperm(self.rows[i], generator=g)
                if skip >= self.rows[i]:
                    skip -= self.rows[i]
                    continue
                x = mmap_safetensors(self.files[i])[self.site]
                x = x.reshape(len(x), -1)
                for j in range(skip, len(perm), self.batch_size):
                    part = x[perm[j : j + self.batch_size]].float()
                    if carry:
                        carry.append(part)
                        part = torch.cat(carry)
                        carry = []
                    if len(part) < self.batch_size:
                        carry = [part]
                        continue
                    yield part[: self.batch_size]
                    if len(part) > self.batch_size:
                        carry = [part[self.batch_size :]]
                skip = 0
            epoch += 1


class SafeTrainer(SAETrainer):
    """``SAETrainer`` whose trainer state is safetensors + JSON (never a pickle), and which records how many
    rows its ``StoreBatches`` provider has served, so a resumed run reads the same data stream on."""

    def save_trainer_state(self, checkpoint_path: Path) -> None:
        path = Path(checkpoint_path)
        path.mkdir(parents=True, exist_ok=True)
        opt = self.optimizer.state_dict()
        tensors = {
            "act_freq_scores": self.act_freq_scores,
            "n_forward_passes_since_fired": self.n_forward_passes_since_fired,
        }
        for pid, st in opt["state"].items():
            for name, value in st.items():
                tensors[f"optimizer.{pid}.{name}"] = torch.as_tensor(value)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(path / STATE_TENSORS, lambda tmp: save_file(tensors, str(tmp)))
        self.activation_scaler.save(str(path / ACTIVATION_SCALER_CFG_FILENAME))
        provider = self.data_provider
        state = {
            "param_groups": opt["param_groups"],
            "lr_scheduler": _plain(self.lr_scheduler.state_dict()),
            "n_training_samples": self.n_training_samples,
            "n_training_steps": self.n_training_steps,
            "n_frac_active_samples": self.n_frac_active_samples,
            "started_fine_tuning": self.started_fine_tuning,
            "coefficient_schedulers": {k: s.state_dict() for k, s in self.coefficient_schedulers.items()},
            "rows_served": getattr(provider, "rows_served", None),
        }
        write_json(path / STATE_JSON, state)

    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        path = Path(checkpoint_path)
        self.activation_scaler.load(path / ACTIVATION_SCALER_CFG_FILENAME)
        state = read_json(path / STATE_JSON)
        tensors = load_file(str(path / STATE_TENSORS), device=str(self.cfg.device))
        opt_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, pid, name = key.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = value.cpu() if name == "step" else value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.n_training_samples = state["n_training_samples"]
        self.n_training_steps = state["n_training_steps"]
        self.act_freq_scores = tensors["act_freq_scores"]
        self.n_forward_passes_since_fired = tensors["n_forward_passes_since_fired"]
        self.n_frac_active_samples = state["n_frac_active_samples"]
        self.started_fine_tuning = state["started_fine_tuning"]
        for name, s in state["coefficient_schedulers"].items():
            self.coefficient_schedulers[name].load_state_dict(s)
        done = self.n_training_samples
        self.checkpoint_thresholds = [t for t in list(self.checkpoint_thresholds) if t >= done]  # type: ignore[has-type]


def latest_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint (``trainer_state.json`` written) with the most training samples, if any."""
    if not directory.is_dir():
        return None
    done = [p for p in directory.iterdir() if p.name.isdigit() and (p / STATE_JSON).exists()]
    return max(done, key=lambda p: int(p.name)) if done else None


def rows_served(checkpoint: Path) -> int:
    """How many store rows the run had consumed at ``checkpoint``."""
    served = read_json(checkpoint / STATE_JSON).get("rows_served")
    if served is None:
        raise SteerlensError(f"{checkpoint} does not record rows_served; it was not written by train_sae")
    return int(served)


def _plain(obj: Any) -> Any:
    """A scheduler state dict as JSON (tuples become lists); refuse anything that is not plain data."""
    try:
        return json.loads(json.dumps(obj))
    except TypeError as e:
        raise SteerlensError(
            f"learning-rate scheduler state is not plain data ({e}); use a built-in schedule"
        ) from e
