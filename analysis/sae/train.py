"""``train_sae``: a sae-lens SAE (TopK, JumpReLU or standard L1) trained by sae-lens' own trainer on a steerlens
activation store streamed from disk, resumable, returned as a real ``sae_lens.SAE`` with its metrics.

Layout of ``out``::

    store/                      the activation store (when train_sae collected it) + tokens.safetensors
    checkpoints/<samples>/      sae-lens checkpoints (cfg.json, sae_weights.safetensors, sparsity.safetensors,
                                activation_scaler.json) + trainer_state.safetensors/.json (no pickle)
    sae/                        the final inference SAE (SAE.load_from_disk reads it) + sparsity.safetensors
    train.json                  the settings, how long it took, and the metrics
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, get_args

import torch
from sae_lens import (
    SAE,
    JumpReLUTrainingSAEConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.sae import SAEMetadata, TrainingSAEConfig
from safetensors.torch import save_file

from steerlens.errors import SteerlensError, StoreMismatch
from steerlens.files import read_json, write_json
from steerlens.model import Model
from steerlens.store import ActivationStore

from .data import sae_store, text_windows
from .metrics import SAEMetrics, evaluate_sae
from .trainer import SafeTrainer, StoreBatches, latest_checkpoint, rows_served

Architecture = Literal["topk", "jumprelu", "standard"]
ARCHITECTURES: tuple[Architecture, ...] = get_args(Architecture)
# Sparsity coefficient per architecture when none is given (activations normalised to norm sqrt(d_in)).
DEFAULT_SPARSITY = {"jumprelu": 2.0, "standard": 5.0}


@dataclass(frozen=True)
class TrainedSAE:
    """A trained SAE, where it lives, the settings that made it, and its metrics (``None`` without a model).

    ``sae`` is the inference ``sae_lens.SAE`` loaded back from ``path`` by sae-lens itself.
    """

    sae: SAE[Any]
    path: Path
    settings: dict[str, Any]
    seconds: float
    resumed_from: int = 0  # training samples already done by an earlier, interrupted run
    metrics: SAEMetrics | None = None
    trainer: dict[str, Any] = field(default_factory=dict)  # what sae-lens recorded (l0, dead features)

    @property
    def tokens_per_s(self) -> float:
        done = self.settings["train_samples"] - self.resumed_from
        return done / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "settings": self.settings,
            "seconds": self.seconds,
            "resumed_from": self.resumed_from,
            "tokens_per_s": self.tokens_per_s,
            "trainer": self.trainer,
            "metrics": self.metrics.to_dict() if self.metrics else None,
        }

    @classmethod
    def load(cls, out: str | Path, device: str = "cpu") -> Self:
        """A finished run of ``train_sae`` (its ``train.json`` and ``sae/``)."""
        d = read_json(Path(out) / "train.json")
        path = Path(out) / "sae"  # not d["path"]: a run directory may have moved
        sae = SAE.load_from_disk(path, device=device)
        metrics = SAEMetrics.from_dict(d["metrics"]) if d["metrics"] else None
        return cls(sae, path, d["settings"], d["seconds"], d["resumed_from"], metrics, d["trainer"])


def training_config(
    architecture: Architecture, d_in: int, d_sae: int, k: int, sparsity: float | None, metadata: SAEMetadata
) -> TrainingSAEConfig:
    """sae-lens' training config dataclass for ``architecture`` (activations normalised to norm sqrt(d_in)
    during training; sae-lens folds the factor into the weights at the end)."""
    common: dict[str, Any] = dict(
        d_in=d_in, d_sae=d_sae, normalize_activations="expected_average_only_in", metadata=metadata
    )
    if architecture == "topk":
        return TopKTrainingSAEConfig(k=k, **common)
    coef = DEFAULT_SPARSITY[architecture] if sparsity is None else sparsity
    if architecture == "jumprelu":
        return JumpReLUTrainingSAEConfig(l0_coefficient=coef, **common)
    if architecture == "standard":
        return StandardTrainingSAEConfig(l1_coefficient=coef, **common)
    raise SteerlensError(f"architecture={architecture!r}: expected one of {ARCHITECTURES}")


def train_sae(
    source: ActivationStore | Model,
    site: str,
    out: str | Path,
    *,
    model: Model | None = None,
    architecture: Architecture = "topk",
    expansion: int = 8,
    k: int = 32,
    sparsity: float | None = None,
    train_samples: int | None = None,
    collect_tokens: int = 200_000,
    batch_size: int = 1024,
    lr: float = 3e-4,
    seed: int = 0,
    n_checkpoints: int = 4,
    eval_tokens: torch.Tensor | None = None,
    progress: bool = True,
) -> TrainedSAE:
    """Train a sae-lens SAE on activations at ``site`` with sae-lens' ``SAETrainer``, streaming the store.

    Why: no pretrained SAE exists offline for the embedded models; this trains one from a store in bounded RAM.

    Args:
        source: an ``ActivationStore`` holding ``site``, or a ``Model`` (then ``collect_tokens`` tokens of
            docstring text are collected into ``out/store`` first, position 0 left out).
        site: the hook site, e.g. "blocks.6.hook_resid_post".
        out: run directory; a killed run resumes from its last checkpoint, a finished one is loaded back.
        model: the model for the metrics (CE / KL with the SAE spliced in) when ``source`` is a store.
        architecture: "topk", "jumprelu" or "standard" (L1); ``k`` is TopK's L0, ``sparsity`` the
            JumpReLU L0 / standard L1 coefficient.
        expansion: d_sae = expansion * d_in.
        train_samples: activation rows to train on (default: one pass over the store; more loops over it).
        batch_size, lr, seed, n_checkpoints: trainer settings (``seed`` also orders the data).
        eval_tokens: token windows for the metrics (default: steerlens' own paragraphs, not the training text).
        progress: progress bars (collection and sae-lens' training bar).

    Example:
        >>> run = train_sae(model, "blocks.6.hook_resid_post", "runs/sae", expansion=4, k=16)
        >>> run.metrics.explained_variance, run.metrics.ce_increase, run.sae.cfg.d_sae
    """
    out = Path(out)
    store, model = _source(source, site, out, model, collect_tokens, progress)
    settings = _settings(
        store, site, architecture, expansion, k, sparsity, train_samples, batch_size, lr, seed
    )
    done = _finished(out, settings)
    if done is not None:
        return done
    t0 = time.perf_counter()
    trainer, resumed = _trainer(store, settings, out, n_checkpoints, progress)
    quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    with quiet, torch.enable_grad():
        trainer.fit()  # sae-lens' own progress bar (on stderr)
    seconds = time.perf_counter() - t0
    loaded, recorded = _save_final(trainer, out / "sae")
    metrics = evaluate_sae(model, loaded, eval_tokens, seed=seed) if model is not None else None
    run = TrainedSAE(loaded, out / "sae", settings, seconds, resumed, metrics, recorded)
    write_json(out / "train.json", run.to_dict())
    return run


def _finished(out: Path, settings: dict[str, Any]) -> TrainedSAE | None:
    """A finished run in ``out`` with these settings (None if there is none; an error if it differs)."""
    if not (out / "train.json").exists():
        return None
    done = TrainedSAE.load(out)
    if done.settings != settings:
        raise StoreMismatch(
            f"{out} holds an SAE trained with other settings ({_diff(done.settings, settings)}); "
            "use another out directory or delete this one"
        )
    return done


def _save_final(trainer: SafeTrainer, final: Path) -> tuple[SAE[Any], dict[str, Any]]:
    """The inference SAE in sae-lens' format (plus its feature sparsity), loaded back by sae-lens."""
    sae = trainer.sae
    sae.save_inference_model(final)
    save_file({"sparsity": trainer.log_feature_sparsity.contiguous()}, str(final / "sparsity.safetensors"))
    meta = sae.cfg.metadata
    recorded = {
        "l0": meta.l0,
        "num_dead_features": meta.num_dead_features,  # no firing in the last dead_window_rows rows
        "dead_window_rows": trainer.cfg.dead_feature_window * trainer.cfg.train_batch_size_samples,
        "steps": trainer.n_training_steps,
    }
    return SAE.load_from_disk(final, device="cpu").eval(), recorded


def _source(
    source: ActivationStore | Model, site: str, out: Path, model: Model | None, tokens: int, progress: bool
) -> tuple[ActivationStore, Model | None]:
    if isinstance(source, Model):
        windows = text_windows(source, tokens)
        return sae_store(source, site, windows, out / "store", progress=progress), source
    if not isinstance(source, ActivationStore):
        raise SteerlensError(f"train_sae takes an ActivationStore or a Model, got {type(source).__name__}")
    if not source.complete:
        raise StoreMismatch(f"store {source.path} is incomplete; run its collect() again to finish it first")
    if model is not None:
        source.check_model(model)
    return source, model


def _settings(
    store: ActivationStore,
    site: str,
    architecture: Architecture,
    expansion: int,
    k: int,
    sparsity: float | None,
    train_samples: int | None,
    batch_size: int,
    lr: float,
    seed: int,
) -> dict[str, Any]:
    if architecture not in ARCHITECTURES:
        raise SteerlensError(f"architecture={architecture!r}: expected one of {ARCHITECTURES}")
    if site not in store.sites:
        raise StoreMismatch(f"site {site!r} is not in store {store.path}; it holds {store.sites}")
    d_in = int(torch.tensor(store.manifest["site_shapes"][site]).prod())
    samples = len(store) if train_samples is None else train_samples
    if samples < batch_size:
        raise SteerlensError(
            f"train_samples={samples} is below one batch ({batch_size}); collect more tokens or lower batch_size"
        )
    return dict(
        model=store.model,
        site=site,
        store=str(store.path),
        store_rows=len(store),
        dataset_hash=store.dataset_hash,
        architecture=architecture,
        d_in=d_in,
        d_sae=expansion * d_in,
        k=k if architecture == "topk" else None,
        sparsity=None
        if architecture == "topk"
        else (DEFAULT_SPARSITY[architecture] if sparsity is None else sparsity),
        train_samples=samples,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )


def _trainer(
    store: ActivationStore, s: dict[str, Any], out: Path, n_checkpoints: int, progress: bool
) -> tuple[SafeTrainer, int]:
    """sae-lens' trainer on a fresh SAE, or on the last checkpoint's weights and state when one exists."""
    torch.manual_seed(s["seed"])
    meta = SAEMetadata(model_name=s["model"], hook_name=s["site"], dataset_path=s["store"])
    cfg = training_config(s["architecture"], s["d_in"], s["d_sae"], s["k"] or 0, s["sparsity"], meta)
    sae = TrainingSAE.from_dict(cfg.to_dict())
    steps = s["train_samples"] // s["batch_size"]
    tcfg = SAETrainerConfig(
        total_training_samples=s["train_samples"],
        train_batch_size_samples=s["batch_size"],
        lr=s["lr"],
        lr_end=s["lr"] / 10,
        lr_warm_up_steps=min(100, steps // 10),
        lr_decay_steps=steps // 5,
        dead_feature_window=max(10, min(1000, steps // 5)),
        feature_sampling_window=max(10, min(2000, steps // 2)),
        n_checkpoints=n_checkpoints,
        checkpoint_path=str(out / "checkpoints"),
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=max(1, min(100, steps // 10)),
    )
    last = latest_checkpoint(out / "checkpoints")
    start = rows_served(last) if last is not None else 0
    batches = StoreBatches(store, s["site"], s["batch_size"], s["seed"], start=start)
    trainer = SafeTrainer(cfg=tcfg, sae=sae, data_provider=batches)
    resumed = 0
    if last is not None:
        sae.load_weights_from_checkpoint(last)
        trainer.load_trainer_state(last)
        resumed = trainer.n_training_samples
    return trainer, resumed


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    )
