"""The house plan, measured: modules a reader can hold, functions a reader can hold, imports one way.

Why: these are the rules of ``shared/STYLE.md`` that drift silently; a test keeps them true.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"steerlens": 0, "probes": 1, "steering": 2, "analysis": 3}  # folder -> rank; imports go down only
PACKAGE = {"steerlens": "steerlens", "probes": "steerlens.probes", "steering": "steerlens.steering"}
PACKAGE["analysis"] = "steerlens.analysis"
MAX_MODULE, MAX_FUNCTION = 400, 60


def _modules() -> list[Path]:
    return sorted(p for folder in LAYERS for p in (ROOT / folder).rglob("*.py"))


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [PACKAGE[rel.parts[0]], *rel.parts[1:-1]]
    return ".".join(parts)


def _layer_of(module: str) -> str | None:
    """The layer a dotted ``steerlens...`` module belongs to (None: not ours)."""
    parts = module.split(".")
    if parts[0] != "steerlens":
        return None
    if len(parts) > 1 and parts[1] in ("probes", "steering", "analysis"):
        return parts[1]
    return "steerlens"


def _imports(src: str, pkg: str) -> list[tuple[int, str]]:
    """Every module ``src`` (in package ``pkg``) imports, also inside functions, relative imports resolved."""
    out = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def test_imports_go_one_way():
    """core <- probes <- steering <- analysis: no module imports a layer above its own (the CLI's study
    subcommands are registered by their layers through entry points, not imported by core)."""
    bad = []
    for path in _modules():
        own = path.relative_to(ROOT).parts[0]
        for line, mod in _imports(path.read_text(), _package_of(path)):
            layer = _layer_of(mod)
            if layer is not None and LAYERS[layer] > LAYERS[own]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod} ({layer} is above {own})")
    assert not bad, "\n".join(bad)


def test_the_import_check_sees_a_violation():
    """The checker itself: relative, absolute and function-level imports into a higher layer are seen."""
    src = (
        "from ..analysis import demo\nimport steerlens.steering.apply\ndef f():\n    from .. import probes\n"
    )
    got = [_layer_of(m) for _, m in _imports(src, "steerlens.steering")]
    assert got == ["analysis", "steering", "probes"]
    assert _package_of(ROOT / "steering" / "x.py") == "steerlens.steering"
    assert [_layer_of(m) for _, m in _imports("from .model import Model", "steerlens")] == ["steerlens"]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_functions_fit_in_a_head(path):
    src = path.read_text()
    lines = src.count("\n")
    assert lines <= MAX_MODULE, f"{path.relative_to(ROOT)} has {lines} lines (max {MAX_MODULE}); split it"
    long = [
        f"{n.name} ({n.end_lineno - n.lineno + 1} lines, line {n.lineno})"
        for n in ast.walk(ast.parse(src))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.end_lineno - n.lineno + 1 > MAX_FUNCTION
    ]
    assert not long, f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION} lines: {long}"


ENTRY_POINTS = [
    "steerlens.load",
    "steerlens.collect",
    "steerlens.steering.steer",
    "steerlens.steering.vector_from_prompts",
    "steerlens.steering.RowSteering",
    "steerlens.config.StudyConfig",
    "steerlens.analysis.study.add_study_command",
    "steerlens.steering.sae.load_sae",
    "steerlens.steering.sae.feature_vector",
    "steerlens.steering.sae.splice_sae",
    "steerlens.steering.sae.clamp_features",
    "steerlens.analysis.sae.train_sae",
    "steerlens.analysis.sae.evaluate_sae",
    "steerlens.analysis.sae.vector_features",
    "steerlens.analysis.sae.run",
]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_public_entry_points_say_why_args_and_example(name):
    import importlib

    mod, attr = name.rsplit(".", 1)
    doc = getattr(importlib.import_module(mod), attr).__doc__ or ""
    assert "Args:" in doc and "Example:" in doc, f"{name}: docstring needs Args: and Example:"
