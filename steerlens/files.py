"""Atomic file writes: a reader never sees a half-written file, a crash never leaves one behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import SteerlensError


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path`` (same directory, so atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(Path(tmp))
        # mkstemp makes 0600 and some writers (safetensors) recreate the file: set what open() would give
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


def read_json(path: str | Path) -> Any:
    with reading(path, "JSON file", "rewrite it, or delete it and run the step that makes it again"):
        return json.loads(Path(path).read_text())


@contextlib.contextmanager
def reading(path: str | Path, what: str, fix: str) -> Iterator[None]:
    """Turn what a library raises on a missing, truncated or foreign file into a ``SteerlensError`` that
    names the file, what it should have been and ``fix``; steerlens' own errors pass through unchanged."""
    try:
        yield
    except SteerlensError:
        raise
    except FileNotFoundError as e:
        raise SteerlensError(f"{path} does not exist (expected a {what}); {fix}") from e
    except Exception as e:  # safetensors, gguf, json and struct each raise their own types
        first = (str(e).splitlines() or [""])[0][:200]
        raise SteerlensError(
            f"{path} is not a readable {what} ({type(e).__name__}: {first}); it is truncated, corrupt or another "
            f"format. {fix}"
        ) from e
