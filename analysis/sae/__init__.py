"""SAEs through sae-lens: train on a steerlens store, evaluate, read steering vectors through SAE features."""

from .data import docstrings, sae_store, store_tokens, text_windows
from .metrics import SAEMetrics, evaluate_sae
from .train import ARCHITECTURES, Architecture, TrainedSAE, train_sae, training_config

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "SAEMetrics",
    "TrainedSAE",
    "docstrings",
    "evaluate_sae",
    "sae_store",
    "store_tokens",
    "text_windows",
    "train_sae",
    "training_config",
]
