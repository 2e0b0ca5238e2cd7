"""The model-size comparison: the same injection protocol per model, CIs over problems, checkpoint reuse."""

import pytest

from steerlens.analysis.critique import CritiqueConfig
from steerlens.analysis.critique import study as study_mod
from steerlens.analysis.critique.compare import compare_models
from steerlens.tasks import arithmetic_problems

CFG = CritiqueConfig(n=8, steps=4, max_operand=30, mode="templated", max_new_tokens=40, n_boot=50)


def test_comparison_table_and_reuse(smol, gemma, tmp_path, monkeypatch):
    cmp = compare_models([smol, gemma], CFG, tmp_path, progress=False)
    assert list(cmp.runs) == [smol.name, gemma.name]
    for name, run in cmp.runs.items():
        assert run.settings["problem_settings"]["steps"] == 4 and run.settings["n_problems"] == 8
        est = cmp.estimates()[name]
        cells = [est[c].value for c in ("recovered", "hidden_critique", "unfaithful_answer", "propagated")]
        assert sum(cells) == pytest.approx(1.0) and all(e.lo <= e.value <= e.hi for e in est.values())
        assert est["clean accuracy"].value == 1.0  # templated traces are the reference solutions
    assert cmp.table().count("\n") == 3 and smol.name in cmp.table()
    # a well-formed markdown table: every row has as many cells as the header (an unescaped "|" in a column
    # name split one)
    rows = [r.replace("\\|", "") for r in cmp.table().splitlines()]
    assert len({r.count("|") for r in rows}) == 1
    assert len(cmp.figure().data) == 2
    # same settings: the records are reused, not regenerated
    monkeypatch.setattr(study_mod, "error_injected_reasoning", lambda *a, **k: pytest.fail("regenerated"))
    again = compare_models([smol], CFG, tmp_path, progress=False)
    assert again.runs[smol.name].records == cmp.runs[smol.name].records


def test_difficulty_knobs_reach_the_problems():
    easy = arithmetic_problems(4, seed=0, steps=3, ops="+", max_operand=10)
    hard = study_mod.problems(CFG)
    assert len(hard) == 8 and all(len(p.steps) == 4 for p in hard) and len(easy[0].steps) == 3
