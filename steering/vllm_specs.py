"""Each vLLM request's steering as the worker applies it: the model's active ``steer()`` contexts, then the
row's own interventions, turned into per-layer ``WorkerStep``s and named by a content hash (rows steered alike
share one spec, and the prefix cache is salted with it)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from steerlens.errors import SteerlensError
from steerlens.model import Model

from .apply import _parse, _step
from .intervention import Intervention
from .positions import Trigger, Window
from .rows import RowSteering
from .vllm_worker import WorkerStep

Specs = dict[str, dict[int, list[WorkerStep]]]


def request_specs(model: Model, rs: RowSteering, n: int) -> tuple[list[str | None], Specs]:
    """Each of ``n`` rows' spec id (None: unsteered) and the distinct specs."""
    if rs.n_rows is not None and rs.n_rows != n:
        raise SteerlensError(
            f"the steering has per-row values for {rs.n_rows} rows but there are {n} prompts"
        )
    if rs:
        _parse(model, tuple(rs.interventions), {})  # the same checks as steer(): model, site, layers
    active = active_interventions(model)
    ids: list[str | None] = []
    specs: Specs = {}
    for i in range(n):
        ivs = active + (rs.for_rows([i]) if rs else [])
        live = [
            iv for iv in ivs if float(torch.as_tensor(iv.alpha).reshape(-1)[0]) != 0.0 or iv.op == "clamp"
        ]
        if not live:
            ids.append(None)
            continue
        key = hashlib.sha256("|".join(iv.fingerprint() for iv in live).encode()).hexdigest()[:16]
        ids.append(key)
        if key not in specs:
            specs[key] = _worker_steps(live)
    return ids, specs


def active_interventions(model: Model) -> list[Intervention]:
    """The model's active ``steer()`` contexts (outermost first), applied before each row's own steering as
    on the HF path; their hooks never reach vLLM's worker, so they travel in every request's spec."""
    ivs = [iv for s in model.steering for iv in getattr(s, "interventions", ())]
    for iv in ivs:
        p = iv.positions
        per_row_window = isinstance(p, Window) and (isinstance(p.start, tuple) or isinstance(p.end, tuple))
        if torch.as_tensor(iv.alpha).numel() != 1 or per_row_window:
            raise SteerlensError(
                "an active steer() with per-row values has no meaning on vLLM (rows are not batches there); "
                "pass it as steering=RowSteering((intervention,)) instead"
            )
    return ivs


def _positions(p: Any) -> tuple:
    if isinstance(p, Window):
        start = p.start[0] if isinstance(p.start, tuple) else p.start
        end = p.end[0] if isinstance(p.end, tuple) else p.end
        return ("window", int(start), None if end is None else int(end))
    if isinstance(p, Trigger):
        return ("trigger", p.token_ids)
    return (str(p),)


def _worker_steps(ivs: list[Intervention]) -> dict[int, list[WorkerStep]]:
    """One row's interventions as the worker applies them: per layer, in the given order."""
    out: dict[int, list[WorkerStep]] = {}
    for l in sorted({l for iv in ivs for l in iv.steered_layers}):
        for i, iv in enumerate(ivs):
            if l not in iv.steered_layers:
                continue
            st = _step(i, iv, l, torch.device("cpu"), torch.float32)
            alpha = float(torch.as_tensor(iv.alpha, dtype=torch.float32).reshape(-1)[0])
            vid = hashlib.sha256(st.vector.numpy().tobytes()).hexdigest()[:16]
            out.setdefault(l, []).append(
                WorkerStep(iv.op, st.vector, vid, alpha * st.scale, _positions(iv.positions))
            )
    return out
