"""Shared-prefill sampling: each sample equals an independent call with its seed, steered or not."""

import random

import pytest

from steerlens.errors import SteerlensError
from steerlens.steering import Intervention
from steerlens.steering.sampling import sample

PROMPT = "Question: Ana has 3 apples and buys 4 more. How many apples does Ana have now?\nStep 1:"


def test_shared_prefill_equals_independent_calls(smol):
    seeds = [11, 12, 13, 14, 15]
    shared = sample(smol, PROMPT, seeds, max_new_tokens=24, temperature=0.9, stop=["\n\n"])
    assert shared.settings["shared_prefill"]
    for s in shared.samples:
        alone = sample(smol, PROMPT, [s.seed], max_new_tokens=24, temperature=0.9, stop=["\n\n"]).samples[0]
        assert alone.tokens == s.tokens and alone.text == s.text
    assert len({s.tokens for s in shared.samples}) > 1  # the seeds really differ
    n_prompt = shared.prompt_tokens
    decode = sum(len(s.tokens) - 1 for s in shared.samples)
    assert shared.forward_tokens == n_prompt + decode  # one prefill; finished rows stop costing


def test_per_row_alphas_on_generated_tokens_share_the_prefill(smol, smol_vec):
    vec = smol_vec.select([5, 10, 15])
    alphas = [-1.0, 0.0, 1.0, 2.0]
    seeds = [3, 3, 3, 3]  # same seed: differences come from the steering alone
    got = sample(
        smol,
        PROMPT,
        seeds,
        max_new_tokens=16,
        temperature=0.7,
        steering=[Intervention(vec, alpha=alphas, positions="generated")],
    )
    assert got.settings["shared_prefill"]
    for a, s in zip(alphas, got.samples, strict=True):
        alone = sample(
            smol,
            PROMPT,
            [3],
            max_new_tokens=16,
            temperature=0.7,
            steering=[Intervention(vec, alpha=a, positions="generated")],
        ).samples[0]
        assert alone.tokens == s.tokens
    assert got.samples[0].tokens != got.samples[3].tokens


def test_per_row_alphas_on_prompt_tokens_prefill_per_row(smol, smol_vec):
    vec = smol_vec.select([5])
    got = sample(smol, PROMPT, [1, 1], max_new_tokens=6, steering=[Intervention(vec, alpha=[0.0, 3.0])])
    assert not got.settings["shared_prefill"]
    alone = sample(smol, PROMPT, [1], max_new_tokens=6, steering=[Intervention(vec, alpha=3.0)])
    assert alone.samples[0].tokens == got.samples[1].tokens
    with pytest.raises(SteerlensError, match="per-row values for 2 rows but there are 3 seeds"):
        sample(smol, PROMPT, [1, 2, 3], steering=[Intervention(vec, alpha=[0.0, 1.0])])
    with pytest.raises(SteerlensError, match="temperature"):
        sample(smol, PROMPT, [1], temperature=0)


def test_vllm_engine_missing_is_a_clear_error(smol):
    """Without vLLM installed, ``model.vllm`` and ``generate(engine="vllm")`` name the install command, and an
    unknown engine is refused by name (never a raw ImportError from underneath)."""
    import importlib.util

    from steerlens.errors import SteerlensError
    from steerlens.generation import generate

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: tests/vllm covers the engine")
    with pytest.raises(SteerlensError, match="make vllm"):
        _ = smol.vllm
    with pytest.raises(SteerlensError, match="make vllm"):
        generate(smol, ["Hi"], max_new_tokens=2, engine="vllm")
    with pytest.raises(SteerlensError, match="'tgi'"):
        generate(smol, ["Hi"], max_new_tokens=2, engine="tgi")  # type: ignore[arg-type]
    with pytest.raises(SteerlensError, match="not installed"):
        smol.engine("tgi")


def test_generate_takes_token_ids_like_texts(smol):
    """Token-id prompts (what the vLLM engine also takes) give what their texts give; a mix is refused."""
    from steerlens.errors import SteerlensError
    from steerlens.generation import generate_detailed

    texts = ["The movie was", "My favourite food is a"]
    by_text = generate_detailed(smol, texts, max_new_tokens=6)
    by_ids = generate_detailed(smol, smol.tokenize(texts), max_new_tokens=6)
    assert by_text == by_ids and all(g.tokens > 0 for g in by_ids)
    with pytest.raises(SteerlensError, match="mix"):
        generate_detailed(smol, [texts[0], smol.tokenize(texts[1])[0]], max_new_tokens=2)


QUESTIONS = [
    "Question: Ana has 3 apples and buys 4 more. How many apples does Ana have now?\nStep 1:",
    "Question: A box holds 12 pens. Tom takes 5. How many pens are left?\nStep 1:",
    "Question: Lee reads 7 pages a day for 3 days. How many pages is that?\nStep 1:",
    "Question: 9 birds sit on a wire and 2 fly off.\nStep 1:",
]
FINISHES: set[str] = set()
SHOT = "Question: Sam has 2 cats and gets 1 more. How many cats?\nStep 1: 2 + 1 = 3\nAnswer: 3\n\n"


@pytest.mark.parametrize("case", range(4))
def test_sample_many_equals_sample_per_prompt(smol, smol_vec, case):
    """The batched fast path against the one-prompt reference, over drawn cases: prompts with and without a
    shared few-shot prefix, samples per prompt, temperature, top-p, stop strings, and steering (per-row
    alphas on generated tokens, which keep the prefix shared, or one alpha on every token, which does not)."""
    from steerlens.steering.sampling import sample_many

    rng = random.Random(case)
    k = rng.randint(2, 4)
    prompts = [(SHOT if case % 2 == 0 else "") + q for q in rng.sample(QUESTIONS, k)]
    if case % 2:  # a short chat turn ends on the end-of-turn token within the budget: the "eos" finish
        chat = [{"role": "user", "content": "Say hi in two words."}]
        prompts.append(smol.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
    n = rng.randint(1, 3)
    seeds = [[rng.randrange(10_000) for _ in range(n)] for _ in prompts]
    vec = smol_vec.select([rng.choice([3, 9, 15])])
    steering = [
        None,
        [Intervention(vec, alpha=[rng.uniform(-4, 4) for _ in range(n)], positions="generated")],
        [Intervention(vec, alpha=rng.uniform(-3, 3), positions="all")],
    ][case % 3]
    kw = dict(
        max_new_tokens=rng.randint(8, 20),
        temperature=rng.uniform(0.6, 1.2),
        top_p=rng.choice([1.0, 0.9]),
        stop=rng.choice([(), ("\n",), ("=", "Answer")]),
        steering=steering,
    )
    got = sample_many(smol, prompts, seeds, batch_size=rng.choice([3, 32]), **kw)
    for prompt, row_seeds, many in zip(prompts, seeds, got, strict=True):
        ref = sample(smol, prompt, row_seeds, **kw)
        assert many.prompt_tokens == ref.prompt_tokens
        for a, b in zip(many.samples, ref.samples, strict=True):
            assert (a.tokens, a.text, a.finish, a.seed) == (b.tokens, b.text, b.finish, b.seed)
            FINISHES.add(a.finish)
    assert len({s.tokens for ss in got for s in ss.samples}) > 1


def test_sample_many_cases_reached_every_finish():
    assert {"stop", "eos", "length"} == FINISHES, FINISHES  # the cases above are not vacuous


def test_sample_many_refuses_bad_input(smol):
    from steerlens.steering.sampling import sample_many

    with pytest.raises(SteerlensError, match="same number of seeds"):
        sample_many(smol, [PROMPT, PROMPT], [[1, 2], [3]])
    with pytest.raises(SteerlensError, match="non-empty list of seeds"):
        sample_many(smol, [PROMPT, PROMPT], [[1]])
    with pytest.raises(SteerlensError, match="temperature"):
        sample_many(smol, [PROMPT], [[1]], temperature=0.0)
