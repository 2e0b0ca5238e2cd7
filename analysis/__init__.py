"""The studies (critique, test-time scaling, personality, copy suppression and negative heads), plotly
figures, the HTML report and the demo. Each study is a ``Config`` dataclass, ``run(model, cfg)`` and a
``Study`` result with ``save`` / ``load`` / ``sections()`` (``analysis.study``).
"""

from .ablation import CSPAResult, DirectEffects, cspa, direct_effects
from .circuits import EffectiveEmbedding, RankStats, TokenSet, effective_embedding, token_set
from .copy_suppression import CopySuppressionConfig, CopySuppressionReport
from .corpus import PARAGRAPHS, corpus_windows
from .critique import CritiqueConfig, CritiqueStudy
from .decompose import (
    FrozenNorm,
    LensModel,
    LinearisationError,
    Run,
    check_additivity,
    head_results,
    run_decomposed,
)
from .head_scan import HeadScan, scan_heads
from .ioi import IOIBatch, ioi_prompts
from .negative_heads import NegativeHeads, find_negative_heads
from .ov import OVRanks, ov_ranks
from .qk import QKGrid, QKRanks, qk_grid, qk_ranks
from .scaling import ScalingComparison, ScalingConfig, ScalingStudy
from .self_repair import AntiInduction, SelfRepair, anti_induction, planted_suppression_head, self_repair

__all__ = [
    "PARAGRAPHS",
    "AntiInduction",
    "CSPAResult",
    "CopySuppressionConfig",
    "CopySuppressionReport",
    "CritiqueConfig",
    "CritiqueStudy",
    "DirectEffects",
    "EffectiveEmbedding",
    "FrozenNorm",
    "HeadScan",
    "IOIBatch",
    "LensModel",
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
