"""The copy-suppression report (McDougall et al. 2023, "Copy Suppression: Comprehensively Understanding an
Attention Head") for any HookedTransformer model, and its ``steerlens copy-suppression`` command.

For GPT-2 Small the paper's head is L10H7 (and L11H10); here the head defaults to the top of
``find_negative_heads``, so nothing is model-specific.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from steerlens.figures import save_figures
from steerlens.files import write_json

from .ablation import CSPAResult, DirectEffects, cspa, direct_effects
from .circuits import Variant, effective_embedding, token_set
from .corpus import corpus_windows
from .decompose import check_additivity, run_decomposed
from .head_scan import HeadScan, scan_heads
from .ioi import ioi_prompts
from .negative_heads import NegativeHeads, find_negative_heads
from .ov import OVRanks, ov_ranks
from .qk import QKGrid, qk_grid
from .results import jsonable
from .self_repair import AntiInduction, SelfRepair, anti_induction, self_repair


@dataclass(frozen=True)
class CopySuppressionReport:
    """Everything the report computed for one model and head, the settings, and seconds per stage."""

    model: str
    head: tuple[int, int]
    negative_heads: NegativeHeads
    scan: HeadScan
    ov: OVRanks
    ov_mlp0: OVRanks
    ov_vocab: OVRanks
    qk: QKGrid
    direct: DirectEffects
    cspa: CSPAResult
    anti_induction: AntiInduction
    self_repair: SelfRepair
    additivity_error: float
    seconds: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The key numbers, as the paper reports them."""
        l, h = self.head
        top = self.negative_heads.top(5)
        negs = set(top)
        return {
            "model": self.model,
            "head": f"L{l}H{h}",
            "negative_heads_top5": [f"L{a}H{b}" for a, b in top],
            "ov_suppression": vars(self.ov.suppression),
            "ov_suppression_mlp0_embedding": vars(self.ov_mlp0.suppression),
            "ov_suppression_over_vocab": vars(self.ov_vocab.suppression),
            "ov_copying": vars(self.ov.copying),
            "qk_unembedding_query_effective_key": vars(self.qk.stats["unembedding"]["effective"]),
            "cspa_effect_explained": self.cspa.effect_explained,
            "cspa_kl": self.cspa.kl_cspa,
            "mean_ablation_kl": self.cspa.kl_mean_ablation,
            "direct_effect_loss": float(self.direct.loss[l, h]),
            "anti_induction": float(self.anti_induction.anti_induction[l, h]),
            "ioi_logit_diff_clean": self.self_repair.logit_diff_clean,
            "ioi_logit_diff_name_movers_ablated": self.self_repair.logit_diff_ablated,
            "ioi_self_repair": self.self_repair.self_repair,
            "ioi_self_repair_share_top5_negative_heads": float(
                sum(
                    self.self_repair.share[a, b]
                    for a, b in negs
                    if (a, b) not in self.self_repair.name_movers
                )
            ),
            "name_movers": [f"L{a}H{b}" for a, b in self.self_repair.name_movers],
            "additivity_error": self.additivity_error,
            "seconds": self.seconds,
        }

    def figures(self) -> dict[str, go.Figure]:
        return {
            "negative_heads": self.negative_heads.figure(),
            "ov_suppression_scan": self.scan.figure("ov_suppression_top10"),
            "qk_scan": self.scan.figure("qk_top10"),
            "ov_ranks": self.ov.figure(),
            "qk_grid": self.qk.figure(),
            "direct_effect_loss": self.direct.figure("loss"),
            "direct_effect_entropy": self.direct.figure("entropy"),
            "cspa_percentiles": self.cspa.figure(),
            "anti_induction": self.anti_induction.figure(),
            "self_repair": self.self_repair.figure(highlight=self.negative_heads.top(3)),
        }

    def save(self, directory: str | Path, formats: Sequence[str] = ("html",)) -> Path:
        """Write ``metrics.json`` (summary, settings and every result) and the figures in ``formats``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_figures(self.figures(), out, formats=formats)
        results = {
            k: jsonable(getattr(self, k))
            for k in ("negative_heads", "scan", "ov", "ov_mlp0", "ov_vocab", "qk", "direct", "cspa",
                      "anti_induction", "self_repair")
        }  # fmt: skip
        return write_json(
            out / "metrics.json", {"summary": jsonable(self.summary()), "settings": self.settings, **results}
        )


def copy_suppression_report(
    model: Any,
    *,
    head: tuple[int, int] | None = None,
    n_tokens: int = 4000,
    vocab_tokens: int = 500,
    variant: Variant = "self_attn",
    n_sequences: int = 24,
    seq_len: int = 64,
    max_positions: int = 96,
    n_ioi: int = 40,
    seed: int = 0,
    log: Callable[[str], None] = lambda s: None,
) -> CopySuppressionReport:
    """Run every analysis: scan heads (OV/QK), rank negative heads, then study ``head`` (default: the top
    negative head) with OV ranks (both effective embeddings, and over the whole vocabulary for
    ``vocab_tokens`` tokens), the QK grid, CSPA, anti-induction and IOI self-repair."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        seconds[name] = round(now - t0, 2)
        t0 = now
        log(f"{name}: {seconds[name]:.1f} s")

    sample = token_set(model, n_tokens, seed=seed)
    emb = effective_embedding(model, sample, variant)
    scan = scan_heads(model, sample, embedding=emb)
    stage("weights: OV/QK scan of all heads")
    text = corpus_windows(model, n_sequences, seq_len)
    run = run_decomposed(model, text)
    additivity = check_additivity(model, run)
    ioi = ioi_prompts(model, n_ioi, seed=seed)
    stage("forward pass on the corpus")
    direct = direct_effects(model, text, max_positions=max_positions, seed=seed, run=run)
    stage("direct effects of every head")
    neg = find_negative_heads(
        model, tokens=text, ioi=ioi, scan=scan, run=run, direct=direct, max_positions=max_positions, seed=seed
    )
    stage("find_negative_heads")
    layer, h = head if head is not None else neg.top(1)[0]
    log(f"head: L{layer}H{h} (top negative heads {neg.top(5)})")
    ov = ov_ranks(model, layer, h, sample, embedding=emb)
    ov_mlp0 = ov_ranks(model, layer, h, sample, variant="mlp0")
    ov_vocab = ov_ranks(
        model, layer, h, token_set(model, vocab_tokens, seed=seed), variant=variant, rank_over="vocab"
    )
    qk = qk_grid(model, layer, h, sample, embedding=emb)
    stage("OV ranks and QK grid of the head")
    cs = cspa(model, layer, h, text, run=run)
    stage("CSPA")
    anti = anti_induction(model, seed=seed)
    stage("anti-induction")
    repair = self_repair(model, ioi)
    stage("IOI self-repair")
    return CopySuppressionReport(
        model=getattr(model, "name", str(model)),
        head=(layer, h),
        negative_heads=neg,
        scan=scan,
        ov=ov,
        ov_mlp0=ov_mlp0,
        ov_vocab=ov_vocab,
        qk=qk,
        direct=direct,
        cspa=cs,
        anti_induction=anti,
        self_repair=repair,
        additivity_error=additivity,
        seconds=seconds,
        settings={"head": [layer, h], "head_chosen_by": "argument" if head else "find_negative_heads",
                  "n_tokens": n_tokens, "vocab_tokens": vocab_tokens, "variant": variant,
                  "n_sequences": n_sequences, "seq_len": seq_len, "max_positions": max_positions,
                  "n_ioi": n_ioi, "seed": seed},
    )  # fmt: skip


# ---- command line --------------------------------------------------------------------------------------


def register(sub: Any) -> argparse.ArgumentParser:
    """Register ``steerlens copy-suppression`` on an argparse subparsers object."""
    p = sub.add_parser(
        "copy-suppression",
        help="copy-suppression report: negative heads, OV/QK rank tests, CSPA, self-repair (GPT-2: L10H7)",
    )
    p.add_argument("--model", default="gemma-3-270m", help="embedded name or HF id (e.g. gpt2)")
    p.add_argument("--out", default="runs/copy_suppression")
    p.add_argument("--head", default=None, help="LAYER.HEAD to study (default: top of find_negative_heads)")
    p.add_argument("--tokens", type=int, default=4000, help="sampled whole-word tokens for OV/QK tests")
    p.add_argument(
        "--vocab-tokens", type=int, default=500, help="tokens whose OV rank is taken over the vocab"
    )
    p.add_argument("--variant", choices=["self_attn", "mlp0"], default="self_attn")
    p.add_argument("--sequences", type=int, default=24)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--max-positions", type=int, default=96, help="positions for per-head direct effects")
    p.add_argument("--ioi", type=int, default=40, help="IOI prompts")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=copy_suppression_main)
    return p


def _parse_head(text: str | None) -> tuple[int, int] | None:
    from steerlens.errors import SteerlensError

    if text is None:
        return None
    try:
        l, h = (int(x) for x in text.replace("L", "").replace("H", ".").split("."))
    except ValueError:
        raise SteerlensError(f"--head {text!r}: expected LAYER.HEAD such as 10.7 (or L10H7)") from None
    return l, h


def copy_suppression_main(args: argparse.Namespace) -> int:
    """``steerlens copy-suppression``: load the model, run the report, write metrics.json and HTML figures."""
    import torch

    from steerlens import load

    torch.set_grad_enabled(False)
    start = time.perf_counter()
    print(f"loading {args.model}", flush=True)
    model = load(args.model)
    report = copy_suppression_report(
        model,
        head=_parse_head(args.head),
        n_tokens=args.tokens,
        vocab_tokens=args.vocab_tokens,
        variant=args.variant,
        n_sequences=args.sequences,
        seq_len=args.seq_len,
        max_positions=args.max_positions,
        n_ioi=args.ioi,
        seed=args.seed,
        log=lambda s: print(f"  {s}", flush=True),
    )
    path = report.save(args.out)
    s = report.summary()
    print(
        f"head {s['head']}: OV suppression top-1 {s['ov_suppression']['top1']:.3f} top-10 "
        f"{s['ov_suppression']['top10']:.3f}; QK top-10 {s['qk_unembedding_query_effective_key']['top10']:.3f}; "
        f"CSPA effect explained {s['cspa_effect_explained']:.3f}",
        flush=True,
    )
    print(f"wrote {path} and figures in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


QUICK_SETTINGS: dict[str, Any] = {
    "n_tokens": 300,
    "vocab_tokens": 20,
    "n_sequences": 4,
    "seq_len": 32,
    "max_positions": 16,
    "n_ioi": 8,
}


def demo_section(model: Any, out: str | Path, sec: Any, *, quick: bool = False) -> CopySuppressionReport:
    """Fill a demo report ``Section`` (numbers, figures, a table of negative heads) and save the report's
    metrics under ``out`` (the demo writes the figures); ``quick`` uses small sizes for smoke runs."""
    report = copy_suppression_report(model, **(QUICK_SETTINGS if quick else {}))
    report.save(out, formats=())
    s = report.summary()
    l, h = report.head
    sec.text = (
        f"Head L{l}H{h} tops find_negative_heads ({', '.join(s['negative_heads_top5'])}). OV ranks count how "
        "highly a source token ranks among the most negative logits of its own OV output (top-10 is the "
        "paper's headline measure); CSPA effect explained = 1 - KL(clean||CSPA)/KL(clean||mean ablation) on the "
        "head's direct effect with the final-norm scale frozen. For GPT-2 Small the paper's head is L10H7."
    )
    sec.numbers.update(
        {
            "head": s["head"],
            "OV suppression top-1": s["ov_suppression"]["top1"],
            "OV suppression top-10": s["ov_suppression"]["top10"],
            "OV suppression top-10 (over the vocabulary)": s["ov_suppression_over_vocab"]["top10"],
            "QK top-10 (unembedding query, effective key)": s["qk_unembedding_query_effective_key"]["top10"],
            "CSPA effect explained": s["cspa_effect_explained"],
            "IOI self-repair (logits)": s["ioi_self_repair"],
            "seconds": sum(report.seconds.values()),
        }
    )
    sec.figures.update(report.figures())
    df = report.negative_heads.to_frame().head(8).reset_index()
    sec.tables.append(("Top negative heads (rank 0 = most negative)", df.round(4).to_dict("records")))
    return report
