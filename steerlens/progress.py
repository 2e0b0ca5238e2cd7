"""How long runs report progress: tqdm bars for loops over data, ``Stages`` lines for the steps of a study.

Why one module: every study printed its stages its own way (a ``say = print if progress`` lambda here, a
``log=`` callback there); one object gives them the same look, elapsed times and an off switch.
"""

from __future__ import annotations

import sys
import time


class Stages:
    """Numbered stage lines with elapsed seconds: ``[critique 2/3] probes per layer (41 s)``; ``note``
    prints an indented detail line. Silent when ``enabled`` is False.

    Args:
        name: the study's name, shown in every line.
        total: how many stages the run has.
        enabled: print or stay silent.

    Example:
        >>> say = Stages("critique", 3)
        >>> say.stage("error-injected reasoning on 200 problems")
        >>> say.note("2x2 on 200 injected: ...")
        >>> say.lap("forward pass")                   # seconds since the previous lap, kept in say.seconds
    """

    def __init__(self, name: str, total: int, enabled: bool = True):
        self.name, self.total, self.enabled = name, total, enabled
        self.k = 0
        self.t0 = self._mark = time.perf_counter()
        self.seconds: dict[str, float] = {}  # per lap, for runs that record where the time went

    def stage(self, text: str) -> None:
        """Start the next stage."""
        self.k += 1
        self._print(f"[{self.name} {self.k}/{self.total}] {text} ({time.perf_counter() - self.t0:.0f} s)")

    def note(self, text: str) -> None:
        """A detail of the current stage."""
        self._print(f"      {text}")

    def lap(self, name: str) -> None:
        """The work called ``name`` ends now: record its seconds (since the previous lap) and print them."""
        now = time.perf_counter()
        self.seconds[name] = round(now - self._mark, 2)
        self._mark = now
        self.note(f"{name}: {self.seconds[name]:.1f} s")

    def _print(self, line: str) -> None:
        if self.enabled:
            print(line, file=sys.stdout, flush=True)
