"""Choose SAE training settings on a slice of a big store before the long run: for each batch size / lr, train
on the first ``--rows`` rows of the store's seeded stream, then count features that never fire on 100,000 rows
spread over the store, beside the trainer's own dead count, EV and the CE-loss numbers.

Then, for the chosen SAE, where the store's variance lives (``--rows-report SAE_DIR``): the share of the summed
squared norm held by massive-activation rows (norm > 10x the median), their positions, and the SAE's EV and
relative error on ordinary rows vs position-1 rows.

python bench/sae_settings.py STORE_DIR --out runs/sae_settings 1024:4e-4 1024:2e-3 512:2e-3 1024:6e-3 256:2e-3
python bench/sae_settings.py STORE_DIR --rows-report runs/sae_smollm2_b512/sae
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from sae_lens import SAE

import steerlens
from steerlens.analysis.sae import train_sae
from steerlens.analysis.sae.data import store_tokens
from steerlens.analysis.sae.features import _spread_rows
from steerlens.store import ActivationStore


def sweep(
    store: ActivationStore, site: str, out: Path, settings: list[str], rows: int, expansion: int, k: int
) -> None:
    model = steerlens.load(store.model)
    x = _spread_rows(store, site, 100_000)
    for spec in settings:
        batch, lr = int(spec.split(":")[0]), float(spec.split(":")[1])
        run = train_sae(
            store, site, out / f"b{batch}_lr{lr:g}", model=model, expansion=expansion, k=k, train_samples=rows,
            batch_size=batch, lr=lr, n_checkpoints=0, progress=False,
        )  # fmt: skip
        fired = torch.zeros(run.sae.cfg.d_sae, dtype=torch.long)
        with torch.no_grad():
            for i in range(0, len(x), 4096):
                fired += (run.sae.encode(x[i : i + 4096]) > 0).sum(0)
        m = run.metrics
        assert m is not None
        print(json.dumps(dict(
            batch=batch, lr=lr, rows=rows, seconds=round(run.seconds), steps=run.trainer["steps"],
            trainer_dead=run.trainer["num_dead_features"], dead_on_100k=round(float((fired == 0).float().mean()), 4),
            ev=round(m.explained_variance, 4), ce_increase=round(m.ce_increase, 3), ce_loss_score=round(m.ce_loss_score, 3),
        )), flush=True)  # fmt: skip


def rows_report(store: ActivationStore, site: str, sae_dir: Path) -> None:
    """Row norms over the whole store (one shard at a time) and the SAE's error on ordinary vs position-1 rows."""
    windows = store_tokens(store)
    if windows is None:
        raise SystemExit(
            f"{store.path} has no tokens.safetensors: --rows-report reads stores made by sae_store"
        )
    seq_positions = windows.shape[1] - 1  # sae_store leaves position 0 of each window out
    sae = SAE.load_from_disk(sae_dir).eval()
    g = torch.Generator().manual_seed(0)
    norms, ordinary, first, seen = [], [], [], 0
    for x in store.iter_batches(site):
        x = x.float().flatten(1)
        pos = torch.arange(seen, seen + len(x)) % seq_positions + 1
        norms.append(x.norm(dim=-1))
        ordinary.append(x[(torch.rand(len(x), generator=g) < 0.01) & (pos != 1)])
        first.append(x[pos == 1][::20])
        seen += len(x)
    n = torch.cat(norms)
    pos = torch.arange(len(n)) % seq_positions + 1
    big = n > 10 * n.median()
    out: dict[str, float] = {
        "rows": len(n), "median_norm": float(n.median()), "rows_over_10x_median": float(big.float().mean()),
        "share_of_those_at_position_1": float((big & (pos == 1)).sum() / big.sum().clamp(min=1)),
        "share_of_summed_squared_norm": float((n[big] ** 2).sum() / (n**2).sum()),
    }  # fmt: skip
    with torch.no_grad():
        for name, rows in (("ordinary", torch.cat(ordinary)), ("position_1", torch.cat(first))):
            r = (rows - sae(rows)).pow(2).sum(-1)
            out[f"{name}_ev"] = float(1 - r.sum() / (rows - rows.mean(0)).pow(2).sum())
            out[f"{name}_relative_error"] = float((r / rows.pow(2).sum(-1)).mean())
    print(json.dumps(out, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store")
    p.add_argument("settings", nargs="*", help="BATCH:LR pairs")
    p.add_argument("--site", default=None, help="default: the store's only site")
    p.add_argument("--out", default="runs/sae_settings")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--expansion", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--rows-report", default=None, help="an SAE directory: report where the variance lives")
    a = p.parse_args()
    store = ActivationStore(a.store)
    site = a.site or store.sites[0]
    if a.rows_report:
        rows_report(store, site, Path(a.rows_report))
    else:
        sweep(store, site, Path(a.out), a.settings, a.rows, a.expansion, a.k)


if __name__ == "__main__":
    main()
