"""The Big Five personality study: trait vectors from contrastive reactions, questionnaire dose-response and
leakage, held-out reactions, the persona-prompting baseline, side effects and stability.

``run(model, PersonalityConfig(...))`` does it all; the parts are public for notebooks and other studies.
"""

from .measures import (
    DoseResponse,
    PromptingBaseline,
    ReactionPreference,
    dose_response,
    prompting_baseline,
    questionnaire_scores,
    reaction_preference,
)
from .side_effects import (
    Capability,
    MCItem,
    capability,
    load_multiple_choice,
    multiple_choice_correct,
)
from .stability import Stability, stability
from .study import PersonalityConfig, PersonalityStudy, purified_vectors, register, run
from .vectors import (
    RANDOM,
    Method,
    Trait,
    TraitActivations,
    TraitVectors,
    held_out_split,
    trait_activations,
    trait_vector,
    trait_vectors,
)

__all__ = [
    "RANDOM",
    "Capability",
    "DoseResponse",
    "MCItem",
    "Method",
    "PersonalityConfig",
    "PersonalityStudy",
    "PromptingBaseline",
    "ReactionPreference",
    "Stability",
    "Trait",
    "TraitActivations",
    "TraitVectors",
    "capability",
    "dose_response",
    "held_out_split",
    "load_multiple_choice",
    "multiple_choice_correct",
    "prompting_baseline",
    "purified_vectors",
    "questionnaire_scores",
    "reaction_preference",
    "register",
    "run",
    "stability",
    "trait_activations",
    "trait_vector",
    "trait_vectors",
]
