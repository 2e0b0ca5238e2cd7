"""Training text for SAEs that needs no network: docstrings of the installed Python (stdlib first, then
site-packages), cut into fixed-length token windows, and the activation store collected from them.

Why docstrings: an SAE needs hundreds of thousands to millions of tokens of varied text, offline. Docstrings are
English prose about many subjects (mixed with some code), already on every machine that runs steerlens, in a
fixed order for a given Python and package set. The stdlib alone gives about 300k tokens; site-packages adds
millions.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch
from jaxtyping import Int
from safetensors.torch import load_file, save_file
from torch import Tensor

from steerlens.collect import collect
from steerlens.errors import EmptyInput
from steerlens.files import atomic_write
from steerlens.model import Model
from steerlens.store import ActivationStore

MIN_DOC_CHARS = 200  # shorter docstrings are mostly "Return x." lines


def docstrings(max_chars: int) -> Iterator[str]:
    """Docstrings (modules, classes, functions) of at least ``MIN_DOC_CHARS`` characters, stdlib files in sorted
    order then site-packages, until ``max_chars`` characters have been yielded. Test suites are skipped."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"]), Path(paths["purelib"])]
    total = 0
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).parts
            if any(p in ("test", "tests", "testing") for p in rel) or (
                root == roots[0] and "site-packages" in rel
            ):
                continue
            for doc in _file_docstrings(path):
                yield doc
                total += len(doc)
                if total >= max_chars:
                    return


def _file_docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = (ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, kinds))
    return [d.strip() for d in docs if d and len(d) >= MIN_DOC_CHARS]


def text_windows(model: Model, n_tokens: int, seq_len: int = 128) -> Int[Tensor, "windows seq_len"]:
    """Token windows of exactly ``seq_len`` tokens, ``n_tokens // seq_len`` of them, cut in order from the
    docstring stream (documents joined by blank lines); each starts with BOS where the tokenizer has one.

    Example:
        >>> ids = text_windows(model, 20_000)          # [156, 128]
    """
    if seq_len < 8:
        raise EmptyInput(f"seq_len={seq_len}: expected at least 8 tokens per window")
    n = max(1, n_tokens // seq_len)
    tok = model.tokenizer
    with_special = tok("a", add_special_tokens=True)["input_ids"]
    plain = tok("a", add_special_tokens=False)["input_ids"]
    bos = with_special[: len(with_special) - len(plain)]  # what the tokenizer prepends (Gemma's BOS; none)
    body = seq_len - len(bos)
    stream: list[int] = []
    chunk: list[str] = []
    for doc in docstrings(max_chars=n * body * 8):  # ~4 chars per token, twice over for safety
        chunk.append(doc)
        if len(chunk) == 64:
            stream += tok("\n\n".join(chunk) + "\n\n", add_special_tokens=False)["input_ids"]
            chunk = []
            if len(stream) >= n * body:
                break
    if chunk:
        stream += tok("\n\n".join(chunk), add_special_tokens=False)["input_ids"]
    rows = [bos + stream[i : i + body] for i in range(0, len(stream) - body + 1, body)][:n]
    if not rows:
        raise EmptyInput("no docstring text found in this Python installation")
    return torch.tensor(rows, dtype=torch.long)


def sae_store(
    model: Model,
    site: str,
    windows: Tensor,
    path: str | Path,
    *,
    skip: int = 1,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> ActivationStore:
    """The activations of ``windows`` at ``site`` at every position from ``skip`` on (position 0, the attention
    sink, is left out), collected into a resumable store at ``path``; the windows are saved beside it as
    ``tokens.safetensors`` so max-activating contexts can be shown later.

    Example:
        >>> store = sae_store(model, "blocks.6.hook_resid_post", text_windows(model, 20_000), "runs/sae/store")
    """
    path = Path(path)
    positions = [list(range(skip, windows.shape[1]))] * len(windows)
    store = collect(
        model,
        windows.tolist(),
        site,
        positions,
        path=path,
        batch_size=batch_size,
        dtype=dtype,
        progress=progress,
    )
    atomic_write(
        path / "tokens.safetensors", lambda tmp: save_file({"tokens": windows.contiguous()}, str(tmp))
    )
    return store


def store_tokens(store: ActivationStore) -> Tensor | None:
    """The token windows saved beside a store by ``sae_store`` (None for other stores)."""
    f = store.path / "tokens.safetensors"
    return load_file(str(f))["tokens"] if f.exists() else None
