"""What every study shares: the ``Study`` protocol and a subcommand built from a study's config.

Why: each study (critique, scaling, personality, copy suppression) is a ``Config`` dataclass, a
``run(model, cfg, out) -> Study`` and a ``Study`` with ``save(dir)`` / ``load(dir)``; the CLI and the demo
only ever talk to that shape, so a new study needs no change to either.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

import plotly.graph_objects as go

from steerlens.config import StudyConfig, SubParsers
from steerlens.model import Model

from .report import Section, format_value

C = TypeVar("C", bound=StudyConfig)


class Study(Protocol):
    """A finished study: its config, its numbers, its figures and the report sections that tell it."""

    @property
    def config(self) -> StudyConfig: ...  # read-only, so frozen dataclasses satisfy it

    def summary(self) -> dict[str, Any]: ...

    def figures(self) -> dict[str, go.Figure]: ...

    def sections(self) -> list[Section]: ...

    def save(self, out: str | Path, formats: Sequence[str] = ("html",)) -> Path: ...

    @classmethod
    def load(cls, out: str | Path, model: Model | None = None) -> Self: ...


def add_study_command(
    sub: SubParsers,
    name: str,
    help: str,
    config: type[C],
    run: Callable[[Model, C, Path, argparse.Namespace], Study],
    *,
    model: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """``steerlens NAME --model M --out DIR [--quick] --<every config field>``: load, run, save, print.

    Args:
        sub: argparse subparsers object.
        name, help: the subcommand and its one-line help.
        config: the study's ``StudyConfig`` subclass; one flag per field.
        run: ``(model, cfg, out, args) -> Study``; ``args`` carries flags ``extra`` added.
        model: the default model name.
        extra: adds flags that are not settings of the study (input directories, say).

    Example:
        >>> def register(sub):
        ...     add_study_command(sub, "critique", "critique study", CritiqueConfig, lambda m, c, o, a: run(m, c, o),
        ...                       model="smollm2-135m-instruct")
    """
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--model", default=model, help=f"embedded name, local dir or HF id (default: {model})")
    p.add_argument("--out", default=f"runs/{name.replace('-', '_')}", help="run directory")
    p.add_argument("--quick", action="store_true", help="smoke-run sizes (flags given explicitly still win)")
    if extra is not None:
        extra(p)
    config.add_arguments(p)

    def main(args: argparse.Namespace) -> int:
        from steerlens import load

        cfg = config.from_args(args)
        if args.quick:
            defaults = config().to_dict()
            cfg = config.quick(**{k: getattr(cfg, k) for k, v in cfg.to_dict().items() if v != defaults[k]})
        t0 = time.perf_counter()
        study = run(load(args.model), cfg, Path(args.out), args)
        path = study.save(args.out)
        print(f"wrote {path} in {time.perf_counter() - t0:.0f} s")
        for sec in study.sections():
            print(
                f"  {sec.title}: "
                + "; ".join(f"{k} {format_value(v)[:60]}" for k, v in list(sec.numbers.items())[:4])
            )
        return 0

    p.set_defaults(func=main)
    return p
