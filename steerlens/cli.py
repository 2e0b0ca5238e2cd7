"""``steerlens`` command line: ``demo`` (the main job), ``prepare``, ``info``, ``collect``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import SteerlensError

DEMO_PROMPTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The Eiffel Tower is located in the city of",
    "12+7=",
    "The opposite of hot is",
]


def _demo(args: argparse.Namespace) -> int:
    """Smoke run of the core: load, predict, collect activations, write a run directory."""
    import torch

    from . import collect, load
    from .files import write_json

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/3] loading {args.model}", flush=True)
    model = load(args.model)
    print(f"      {model}", flush=True)
    print("[2/3] next-token predictions", flush=True)
    predictions = []
    for prompt in DEMO_PROMPTS:
        probs = model.logits(prompt)[-1].softmax(-1)
        top = probs.topk(3)
        toks = [model.tokenizer.decode(int(i)) for i in top.indices]
        predictions.append(
            {"prompt": prompt, "top3": toks, "probs": [round(float(p), 4) for p in top.values]}
        )
        print(f"      {prompt!r} -> {toks[0]!r} (p={float(top.values[0]):.3f})", flush=True)
    print("[3/3] collecting resid_post at every layer (last token)", flush=True)
    store = collect(
        model,
        DEMO_PROMPTS,
        "blocks.*.hook_resid_post",
        positions="last",
        path=out / "activations",
        overwrite=True,
        progress=False,
    )
    norms = [float(store[s].norm(dim=-1).mean()) for s in store.sites]
    with torch.no_grad():
        layer_of_max = int(torch.tensor(norms).argmax())
    summary = {
        "model": model.name,
        "config": model.cfg.__dict__,
        "predictions": predictions,
        "resid_post_mean_norm_by_layer": norms,
        "layer_with_largest_norm": layer_of_max,
        "activation_store": str(store.path),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "summary.json", summary)
    print(f"wrote {out / 'summary.json'} and {store.path} in {summary['seconds']} s", flush=True)
    return 0


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
        print(f"  {m.name:24s} {state}\n  {'':24s} {m.description}")
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
    p = sub.add_parser("demo", help="run the main job on an embedded model (no network)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=_demo)
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
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except SteerlensError as e:
        print(f"steerlens: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
