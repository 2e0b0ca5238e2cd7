"""The studies (critique, test-time scaling, copy suppression and negative heads), recovery statistics,
plotly figures, HTML report."""

from .ablation import CSPAResult, DirectEffects, cspa, direct_effects
from .circuits import (
    EffectiveEmbedding,
    HeadScan,
    OVRanks,
    QKGrid,
    QKRanks,
    RankStats,
    TokenSet,
    effective_embedding,
    ov_ranks,
    qk_grid,
    qk_ranks,
    scan_heads,
    token_set,
)
from .copy_suppression import (
    CopySuppressionReport,
    copy_suppression_main,
    copy_suppression_report,
)
from .corpus import PARAGRAPHS, corpus_windows
from .critique import CritiqueConfig, CritiqueStudy
from .decompose import FrozenNorm, LinearisationError, Run, check_additivity, head_results, run_decomposed
from .ioi import IOIBatch, ioi_prompts
from .negative_heads import (
    AntiInduction,
    NegativeHeads,
    SelfRepair,
    anti_induction,
    find_negative_heads,
    planted_suppression_head,
    self_repair,
)
from .scaling import ScalingComparison, ScalingConfig, ScalingStudy

__all__ = [
    "PARAGRAPHS",
    "AntiInduction",
    "CSPAResult",
    "CopySuppressionReport",
    "CritiqueConfig",
    "CritiqueStudy",
    "DirectEffects",
    "EffectiveEmbedding",
    "FrozenNorm",
    "HeadScan",
    "IOIBatch",
    "LinearisationError",
    "NegativeHeads",
    "OVRanks",
    "QKGrid",
    "QKRanks",
    "RankStats",
    "Run",
    "ScalingComparison",
    "ScalingConfig",
    "ScalingStudy",
    "SelfRepair",
    "TokenSet",
    "anti_induction",
    "check_additivity",
    "copy_suppression_main",
    "copy_suppression_report",
    "corpus_windows",
    "cspa",
    "direct_effects",
    "effective_embedding",
    "find_negative_heads",
    "head_results",
    "ioi_prompts",
    "ov_ranks",
    "planted_suppression_head",
    "qk_grid",
    "qk_ranks",
    "run_decomposed",
    "scan_heads",
    "self_repair",
    "token_set",
]
