"""The SAE study: train an SAE on a store of docstring activations (``train_sae``), measure it
(``evaluate_sae``), and read steering vectors through it (``vector_features``): vector files you pass (the
critique vector, say) and the five Big Five trait vectors built at the SAE's layer, each beside a random
direction of equal norm. ``steerlens sae`` runs it; a rerun reuses the store and the trained SAE.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import plotly.graph_objects as go
from safetensors.torch import load_file, save_file

from steerlens.config import StudyConfig, SubParsers
from steerlens.errors import SteerlensError
from steerlens.files import read_json, write_json
from steerlens.model import Model
from steerlens.progress import Stages
from steerlens.steering import SteeringVector

from ..report import Section
from ..study import add_study_command
from .data import sae_store, text_windows
from .features import DENSE, VectorFeatures, read_vectors
from .train import Architecture, TrainedSAE, train_sae

PARTS = ("cosine", "delta", "control_cosine", "control_delta", "density")
TITLE = "SAE features: a sae-lens SAE trained here, and steering vectors read through it"


@dataclass(frozen=True)
class SAEConfig(StudyConfig):
    """Settings of the SAE study.

    layer: resid_post layer of the SAE (default: the middle layer)
    architecture: sae-lens architecture: "topk", "jumprelu" or "standard" (L1)
    expansion: dictionary size as a multiple of d_model
    k: active features per token (TopK)
    sparsity: L0 (JumpReLU) or L1 (standard) coefficient; default per architecture
    tokens: docstring tokens collected into the store (position 0 of each window left out)
    store: an existing store to reuse instead of <out>/store (another run's, e.g. to sweep SAE settings
        without collecting again); it must hold these tokens at this site, or it is refused
    seq_len: tokens per window
    train_samples: activation rows trained on (0: one pass over the store)
    batch_size: rows per training step
    lr: Adam learning rate
    seed: seed of the data order, the initialisation and the random controls
    vectors: steering-vector files (.safetensors) to read through the SAE, e.g. a critique run's vector
    traits: also build the Big Five trait vectors at the SAE's layer and read them
    alpha: how much of each vector (in "vector" units) is added for the encoder change
    top_k: top features reported per vector
    """

    layer: int | None = None
    architecture: Architecture = "topk"
    expansion: int = 16
    k: int = 32
    sparsity: float | None = None
    tokens: int = 2_000_000
    store: str = ""
    seq_len: int = 128
    train_samples: int = 0
    batch_size: int = 512
    lr: float = 2e-3
    seed: int = 0
    vectors: tuple[str, ...] = ()
    traits: bool = True
    alpha: float = 1.0
    top_k: int = 10

    QUICK: ClassVar[dict[str, Any]] = dict(
        expansion=2, k=16, tokens=16_384, train_samples=65_536, batch_size=256, lr=4e-3, traits=False
    )


@dataclass(frozen=True)
class SAEStudy:
    """A trained SAE with its metrics, and the steering vectors read through it."""

    trained: TrainedSAE
    features: dict[str, VectorFeatures]
    settings: dict[str, Any] = field(default_factory=dict)
    config: SAEConfig = field(default_factory=SAEConfig)

    def summary(self) -> dict[str, Any]:
        m = self.trained.metrics
        out: dict[str, Any] = {"sae": {**self.trained.settings, **(m.to_dict() if m else {})}}
        out["sae"].pop("settings", None)
        for name, vf in self.features.items():
            out[name] = vf.summary(self.config.top_k)
        return out

    def figures(self) -> dict[str, go.Figure]:
        figs = {f"sae_features_{_slug(n)}": vf.figure(self.config.top_k) for n, vf in self.features.items()}
        if self.trained.metrics is not None:
            figs["sae_ce_loss"] = self.trained.metrics.figure()
        return figs

    def sections(self) -> list[Section]:
        sec = Section("sae", TITLE)
        s = self.trained.settings
        sec.text = (
            f"A {s['architecture']} SAE ({s['d_sae']} features, sae-lens' trainer) on {s['site']}, trained on "
            f"{s['train_samples']} activation rows of docstring text. Explained variance is set against random "
            "decoder rows of the same norms; CE loss with the reconstruction spliced in against zero-ablating the "
            "site. Each steering vector is read through the SAE by cosine with decoder rows and by the encoder's "
            "change on real activations, beside a random direction of equal norm."
        )
        m = self.trained.metrics
        if m is not None:
            for key in ("explained_variance", "explained_variance_random", "l0"):
                sec.numbers[key.replace("_", " ")] = getattr(m, key)
            sec.numbers[f"not fired on the {m.n_tokens} eval tokens"] = m.dead_fraction
            sec.numbers["CE increase (SAE / zero ablation)"] = (
                f"{m.ce_increase:.3f} / {m.ce_increase_zero:.3f}"
            )
        t = self.trained.trainer
        if t.get("num_dead_features") is not None and t.get("dead_window_rows"):
            sec.numbers[f"dead in training (no firing in its last {t['dead_window_rows']} rows)"] = (
                t["num_dead_features"] / s["d_sae"]
            )
        rows = []
        for name, vf in self.features.items():
            sm = vf.summary(3)
            rows.append(
                {"vector": name, "top features (cosine)": _fmt(sm["top_cosine"]),
                 "max cosine (random)": f"{sm['max_cosine']:.3f} ({sm['control_max_cosine']:.3f})",
                 "top features (encoder change)": _fmt(sm["top_delta"]),
                 "max change (random)": f"{sm['max_delta']:.3f} ({sm['control_max_delta']:.3f})"}
            )  # fmt: skip
        if rows:
            sec.tables.append(
                ("Steering vectors through the SAE, beside a random direction of equal norm", rows)
            )
        first = next(iter(self.features.values()), None)
        dense = first.dense_features() if first is not None else []
        if dense:  # the same rows and SAE for every vector, so the same dense features
            sec.tables.append(
                (f"Dense features (on > {DENSE:.0%} of rows), left out of the encoder-change ranking",
                 [{"feature": f"f{d['feature']}", "active on": f"{d['density']:.2f}"}
                  | {f"change ({n})": f"{vf.delta[d['feature']]:.3f} ({vf.control_delta[d['feature']]:.3f})"
                     for n, vf in self.features.items()} for d in dense])
            )  # fmt: skip
        sec.figures.update(self.figures())
        return [sec]

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "trained": self.trained.to_dict(),
            "features": {n: vf.to_dict() for n, vf in self.features.items()},
            "config": self.config.to_dict(),
        }

    def save(self, out: str | Path, formats: Sequence[str] = ("html",)) -> Path:
        """``sae_study.json``, ``features.safetensors`` (per-feature scores) and the figures; the SAE itself is
        in ``sae/`` (sae-lens format), written by ``train_sae``."""
        from steerlens.figures import save_figures

        out_p = Path(out)
        out_p.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{n}.{k}": t.contiguous() for n, vf in self.features.items() for k, t in vf.tensors().items()
        }
        if tensors:
            save_file(tensors, str(out_p / "features.safetensors"))
        write_json(out_p / "sae_study.json", self.to_dict())
        save_figures(self.figures(), out_p, formats=formats)
        return out_p

    @classmethod
    def load(cls, out: str | Path, model: Model | None = None) -> Self:
        out_p = Path(out)
        d = read_json(out_p / "sae_study.json")
        trained = TrainedSAE.load(out_p, device=str(model.device) if model is not None else "cpu")
        tensors = load_file(str(out_p / "features.safetensors")) if d["features"] else {}
        feats = {
            n: VectorFeatures.from_parts(fd, {k: tensors[f"{n}.{k}"] for k in PARTS if f"{n}.{k}" in tensors})
            for n, fd in d["features"].items()
        }  # fmt: skip
        return cls(trained, feats, d["settings"], SAEConfig.from_dict(d["config"]))


def run(model: Model, cfg: SAEConfig, out: str | Path, *, progress: bool = True) -> SAEStudy:
    """Collect, train, evaluate, and read the configured vectors through the SAE.

    Args:
        model: the model.
        cfg: the settings (``SAEConfig.quick()`` for a smoke run).
        out: the run directory (store, checkpoints, SAE, results); a rerun resumes / reuses.
        progress: stage lines and progress bars.

    Example:
        >>> study = run(steerlens.load("smollm2-135m-instruct"), SAEConfig.quick(), "runs/sae")
        >>> study.trained.metrics.explained_variance
    """
    out_p = Path(out)
    layer = model.cfg.n_layers // 2 if cfg.layer is None else cfg.layer
    site = f"blocks.{layer}.hook_resid_post"
    say = Stages("sae", 3, progress)
    path = Path(cfg.store) if cfg.store else out_p / "store"
    say.stage(f"store: {cfg.tokens} docstring tokens at {site} in {path}")
    store = sae_store(model, site, text_windows(model, cfg.tokens, cfg.seq_len), path, progress=progress)
    say.stage(f"train a {cfg.architecture} SAE, {cfg.expansion}x{model.cfg.d_model} features")
    trained = train_sae(
        store, site, out_p, model=model, architecture=cfg.architecture, expansion=cfg.expansion, k=cfg.k,
        sparsity=cfg.sparsity, train_samples=cfg.train_samples or None, batch_size=cfg.batch_size,
        lr=cfg.lr, seed=cfg.seed, progress=progress,
    )  # fmt: skip
    say.stage("steering vectors through the SAE")
    vectors = _vectors(model, cfg, layer)
    feats = read_vectors(model, trained.sae, vectors, store, alpha=cfg.alpha, k=cfg.top_k, seed=cfg.seed)
    settings = {"model": model.name, "site": site, "vectors": list(vectors)}
    study = SAEStudy(trained, feats, settings, cfg)
    study.save(out_p)
    return study


def _vectors(model: Model, cfg: SAEConfig, layer: int) -> dict[str, SteeringVector]:
    out: dict[str, SteeringVector] = {}
    paths = [Path(p) for p in cfg.vectors]
    stems = [p.stem for p in paths]
    for p in paths:  # two runs' critique_vector.safetensors are told apart by their directory
        name = p.stem if stems.count(p.stem) == 1 else f"{p.parent.name}/{p.stem}"
        if name in out:
            raise SteerlensError(f"--vectors names {p} twice; pass each file once")
        v = SteeringVector.load(p, model)
        if layer not in v.directions:
            raise SteerlensError(
                f"{p} has layers {v.layers}, not the SAE's layer {layer}; pass --layer to match"
            )
        out[name] = v.select([layer])
    if cfg.traits:
        from ..personality import trait_activations, trait_vector

        acts = trait_activations(model)
        for t, a in acts.items():
            out[t] = trait_vector(model, a, range(len(a.high)), "mean", cfg.seed).select([layer])
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _fmt(top: list[tuple[int, float]]) -> str:
    return ", ".join(f"f{f} ({v:.2f})" for f, v in top)


def register(sub: SubParsers) -> None:
    """``steerlens sae``: registered through the ``steerlens.commands`` entry point."""

    def main(model: Model, cfg: SAEConfig, out: Path, args: argparse.Namespace) -> SAEStudy:
        return run(model, cfg, out)

    add_study_command(
        sub,
        "sae",
        "train a sae-lens SAE on a steerlens store, evaluate it, read steering vectors through its features",
        SAEConfig,
        main,
        model="smollm2-135m-instruct",
    )
