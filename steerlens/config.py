"""Study configs: one dataclass per study, with ``.quick()`` sizes, and the command line built from it.

Why: a study's settings are written once (the dataclass), and the CLI, the demo, the JSON a run writes and
the notebooks all read them from there, so defaults cannot drift apart. Layers register their subcommands
through the ``steerlens.commands`` entry-point group; core never imports them.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Self, get_args, get_origin

from .errors import SteerlensError

SubParsers = argparse._SubParsersAction  # what ``add_subparsers()`` returns; layers add their commands to it


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Base of every study's settings: a frozen dataclass, its ``QUICK`` smoke-run sizes and its CLI flags.

    Args:
        (subclass fields): each listed in the subclass docstring as an indented ``name: help`` line, which
            becomes the ``--name`` flag's help text; ``QUICK`` maps field names to smoke-run values.

    Example:
        >>> cfg = CritiqueConfig.quick()            # tiny sizes for tests and ``steerlens demo --quick``
        >>> CritiqueConfig.from_dict(cfg.to_dict()) == cfg
    """

    QUICK: ClassVar[dict[str, Any]] = {}

    @classmethod
    def quick(cls, **overrides: Any) -> Self:
        """The smoke-run sizes (``QUICK``), with ``overrides`` on top."""
        return cls(**{**cls.QUICK, **overrides})

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Rebuild a config written by ``to_dict`` (unknown keys refused, tuples restored)."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise SteerlensError(
                f"{cls.__name__}: unknown settings {sorted(unknown)}; expected {sorted(names)}"
            )
        return cls(**{k: tuple(v) if _is_tuple(hints[k]) and v is not None else v for k, v in d.items()})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--flag`` per field, typed from the annotation (Literal -> choices, tuple -> comma list)."""
        hints = typing.get_type_hints(cls)
        helps = field_help(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            flag = "--" + f.name.replace("_", "-")
            kw = _argparse_kwargs(hints[f.name], default)
            text = helps.get(f.name, "")
            parser.add_argument(
                flag, dest=f.name, default=default, help=f"{text} (default: {default!r})", **kw
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init})


def field_help(cls: type) -> dict[str, str]:
    """``name: text`` lines of a class docstring (continuation lines indented further are joined)."""
    out: dict[str, str] = {}
    last = None
    for line in (cls.__doc__ or "").splitlines():
        m = re.match(r"^\s{4}(\w+): (.*)$", line)
        if m:
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last and line.startswith(" " * 8) and line.strip():
            out[last] += " " + line.strip()
        else:
            last = None
    return out


def _is_tuple(tp: Any) -> bool:
    return get_origin(_unoptional(tp)) is tuple


def _unoptional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _argparse_kwargs(tp: Any, default: Any) -> dict[str, Any]:
    tp = _unoptional(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(tp) is Literal:
        return {"choices": list(get_args(tp)), "type": type(get_args(tp)[0])}
    if get_origin(tp) is tuple:
        item = _unoptional(get_args(tp)[0])
        conv: Callable[[str], Any] = _literal_of(item) if get_origin(item) is Literal else item
        return {
            "type": lambda s: tuple(conv(x.strip()) for x in s.split(",") if x.strip()),
            "metavar": "A,B,...",
        }
    if tp in (int, float, str):
        return {"type": tp}
    return {"type": str}


def _literal_of(tp: Any) -> Callable[[str], Any]:
    allowed = get_args(tp)

    def conv(s: str) -> Any:
        if s not in allowed:
            raise argparse.ArgumentTypeError(f"{s!r}: expected one of {list(allowed)}")
        return s

    return conv


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def register_commands(sub: SubParsers) -> None:
    """Let every installed layer add its subcommands (entry-point group ``steerlens.commands``)."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="steerlens.commands"), key=lambda e: e.name):
        ep.load()(sub)
