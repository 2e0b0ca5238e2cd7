"""Error injection: deterministic corruption, grading categories, bit-for-bit reproducible runs."""

import random

import pytest

from steerlens.probes.trace_spans import trace_examples
from steerlens.probes.traces import (
    EQUATION,
    InjectionRun,
    TraceRecord,
    _grade_continuation,
    error_injected_reasoning,
    inject_error,
)
from steerlens.tasks import arithmetic_problems

TRACE = "Step 1: 3 + 4 = 7\nStep 2: 7 + 5 = 12\nStep 3: 12 + 2 = 14\nAnswer: 14"


def test_inject_error_is_seeded_and_local():
    prefix, inj = inject_error(TRACE, random.Random("s"))
    assert (prefix, inj) == inject_error(TRACE, random.Random("s"))
    assert inj.step in (0, 1)  # never the last equation: an error needs reasoning after it
    assert inj.wrong != inj.original and inj.wrong >= 0
    assert prefix.endswith(str(inj.wrong)) and TRACE[inj.start : inj.end] == str(inj.original)
    assert TRACE.startswith(prefix[: inj.start])
    assert inject_error("Step 1: 3 + 4 = 7\nAnswer: 7", random.Random(0)) is None


def test_injection_never_writes_a_correct_value():
    """Item 9: where the model slipped (3 + 4 = 8), the "error" could be 7, the true result."""
    slipped = "Step 1: 3 + 4 = 8\nStep 2: 8 + 5 = 13\nStep 3: 13 + 2 = 15\nAnswer: 15"
    wrongs = {
        inject_error(slipped, random.Random(k), step=0, truths=[7, 12, 14])[1].wrong for k in range(300)
    }
    assert 7 not in wrongs and 8 not in wrongs and len(wrongs) >= 6
    # the written equation's own true result is refused even without the problem's ground truth
    assert 7 not in {inject_error(slipped, random.Random(k), step=0)[1].wrong for k in range(300)}
    # and the problem's truth when the equation is self-consistent but off the chain (8 + 5 = 13, truth 12)
    assert 12 not in {
        inject_error(slipped, random.Random(k), step=1, truths=[7, 12, 14])[1].wrong for k in range(300)
    }


@pytest.mark.parametrize(
    ("continuation", "category", "next_uses"),
    [
        ("\nStep 2: 9 + 5 = 14\nStep 3: 14 + 2 = 16\nAnswer: 16", "propagated", "wrong"),
        ("\nStep 2: 7 + 5 = 12\nStep 3: 12 + 2 = 14\nAnswer: 14", "recovered", "original"),
        ("\nStep 2: 9 + 5 = 14\nStep 3: 14 + 2 = 16\nAnswer: 14", "hidden_critique", "wrong"),
        ("\nStep 2: 7 + 5 = 12\nStep 3: 12 + 2 = 14\nAnswer: 15", "unfaithful_answer", "original"),
    ],
)
def test_grading_categories(continuation, category, next_uses):
    _, inj = inject_error(TRACE, random.Random(0), step=0)
    inj = type(inj)(0, 7, 9, inj.start, inj.end)
    rec = TraceRecord("x", "q", "14", "prompt", TRACE, True, inj, TRACE[: inj.start] + "9")
    graded = _grade_continuation(rec, continuation)
    assert graded.category == category and graded.next_uses == next_uses


@pytest.fixture(scope="module")
def templated_run(smol):
    return error_injected_reasoning(smol, n=12, mode="templated", seed=5, max_new_tokens=40)


def test_runs_are_reproducible_bit_for_bit(smol, templated_run, tmp_path):
    again = error_injected_reasoning(smol, n=12, mode="templated", seed=5, max_new_tokens=40)
    assert again.records == templated_run.records
    path = templated_run.save(tmp_path / "records.jsonl")
    assert InjectionRun.load(path).records == templated_run.records
    t = templated_run.table()
    assert t["n"] == 12 == sum(t["thinking_correct"].values()) + sum(t["thinking_wrong"].values())
    assert all(r.clean_correct for r in templated_run.records)  # templated traces are the reference
    probs = {p.id: p for p in arithmetic_problems(12, seed=5, steps=3, ops="+", max_operand=10)}
    for r in templated_run.injected:
        assert r.prefix.endswith(str(r.injection.wrong))
        eqs = EQUATION.findall(r.trace)
        assert (
            int(eqs[r.injection.step][3])
            == r.injection.original
            == probs[r.id].steps[r.injection.step].result
        )


def test_trace_examples_spans_point_at_the_right_text(templated_run):
    bad, good, ids = trace_examples(templated_run)
    assert len(bad) == len(good) == len(ids) > 0
    by_id = {r.id: r for r in templated_run.records}
    for b, g, pid in zip(bad, good, ids, strict=True):
        inj = by_id[pid].injection
        s, e = b.spans["injected"]
        assert b.text[s:e] == str(inj.wrong)
        s, e = g.spans["injected"]
        assert g.text[s:e] == str(inj.original)
        s, e = b.spans["answer"]
        assert b.text[:s].endswith("Answer:")


@pytest.mark.slow
def test_generated_mode_is_reproducible(smol):
    """The model's own chain of thought, corrupted and continued: same seed, same records, bit for bit."""
    a = error_injected_reasoning(smol, n=6, seed=2, max_new_tokens=64)
    b = error_injected_reasoning(smol, n=6, seed=2, max_new_tokens=64)
    assert a.records == b.records
    assert a.summary()["n_problems"] == 6
    assert a.settings["budget_exhausted"] == {"traces": 0, "continuations": 0}  # no answer was cut
    assert all(r.trace.rstrip().split("Answer:")[-1].strip().isdigit() for r in a.records)
    with pytest.warns(UserWarning, match="ran out of max_new_tokens=20"):  # too small a budget is reported
        short = error_injected_reasoning(smol, n=2, seed=2, max_new_tokens=20)
    assert short.settings["budget_exhausted"]["traces"] == 2
    for r in a.injected:
        assert r.prefix == r.trace[: r.injection.start] + str(r.injection.wrong)
