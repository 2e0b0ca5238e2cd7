"""The HTML report escapes every string, embeds plotly.js once, and renders each section's parts."""

from steerlens.analysis.report import Section, render, write_report
from steerlens.figures import new_figure


def test_report_escapes_model_text_and_embeds_figures(tmp_path):
    fig = new_figure("t", "x", "y")
    fig.add_scatter(x=[1, 2], y=[3, 4])
    sec = Section(
        "s1",
        "Step <one>",
        text="para one\n\npara <b>two</b>",
        numbers={"acc": {"value": 0.5, "lo": 0.4, "hi": 0.6, "n": 10}},
        figures={"curve": fig},
        tables=[("tab", [{"k": "<script>alert(1)</script>"}])],
        examples=["<|im_start|>user\n</pre><script>alert(2)</script>"],
    )
    bad = Section("s2", "Broken", error="ValueError: <oops>")
    page = render([sec, bad], "demo & report", {"model": "m"})
    assert "<script>alert" not in page  # model text and table cells are escaped
    assert "&lt;|im_start|&gt;" in page and "&lt;/pre&gt;" in page
    assert "Step &lt;one&gt;" in page and "para &lt;b&gt;two&lt;/b&gt;" in page
    assert "0.500 [0.400, 0.600]" in page
    assert page.count("fig-s1-curve") >= 1 and "This step failed: ValueError: &lt;oops&gt;" in page
    assert page.count("Plotly=") <= 2 and len(page) > 1_000_000  # plotly.js embedded once: works offline
    path = write_report([sec], tmp_path / "r.html", "x")
    assert path.read_text().startswith("<!DOCTYPE html>")
