"""``steerlens demo``: the whole story on the embedded models, offline, into one run directory and report.

Steps: error-injected reasoning and the 2x2 table -> probes and the critique vector -> error detection vs
alpha with a random control -> test-time scaling steered vs unsteered -> personality dose-response and
leakage -> copy-suppression head report. A failing step is reported (in the console, the report and the exit
code) and the rest still run; nothing already written is lost.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlens.config import SubParsers
from steerlens.files import write_json
from steerlens.model import Model

from .copy_suppression import CopySuppressionConfig
from .critique import CritiqueConfig, CritiqueStudy
from .personality import PersonalityConfig
from .report import Section, write_report
from .scaling import ScalingConfig
from .study import Study


@dataclass(frozen=True)
class DemoPlan:
    """The demo is these four study configs; ``default()`` fits 30 min on 2 cores, ``quick()`` is a smoke run
    (each study's own ``.quick()`` sizes)."""

    critique: CritiqueConfig
    scaling: ScalingConfig
    personality: PersonalityConfig
    copy_suppression: CopySuppressionConfig

    @classmethod
    def default(cls) -> DemoPlan:
        return cls(
            # The demo's 30 minutes fit the critique and scaling studies on smollm2 only, at the difficulty it
            # can do (3 additions up to 10); `steerlens critique` / `tts` default to qwen at 4 x 50.
            CritiqueConfig(
                n=120,
                steps=3,
                max_operand=10,
                max_new_tokens=64,
                n_detect=60,
                n_calibrate=40,
                alphas=(-0.2, -0.1, 0.0, 0.1, 0.2),
            ),
            ScalingConfig(n_problems=12, samples=8, rounds=2, budget=64),
            PersonalityConfig(with_stability=False),
            CopySuppressionConfig(),
        )

    @classmethod
    def quick(cls) -> DemoPlan:
        return cls(
            CritiqueConfig.quick(steps=3, max_operand=10, max_new_tokens=64),
            ScalingConfig.quick(n_problems=2, budget=48),  # a smoke run: every loop once, no numbers to read
            PersonalityConfig.quick(),
            CopySuppressionConfig.quick(),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).to_dict() for k in self.__dataclass_fields__}


Step = tuple[str, str, Callable[[], list[Section]]]  # (section id, title if it fails, run -> its sections)


def demo_steps(plan: DemoPlan, lm: Model, copy_model: Model | Callable[[], Model], out: Path) -> list[Step]:
    """The demo's steps in order; each runs one study, saves it under ``out`` and returns its sections."""
    from .copy_suppression import run as run_copy
    from .critique import run as run_critique
    from .personality import run as run_personality
    from .scaling import run as run_scaling

    done: dict[str, CritiqueStudy] = {}

    def critique() -> list[Section]:
        done["critique"] = run_critique(lm, plan.critique, out / "critique")
        return _saved(done["critique"], out / "critique")

    def scaling() -> list[Section]:
        if "critique" not in done:
            raise RuntimeError("test-time scaling needs the critique study, which failed")
        return _saved(run_scaling(lm, plan.scaling, done["critique"]), out / "tts")

    def copy_suppression() -> list[Section]:
        cm = copy_model if isinstance(copy_model, Model) else copy_model()
        return _saved(run_copy(cm, plan.copy_suppression), out / "copy_suppression")

    return [
        ("injection", "Error-injected reasoning, probes and error detection", critique),
        ("tts", "Test-time scaling, steered vs unsteered", scaling),
        (
            "personality",
            "Personality",
            lambda: _saved(run_personality(lm, plan.personality), out / "personality"),
        ),
        ("copy_suppression", "Copy suppression: negative heads", copy_suppression),
    ]


def _saved(study: Study, where: Path) -> list[Section]:
    study.save(where, formats=())  # the demo writes every figure once, under figures/
    return list(study.sections())


def run_demo(
    out: str | Path = "runs/demo",
    *,
    model: str = "smollm2-135m-instruct",
    copy_model: str = "gemma-3-270m",
    quick: bool = False,
    formats: tuple[str, ...] = ("html", "png"),
) -> tuple[Path, list[Section]]:
    """Run every study of the plan, write figures (HTML + PNG), metrics JSON and ``report.html`` under ``out``.

    A failing study is reported (console, report, exit code) and the others still run.
    """
    import steerlens

    plan = DemoPlan.quick() if quick else DemoPlan.default()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps = demo_steps(plan, steerlens.load(model), lambda: steerlens.load(copy_model), out)
    sections: list[Section] = []
    for k, (sid, title, fn) in enumerate(steps, 1):
        print(f"[{k}/{len(steps)}] {title}  (elapsed {time.perf_counter() - t0:.0f} s)", flush=True)
        sections += _run_step(sid, title, fn, out, formats)
    settings = {
        "model": model,
        "copy-suppression model": copy_model,
        "sizes": "quick" if quick else "default",
        **plan.to_dict(),
        "total seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "demo.json", {"settings": settings, "sections": {s.id: s.numbers for s in sections}})
    path = write_report(sections, out / "report.html", "steerlens demo report", settings)
    failed = [s.id for s in sections if s.error]
    print(f"wrote {path} in {time.perf_counter() - t0:.0f} s" + (f"; FAILED: {failed}" if failed else ""))
    return path, sections


def _run_step(
    sid: str, title: str, fn: Callable[[], list[Section]], out: Path, formats: tuple[str, ...]
) -> list[Section]:
    """Run one study; its sections get the seconds it took (on the first) and their figures are written."""
    from steerlens.figures import save_figures

    t = time.perf_counter()
    try:
        made = fn()
    except Exception as e:  # report, keep going: the other studies are independent
        made = [Section(sid, title, error=f"{type(e).__name__}: {e}")]
        print(f"      FAILED: {made[0].error}", flush=True)
        (out / f"{sid}.error.txt").write_text(traceback.format_exc())
    for i, sec in enumerate(made):
        sec.numbers["seconds"] = round(time.perf_counter() - t, 1) if i == 0 else 0.0
        if sec.figures:
            save_figures(sec.figures, out / "figures", formats=formats)
    return made


def register(sub: SubParsers) -> None:
    """``steerlens demo``: registered through the ``steerlens.commands`` entry point."""
    from steerlens.registry import DEFAULT_MODEL

    p = sub.add_parser("demo", help="the main job: every analysis on the embedded models, one HTML report")
    p.add_argument("--model", default="smollm2-135m-instruct", help="critique, scaling and personality")
    p.add_argument("--copy-model", default=DEFAULT_MODEL, help="copy-suppression analysis")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in a few minutes")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    _, sections = run_demo(args.out, model=args.model, copy_model=args.copy_model, quick=args.quick)
    return 1 if any(s.error for s in sections) else 0
