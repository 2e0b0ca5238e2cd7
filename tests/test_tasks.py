"""Task generator, exact grader and dataset loaders."""

import json

import pytest

from steerlens.errors import SteerlensError
from steerlens.tasks import arithmetic_problems, extract_answer, grade, load_jsonl, normalize_answer


def test_generator_is_seeded_and_steps_are_true():
    a = arithmetic_problems(50, seed=3, steps=4, max_operand=30)
    assert a == arithmetic_problems(50, seed=3, steps=4, max_operand=30)
    assert a != arithmetic_problems(50, seed=4, steps=4, max_operand=30)
    assert (
        arithmetic_problems(60, seed=3, steps=4, max_operand=30)[:50] == a
    )  # problem i depends on (seed, i)
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}
    for p in a:
        assert len(p.steps) == 4
        for prev, s in zip(p.steps, p.steps[1:], strict=False):
            assert s.a == prev.result
        assert all(ops[s.op](s.a, s.b) == s.result and s.result >= 0 for s in p.steps)
        assert p.answer == str(p.steps[-1].result)
        assert grade(p.solution(), p.answer)


def test_solution_with_error_propagates_or_not():
    p = arithmetic_problems(1, seed=0, steps=3, ops="+")[0]
    r0 = p.steps[0].result
    lines = p.solution(error_step=0, wrong=r0 + 2, propagate=True).split("\n")
    assert lines[0].endswith(f"= {r0 + 2}")
    assert lines[-1] == f"Answer: {int(p.answer) + 2}"  # later steps carry the error on
    kept = p.solution(error_step=0, wrong=r0 + 2, propagate=False).split("\n")
    assert kept[-1] == f"Answer: {p.answer}"
    assert kept[1].startswith(f"Step 2: {r0} ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1: 2 + 2 = 4\nAnswer: 4", "4"),
        ("so she has 1,234 left.\n#### 1,234", "1,234"),
        ("the value is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
        ("Therefore the answer is 17.", "17"),
        ("no marker here 12", None),
        (
            "Answer: 12\nWait, let me check each step again.\nStep 1: 5 + 8 = 13\nAnswer: 13",
            "13",
        ),  # the last one
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_grade_is_exact():
    assert grade("#### 1,234", "1234")
    assert grade("Answer: 12.0", "12")
    assert not grade("Answer: 13", "12")
    assert not grade("I think 12", "12")  # a bare number inside prose is not an answer
    assert grade("12", "12")
    assert normalize_answer("$\\text{5}$") == "5"


def test_load_jsonl_gsm8k_and_math(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text(json.dumps({"question": "1+1?", "answer": "1 + 1 = 2\n#### 2"}) + "\n")
    math = tmp_path / "math.jsonl"
    math.write_text(json.dumps({"problem": "Half of 3?", "answer": "\\frac{3}{2}", "unique_id": "m1"}) + "\n")
    (g,), (m,) = load_jsonl(gsm), load_jsonl(math)
    assert (g.question, g.answer) == ("1+1?", "2")
    assert (m.id, m.answer) == ("m1", "\\frac{3}{2}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"q": 1}) + "\n")
    with pytest.raises(SteerlensError, match="question_key"):
        load_jsonl(bad)
    with pytest.raises(SteerlensError, match="no such file"):
        load_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(SteerlensError, match="ops"):
        arithmetic_problems(3, ops="/")
