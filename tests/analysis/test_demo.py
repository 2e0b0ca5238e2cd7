"""The main job end to end at quick sizes: every section in the report, figures rendered to static PNGs."""

import json

import pytest

from steerlens.analysis.demo import run_demo

SECTIONS = ["injection", "probes", "detection", "tts", "personality", "copy_suppression"]


@pytest.mark.slow
def test_quick_demo_writes_the_full_report(tmp_path):
    path, sections = run_demo(tmp_path / "demo", quick=True)
    assert [s.id for s in sections] == SECTIONS
    failed = {s.id: s.error for s in sections if s.error}
    assert not failed, failed
    page = path.read_text()
    for s in sections:
        assert f"id='{s.id}'" in page and s.figures, s.id  # each section is there, with figures
    pngs = sorted((tmp_path / "demo" / "figures").glob("*.png"))
    assert len(pngs) >= 10
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5_000
    meta = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert meta["settings"]["sizes"] == "quick"
    assert (tmp_path / "demo" / "critique" / "critique_vector.safetensors").exists()
    assert sorted((tmp_path / "demo" / "personality").glob("trait_*.safetensors"))
    run = tmp_path / "demo"
    stray = [p.relative_to(run) for p in run.rglob("*") if p.suffix in (".html", ".js")]
    assert all(p.parts[0] == "figures" or p.name == "report.html" for p in stray), stray  # figures once


def test_a_failing_study_is_reported_and_the_others_keep_their_sections(tmp_path):
    from steerlens.analysis.demo import _run_step
    from steerlens.analysis.report import Section

    def boom():
        raise ValueError("no such layer")

    (failed,) = _run_step("tts", "Test-time scaling", boom, tmp_path, ())
    assert failed.error == "ValueError: no such layer" and failed.title == "Test-time scaling"
    assert "no such layer" in (tmp_path / "tts.error.txt").read_text()
    fine = _run_step("x", "X", lambda: [Section("a", "A"), Section("b", "B")], tmp_path, ())
    assert [s.id for s in fine] == ["a", "b"] and not any(s.error for s in fine)
    assert fine[1].numbers["seconds"] == 0.0  # a study's time is counted once, on its first section
