"""StudyConfig: the CLI flags, quick sizes and JSON of a study are all read from one dataclass."""

import argparse
from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest

from steerlens.config import StudyConfig, field_help
from steerlens.errors import SteerlensError


@dataclass(frozen=True)
class Toy(StudyConfig):
    """A toy study.

    n: problems to run
    mode: how traces are made
        (continued help line)
    alphas: steering strengths
    names: which things
    stability: run the stability checks
    layer: steering layer (default: chosen on validation data)
    """

    QUICK: ClassVar = {"n": 4, "alphas": (0.0, 0.5)}
    n: int = 200
    mode: Literal["generated", "templated"] = "generated"
    alphas: tuple[float, ...] = (-0.2, 0.0, 0.2)
    names: tuple[Literal["a", "b"], ...] = ("a",)
    stability: bool = True
    layer: int | None = None


def _parse(*argv: str) -> Toy:
    p = argparse.ArgumentParser()
    Toy.add_arguments(p)
    return Toy.from_args(p.parse_args(list(argv)))


def test_flags_come_from_fields_with_types_and_help():
    assert _parse() == Toy()
    got = _parse("--n", "7", "--mode", "templated", "--alphas=-0.5,0,0.5", "--names", "a,b", "--no-stability")
    assert got == Toy(n=7, mode="templated", alphas=(-0.5, 0.0, 0.5), names=("a", "b"), stability=False)
    assert _parse("--layer", "12").layer == 12
    with pytest.raises(SystemExit):
        _parse("--mode", "other")
    with pytest.raises(SystemExit):
        _parse("--names", "a,c")
    assert field_help(Toy)["mode"] == "how traces are made (continued help line)"


def test_quick_sizes_json_round_trip_and_unknown_keys():
    q = Toy.quick(n=9)
    assert (q.n, q.alphas, q.mode) == (9, (0.0, 0.5), "generated")
    assert Toy.from_dict(q.to_dict()) == q
    assert q.to_dict()["alphas"] == [0.0, 0.5]  # JSON-ready
    with pytest.raises(SteerlensError, match="unknown settings"):
        Toy.from_dict({"n": 1, "bogus": 2})
