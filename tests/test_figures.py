"""Figure export: HTML and static images through kaleido + the system Chromium (one browser per call)."""

import struct
from pathlib import Path

import pytest

from steerlens.errors import SteerlensError
from steerlens.figures import PALETTE, find_browser, line_with_band, new_figure, save_figure, save_figures

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-"}


def _figure(title: str = "Accuracy vs alpha"):
    fig = new_figure(title, "alpha", "accuracy")
    return line_with_band(
        fig, [0, 1, 2], [0.5, 0.6, 0.7], [0.4, 0.5, 0.6], [0.6, 0.7, 0.8], "critique", PALETTE[0]
    )


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_static_images_in_one_session(tmp_path: Path):
    fig = _figure()
    written = save_figures(
        {"sweep": fig, "other": _figure("Second")}, tmp_path, ("png", "svg", "pdf"), scale=2
    )
    assert [p.name for p in written["sweep"]] == ["sweep.png", "sweep.svg", "sweep.pdf"]
    data = {p.suffix[1:]: p.read_bytes() for p in written["sweep"]}
    assert all(len(d) > 1000 for d in data.values())
    assert data["png"].startswith(MAGIC["png"]) and data["pdf"].startswith(MAGIC["pdf"])
    assert b"<svg" in data["svg"][:400] and b"Accuracy vs alpha" in data["svg"]
    width, height = fig.layout.template.layout.width, fig.layout.template.layout.height
    assert _png_size(data["png"]) == (2 * width, 2 * height)
    assert (tmp_path / "other.pdf").read_bytes().startswith(MAGIC["pdf"])


def test_save_figure_png_at_template_size(tmp_path: Path):
    path = save_figure(_figure(), tmp_path / "sub" / "fig.png")
    assert _png_size(path.read_bytes()) == (720, 420)
    assert not list(path.parent.glob(".*.tmp")), "atomic write left a temporary file"


def test_html_escapes_title_and_shares_plotlyjs(tmp_path: Path):
    written = save_figures({"a": _figure("a < b & c"), "b": _figure()}, tmp_path, formats=("html",))
    html = written["a"][0].read_text()
    assert "a \\u003c b & c" in html and "a < b" not in html
    assert 'src="plotly.min.js"' in html
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".js"] == ["plotly.min.js"]


def test_browser_path_override_is_checked(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chrome"))
    with pytest.raises(SteerlensError, match="BROWSER_PATH"):
        save_figure(_figure(), tmp_path / "x.png")
    monkeypatch.delenv("BROWSER_PATH")
    assert Path(find_browser()).is_file()


def test_missing_browser_names_the_fix(monkeypatch, tmp_path: Path):
    from choreographer.browsers import Chromium

    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(Chromium, "find_browser", classmethod(lambda cls, **kw: None))
    with pytest.raises(SteerlensError, match="apt-get install chromium"):
        save_figure(_figure(), tmp_path / "x.pdf")
    save_figure(_figure(), tmp_path / "still.html")  # HTML needs no browser


def test_bad_names_and_formats(tmp_path: Path):
    with pytest.raises(SteerlensError, match=r"\.gif"):
        save_figure(_figure(), tmp_path / "x.gif")
    with pytest.raises(SteerlensError, match="plain file name"):
        save_figures({"../up": _figure()}, tmp_path)
