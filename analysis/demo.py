"""``steerlens demo``: the whole story on the embedded models, offline, into one run directory and report.

Steps: error-injected reasoning and the 2x2 table -> probes and the critique vector -> error detection vs
alpha with a random control -> test-time scaling steered vs unsteered -> personality dose-response and
leakage -> copy-suppression head report. A failing step is reported (in the console, the report and the exit
code) and the rest still run; nothing already written is lost.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlens.files import write_json

from .report import Section, write_report

if TYPE_CHECKING:
    from .personality import Trait


@dataclass(frozen=True)
class DemoSizes:
    """How much each step does; ``quick`` is for tests and smoke runs, the default fits 30 min on 2 cores."""

    critique_n: int = 120
    detect_n: int = 60
    calibrate_n: int = 40
    alphas: tuple[float, ...] = (-0.2, -0.1, 0.0, 0.1, 0.2)
    tts_problems: int = 12
    tts_samples: int = 8
    tts_rounds: int = 2
    personality_alphas: tuple[float, ...] = (-0.5, -0.25, 0.0, 0.25, 0.5)
    personality_traits: tuple[Trait, ...] = (
        "openness",
        "conscientiousness",
        "extraversion",
        "agreeableness",
        "neuroticism",
    )
    personality_stability: bool = False
    copy_quick: bool = False


QUICK = DemoSizes(
    critique_n=24,
    detect_n=12,
    calibrate_n=8,
    alphas=(-0.2, 0.0, 0.2),
    tts_problems=3,
    tts_samples=2,
    tts_rounds=1,
    personality_alphas=(-0.5, 0.0, 0.5),
    personality_traits=("conscientiousness", "extraversion"),
    copy_quick=True,
)


def run_demo(
    out: str | Path = "runs/demo",
    *,
    model: str = "smollm2-135m-instruct",
    copy_model: str = "gemma-3-270m",
    quick: bool = False,
    formats: tuple[str, ...] = ("html", "png"),
) -> tuple[Path, list[Section]]:
    """Run every step, write figures (HTML + PNG), metrics JSON and ``report.html`` under ``out``."""
    import steerlens

    sizes = QUICK if quick else DemoSizes()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sections: list[Section] = []
    steps = 6
    state: dict[str, Any] = {}

    def step(k: int, title: str, sid: str, fn: Callable[[Section], None]) -> None:
        print(f"[{k}/{steps}] {title}  (elapsed {time.perf_counter() - t0:.0f} s)", flush=True)
        sec = Section(sid, title)
        t = time.perf_counter()
        try:
            fn(sec)
        except Exception as e:  # report, keep going: the other steps are independent
            sec.error = f"{type(e).__name__}: {e}"
            print(f"      FAILED: {sec.error}", flush=True)
            (out / f"{sid}.error.txt").write_text(traceback.format_exc())
        sec.numbers["seconds"] = round(time.perf_counter() - t, 1)
        if sec.figures:
            from steerlens.figures import save_figures

            save_figures(sec.figures, out / "figures", formats=formats)
        sections.append(sec)

    lm = steerlens.load(model)

    def critique(sec: Section) -> None:
        from .critique import CritiqueConfig
        from .critique import run as critique_run

        cfg = CritiqueConfig(
            n=sizes.critique_n, n_detect=sizes.detect_n, n_calibrate=sizes.calibrate_n, alphas=sizes.alphas
        )
        study = critique_run(lm, cfg, out / "critique")
        study.save(out / "critique", formats=())  # the demo writes every figure once, under figures/
        state["critique"] = study
        state["critique sections"] = {s.id: s for s in study.sections()}
        _adopt(sec, state["critique sections"]["injection"])

    def probes(sec: Section) -> None:
        _adopt(sec, state["critique sections"]["probes"])

    def detection(sec: Section) -> None:
        _adopt(sec, state["critique sections"]["detection"])

    def tts(sec: Section) -> None:
        from .scaling import ScalingConfig
        from .scaling import run as scaling_run

        cfg = ScalingConfig(n_problems=sizes.tts_problems, samples=sizes.tts_samples, rounds=sizes.tts_rounds)
        study = scaling_run(lm, cfg, state["critique"], out / "tts")
        study.save(out / "tts", formats=())
        _adopt(sec, study.sections()[0])

    def personality(sec: Section) -> None:
        from .personality import PersonalityConfig, run

        cfg = PersonalityConfig(
            traits=sizes.personality_traits,
            alphas=sizes.personality_alphas,
            with_stability=sizes.personality_stability,
            n_boot=500,  # the demo's intervals have always used 500 resamples
        )
        study = run(lm, cfg)
        study.save(out / "personality", formats=())
        (made,) = study.sections()
        sec.text, sec.numbers, sec.tables, sec.figures = made.text, made.numbers, made.tables, made.figures

    def copy_suppression(sec: Section) -> None:
        from .copy_suppression import CopySuppressionConfig, run

        cfg = CopySuppressionConfig.quick() if sizes.copy_quick else CopySuppressionConfig()
        report = run(steerlens.load(copy_model), cfg)
        report.save(out / "copy_suppression", formats=())  # the demo writes the figures, under figures/
        done = report.sections()[0]
        sec.text, sec.tables = done.text, done.tables
        sec.numbers.update(done.numbers)
        sec.figures.update(done.figures)

    step(1, "Error-injected reasoning and the 2x2 table", "injection", critique)
    step(2, "Probes and the critique vector", "probes", probes)
    step(3, "Error detection vs alpha, with controls", "detection", detection)
    step(4, "Test-time scaling, steered vs unsteered", "tts", tts)
    step(5, "Personality: dose-response, leakage, prompting baseline", "personality", personality)
    step(6, "Copy suppression: negative heads", "copy_suppression", copy_suppression)
    settings = {
        "model": model,
        "copy-suppression model": copy_model,
        "sizes": "quick" if quick else "default",
        **{k: str(v) for k, v in sizes.__dict__.items()},
        "total seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "demo.json", {"settings": settings, "sections": {s.id: s.numbers for s in sections}})
    path = write_report(sections, out / "report.html", "steerlens demo report", settings)
    failed = [s.id for s in sections if s.error]
    print(
        f"wrote {path} in {time.perf_counter() - t0:.0f} s" + (f"; FAILED steps: {failed}" if failed else "")
    )
    return path, sections


def _adopt(sec: Section, built: Section) -> None:
    """Fill a step's section with the contents of the section a study built (same id and title)."""
    if (built.id, built.title) != (sec.id, sec.title):
        raise AssertionError(f"step {sec.id!r} ({sec.title!r}) got section {built.id!r} ({built.title!r})")
    sec.text = built.text
    sec.numbers.update(built.numbers)
    sec.figures.update(built.figures)
    sec.tables.extend(built.tables)
    sec.examples.extend(built.examples)


def register(sub: Any) -> None:
    """``steerlens demo``: registered through the ``steerlens.commands`` entry point."""
    from steerlens.registry import DEFAULT_MODEL

    p = sub.add_parser("demo", help="the main job: every analysis on the embedded models, one HTML report")
    p.add_argument("--model", default="smollm2-135m-instruct", help="critique, scaling and personality")
    p.add_argument("--copy-model", default=DEFAULT_MODEL, help="copy-suppression analysis")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in a few minutes")
    p.set_defaults(func=_main)


def _main(args: Any) -> int:
    _, sections = run_demo(args.out, model=args.model, copy_model=args.copy_model, quick=args.quick)
    return 1 if any(s.error for s in sections) else 0
