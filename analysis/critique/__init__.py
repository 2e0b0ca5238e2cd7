"""The critique study: error-injected reasoning, probes and the critique vector, error detection vs alpha.

``run(model, CritiqueConfig(...), out)`` -> ``CritiqueStudy`` (``save`` / ``load``, ``sections()`` for the
report); the parts on their own: ``critique_vector`` and ``detection_sweep``.
"""

from .detection import ALPHAS, Arm, DetectionPoint, DetectionSweep, detection_sweep
from .study import STUDY_MODEL, CritiqueConfig, CritiqueStudy, Mode, register, resumable, run
from .vector import (
    SPANS,
    Context,
    Control,
    CritiqueVector,
    Method,
    Pool,
    Span,
    critique_vector,
    shuffled_control,
)

__all__ = [
    "ALPHAS",
    "SPANS",
    "STUDY_MODEL",
    "Arm",
    "Context",
    "Control",
    "CritiqueConfig",
    "CritiqueStudy",
    "CritiqueVector",
    "DetectionPoint",
    "DetectionSweep",
    "Method",
    "Mode",
    "Pool",
    "Span",
    "critique_vector",
    "detection_sweep",
    "register",
    "resumable",
    "run",
    "shuffled_control",
]
