"""One plotly look for every ``.figure()``: paper fonts and sizes, a colour-blind-safe palette, CI bands."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import plotly.graph_objects as go

from .errors import SteerlensError

# Okabe-Ito: distinguishable under the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
GREY = "#7f7f7f"

# both axes alike: a plain line with outside ticks, faint grid, margins that grow to fit long tick labels
_AXIS = dict(
    showline=True, linecolor="#444", ticks="outside", gridcolor="#eee", zeroline=False, automargin=True
)
TEMPLATE = go.layout.Template(
    layout=go.Layout(
        font=dict(family="Helvetica, Arial, sans-serif", size=13, color="#222"),
        # flush with the y axis, at the top edge: clear of subplot titles
        title=dict(font=dict(size=15), x=0.0, xanchor="left", xref="paper", y=0.98, yanchor="top"),
        colorway=PALETTE,
        paper_bgcolor="white",
        plot_bgcolor="white",
        xaxis=_AXIS,
        yaxis=_AXIS,
        legend=dict(bgcolor="rgba(255,255,255,0.8)", borderwidth=0),
        margin=dict(l=60, r=20, t=50, b=50),
        width=720,
        height=420,
    )
)


def new_figure(title: str, x: str, y: str, **layout: Any) -> go.Figure:
    """An empty figure in the steerlens template with axis titles."""
    fig = go.Figure()
    fig.update_layout(template=TEMPLATE, title=title, xaxis_title=x, yaxis_title=y, **layout)
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def bars_with_ci(
    fig: go.Figure, x: Sequence[Any], estimates: Sequence[Any], name: str, colour: str
) -> go.Figure:
    """Add a bar trace of ``Estimate`` values with asymmetric error bars from their ``lo`` / ``hi``."""
    fig.add_bar(
        x=list(x),
        y=[e.value for e in estimates],
        name=name,
        marker_color=colour,
        error_y=dict(
            type="data",
            symmetric=False,
            array=[e.hi - e.value for e in estimates],
            arrayminus=[e.value - e.lo for e in estimates],
        ),
    )
    return fig


def line_with_band(
    fig: go.Figure,
    x: Sequence[float],
    y: Sequence[float],
    lo: Sequence[float] | None,
    hi: Sequence[float] | None,
    name: str,
    colour: str,
    dash: str | None = None,
) -> go.Figure:
    """Add a line with markers and, when given, a shaded confidence band between ``lo`` and ``hi``."""
    if lo is not None and hi is not None:
        fig.add_trace(
            go.Scatter(
                x=list(x) + list(x)[::-1],
                y=list(hi) + list(lo)[::-1],
                fill="toself",
                mode="lines",  # no markers on the band's outline
                fillcolor=_rgba(colour, 0.18),
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=list(x),
            y=list(y),
            mode="lines+markers",
            name=name,
            legendgroup=name,
            line=dict(color=colour, dash=dash),
            marker=dict(size=6),
        )
    )
    return fig


IMAGE_FORMATS = ("png", "svg", "pdf", "jpeg", "webp")

_NO_BROWSER = (
    "static figure export (.png/.svg/.pdf) renders through kaleido, which drives a headless Chrome or "
    "Chromium, and none was found (looked at $BROWSER_PATH, chrome/chromium on PATH, /usr/bin/chromium and "
    "a `kaleido_get_chrome` download). Fix: `apt-get install chromium` on Debian/Ubuntu (`make install` "
    "does this), or run `kaleido_get_chrome`, or set BROWSER_PATH=/path/to/chrome. Saving as .html needs "
    "no browser."
)


def find_browser() -> str:
    """The Chrome/Chromium binary kaleido will drive.

    ``$BROWSER_PATH`` wins when set (choreographer, kaleido's browser driver, reads the same variable);
    otherwise choreographer's own search: chrome, chromium, edge, brave names on PATH, their usual install
    paths (``/usr/bin/chromium`` for Debian's ``chromium`` package), and a browser downloaded by
    ``kaleido_get_chrome``.
    """
    override = os.environ.get("BROWSER_PATH")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise SteerlensError(
                f"BROWSER_PATH={override!r} is not an executable file; expected the path of a Chrome or "
                "Chromium binary (e.g. /usr/bin/chromium). Fix the path or unset BROWSER_PATH."
            )
        return override
    try:
        from choreographer.browsers import Chromium
    except ImportError as e:
        raise SteerlensError(
            "static figure export needs kaleido (and its choreographer), which is not installed. Fix: "
            "`pip install kaleido` (a steerlens dependency, so reinstalling steerlens also works)."
        ) from e
    found = Chromium.find_browser(skip_local=False)
    if found is None:
        raise SteerlensError(_NO_BROWSER)
    return found


T = TypeVar("T")


def _run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh event loop in a worker thread: works the same from a
    script and from a notebook, whose main thread already runs a loop."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as e:
            box["error"] = e

    worker = threading.Thread(target=target, name="steerlens-kaleido")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def render_images(jobs: Sequence[tuple[go.Figure, str]], scale: float = 1.0) -> list[bytes]:
    """Render ``(figure, format)`` pairs to image bytes in one browser session.

    Starting Chromium costs about 2-3 s, one image about 0.2 s after that, so export many figures in one
    call. Sizes come from the figure (the template's 720 x 420 layout pixels) times ``scale``. MathJax is
    off (it would be fetched from a CDN); titles use plotly's HTML subset (``<b>``, ``<sub>``) instead.
    """
    for _, fmt in jobs:
        if fmt not in IMAGE_FORMATS:
            raise SteerlensError(f"image format {fmt!r} is not supported; expected one of {IMAGE_FORMATS}.")
    if not jobs:
        return []
    browser = find_browser()
    import kaleido
    from choreographer.browsers import BrowserDepsError, BrowserFailedError, ChromeNotFoundError

    specs = [(fig.to_dict(), {"format": fmt, "scale": scale}) for fig, fmt in jobs]

    async def render() -> list[bytes]:
        async with kaleido.Kaleido(path=browser, mathjax=False) as k:
            return [await k.calc_fig(fig, opts=opts) for fig, opts in specs]

    try:
        return _run_async(render)
    except (ChromeNotFoundError, BrowserDepsError, BrowserFailedError) as e:
        raise SteerlensError(
            f"kaleido could not start the browser at {browser!r} ({type(e).__name__}: {e}). "
            "Fix: install Debian's `chromium` package (`apt-get install chromium`, with its libraries) or "
            "point BROWSER_PATH at a working Chrome/Chromium."
        ) from e


def _format_of(path: Path) -> str:
    fmt = path.suffix.lstrip(".").lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt != "html" and fmt not in IMAGE_FORMATS:
        raise SteerlensError(
            f"cannot save a figure as {path.name!r}: expected a .html, {', '.join('.' + f for f in IMAGE_FORMATS)} "
            "or .jpg file name."
        )
    return fmt


def _write_html(fig: go.Figure, path: Path) -> Path:
    from .files import atomic_write

    return atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs="directory"))


def _write_bytes(path: Path, data: bytes) -> Path:
    from .files import atomic_write

    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def save_figure(fig: go.Figure, path: str | Path, scale: float = 1.0) -> Path:
    """Write ``fig`` as HTML (``.html``: plotly.js written once beside it, works offline) or a static image
    (``.png``/``.svg``/``.pdf``/``.jpg``/``.webp`` via kaleido and a Chromium, see :func:`find_browser`),
    atomically. For many images use :func:`save_figures`: it starts the browser once."""
    path = Path(path)
    fmt = _format_of(path)
    if fmt == "html":
        return _write_html(fig, path)
    (data,) = render_images([(fig, fmt)], scale=scale)
    return _write_bytes(path, data)


def save_figures(
    figs: Mapping[str, go.Figure],
    directory: str | Path,
    formats: Iterable[str] = ("html", "png"),
    scale: float = 1.0,
) -> dict[str, list[Path]]:
    """Write each ``name -> figure`` as ``directory/name.FORMAT`` for every format, rendering all static
    images in one browser session (HTML files share one plotly.js). Returns the paths written per name."""
    directory = Path(directory)
    formats = [_format_of(Path(f"x.{f.lstrip('.')}")) for f in formats]
    for name in figs:
        if not name or Path(name).name != name or name.startswith("."):
            raise SteerlensError(
                f"figure name {name!r} is not a plain file name; expected e.g. 'probe_sweep' (no folders)."
            )
    written: dict[str, list[Path]] = {name: [] for name in figs}
    jobs: list[tuple[go.Figure, str]] = []
    targets: list[tuple[str, Path]] = []
    for name, fig in figs.items():
        for fmt in formats:
            path = directory / f"{name}.{'html' if fmt == 'html' else fmt}"
            if fmt == "html":
                written[name].append(_write_html(fig, path))
            else:
                jobs.append((fig, fmt))
                targets.append((name, path))
    for (name, path), data in zip(targets, render_images(jobs, scale=scale), strict=True):
        written[name].append(_write_bytes(path, data))
    return written
