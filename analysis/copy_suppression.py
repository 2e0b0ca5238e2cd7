"""The copy-suppression study (McDougall et al. 2023, "Copy Suppression: Comprehensively Understanding an
Attention Head") for any TransformerLens model, HookedTransformer or TransformerBridge (``lens_parts`` reads
both): ``CopySuppressionConfig``, ``run(model, cfg)`` and the ``CopySuppressionReport`` it returns, and the
``steerlens copy-suppression`` command.

For GPT-2 Small the paper's head is L10H7 (and L11H10); here the head defaults to the top of
``find_negative_heads``, so nothing is model-specific. No interval is reported, so no bootstrap count.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import plotly.graph_objects as go

from steerlens.config import StudyConfig, SubParsers
from steerlens.errors import SteerlensError
from steerlens.figures import save_figures
from steerlens.files import read_json, write_json
from steerlens.progress import Stages

from .ablation import CSPAResult, DirectEffects, cspa, direct_effects
from .circuits import Variant, effective_embedding, token_set
from .corpus import corpus_windows
from .decompose import LensModel, check_additivity, run_decomposed
from .head_scan import HeadScan, scan_heads
from .ioi import ioi_prompts
from .negative_heads import NegativeHeads, find_negative_heads
from .ov import OVRanks, ov_ranks
from .qk import QKGrid, qk_grid
from .report import Section
from .results import jsonable, revive
from .self_repair import AntiInduction, SelfRepair, anti_induction, self_repair
from .study import add_study_command

if TYPE_CHECKING:
    from steerlens.model import Model

Head = tuple[int, int]  # (layer, head)
METRICS, CONFIG = "metrics.json", "config.json"
RESULTS = (  # the result fields, each saved in metrics.json under its own name
    "negative_heads",
    "scan",
    "ov",
    "ov_mlp0",
    "ov_vocab",
    "qk",
    "direct",
    "cspa",
    "anti_induction",
    "self_repair",
)


def parse_head(head: Head | Sequence[int] | str | None) -> Head | None:
    """``"L10H7"``, ``"10.7"`` or ``(10, 7)`` as ``(10, 7)``; None stays None."""
    if head is None:
        return None
    try:
        if isinstance(head, str):
            l, h = (int(x) for x in head.replace("L", "").replace("H", ".").split("."))
        else:
            l, h = (int(x) for x in head)
    except (TypeError, ValueError):
        raise SteerlensError(
            f"head={head!r}: expected LAYER.HEAD such as 10.7 (or L10H7), or a (layer, head) pair"
        ) from None
    return l, h


@dataclass(frozen=True)
class CopySuppressionConfig(StudyConfig):
    """Settings of the copy-suppression study.

    head: the head to study, as L10H7 or 10.7 (None: the top of find_negative_heads)
    n_tokens: sampled whole-word tokens for the OV/QK rank tests and the scan of all heads
    vocab_tokens: tokens whose OV rank is also taken over the whole vocabulary
    variant: effective embedding: each token attending to itself in layer 0 ('self_attn'), or MLP0 only
    n_sequences: corpus windows for direct effects, copy-token attribution and CSPA
    seq_len: tokens per corpus window
    max_positions: positions for per-head direct effects (one full softmax per head each)
    n_ioi: IOI prompts for the IOI score and self-repair
    seed: token samples, positions, IOI prompts and the repeated tokens of anti-induction
    """

    QUICK: ClassVar[dict[str, Any]] = dict(
        n_tokens=300, vocab_tokens=20, n_sequences=4, seq_len=32, max_positions=16, n_ioi=8
    )

    head: Head | str | None = None
    n_tokens: int = 4000
    vocab_tokens: int = 500
    variant: Variant = "self_attn"
    n_sequences: int = 24
    seq_len: int = 64
    max_positions: int = 96
    n_ioi: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "head", parse_head(self.head))  # one form: (layer, head) or None


@dataclass(frozen=True)
class CopySuppressionReport:
    """Everything the study computed for one model and head, the config that made it, seconds per stage."""

    config: CopySuppressionConfig
    model: str
    head: Head
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

    @property
    def settings(self) -> dict[str, Any]:
        """The config with the head studied and how it was chosen (``metrics.json``'s ``settings``)."""
        rest = {k: v for k, v in self.config.to_dict().items() if k != "head"}
        chosen_by = "argument" if self.config.head else "find_negative_heads"
        return {"head": list(self.head), "head_chosen_by": chosen_by, **rest}

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

    def sections(self) -> list[Section]:
        """One report section: the head, its OV/QK ranks, CSPA and self-repair, every figure, and a table of
        the top negative heads."""
        s = self.summary()
        l, h = self.head
        text = (
            f"Head L{l}H{h} tops find_negative_heads ({', '.join(s['negative_heads_top5'])}). OV ranks count how "
            "highly a source token ranks among the most negative logits of its own OV output (top-10 is the "
            "paper's headline measure); CSPA effect explained = 1 - KL(clean||CSPA)/KL(clean||mean ablation) on the "
            "head's direct effect with the final-norm scale frozen. For GPT-2 Small the paper's head is L10H7."
        )
        numbers = {
            "head": s["head"],
            "OV suppression top-1": s["ov_suppression"]["top1"],
            "OV suppression top-10": s["ov_suppression"]["top10"],
            "OV suppression top-10 (over the vocabulary)": s["ov_suppression_over_vocab"]["top10"],
            "QK top-10 (unembedding query, effective key)": s["qk_unembedding_query_effective_key"]["top10"],
            "CSPA effect explained": s["cspa_effect_explained"],
            "IOI self-repair (logits)": s["ioi_self_repair"],
            "seconds": sum(self.seconds.values()),
        }
        df = self.negative_heads.to_frame().head(8).reset_index()
        table = ("Top negative heads (rank 0 = most negative)", df.round(4).to_dict("records"))
        sec = Section("copy_suppression", "Copy suppression: negative heads", text, numbers, self.figures())
        sec.tables.append(table)
        return [sec]

    def save(self, out: str | Path, formats: Sequence[str] = ("html",)) -> Path:
        """Write ``metrics.json`` (summary, settings and every result), ``config.json`` and the figures in
        ``formats``; returns the path of ``metrics.json``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_figures(self.figures(), out, formats=formats)
        write_json(out / CONFIG, self.config.to_dict())
        results = {k: jsonable(getattr(self, k)) for k in RESULTS}
        return write_json(
            out / METRICS, {"summary": jsonable(self.summary()), "settings": self.settings, **results}
        )

    @classmethod
    def load(cls, out: str | Path, model: Model | None = None) -> CopySuppressionReport:
        """A saved report: config, summary and every result, so ``summary()``, ``sections()`` and the figures
        come back. Not restored, because ``save`` does not write them: the per-token OV ranks (``ov``,
        ``ov_mlp0`` and ``ov_vocab``'s ``ranks_*`` are empty, so their rank histograms are empty) and CSPA's
        per-position KL arrays. ``model`` is not needed (nothing is recomputed)."""
        out = Path(out)
        if not (out / METRICS).is_file():
            what = "does not exist" if not out.is_dir() else f"has no {METRICS}"
            raise SteerlensError(f"{out} {what}; run `steerlens copy-suppression --out {out}` to make it")
        data = read_json(out / METRICS)
        s, settings = data["summary"], data["settings"]
        return cls(
            config=_saved_config(out, settings),
            model=s["model"],
            head=(int(settings["head"][0]), int(settings["head"][1])),
            negative_heads=revive(NegativeHeads, data["negative_heads"]),
            scan=revive(HeadScan, data["scan"]),
            ov=revive(OVRanks, data["ov"]),
            ov_mlp0=revive(OVRanks, data["ov_mlp0"]),
            ov_vocab=revive(OVRanks, data["ov_vocab"]),
            qk=revive(QKGrid, data["qk"]),
            direct=revive(DirectEffects, data["direct"]),
            cspa=revive(CSPAResult, data["cspa"]),
            anti_induction=revive(AntiInduction, data["anti_induction"]),
            self_repair=revive(SelfRepair, data["self_repair"]),
            additivity_error=s["additivity_error"],
            seconds=s["seconds"],
        )


def _saved_config(out: Path, settings: dict[str, Any]) -> CopySuppressionConfig:
    """``config.json``, or for runs saved before it existed, the config read back from ``settings``."""
    if (out / CONFIG).is_file():
        return CopySuppressionConfig.from_dict(read_json(out / CONFIG))
    names = {f.name for f in fields(CopySuppressionConfig)} - {"head"}
    head = settings["head"] if settings.get("head_chosen_by") == "argument" else None
    return CopySuppressionConfig.from_dict({"head": head, **{k: settings[k] for k in names if k in settings}})


# ---- the study ----------------------------------------------------------------------------------------


def run(
    model: LensModel,
    cfg: CopySuppressionConfig,
    out: str | Path | None = None,
    *,
    progress: bool = False,
) -> CopySuppressionReport:
    """Scan every head (OV/QK), rank negative heads, then study ``cfg.head`` (default: the top negative
    head) with OV ranks (both effective embeddings, and over the whole vocabulary for ``cfg.vocab_tokens``
    tokens), the QK grid, CSPA, anti-induction and IOI self-repair. ``progress`` prints one line per stage with its seconds. The
    study keeps no checkpoint, so ``out`` is unused: ``save`` writes everything.

    Example:
        >>> report = run(steerlens.load("gemma-3-270m"), CopySuppressionConfig.quick())
        >>> report.save("runs/copy_suppression"); report.summary()["cspa_effect_explained"]
    """
    say = Stages("copy-suppression", 1, progress)
    stage = say.lap
    sample = token_set(model, cfg.n_tokens, seed=cfg.seed)
    emb = effective_embedding(model, sample, cfg.variant)
    scan = scan_heads(model, sample, embedding=emb)
    stage("weights: OV/QK scan of all heads")
    text = corpus_windows(model, cfg.n_sequences, cfg.seq_len)
    fwd = run_decomposed(model, text)
    additivity = check_additivity(model, fwd)
    ioi = ioi_prompts(model, cfg.n_ioi, seed=cfg.seed)
    stage("forward pass on the corpus")
    direct = direct_effects(model, text, max_positions=cfg.max_positions, seed=cfg.seed, run=fwd)
    stage("direct effects of every head")
    neg = find_negative_heads(
        model, tokens=text, ioi=ioi, scan=scan, run=fwd, direct=direct, max_positions=cfg.max_positions,
        seed=cfg.seed,
    )  # fmt: skip
    stage("find_negative_heads")
    layer, h = parse_head(cfg.head) or neg.top(1)[0]
    say.note(f"head: L{layer}H{h} (top negative heads {neg.top(5)})")
    ov = ov_ranks(model, layer, h, sample, embedding=emb)
    ov_mlp0 = ov_ranks(model, layer, h, sample, variant="mlp0")
    vocab_sample = token_set(model, cfg.vocab_tokens, seed=cfg.seed)
    ov_vocab = ov_ranks(model, layer, h, vocab_sample, variant=cfg.variant, rank_over="vocab")
    qk = qk_grid(model, layer, h, sample, embedding=emb)
    stage("OV ranks and QK grid of the head")
    cs = cspa(model, layer, h, text, run=fwd)
    stage("CSPA")
    anti = anti_induction(model, seed=cfg.seed)
    stage("anti-induction")
    repair = self_repair(model, ioi)
    stage("IOI self-repair")
    return CopySuppressionReport(
        config=cfg, model=getattr(model, "name", str(model)), head=(layer, h), negative_heads=neg, scan=scan,
        ov=ov, ov_mlp0=ov_mlp0, ov_vocab=ov_vocab, qk=qk, direct=direct, cspa=cs, anti_induction=anti,
        self_repair=repair, additivity_error=additivity, seconds=say.seconds,
    )  # fmt: skip


# ---- command line (registered through the ``steerlens.commands`` entry point) -------------------------


def register(sub: SubParsers) -> argparse.ArgumentParser:
    """``steerlens copy-suppression``: one flag per ``CopySuppressionConfig`` field (``--head 10.7``,
    ``--n-tokens``, ...), ``--model`` (default gemma-3-270m; ``gpt2`` for the paper's model) and ``--quick``."""
    return add_study_command(
        sub,
        "copy-suppression",
        "copy-suppression report: negative heads, OV/QK rank tests, CSPA, self-repair (GPT-2: L10H7)",
        CopySuppressionConfig,
        _command,
        model="gemma-3-270m",
    )


def _command(
    model: Model, cfg: CopySuppressionConfig, out: Path, args: argparse.Namespace
) -> CopySuppressionReport:
    return run(model, cfg, out, progress=True)
