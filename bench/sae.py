"""SAE training: steerlens' ``train_sae`` from a store on disk vs sae-lens' ``LanguageModelSAETrainingRunner``
(which recomputes activations with the model) on the same model, site, SAE and tokens; then peak RSS of
``train_sae`` on a small vs a 10x larger store (each in a fresh process): RAM must not grow with the store.

python bench/sae.py [--model smollm2-135m-instruct] [--layer 6] [--tokens 65536] [--small 20000] [--large 200000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import steerlens
from steerlens.analysis.sae import sae_store, text_windows, train_sae

SAE = dict(expansion=4, k=32, batch_size=1024, lr=1e-3)


def ours(model: steerlens.Model, site: str, windows: torch.Tensor, tmp: Path) -> tuple[float, float, int]:
    """Seconds to collect the store, seconds to train on it, rows trained."""
    t = time.perf_counter()
    store = sae_store(model, site, windows, tmp / "store", progress=False)
    collect_s = time.perf_counter() - t
    run = train_sae(
        store, site, tmp / "run", train_samples=len(store), n_checkpoints=0, progress=False, **SAE
    )
    return collect_s, run.seconds, len(store)


def sae_lens_runner(model: steerlens.Model, site: str, windows: torch.Tensor, tmp: Path) -> tuple[float, int]:
    """Seconds and tokens of sae-lens' own runner on the same windows (its model: ``model.lens``)."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    d_in = model.cfg.d_model
    n = windows.numel()
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=SAE["expansion"] * d_in,
            k=SAE["k"],
            normalize_activations="expected_average_only_in",
        ),
        model_name=model.name,
        hook_name=site,
        dataset_path="local",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=windows.shape[1],
        prepend_bos=False,
        training_tokens=n,
        train_batch_size_tokens=SAE["batch_size"],
        store_batch_size_prompts=8,
        n_batches_in_buffer=max(16, 2 * SAE["batch_size"] // windows.shape[1]),  # buffer rows >= batch
        lr=SAE["lr"],
        device="cpu",
        dtype="float32",
        checkpoint_path=None,
        output_path=str(tmp / "sae_lens_out"),
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=10,
        verbose=False,
    )
    data = Dataset.from_dict({"input_ids": windows.tolist()})
    t = time.perf_counter()
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=data, override_model=model.lens)
    with torch.enable_grad():
        runner.run()
    return time.perf_counter() - t, n


CHILD = """
import sys, time, torch
import steerlens
from steerlens.analysis.sae import sae_store, text_windows, train_sae
torch.set_grad_enabled(False)
m = steerlens.load({model!r})
store = sae_store(m, {site!r}, text_windows(m, {n}), {path!r} + "/store", progress=False)
import resource; before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run = train_sae(store, {site!r}, {path!r} + "/run", train_samples=len(store), n_checkpoints=0, progress=False,
                expansion=4, k=32, batch_size=1024, lr=1e-3)
print(len(store), round(run.seconds, 1), before // 1024)
"""


def rss(model: str, site: str, n: int, path: Path) -> tuple[float, str]:
    code = CHILD.format(model=model, site=site, n=n, path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read().strip() if proc.stdout else ""
    if status != 0:
        raise SystemExit(f"child failed for {n} tokens: status {status}")
    return usage.ru_maxrss / 1024, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--small", type=int, default=20_000)
    ap.add_argument("--large", type=int, default=200_000)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    site = f"blocks.{args.layer}.hook_resid_post"
    model = steerlens.load(args.model)
    windows = text_windows(model, args.tokens)
    tmp = Path(tempfile.mkdtemp(prefix="steerlens-sae-"))
    print(
        f"model {args.model}, site {site}, {windows.numel()} tokens ({len(windows)} x {windows.shape[1]}), {SAE}"
    )
    collect_s, train_s, rows = ours(model, site, windows, tmp)
    print(f"steerlens train_sae from the store: {rows / train_s:8.0f} tokens/s training ({train_s:.1f} s); "
          f"collect {collect_s:.1f} s; end to end {rows / (collect_s + train_s):.0f} tokens/s")  # fmt: skip
    try:
        s, n = sae_lens_runner(model, site, windows, tmp)
        print(
            f"sae-lens LanguageModelSAETrainingRunner (recomputes activations): {n / s:8.0f} tokens/s ({s:.1f} s)"
        )
    except Exception as e:
        print(f"sae-lens LanguageModelSAETrainingRunner could not run on {args.model}'s lens here: "
              f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")  # fmt: skip
    for n in (args.small, args.large):
        peak, out = rss(args.model, site, n, tmp / f"rss{n}")
        rows_, secs, before = out.split()
        mib = int(rows_) * model.cfg.d_model * 4 / 2**20
        print(f"{n:>8d} tokens: store {mib:6.0f} MiB, peak RSS {peak:6.0f} MiB (before training {before} MiB), "
              f"train {secs} s")  # fmt: skip


if __name__ == "__main__":
    main()
