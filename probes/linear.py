"""Linear probes: an L2 logistic fit, held-out evaluation per layer, and a shuffled-label control."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.figures import GREY, PALETTE, line_with_band, new_figure
from steerlens.stats import N_BOOT, auroc, bootstrap, brier, ece

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go


@dataclass(frozen=True)
class Logistic:
    """A fitted logistic probe on standardised features: ``p = sigmoid(((x - mu) / sd) @ w + b)``."""

    w: Float[Tensor, " d"]
    b: float
    mu: Float[Tensor, " d"]
    sd: Float[Tensor, " d"]

    def prob(self, x: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
        return torch.sigmoid(((x.double() - self.mu) / self.sd) @ self.w + self.b).float()

    def save(self, path: str | Path, **metadata: Any) -> Path:
        """safetensors (w, b, mu, sd) + JSON metadata, written atomically."""
        from safetensors.torch import save_file

        from steerlens.files import atomic_write

        tensors = {
            "w": self.w,
            "b": torch.tensor([self.b], dtype=torch.float64),
            "mu": self.mu,
            "sd": self.sd,
        }
        meta = {"format": "steerlens.logistic/1", **{k: json.dumps(v) for k, v in metadata.items()}}
        return atomic_write(
            path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), meta)
        )

    @classmethod
    def load(cls, path: str | Path) -> tuple[Logistic, dict[str, Any]]:
        """The probe and its metadata; refuses NaN/inf."""
        from safetensors import safe_open

        from steerlens.files import reading

        fix = "refit the probe (probes.linear.fit_logistic) and save it again"
        with reading(path, "steerlens probe (safetensors)", fix), safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "steerlens.logistic/1":
                raise SteerlensError(f"{path} is not a steerlens probe file (format {meta.get('format')!r})")
            t = {k: f.get_tensor(k) for k in ("w", "b", "mu", "sd")}
        if not all(torch.isfinite(v).all() for v in t.values()):
            raise SteerlensError(f"{path} holds NaN/inf values; refit the probe")
        extra = {k: json.loads(v) for k, v in meta.items() if k != "format"}
        return cls(t["w"], float(t["b"][0]), t["mu"], t["sd"]), extra

    @property
    def direction(self) -> Float[Tensor, " d"]:
        """The probe's decision normal in activation space (unit norm)."""
        d = self.w / self.sd
        return (d / d.norm()).float()


def fit_logistic(
    x: Float[Tensor, "n d"], y: Sequence[int] | Tensor, *, l2: float = 1e-2, steps: int = 200
) -> Logistic:
    """L2-regularised logistic regression by L-BFGS on z-scored features (float64, deterministic)."""
    yt = torch.as_tensor(y, dtype=torch.float64)
    if len(x) != len(yt):
        raise SteerlensError(f"{len(x)} feature rows but {len(yt)} labels")
    if len(yt) < 2 or yt.min() == yt.max():
        raise EmptyInput("a probe needs examples of both classes")
    xd = x.double()
    mu, sd = (
        xd.mean(0),
        xd.std(0, correction=0).clamp_min(1e-6),
    )  # population sd: duplicating rows changes nothing
    z = (xd - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, yt) + l2 * (w @ w) / 2
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return Logistic(w.detach(), float(b.detach()), mu, sd)


def group_split(groups: Sequence[Any], fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Row indices split by group (rows of one group, e.g. the clean and corrupted trace of one problem, never
    straddle two splits), in the given fractions of groups, seeded."""
    uniq = sorted(set(groups), key=str)
    rng = np.random.default_rng(seed)
    perm = [uniq[i] for i in rng.permutation(len(uniq))]
    bounds = np.cumsum([0, *[round(f * len(uniq)) for f in fractions[:-1]], len(uniq)])
    bounds[-1] = len(uniq)
    which = {g: k for k in range(len(fractions)) for g in perm[bounds[k] : bounds[k + 1]]}
    g_arr = np.array([which[g] for g in groups])
    return [np.flatnonzero(g_arr == k) for k in range(len(fractions))]


@dataclass(frozen=True)
class ProbeScore:
    """Held-out metrics of one probe (at one layer) and of its shuffled-label control."""

    layer: int
    auroc: float
    auroc_lo: float
    auroc_hi: float
    accuracy: float
    brier: float
    ece: float
    shuffled_auroc: float
    val_auroc: float
    n_train: int
    n_val: int
    n_test: int


@dataclass(frozen=True)
class LayerSweep:
    """Probe metrics per layer on a held-out test split; the layer is picked on a separate validation split."""

    scores: tuple[ProbeScore, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def best_layer(self) -> int:
        """The layer with the highest *validation* AUROC (never chosen on the test split)."""
        return max(self.scores, key=lambda s: (np.nan_to_num(s.val_auroc), -s.layer)).layer

    def score(self, layer: int) -> ProbeScore:
        for s in self.scores:
            if s.layer == layer:
                return s
        raise SteerlensError(f"layer {layer} not in the sweep ({[s.layer for s in self.scores]})")

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([asdict(s) for s in self.scores]).set_index("layer")

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "best_layer": self.best_layer,
            "scores": [asdict(s) for s in self.scores],
        }

    def figure(self) -> go.Figure:
        title = self.settings.get("title", "Probe AUROC per layer (held-out test split)")
        fig = new_figure(title, "layer", "AUROC", yaxis_range=[0.3, 1.02])
        layers = [s.layer for s in self.scores]
        line_with_band(
            fig,
            layers,
            [s.auroc for s in self.scores],
            [s.auroc_lo for s in self.scores],
            [s.auroc_hi for s in self.scores],
            "probe",
            PALETTE[0],
        )
        line_with_band(
            fig, layers, [s.shuffled_auroc for s in self.scores], None, None, "shuffled labels", GREY, "dot"
        )
        fig.add_vline(
            x=self.best_layer,
            line_dash="dash",
            line_color=PALETTE[3],
            annotation_text=f"chosen on validation: {self.best_layer}",
        )
        fig.add_hline(y=0.5, line_color="#bbb", line_width=1)
        return fig


def probe_layers(
    features: Mapping[int, Float[Tensor, "n d"]],
    labels: Sequence[int],
    groups: Sequence[Any],
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    l2: float = 1e-2,
    n_boot: int = N_BOOT,
    title: str | None = None,
) -> LayerSweep:
    """Fit a probe per layer on a train split, report validation and test metrics, and the same probe fitted
    on shuffled labels (control: its test AUROC should sit near 0.5). Splits are by ``groups``."""
    y = np.asarray(labels, dtype=np.int64)
    if not features:
        raise EmptyInput("no layers to probe")
    tr, va, te = group_split(list(groups), fractions, seed)
    for name, idx in (("train", tr), ("validation", va), ("test", te)):
        if len(set(y[idx])) < 2:
            raise EmptyInput(f"the {name} split has one class only ({len(idx)} rows); give more examples")
    g_te = [groups[i] for i in te]
    shuffled = y.copy()
    np.random.default_rng(seed + 1).shuffle(shuffled)
    scores = []
    for layer, x in sorted(features.items()):
        if len(x) != len(y):
            raise SteerlensError(f"layer {layer}: {len(x)} rows but {len(y)} labels")
        probe = fit_logistic(x[tr], y[tr], l2=l2)
        p_va = probe.prob(x[va]).numpy()
        p_te = probe.prob(x[te]).numpy()
        y_te = y[te]
        # resample problems, not rows: a problem's clean and corrupted trace are one unit
        ci = bootstrap(_auroc_at(p_te, y_te), len(te), n_boot=n_boot, seed=seed, groups=g_te)
        ctrl = fit_logistic(x[tr], shuffled[tr], l2=l2)
        scores.append(
            ProbeScore(
                layer=layer,
                auroc=auroc(p_te, y_te),
                auroc_lo=ci.lo,
                auroc_hi=ci.hi,
                accuracy=float(((p_te > 0.5) == y_te).mean()),
                brier=brier(p_te, y_te),
                ece=ece(p_te, y_te),
                shuffled_auroc=auroc(ctrl.prob(x[te]).numpy(), y_te),
                val_auroc=auroc(p_va, y[va]),
                n_train=len(tr),
                n_val=len(va),
                n_test=len(te),
            )
        )
    settings = dict(seed=seed, fractions=list(fractions), l2=l2, n_boot=n_boot, n_rows=len(y))
    if title:
        settings["title"] = title
    return LayerSweep(tuple(scores), settings)


def _auroc_at(p: np.ndarray, y: np.ndarray) -> Any:
    return lambda i: auroc(p[i], y[i])
