"""Test-time scaling loops, each usable with or without steering: sequential (``wait_stacking``,
``iterative_deepening``) and parallel (``parallel`` with majority / best-of-N / weighted voting)."""

from .parallel import (
    Aggregation,
    ParallelResult,
    Verifier,
    aggregate,
    p_true_verifier,
    parallel,
    probe_verifier,
)
from .sequential import DEEPEN, MARKER, WAIT, Round, SequentialResult, iterative_deepening, wait_stacking

__all__ = [
    "DEEPEN",
    "MARKER",
    "WAIT",
    "Aggregation",
    "ParallelResult",
    "Round",
    "SequentialResult",
    "Verifier",
    "aggregate",
    "iterative_deepening",
    "p_true_verifier",
    "parallel",
    "probe_verifier",
    "wait_stacking",
]
