"""SAEs through sae-lens: train one on a steerlens store (``train_sae``), measure it (``evaluate_sae``), read
steering vectors through its features (``vector_features``), and the study that does all three
(``run(model, SAEConfig(...), out)``, ``steerlens sae``). The mechanism (loading, feature vectors, splicing,
clamping) is in ``steerlens.steering.sae``.
"""

from .data import docstrings, sae_store, store_tokens, text_windows
from .features import FeatureContext, VectorFeatures, max_activating, read_vectors, vector_features
from .metrics import SAEMetrics, evaluate_sae
from .study import SAEConfig, SAEStudy, register, run
from .train import ARCHITECTURES, Architecture, TrainedSAE, train_sae, training_config

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "FeatureContext",
    "SAEConfig",
    "SAEMetrics",
    "SAEStudy",
    "TrainedSAE",
    "VectorFeatures",
    "docstrings",
    "evaluate_sae",
    "max_activating",
    "read_vectors",
    "register",
    "run",
    "sae_store",
    "store_tokens",
    "text_windows",
    "train_sae",
    "training_config",
    "vector_features",
]
