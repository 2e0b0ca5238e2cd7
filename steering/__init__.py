"""Steering vectors (build, save, load, GGUF), steer() and its ops, per-row steering, sampling, test-time scaling loops."""

from .apply import Intervention, Trigger, Window, steer
from .build import (
    AGGREGATORS,
    build_vector,
    mean_difference,
    pca_difference,
    probe_direction,
    vector_from_prompts,
)
from .rows import RowSteering
from .vector import SteeringVector

__all__ = [
    "AGGREGATORS",
    "Intervention",
    "RowSteering",
    "SteeringVector",
    "Trigger",
    "Window",
    "build_vector",
    "mean_difference",
    "pca_difference",
    "probe_direction",
    "steer",
    "vector_from_prompts",
]
