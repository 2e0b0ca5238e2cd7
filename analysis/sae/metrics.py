"""How good an SAE is on real text: explained variance (with sae-lens' own calculator) against a random-decoder
baseline, L0, dead features, and the CE-loss / KL increase when its reconstruction is spliced into the model
(``steering.sae.splice_sae``), with zero-ablation of the site as the reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Self

import pandas as pd
import plotly.graph_objects as go
import torch
from sae_lens import SAE
from sae_lens.evals import ExplainedVarianceCalculator
from torch import Tensor

from steerlens.figures import new_figure
from steerlens.model import Model
from steerlens.steering.sae import splice_sae

from ..corpus import corpus_windows


@dataclass(frozen=True)
class SAEMetrics:
    """Reconstruction and downstream numbers of one SAE on ``n_tokens`` evaluation tokens.

    ``explained_variance``: 1 - E|x - x_hat|^2 / Var(x) over the evaluated positions (sae-lens'
    ``ExplainedVarianceCalculator``); ``explained_variance_random``: the same with the decoder rows replaced by
    random directions of the same norms (same codes), the baseline any real dictionary must beat.
    ``l0``: mean active features per token; ``dead_fraction``: features that never fired on these tokens.
    CE losses are mean next-token losses (nats) over predictions from spliced positions; KL is
    KL(clean || edited) of the next-token distributions, mean per token.
    """

    explained_variance: float
    explained_variance_random: float
    l0: float
    dead_fraction: float
    ce_clean: float
    ce_spliced: float
    ce_zero: float
    kl_spliced: float
    kl_zero: float
    n_tokens: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ce_increase(self) -> float:
        return self.ce_spliced - self.ce_clean

    @property
    def ce_increase_zero(self) -> float:
        return self.ce_zero - self.ce_clean

    @property
    def ce_loss_score(self) -> float:
        """Fraction of the zero-ablation CE increase the SAE recovers (1 = perfect, sae-lens' definition)."""
        return (self.ce_zero - self.ce_spliced) / (self.ce_zero - self.ce_clean)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(
            ce_increase=self.ce_increase,
            ce_increase_zero=self.ce_increase_zero,
            ce_loss_score=self.ce_loss_score,
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{k: v for k, v in self.to_dict().items() if k != "settings"}])

    def figure(self) -> go.Figure:
        """CE loss: clean, SAE spliced in, site zero-ablated."""
        fig = new_figure(
            f"CE loss with the SAE spliced in ({self.settings.get('site', '')}, {self.n_tokens} tokens)",
            "condition",
            "next-token CE (nats)",
        )
        fig.add_bar(
            x=["clean", "SAE reconstruction", "zero ablation"],
            y=[self.ce_clean, self.ce_spliced, self.ce_zero],
        )
        return fig


@torch.no_grad()
def evaluate_sae(
    model: Model,
    sae: SAE[Any],
    tokens: Tensor | None = None,
    *,
    site: str | None = None,
    skip: int = 1,
    batch_size: int = 8,
    seed: int = 0,
) -> SAEMetrics:
    """Explained variance, L0, dead features and CE / KL increase of ``sae`` on ``tokens``.

    Args:
        model: the model the SAE reads.
        sae: an SAE that fits it (checked against its site).
        tokens: ``[windows, seq]`` token ids (default: 24 windows of 64 tokens of steerlens' own paragraphs).
        site: the SAE's site if it records none.
        skip: positions left out at the start of each window (the attention sink), as in training.
        batch_size: windows per forward.
        seed: seed of the random-decoder baseline.

    Example:
        >>> m = evaluate_sae(model, sae)
        >>> m.explained_variance, m.ce_increase, m.ce_increase_zero
    """
    ids = corpus_windows(model, 24, 64) if tokens is None else tokens
    rec = _Recorder(sae, seed)
    sums = torch.zeros(5, dtype=torch.float64)  # ce clean, spliced, zero; kl spliced, zero
    n = 0
    for i in range(0, len(ids), batch_size):
        batch = ids[i : i + batch_size].to(model.device)
        clean = _logits(model, batch)
        with splice_sae(model, sae, site=site, skip=skip, observe=rec):
            spliced = _logits(model, batch)
        with splice_sae(model, sae, "zero", site=site, skip=skip):
            zero = _logits(model, batch)
        target = batch[:, skip + 1 :]
        parts = [clean, spliced, zero]
        ce = [_ce(lg[:, skip:-1], target) for lg in parts]
        kl = [_kl(clean[:, skip:-1], lg[:, skip:-1]) for lg in (spliced, zero)]
        sums += torch.tensor([float(v.sum()) for v in ce + kl], dtype=torch.float64)
        n += target.numel()
    ce_c, ce_s, ce_z, kl_s, kl_z = (sums / max(n, 1)).tolist()
    settings = {
        "site": sae.cfg.metadata.hook_name,
        "skip": skip,
        "windows": len(ids),
        "seq": ids.shape[1],
        "seed": seed,
    }
    return SAEMetrics(
        rec.ev.compute(), rec.ev_rand.compute(), rec.active / max(rec.rows, 1), 1 - float(rec.fired.float().mean()),
        ce_c, ce_s, ce_z, kl_s, kl_z, n, settings,
    )  # fmt: skip


class _Recorder:
    """Explained variance (sae-lens' calculator) of the SAE and of a random decoder with the same row norms,
    L0 and which features fired, accumulated over the spliced forwards."""

    def __init__(self, sae: SAE[Any], seed: int):
        w_dec = sae.W_dec.detach()
        w = torch.randn(w_dec.shape, generator=torch.Generator().manual_seed(seed)).to(w_dec)
        self.w_rand = w * (w_dec.norm(dim=-1, keepdim=True) / w.norm(dim=-1, keepdim=True))
        self.b_dec = sae.b_dec.detach()
        self.ev, self.ev_rand = ExplainedVarianceCalculator(), ExplainedVarianceCalculator()
        self.fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
        self.active, self.rows = 0.0, 0

    def __call__(self, x: Tensor, acts: Tensor, x_hat: Tensor) -> None:
        self.ev.add_batch(x_hat.float(), x.float())
        self.ev_rand.add_batch((acts @ self.w_rand + self.b_dec).float(), x.float())
        active = acts > 0
        self.fired.logical_or_(active.any(0).cpu())
        self.active += float(active.sum())
        self.rows += len(acts)


@torch.no_grad()
def _logits(model: Model, ids: Tensor) -> Tensor:
    model.new_sequence()
    return model.hf(ids, use_cache=False).logits.float()


def _ce(logits: Tensor, target: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")


def _kl(clean: Tensor, edited: Tensor) -> Tensor:
    p = clean.log_softmax(-1)
    return (p.exp() * (p - edited.log_softmax(-1))).sum(-1)
