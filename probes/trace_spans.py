"""Named spans of error-injected traces for activation collection: the corrupted result, the reasoning after
it and the final answer, each paired with the clean twin at the same place."""

from __future__ import annotations

from steerlens.errors import EmptyInput
from steerlens.inputs import Example
from steerlens.probes.traces import InjectionRun


def trace_examples(
    run: InjectionRun, *, clean_correct_only: bool = False
) -> tuple[list[Example], list[Example], list[str]]:
    """Paired inputs for collection: (corrupted, clean, problem ids). Spans: "injected" (the result written
    at the corrupted step), "after" (the reasoning after it, up to the answer marker) and "answer" (the final
    answer). The clean twin has the original result and the original continuation at the same place."""
    bad, good, ids = [], [], []
    for r in run.injected:
        if clean_correct_only and not r.clean_correct:
            continue
        inj = r.injection
        assert inj is not None
        head = r.prompt + r.trace[: inj.start]
        corrupted = _segments(head, str(inj.wrong), r.continuation)
        clean = _segments(head, str(inj.original), r.trace[inj.end :])
        if corrupted is None or clean is None:
            continue
        bad.append(corrupted)
        good.append(clean)
        ids.append(r.id)
    if not ids:
        raise EmptyInput("no injected record has both an 'after' span and a final answer; run more problems")
    return bad, good, ids


def _segments(head: str, result: str, tail: str) -> Example | None:
    k = tail.find("Answer:")
    if k <= 0:
        return None
    after, rest = tail[:k], tail[k + len("Answer:") :]
    ans = rest.split("\n", 1)[0]
    if not after.strip() or not ans.strip():
        return None
    return Example.from_segments(
        [(None, head), ("injected", result), ("after", after), (None, "Answer:"), ("answer", ans)]
    )
