"""The critique study end to end: error-injected reasoning on synthetic problems, probes per layer and the
critique vector (layer chosen on validation), then error detection vs alpha with its controls (a random
direction and a shuffled-label vector, both of equal norm) on a separate synthetic set. ``run`` checkpoints
into its directory and a rerun resumes; ``CritiqueStudy.load`` rebuilds a finished run from that directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import plotly.graph_objects as go

from steerlens.config import StudyConfig, SubParsers
from steerlens.errors import SteerlensError
from steerlens.figures import save_figures
from steerlens.files import read_json, write_json
from steerlens.generation import Engine
from steerlens.model import Model
from steerlens.probes.detection import synthetic_detection_set
from steerlens.probes.linear import Logistic
from steerlens.probes.traces import InjectionRun, error_injected_reasoning
from steerlens.progress import Stages
from steerlens.stats import N_BOOT
from steerlens.steering.vector import SteeringVector, Units
from steerlens.tasks import Problem, arithmetic_problems

from ..report import Section
from ..study import add_study_command
from .detection import ALPHAS, DetectionSweep, detection_sweep
from .vector import CritiqueVector, Method, Span, critique_vector, sweep_from_dict

Mode = Literal["generated", "templated"]  # the model's own chain of thought, or the reference solution

RECORDS, VECTOR, PROBE, METRICS, CONFIG, SHUFFLED = (
    "records.jsonl",
    "critique_vector.safetensors",
    "critique_probe.safetensors",
    "metrics.json",
    "config.json",
    "shuffled_control.safetensors",
)


@dataclass(frozen=True)
class CritiqueConfig(StudyConfig):
    """Settings of the critique study.

    n: synthetic addition problems for error injection
    steps, max_operand: their difficulty (additions per problem; start value and operands up to this)
    seed: problems, injections, splits and the random control (detection sets use seed + 1000 / + 2000)
    mode: 'generated' (the model's own chain of thought) or 'templated' (the reference solution, faster)
    shots: worked examples in the reasoning prompt
    max_new_tokens: token budget of each trace and continuation
    span: the trace tokens the probes and the vector read
    method: how the training rows become a direction
    n_detect: held-out error-detection items
    n_calibrate: items that calibrate the verdict threshold (0: threshold 0.5)
    alphas: steering strengths of the detection sweep, in ``units``
    units: what alpha multiplies ('resid': the mean per-token residual norm at the layer)
    n_boot: bootstrap resamples for every interval the study reports
    batch_size: generation and step-judging batch size
    collect_batch_size: activation-collection batch size
    engine: decoding engine of traces and continuations: 'hf' (transformers generate) or 'vllm' (`make vllm`)
    """

    QUICK: ClassVar[dict[str, Any]] = dict(n=24, n_detect=12, n_calibrate=8, alphas=(-0.2, 0.0, 0.2), shots=1)

    n: int = 200
    steps: int = (
        4  # qwen2.5-coder-0.5b: 75% clean accuracy at 4 x 50 (bench/RESULTS.md, accuracy vs difficulty)
    )
    max_operand: int = 50
    seed: int = 0
    mode: Mode = "generated"
    shots: int = 3
    max_new_tokens: int = 96  # a 4-step trace with 2-3 digit numbers is ~62 tokens on qwen's tokenizer
    span: Span = "answer"
    method: Method = "mean"
    n_detect: int = 100
    n_calibrate: int = 60
    alphas: tuple[float, ...] = ALPHAS
    units: Units = "resid"
    n_boot: int = N_BOOT
    batch_size: int = 16
    collect_batch_size: int = 8
    engine: Engine = "hf"


@dataclass(frozen=True)
class CritiqueStudy:
    """Everything one critique run produced, with the config that made it."""

    config: CritiqueConfig
    run: InjectionRun
    critique: CritiqueVector
    detection: DetectionSweep

    @property
    def model_name(self) -> str:
        return str(self.run.settings.get("model"))

    def summary(self) -> dict[str, Any]:
        best = self.critique.sweep.score(self.critique.layer)
        return {
            "settings": {"model": self.model_name, **self.config.to_dict()},
            "injection": self.run.summary(),
            "probe": {
                "span": self.critique.span,
                "chosen_layer": self.critique.layer,
                "chosen_on": "validation split",
                "test_auroc_at_chosen_layer": best.auroc,
                "test_auroc_ci": [best.auroc_lo, best.auroc_hi],
                "shuffled_label_auroc_at_chosen_layer": best.shuffled_auroc,
                "vector_settings": self.critique.settings,
                "sweep": self.critique.sweep.to_dict(),
            },
            "detection": self.detection.to_dict(),
            "verdict": self.detection.verdict(),
        }

    def figures(self) -> dict[str, go.Figure]:
        return {
            "injection_table": self.run.figure(),
            "probe_layers": self.critique.sweep.figure(),
            "detection_vs_alpha": self.detection.figure(),
        }

    def sections(self) -> list[Section]:
        """The report's three sections: the injection 2x2 table, the probes, error detection vs alpha."""
        s = self.summary()
        return [self._injection_section(s["injection"]), self._probes_section(s["probe"]), self._detection()]

    def _injection_section(self, inj: dict[str, Any]) -> Section:
        sec = Section("injection", "Error-injected reasoning and the 2x2 table")
        sec.text = (
            f"{inj['n_problems']} synthetic {self.config.steps}-step addition problems (operands up to "
            f"{self.config.max_operand}); the model's own chain of thought had one "
            "intermediate result replaced by a wrong value, and generation continued from there. The 2x2 table "
            "crosses whether the rest of the reasoning was right with whether the final answer was."
        )
        sec.numbers.update(
            {
                **{
                    (k if k != "clean accuracy" else "clean accuracy (no injection)"): v.to_dict()
                    for k, v in self.run.estimates(self.config.n_boot, self.config.seed).items()
                },
            }
        )
        sec.figures["injection_table"] = self.run.figure()
        sec.examples = [
            f"Question: {r.question}\n--- clean trace ---\n{r.trace}\n--- after injecting "
            f"{r.injection.wrong if r.injection else '?'} ---\n{r.prefix}{r.continuation}\n[{r.category}]"
            for r in self.run.injected[:3]
        ]
        return sec

    def _probes_section(self, p: dict[str, Any]) -> Section:
        sec = Section("probes", "Probes and the critique vector")
        lo = p["test_auroc_ci"][0]
        found = (
            f"the probe separates them on held-out traces (AUROC CI lower bound {lo:.2f} > 0.5)"
            if lo > 0.5
            else f"no reliable linear signal on held-out traces here (AUROC CI reaches {lo:.2f} <= 0.5)"
        )
        sec.text = (
            "Linear probes per layer are trained to tell corrupted from clean traces at the final-answer tokens; "
            "the layer is chosen on a validation split and scored on a held-out test split, beside a "
            f"shuffled-label control: {found}. The critique vector is the difference of means at that layer."
        )
        sec.numbers.update(
            {
                "chosen layer": p["chosen_layer"],
                "test AUROC at chosen layer": p["test_auroc_at_chosen_layer"],
                "95% CI": p["test_auroc_ci"],
                "shuffled-label AUROC": p["shuffled_label_auroc_at_chosen_layer"],
            }
        )
        sec.figures["probe_layers"] = self.critique.sweep.figure()
        return sec

    def _detection(self) -> Section:
        sec = Section("detection", "Error detection vs alpha, with controls")
        sec.text = self.detection.verdict()
        sec.numbers["verdict"] = self.detection.verdict()
        sec.figures["detection_vs_alpha"] = self.detection.figure()
        return sec

    def save(self, out: str | Path, formats: Sequence[str] = ("html",)) -> Path:
        """Write records, vector, probe (with its layer), metrics and config JSON, and the figures in
        ``formats`` (HTML shares one plotly.js; ``()`` for none, e.g. when a report collects them)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.run.save(out / RECORDS)
        self.critique.vector.save(out / VECTOR)
        if self.critique.shuffled is not None:
            self.critique.shuffled.save(out / SHUFFLED)
        if self.critique.probe is not None:
            self.critique.probe.save(out / PROBE, layer=self.critique.layer)
        write_json(out / METRICS, self.summary())
        write_json(out / CONFIG, self.config.to_dict())
        save_figures(self.figures(), out, formats=formats)
        return out

    @classmethod
    def load(cls, out: str | Path, model: Model | None = None) -> CritiqueStudy:
        """Rebuild a run written by ``save``: records, vector (checked against ``model`` when given), the
        probe at its layer, the probe sweep and the detection sweep. A missing or partial directory raises."""
        out = Path(out)
        missing = [name for name in (RECORDS, VECTOR, PROBE, METRICS) if not (out / name).is_file()]
        if missing:
            what = "does not exist" if not out.is_dir() else f"is not a finished critique run (no {missing})"
            raise SteerlensError(f"{out} {what}; run `steerlens critique --out {out}` to make it")
        metrics = read_json(out / METRICS)
        layer = int(metrics["probe"]["chosen_layer"])
        probe, meta = Logistic.load(out / PROBE)
        if meta.get("layer") != layer:
            raise SteerlensError(
                f"{out / PROBE} was fitted at layer {meta.get('layer')}, but the run chose layer {layer}; "
                f"rerun `steerlens critique --out {out}`"
            )
        cfg = _config(out, metrics)
        cv = CritiqueVector(
            SteeringVector.load(out / VECTOR, model=model),
            layer,
            sweep_from_dict(metrics["probe"]["sweep"]),
            metrics["probe"]["span"],
            probe,
            metrics["probe"].get("vector_settings", {}),
            SteeringVector.load(out / SHUFFLED, model=model) if (out / SHUFFLED).is_file() else None,
        )
        run = InjectionRun.load(out / RECORDS)
        return cls(cfg, run, cv, DetectionSweep.from_dict(metrics["detection"]))


def _config(out: Path, metrics: dict[str, Any]) -> CritiqueConfig:
    """The run's config (``config.json``; runs written before it existed: the settings in the metrics)."""
    if (out / CONFIG).is_file():
        return CritiqueConfig.from_dict(read_json(out / CONFIG))
    names = {f.name for f in fields(CritiqueConfig)}
    return CritiqueConfig.from_dict({k: v for k, v in metrics["settings"].items() if k in names})


def resumable(run: InjectionRun, wanted: dict[str, Any]) -> bool:
    """Whether checkpointed records were made with every setting in ``wanted`` (model, data, decoding)."""
    return all(run.settings.get(k) == v for k, v in wanted.items())


def run(
    model: Model, cfg: CritiqueConfig, out: str | Path | None = None, *, progress: bool = True
) -> CritiqueStudy:
    """The critique pipeline: error-injected reasoning on ``cfg.n`` problems, probes per layer and the
    critique vector, error detection vs alpha with its two controls. With ``out``, the records and the
    activations are checkpointed there and a rerun resumes; ``save`` writes the rest.

    Example:
        >>> study = run(model, CritiqueConfig.quick(), Path("runs/critique"))
        >>> study.save("runs/critique"); study.detection.verdict()
    """
    say = Stages("critique", 3, progress)
    out_p = Path(out) if out is not None else None
    inj, fresh = injection_run(model, cfg, out_p / RECORDS if out_p else None, say, progress)
    t = inj.table()
    say.note(f"2x2 on {t['n']} injected: {t['fractions']}")
    say.stage(f"probes per layer at '{cfg.span}' tokens and the critique vector")
    cv = critique_vector(
        model,
        inj,
        span=cfg.span,
        method=cfg.method,
        seed=cfg.seed,
        batch_size=cfg.collect_batch_size,
        n_boot=cfg.n_boot,
        store_dir=str(out_p / "activations") if out_p else None,
        overwrite=fresh,  # stores of a replaced run hold its traces, not these
    )
    sc = cv.sweep.score(cv.layer)
    say.note(
        f"layer {cv.layer} (chosen on validation): test AUROC {sc.auroc:.3f}, shuffled {sc.shuffled_auroc:.3f}"
    )
    say.stage(f"error detection vs alpha on {cfg.n_detect} held-out items (+ random and shuffled controls)")
    items = synthetic_detection_set(cfg.n_detect, seed=cfg.seed + 1_000)
    calib = synthetic_detection_set(cfg.n_calibrate, seed=cfg.seed + 2_000) if cfg.n_calibrate else []
    det = detection_sweep(
        model,
        cv,
        items,
        calibration=calib,
        alphas=cfg.alphas,
        units=cfg.units,
        seed=cfg.seed,
        n_boot=cfg.n_boot,
        batch_size=cfg.batch_size,
    )
    say.note(det.verdict())
    return CritiqueStudy(cfg, inj, cv, det)


def problems(cfg: CritiqueConfig) -> list[Problem]:
    """The study's synthetic problems: ``cfg.n`` additions of ``cfg.steps`` steps, operands up to
    ``cfg.max_operand``, seeded."""
    return arithmetic_problems(cfg.n, seed=cfg.seed, steps=cfg.steps, ops="+", max_operand=cfg.max_operand)


def injection_key(model: Model, cfg: CritiqueConfig) -> dict[str, Any]:
    """Everything that made a run's records (model, problems, decoding): checkpointed records are reused only
    when they were made with all of it."""
    made = arithmetic_problems(1, seed=cfg.seed, steps=cfg.steps, ops="+", max_operand=cfg.max_operand)[0]
    return dict(
        model=model.name,
        seed=cfg.seed,
        n_problems=cfg.n,
        problem_settings=dict(made.meta),
        mode=cfg.mode,
        shots=cfg.shots,
        max_new_tokens=cfg.max_new_tokens,
        engine=cfg.engine,
    )


def injection_run(
    model: Model, cfg: CritiqueConfig, records: Path | None, say: Stages, progress: bool
) -> tuple[InjectionRun, bool]:
    """Step 1: the checkpointed records when they were made with these settings, else a fresh run (saved
    to ``records``). Also says whether a checkpoint of another run was replaced."""
    inj = InjectionRun.load(records) if records is not None and records.exists() else None
    wanted = injection_key(model, cfg)
    fresh = inj is not None and not resumable(inj, wanted)
    if fresh:
        say.note(f"{records} holds another run's records ({wanted} asked): recomputing")
        inj = None
    if inj is not None:
        say.stage(f"reusing {records}")
        return inj, fresh
    say.stage(f"error-injected reasoning on {cfg.n} problems ({cfg.mode})")
    inj = error_injected_reasoning(
        model,
        problems(cfg),
        mode=cfg.mode,
        seed=cfg.seed,
        shots=cfg.shots,
        chat="auto",
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        progress=progress,
        engine=cfg.engine,
    )
    if records is not None:
        inj.save(records)
    return inj, fresh


# ---- command line (registered through the ``steerlens.commands`` entry point) -------------------------


STUDY_MODEL = (
    "qwen2.5-coder-0.5b-instruct"  # the embedded model that reasons; smollm2 and gemma are at chance
)


def register(sub: SubParsers) -> None:
    """``steerlens critique``: one flag per ``CritiqueConfig`` field, ``--quick`` for the smoke sizes."""
    add_study_command(
        sub,
        "critique",
        "error-injected reasoning, probes, critique vector, detection vs alpha",
        CritiqueConfig,
        lambda model, cfg, out, args: run(model, cfg, out),
        model=STUDY_MODEL,
    )
