"""``steerlens`` command line: ``demo`` (the main job), ``prepare``, ``info``, ``collect``, ``critique``,
``tts``, ``personality``, ``copy-suppression``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import SteerlensError


def _prepare(args: argparse.Namespace) -> int:
    from .registry import EMBEDDED
    from .weights import cached_model_dir

    for name in args.models or list(EMBEDDED):
        if name not in EMBEDDED:
            raise SteerlensError(f"unknown embedded model {name!r}; choose from {list(EMBEDDED)}")
        print(f"{name}: {cached_model_dir(EMBEDDED[name])}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .errors import ModelNotAvailable
    from .registry import EMBEDDED
    from .weights import cache_root

    print(f"cache: {cache_root()}  (set STEERLENS_CACHE to move it)")
    for m in EMBEDDED.values():
        try:
            state = f"installed ({m.distribution} {m.version()})"
        except ModelNotAvailable:
            state = f"not installed: {m.install}"
        print(f"  {m.name:28s} {state}\n  {'':28s} {m.description}")
    return 0


def _collect(args: argparse.Namespace) -> int:
    from . import collect, load

    path = Path(args.input)
    if path.suffix == ".jsonl":
        texts = [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    else:
        texts = [line for line in path.read_text().splitlines() if line.strip()]
    positions: str | int = int(args.positions) if args.positions.lstrip("-").isdigit() else args.positions
    store = collect(load(args.model), texts, args.sites, positions, path=args.out, batch_size=args.batch_size)
    print(store)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .registry import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="steerlens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="dequantize and cache embedded models")
    p.add_argument("models", nargs="*")
    p.set_defaults(func=_prepare)
    p = sub.add_parser("info", help="embedded models and cache location")
    p.set_defaults(func=_info)
    p = sub.add_parser("collect", help="collect activations of texts (one per line, or JSONL with 'text')")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--input", required=True)
    p.add_argument("--sites", nargs="+", default=["blocks.*.hook_resid_post"])
    p.add_argument("--positions", default="all")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_collect)
    from .config import register_commands

    register_commands(sub)  # demo and the studies, registered by steerlens.analysis (entry points)
    args = parser.parse_args(argv)
    import torch

    torch.set_grad_enabled(False)  # every command is inference
    try:
        return int(args.func(args))
    except SteerlensError as e:
        print(f"steerlens: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
