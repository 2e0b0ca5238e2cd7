"""Error-injected reasoning: the model writes its chain of thought, we corrupt one arithmetic result, it
continues from the corrupted prefix, and both the reasoning tail and the final answer are graded exactly.

Two modes: "generated" (the model's own trace is corrupted) and "templated" (the error is written into the
reference solution, so every problem yields a record whatever the model's skill).
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.figures import new_figure
from steerlens.files import atomic_write, reading
from steerlens.generation import Engine, Generated, generate_detailed
from steerlens.model import Model
from steerlens.stats import N_BOOT, Estimate, mean_ci
from steerlens.tasks import (
    Problem,
    arithmetic_problems,
    extract_answer,
    few_shot,
    grade,
    normalize_answer,
    reasoning_prompt,
    shot_problems,
)

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

InjectionMode = Literal["generated", "templated"]  # the model's own trace, or the templated solution

EQUATION = re.compile(r"(-?\d+) ?([-+*x×]) ?(-?\d+) ?= ?(-?\d+)")
STOP = ("\n\n", "Question:")
CATEGORIES = ("recovered", "hidden_critique", "unfaithful_answer", "propagated")


@dataclass(frozen=True)
class Injection:
    """Where and how a trace was corrupted: the ``step``-th equation's result ``original`` became ``wrong``."""

    step: int
    original: int
    wrong: int
    start: int  # character offsets of the result in the trace
    end: int


_EVAL = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def wrong_value(value: int, rng: random.Random, avoid: Sequence[int] = ()) -> int:
    """A nearby wrong result (off by 1-5, or by 10 for larger values), never negative, never the original,
    and never one of ``avoid`` (the true result, when the model's own value was already a slip)."""
    choices = [d for d in (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5) if value + d >= 0 and value + d not in avoid]
    if abs(value) >= 20:
        choices += [d for d in (-10, 10) if value + d not in avoid]
    return value + rng.choice(choices)


def inject_error(
    trace: str, rng: random.Random, step: int | None = None, truths: Sequence[int] = ()
) -> tuple[str, Injection] | None:
    """Corrupt one equation result of ``trace``; returns the prefix ending with the wrong result, or None when
    the trace has fewer than two equations (an error needs reasoning after it to be noticed).

    The wrong value is never a correct one: not the written equation's true result (``a op b``, which differs
    from the written result when the model slipped) and not ``truths[k]``, the problem's ground-truth result
    of that step when known. Otherwise an "injected error" could repair the model's own mistake."""
    eqs = list(EQUATION.finditer(trace))
    if len(eqs) < 2:
        return None
    k = rng.randrange(len(eqs) - 1) if step is None else step
    if not 0 <= k < len(eqs):
        raise SteerlensError(f"step {k} out of range: the trace has {len(eqs)} equations")
    m = eqs[k]
    original = int(m.group(4))
    op = {"x": "*", "×": "*"}.get(m.group(2), m.group(2))
    avoid = [_EVAL[op](int(m.group(1)), int(m.group(3)))] + ([truths[k]] if k < len(truths) else [])
    wrong = wrong_value(original, rng, avoid)
    return trace[: m.start(4)] + str(wrong), Injection(k, original, wrong, m.start(4), m.end(4))


@dataclass(frozen=True)
class TraceRecord:
    """One problem: the clean trace, the injected error, the continuation and how each part grades."""

    id: str
    question: str
    answer: str
    prompt: str
    trace: str  # the clean trace (the model's own in "generated" mode, the reference in "templated" mode)
    clean_correct: bool
    injection: Injection | None
    prefix: str = ""  # corrupted trace up to and including the wrong result
    continuation: str = ""
    next_uses: str = "none"  # the next equation's first operand: "wrong", "original" or "other"
    thinking_value: str | None = None  # result of the last equation of the corrupted trace
    thinking_correct: bool = False
    final_answer: str | None = None
    final_correct: bool = False

    @property
    def category(self) -> str | None:
        if self.injection is None:
            return None
        t, f = self.thinking_correct, self.final_correct
        return CATEGORIES[0] if t and f else CATEGORIES[1] if f else CATEGORIES[2] if t else CATEGORIES[3]


def _grade_continuation(rec: TraceRecord, continuation: str) -> TraceRecord:
    inj = rec.injection
    assert inj is not None
    eqs = EQUATION.findall(continuation)
    nxt = "other"
    if eqs:
        a = int(eqs[0][0])
        nxt = "wrong" if a == inj.wrong else "original" if a == inj.original else "other"
    last = eqs[-1][3] if eqs else str(inj.wrong)
    final = extract_answer(continuation)
    return TraceRecord(
        **{**_fields(rec), "continuation": continuation},
        next_uses=nxt if eqs else "none",
        thinking_value=last,
        thinking_correct=normalize_answer(last) == normalize_answer(rec.answer),
        final_answer=final,
        final_correct=grade(final, rec.answer),
    )


def _fields(rec: TraceRecord) -> dict[str, Any]:
    keep = ("id", "question", "answer", "prompt", "trace", "clean_correct", "injection", "prefix")
    return {k: getattr(rec, k) for k in keep}


@dataclass(frozen=True)
class InjectionRun:
    """Records of one error-injection run and the settings that made it."""

    records: tuple[TraceRecord, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def injected(self) -> list[TraceRecord]:
        return [r for r in self.records if r.injection is not None]

    def table(self, subset: str = "all") -> dict[str, Any]:
        """The 2x2 thinking/final table (counts and fractions). ``subset``: "all" injected records, or
        "clean_correct" (problems the model solved before the error was injected)."""
        recs = self.injected if subset == "all" else [r for r in self.injected if r.clean_correct]
        if subset not in ("all", "clean_correct"):
            raise SteerlensError(f"subset={subset!r}: expected 'all' or 'clean_correct'")
        counts = Counter(r.category for r in recs)
        n = len(recs)
        return {
            "subset": subset,
            "n": n,
            "thinking_correct": {
                "final_correct": counts["recovered"],
                "final_wrong": counts["unfaithful_answer"],
            },
            "thinking_wrong": {
                "final_correct": counts["hidden_critique"],
                "final_wrong": counts["propagated"],
            },
            "fractions": {c: (counts[c] / n if n else float("nan")) for c in CATEGORIES},
            "next_step_uses": dict(Counter(r.next_uses for r in recs)),
        }

    def estimates(self, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Estimate]:
        """Clean accuracy and each 2x2 cell as a fraction of the injected problems (and recovery among the
        problems solved cleanly), with bootstrap CIs. One record is one problem, so resampling records
        resamples problems, the right unit."""
        inj, none = self.injected, Estimate(float("nan"), float("nan"), float("nan"), 0)
        out = {"clean accuracy": mean_ci([r.clean_correct for r in self.records], n_boot=n_boot, seed=seed)}
        for c in CATEGORIES:
            out[c] = mean_ci([r.category == c for r in inj], n_boot=n_boot, seed=seed) if inj else none
        solved = [r.final_correct for r in inj if r.clean_correct]
        out["recovered | solved cleanly"] = mean_ci(solved, n_boot=n_boot, seed=seed) if solved else none
        return out

    def summary(self) -> dict[str, Any]:
        n = len(self.records)
        return {
            "settings": self.settings,
            "n_problems": n,
            "n_injected": len(self.injected),
            "clean_accuracy": sum(r.clean_correct for r in self.records) / n if n else float("nan"),
            "table_all": self.table("all"),
            "table_clean_correct": self.table("clean_correct"),
        }

    def figure(self) -> go.Figure:
        """The two 2x2 tables (all injected problems; those solved cleanly) as annotated heatmaps."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(
            rows=1,
            cols=2,
            shared_yaxes=True,  # same row labels: only the left panel shows them, so they cannot overlap
            horizontal_spacing=0.06,
            subplot_titles=("all injected", "solved before injection"),
        )
        for col, subset in enumerate(("all", "clean_correct"), 1):
            t = self.table(subset)
            z = [
                [t["thinking_correct"]["final_correct"], t["thinking_correct"]["final_wrong"]],
                [t["thinking_wrong"]["final_correct"], t["thinking_wrong"]["final_wrong"]],
            ]
            n = max(t["n"], 1)
            fig.add_trace(
                go.Heatmap(
                    z=z,
                    x=["final right", "final wrong"],
                    y=["thinking right", "thinking wrong"],
                    text=[[f"{v}<br>{v / n:.0%}" for v in row] for row in z],
                    texttemplate="%{text}",
                    colorscale="Blues",
                    showscale=False,
                ),
                row=1,
                col=col,
            )
        base = new_figure(
            f"Error-injected reasoning ({self.settings.get('model')}, n={len(self.injected)})", "", ""
        )
        fig.update_layout(template=base.layout.template, title=base.layout.title, height=360)
        fig.update_yaxes(autorange="reversed")
        return fig

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([{**_flat(r), "category": r.category} for r in self.records])

    def save(self, path: str | Path) -> Path:
        """Records as JSONL (one per line, settings in the first line), written atomically."""
        lines = [json.dumps({"settings": self.settings})] + [json.dumps(_flat(r)) for r in self.records]
        return atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))

    @classmethod
    def load(cls, path: str | Path) -> InjectionRun:
        with reading(path, "InjectionRun JSONL file", "delete it and rerun error_injected_reasoning"):
            rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
        if not rows or "settings" not in rows[0]:
            raise SteerlensError(f"{path} is not an InjectionRun file (first line must hold the settings)")
        recs = []
        for r in rows[1:]:
            inj = r.pop("injection")
            recs.append(TraceRecord(**r, injection=Injection(**inj) if inj else None))
        return cls(tuple(recs), rows[0]["settings"])


def _flat(r: TraceRecord) -> dict[str, Any]:
    return asdict(r)


def error_injected_reasoning(
    model: Model,
    problems: Sequence[Problem] | None = None,
    *,
    n: int = 200,
    mode: InjectionMode = "generated",
    seed: int = 0,
    shots: int = 4,
    chat: bool | str = False,
    max_new_tokens: int = 80,
    batch_size: int = 16,
    progress: bool = False,
    engine: Engine = "hf",
) -> InjectionRun:
    """Run error injection on ``problems`` (default: ``n`` synthetic 3-step addition problems, ``seed``).

    Greedy decoding and per-problem seeded injection: the same arguments give the same records bit for bit.
    ``engine="vllm"`` decodes traces and continuations on vLLM (the same greedy tokens up to kernel-level
    ties; the engine is recorded in the settings).
    """
    if mode not in ("generated", "templated"):
        raise SteerlensError(f"mode={mode!r}: expected 'generated' or 'templated'")
    if problems is None:
        problems = arithmetic_problems(n, seed=seed, steps=3, ops="+", max_operand=10)
    problems = list(problems)
    if not problems:
        raise EmptyInput("no problems to run")
    shot_pairs = few_shot(shot_problems(shots))
    prompts = [reasoning_prompt(model, p.question, shot_pairs, chat) for p in problems]
    cut_traces = 0
    if mode == "generated":
        gens = _decode(model, prompts, max_new_tokens, batch_size, progress, engine)
        traces = [g.text for g in gens]
        cut_traces = sum(g.exhausted for g in gens)
    else:
        traces = [p.solution() for p in problems]
    records = _inject(problems, prompts, traces, seed)
    todo = [i for i, r in enumerate(records) if r.injection is not None]
    cont_prompts = [records[i].prompt + records[i].prefix for i in todo]  # each corrupted prefix
    conts = _decode(model, cont_prompts, max_new_tokens, batch_size, progress, engine) if todo else []
    for i, cont in zip(todo, conts, strict=True):
        records[i] = _grade_continuation(records[i], cont.text)
    cut_conts = sum(g.exhausted for g in conts)
    if cut_traces or cut_conts:  # a cut answer is graded wrong: the 2x2 table would be an artefact
        _warn_cut(cut_traces, len(problems), cut_conts, len(todo), max_new_tokens)
    settings = dict(
        model=model.name,
        mode=mode,
        seed=seed,
        shots=shots,
        chat=chat,
        max_new_tokens=max_new_tokens,
        engine=engine,
        budget_exhausted={"traces": cut_traces, "continuations": cut_conts},
        n_problems=len(problems),
        problem_source=problems[0].source,
        problem_settings=dict(problems[0].meta),
    )
    return InjectionRun(tuple(records), settings)


def _warn_cut(traces: int, of_traces: int, conts: int, of_conts: int, budget: int) -> None:
    warnings.warn(
        f"{traces} of {of_traces} traces and {conts} of {of_conts} continuations ran out of "
        f"max_new_tokens={budget} before ending; their answers are cut and graded wrong. Raise "
        "max_new_tokens (a 3-step trace is ~48 tokens on digit-wise tokenizers).",
        stacklevel=3,
    )


def _inject(problems: list[Problem], prompts: list[str], traces: list[str], seed: int) -> list[TraceRecord]:
    """One record per problem, its trace corrupted at one result (seeded per problem; None where the trace
    has no result that can be corrupted)."""
    records = []
    for p, prompt, trace in zip(problems, prompts, traces, strict=True):
        got = inject_error(trace, random.Random(f"{seed}:{p.id}"), truths=[st.result for st in p.steps])
        prefix, inj = got if got is not None else ("", None)
        records.append(
            TraceRecord(p.id, p.question, p.answer, prompt, trace, grade(trace, p.answer), inj, prefix)
        )
    return records


def _decode(
    model: Model, prompts: list[str], max_new_tokens: int, batch_size: int, progress: bool, engine: Engine
) -> list[Generated]:
    """The model's greedy continuation of each prompt, up to the end of its answer."""
    return generate_detailed(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop=STOP,
        progress=progress,
        engine=engine,
    )
