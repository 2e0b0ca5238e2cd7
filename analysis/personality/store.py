"""The per-item arrays behind a personality study, saved beside its JSON so ``PersonalityStudy.load`` can
rebuild every result (and so recompute any interval or figure) without the model.

One safetensors file: arrays named ``part.what[.k]``, the non-array fields (conditions, alphas, item keys,
settings) as JSON in its header. The activations and the all-layer trait vectors are not stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from steerlens.errors import SteerlensError
from steerlens.files import atomic_write, reading
from steerlens.steering import SteeringVector

from .measures import DoseResponse, PromptingBaseline, ReactionPreference
from .side_effects import Capability
from .vectors import TraitVectors

FORMAT = "steerlens.personality/1"
ARRAYS = "personality_arrays.safetensors"
_FIX = "run the personality study again (steerlens personality --out DIR)"


def _dose(name: str, dr: DoseResponse, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    arrays[f"{name}.scores"], arrays[f"{name}.mass"] = dr.scores, dr.mass
    return dict(
        conditions=dr.conditions,
        alphas=dr.alphas,
        item_traits=dr.item_traits,
        settings=dr.settings,
        item_reverse=dr.item_reverse,
    )


def _undose(name: str, meta: dict[str, Any], a: dict[str, np.ndarray]) -> DoseResponse:
    m = meta[name]
    return DoseResponse(
        tuple(m["conditions"]),
        tuple(m["alphas"]),
        tuple(m["item_traits"]),
        a[f"{name}.scores"],
        a[f"{name}.mass"],
        m["settings"],
        tuple(m["item_reverse"]),
    )


def save_arrays(
    path: Path,
    tv: TraitVectors,
    parts: tuple[DoseResponse, DoseResponse, PromptingBaseline, Capability, ReactionPreference | None],
) -> Path:
    """Write the arrays of ``tv`` and the measured ``(dose, purified, prompting, capability, reactions)``."""
    from safetensors.numpy import save_file

    dose, purified, prompting, cap, reactions = parts
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"format": FORMAT, "dose": _dose("dose", dose, arrays)}
    meta["purified"] = _dose("purified", purified, arrays)
    traits = list(tv.profile)
    meta["vectors"] = dict(traits=traits, layer=tv.layer, settings=tv.settings)
    for what, prof in (("accuracy", tv.profile), ("auroc", tv.profile_auroc), ("dprime", tv.profile_dprime)):
        arrays[f"profile.{what}"] = np.array([prof[t] for t in traits], dtype=np.float64)
    personas = list(prompting.high)
    meta["prompting"] = dict(
        item_traits=prompting.item_traits, personas=personas, settings=prompting.settings
    )
    arrays["prompting.neutral"] = prompting.neutral
    arrays["prompting.high"] = np.stack([prompting.high[p] for p in personas])
    arrays["prompting.low"] = np.stack([prompting.low[p] for p in personas])
    meta["capability"] = dict(conditions=cap.conditions, settings=cap.settings)
    for what in ("logprob", "correct", "baseline_logprob", "baseline_correct", "mc_correct", "baseline_mc"):
        if getattr(cap, what) is not None:
            arrays[f"capability.{what}"] = getattr(cap, what)
    if reactions is not None:
        meta["reactions"] = dict(
            conditions=reactions.conditions, alphas=reactions.alphas, settings=reactions.settings
        )
        for k, c in enumerate(reactions.conditions):
            arrays[f"reactions.values.{k}"] = reactions.values[c]
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    header = {"steerlens": json.dumps(meta)}
    return atomic_write(path, lambda tmp: save_file(arrays, str(tmp), metadata=header))


def load_arrays(
    path: Path, vectors: dict[str, SteeringVector]
) -> tuple[
    TraitVectors, DoseResponse, DoseResponse, PromptingBaseline, Capability, ReactionPreference | None
]:
    """Rebuild what ``save_arrays`` wrote; ``vectors`` are the saved (steering-layer) trait vectors."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with reading(path, "personality arrays (safetensors)", _FIX):
        a = load_file(str(path))
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get("steerlens", "{}"))
    if meta.get("format") != FORMAT:
        raise SteerlensError(f"{path}: unknown format {meta.get('format')!r}, expected {FORMAT!r}; {_FIX}")
    v = meta["vectors"]
    prof = {
        w: dict(zip(v["traits"], a[f"profile.{w}"].tolist(), strict=True))
        for w in ("accuracy", "auroc", "dprime")
    }
    tv = TraitVectors(vectors, prof["accuracy"], prof["auroc"], v["layer"], v["settings"], prof["dprime"])
    p = meta["prompting"]
    prompting = PromptingBaseline(
        tuple(p["item_traits"]),
        a["prompting.neutral"],
        dict(zip(p["personas"], a["prompting.high"], strict=True)),
        dict(zip(p["personas"], a["prompting.low"], strict=True)),
        p["settings"],
    )
    c = meta["capability"]
    cap = Capability(
        tuple(c["conditions"]),
        a["capability.logprob"],
        a["capability.correct"],
        a["capability.baseline_logprob"],
        a["capability.baseline_correct"],
        a.get("capability.mc_correct"),
        a.get("capability.baseline_mc"),
        c["settings"],
    )
    reactions = None
    if "reactions" in meta:
        r = meta["reactions"]
        values = {name: a[f"reactions.values.{k}"] for k, name in enumerate(r["conditions"])}
        reactions = ReactionPreference(tuple(r["conditions"]), tuple(r["alphas"]), values, r["settings"])
    return tv, _undose("dose", meta, a), _undose("purified", meta, a), prompting, cap, reactions
