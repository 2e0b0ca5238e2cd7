"""Test-time scaling: vote / best-of-N logic on fixed samples, transition metrics by hand, real-model loops."""

import numpy as np
import pytest

from steerlens.errors import SteerlensError
from steerlens.steering import Intervention
from steerlens.steering.tts import (
    WAIT,
    ParallelResult,
    Round,
    SequentialResult,
    aggregate,
    iterative_deepening,
    parallel,
    wait_stacking,
)
from steerlens.tasks import arithmetic_problems


def test_aggregation_rules():
    answers = ["7", "8", "8", None, "7", "9"]
    assert aggregate(answers, None, "majority") == "7"  # 7 and 8 tie at two votes: the earlier wins
    assert aggregate(["1,000", "1000", "5"], None, "majority") == "1,000"  # normalised before counting
    scores = [0.1, 0.2, 0.3, 0.99, 0.05, 0.9]
    assert aggregate(answers, scores, "best") == "9"  # None answers never win
    assert aggregate(answers, scores, "weighted") == "9"  # 0.9 > 0.5 (8) > 0.15 (7)
    assert aggregate([None, None], None, "majority") is None
    with pytest.raises(SteerlensError, match="verifier"):
        aggregate(answers, None, "best")


def test_parallel_result_accuracy_vs_n():
    res = ParallelResult(
        problem_ids=("a", "b"),
        truths=("7", "3"),
        answers=(("5", "7", "7", "7"), ("3", "4", "4", "3")),
        scores=((0.1, 0.9, 0.2, 0.2), (0.8, 0.1, 0.1, 0.2)),
        tokens=((10, 10, 10, 10), (5, 5, 5, 5)),
    )
    assert res.accuracy(1).value == 0.5  # a: 5 wrong; b: 3 right
    assert res.accuracy(2).value == 0.5  # a: tie 5/7 -> 5; b: tie 3/4 -> 3
    assert res.accuracy(4).value == 1.0  # a: 7 (3 votes); b: 3 vs 4 tie -> 3 (earlier)
    assert res.accuracy(4, "best").value == 1.0
    assert [n for n, _, _ in res.curve()] == [1, 2, 4]
    assert res.curve()[-1][1] == 30.0  # mean tokens per problem at N = 4
    assert res.aggregations() == ["majority", "best", "weighted"]


def test_transition_metrics_by_hand():
    def rounds(flags):
        return tuple(Round("", None, bool(f), 1, False) for f in flags)

    res = SequentialResult(
        ("a", "b", "c", "d"), (rounds([1, 1]), rounds([1, 0]), rounds([0, 1]), rounds([0, 0]))
    )
    t = res.transitions(n_boot=100)[0]
    assert t["confidence_level"].value == 0.5 and t["critique_score"].value == 0.5
    assert [e.value for e in res.accuracy(n_boot=50)] == [0.5, 0.5]
    assert np.array_equal(res.tokens(), [[1, 2]] * 4)


@pytest.fixture(scope="module")
def problems():
    return arithmetic_problems(6, seed=7, steps=2, ops="+", max_operand=9)


def test_wait_stacking_rounds_and_budgets(smol, problems):
    res = wait_stacking(smol, problems, rounds=2, budget=12, batch_size=6)
    assert res.correct().shape == (6, 3)  # round 0 plus exactly two continuation rounds
    for rs in res.rounds:
        assert all(r.tokens <= 12 for r in rs)
        assert all(r.tokens == 12 for r in rs if r.forced)  # forced closes only when the budget ran out
    assert res.settings["cue"] == WAIT


def test_stop_window_fires_exactly_when_full_decode_would(smol):
    """The stop check decodes only a tail window; on real text it must fire at the same step as decoding
    the whole continuation would, for stop strings of several lengths and a skip."""
    import torch

    from steerlens.generation import _StopAfter

    tok = smol.tokenizer
    text = "Step 1: 12 + 30 = 42\nStep 2: 42 * 2 = 84\n\nWait, let me check: 84 is right.\n\nAnswer: 84"
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    for stop, skip in (
        (["\n\n"], 0),
        (["Answer:"], 3),
        (["let me check: 84 is right"], 1),
        (["Wait,", "84 *"], 0),
    ):
        crit = _StopAfter(tok, stop, width=2, skip=skip)
        start = 2 + skip
        for t in range(1, ids.shape[1] + 1):
            full = t > start and any(s in tok.decode(ids[0, start:t]) for s in stop)
            got = bool(crit(ids[:, :t], None)[0])
            assert got == full, (stop, skip, t)
            if full:
                break
        else:
            raise AssertionError(f"{stop} never found")


def test_budget_forcing_ignores_stops_for_min_tokens(smol):
    from steerlens.generation import generate_detailed

    prompt = "Question: What is 2 + 3?\nStep 1: 2 + 3 = 5\n"
    free = generate_detailed(smol, [prompt], max_new_tokens=20, stop=["\n"])[0]
    forced = generate_detailed(smol, [prompt], max_new_tokens=20, stop=["\n"], min_tokens=6)[0]
    assert "\n" not in free.text
    assert 6 <= forced.tokens <= 20
    head = len(smol.tokenizer.decode(smol.tokenizer(prompt + forced.text)["input_ids"][-forced.tokens :][:6]))
    assert "\n" not in forced.text[head:]  # stops count only after the forced tokens
    with pytest.raises(SteerlensError, match="min_tokens"):
        generate_detailed(smol, [prompt], max_new_tokens=4, min_tokens=5)


def test_wait_rounds_think_at_least_min_tokens(smol, problems):
    res = wait_stacking(smol, problems[:3], rounds=1, budget=24, min_tokens=10, batch_size=3)
    assert all(rs[1].tokens >= 10 for rs in res.rounds)  # no round closes at once after the cue
    assert res.settings["min_tokens"] == 10


def test_iterative_deepening_budgets_grow(smol, problems):
    res = iterative_deepening(smol, problems[:3], first_budget=4, growth=2, steps=3, batch_size=3)
    assert res.settings["budgets"] == [4, 8, 16]
    for rs in res.rounds:
        assert [r.tokens <= b for r, b in zip(rs, [4, 8, 16], strict=True)] == [True] * 3


def test_parallel_steered_runs(smol, smol_vec, problems):
    vec = smol_vec.select([10])

    def run(alpha):
        ivs = [Intervention(vec, alpha=alpha, units="resid", positions="generated")] if alpha else []
        return parallel(smol, problems[:2], n=4, max_new_tokens=20, steering=ivs)

    res = run(0.1)
    assert len(res.answers) == 2 and all(len(a) == 4 for a in res.answers)
    assert res.settings["steered"]
    assert run(0.1).answers == res.answers  # seeded
    plain, strong = run(None), run(1.0)
    assert strong.tokens != plain.tokens or strong.answers != plain.answers  # the steering acts, same seeds


def _thinking(smol, problems):
    from steerlens.steering.tts.sequential import _prompts

    prompt = _prompts(smol, problems[:1], 3)[0]
    return prompt, "Step 1: 3 + 4 = 7\nStep 2: 7 + 2 = 9"


def test_replayed_rounds_are_steered_as_when_generated(smol, smol_vec, problems):
    """Item 5: a later round re-runs the earlier thinking as input; with positions="generated" it used to run
    unsteered. Every token after the original prompt (thinking, cue, "Answer:") must be steered, as the
    reference (positions from the explicit prompt length) steers them."""
    import torch

    from steerlens.steering import steer
    from steerlens.steering.tts.sequential import MARKER, _Replay

    from .reference import hf_reference

    prompt, thinking = _thinking(smol, problems)
    iv = Intervention(smol_vec.select([6, 12]), alpha=0.5, units="resid", positions="generated")
    replay = _Replay(smol, [prompt])
    replay.start_round([iv], None)
    ids = torch.tensor(smol.tokenize(prompt + thinking + WAIT + "Step 1" + MARKER))
    with replay.steering().batch(smol, [0]):
        got = smol.hf(ids).logits
    ref = hf_reference(smol, [iv], ids, torch.ones_like(ids), [replay.prompt_lens[0]])
    assert (got - ref).abs().max() <= 1e-4
    with steer(smol, iv):  # what the loop did before: the replay is all prompt, so nothing is steered
        old = smol.hf(ids).logits
    assert (old - ref).abs().max() > 1e-1


def test_per_round_steering_keeps_each_round_on_its_tokens(smol, smol_vec, problems):
    import torch

    from steerlens.steering import Window
    from steerlens.steering.tts.sequential import _Replay

    from .reference import hf_reference

    prompt, thinking = _thinking(smol, problems)
    vec = smol_vec.select([8])
    first = Intervention(vec, alpha=0.4, units="resid", positions="generated")
    second = Intervention(vec.random_like(1), alpha=0.6, units="resid", positions="all")
    replay = _Replay(smol, [prompt])
    replay.start_round([first], None)
    replay.start_round([second], [prompt + thinking])
    ids = torch.tensor(smol.tokenize(prompt + thinking + WAIT + "Step"))
    cut = len(smol.tokenize(prompt + thinking)[0])
    with replay.steering().batch(smol, [0]):
        got = smol.hf(ids).logits
    ref_ivs = [
        Intervention(vec, alpha=0.4, units="resid", positions=Window(replay.prompt_lens[0], cut)),
        Intervention(vec.random_like(1), alpha=0.6, units="resid", positions=Window(cut)),
    ]
    ref = hf_reference(smol, ref_ivs, ids, torch.ones_like(ids), [len(ids[0])])
    assert (got - ref).abs().max() <= 1e-4


def test_probe_verifier_matches_the_probe_on_collected_activations(smol, tmp_path):
    import torch

    import steerlens
    from steerlens.probes.linear import Logistic, fit_logistic
    from steerlens.steering.tts import probe_verifier

    g = torch.Generator().manual_seed(0)
    probe = fit_logistic(torch.randn(40, smol.cfg.d_model, generator=g), [0, 1] * 20)
    path = probe.save(tmp_path / "probe.safetensors", layer=29)
    loaded, meta = Logistic.load(path)
    assert meta == {"layer": 29} and torch.equal(loaded.w, probe.w)
    p = arithmetic_problems(1, seed=3)[0]
    sols = ["Step 1: 2 + 3 = 5\nAnswer: 5", "no answer here"]
    verify = probe_verifier(smol, loaded, 29, name="error_probe")
    assert verify.__name__ == "error_probe"  # the label results' settings carry
    got = verify(p, sols)
    # reference: resid_post of the last layer (before the final norm) through steerlens.collect
    head = f"Question: {p.question}\n"
    ex = steerlens.Example.from_segments([(None, head + "Step 1: 2 + 3 = 5\nAnswer:"), ("answer", " 5")])
    store = steerlens.collect(
        smol, [ex], "blocks.29.hook_resid_post", "span:answer", path=tmp_path / "s", progress=False
    )
    ref = 1 - float(loaded.prob(store.pooled("blocks.29.hook_resid_post")))
    assert abs(got[0] - ref) < 1e-4
    assert 0.0 <= got[1] <= 1.0
