"""Probe AUROC per layer at every trace span of a saved critique run (issue 16: does any span carry the error?).

    python bench/critique_spans.py runs/critique_qwen [--spans injected,after] [--out DIR]

Reads the run's records.jsonl, probes every layer at each span with the study's settings (mean-pooled
``resid_post``, "question" context, grouped train/validation/test splits by problem, shuffled-label control,
grouped bootstrap CIs over test problems) and prints one line per span; writes ``spans.json`` and one
per-layer figure per span.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import steerlens
from steerlens.analysis.critique.vector import critique_vector
from steerlens.probes.traces import InjectionRun


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a `steerlens critique` run directory")
    ap.add_argument("--spans", default="injected,after")
    ap.add_argument("--out", default=None, help="default: <run>/spans")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    run_dir = Path(args.run)
    cfg = json.loads((run_dir / "config.json").read_text())
    run = InjectionRun.load(run_dir / "records.jsonl")
    model = steerlens.load(run.settings["model"])
    out = Path(args.out or run_dir / "spans")
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for span in args.spans.split(","):
        t = time.perf_counter()
        cv = critique_vector(
            model, run, span=span, method=cfg.get("method", "mean"), seed=cfg.get("seed", 0),
            batch_size=cfg.get("collect_batch_size", 8), n_boot=cfg.get("n_boot", 1000),
        )  # fmt: skip
        s = cv.sweep.score(cv.layer)
        aurocs = [x.auroc for x in cv.sweep.scores]
        excl = [x.layer for x in cv.sweep.scores if x.auroc_lo > 0.5 or x.auroc_hi < 0.5]
        rows[span] = dict(
            layer=cv.layer, auroc=s.auroc, ci=[s.auroc_lo, s.auroc_hi], shuffled=s.shuffled_auroc,
            val_auroc=s.val_auroc, n_test=s.n_test, auroc_range=[min(aurocs), max(aurocs)],
            layers_ci_excluding_half=excl, seconds=round(time.perf_counter() - t, 1),
        )  # fmt: skip
        cv.sweep.figure().write_html(out / f"probe_layers_{span}.html", include_plotlyjs="cdn")
        print(
            f"{span:9s} layer {cv.layer:2d} (validation) test AUROC {s.auroc:.3f} [{s.auroc_lo:.3f}, "
            f"{s.auroc_hi:.3f}] shuffled {s.shuffled_auroc:.3f}; all layers {min(aurocs):.3f}-{max(aurocs):.3f}; "
            f"CI excludes 0.5 at layers {excl or 'none'} ({rows[span]['seconds']} s)",
            flush=True,
        )
    (out / "spans.json").write_text(json.dumps({"run": str(run_dir), "spans": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
