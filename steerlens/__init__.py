"""steerlens: interpretability and activation steering for language models.

Entry points: ``load`` (a model with hf / lens / nn views), ``collect`` (activations to an
``ActivationStore``). Capability layers live in ``steerlens.probes``, ``steerlens.steering`` and
``steerlens.analysis``.
"""

from .collect import collect
from .errors import (
    EmptyInput,
    ModelNotAvailable,
    SAEMismatch,
    SAENotAvailable,
    SiteError,
    SteerlensError,
    StoreMismatch,
)
from .inputs import Example, TokenSelection
from .model import Model, ModelConfig, load
from .registry import DEFAULT_MODEL, EMBEDDED
from .sites import Site
from .store import ActivationStore

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "ActivationStore",
    "EmptyInput",
    "Example",
    "Model",
    "ModelConfig",
    "ModelNotAvailable",
    "SAEMismatch",
    "SAENotAvailable",
    "Site",
    "SiteError",
    "SteerlensError",
    "StoreMismatch",
    "TokenSelection",
    "collect",
    "load",
]
