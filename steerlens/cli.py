"""``steerlens`` command line: ``demo`` (the main job), ``prepare``, ``info``, ``collect``, ``critique``,
``tts``, ``personality``, ``copy-suppression``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import SteerlensError


def _demo(args: argparse.Namespace) -> int:
    """The main job: the whole story on the embedded models, one run directory and one HTML report."""
    from steerlens.analysis.demo import run_demo

    _, sections = run_demo(args.out, model=args.model, copy_model=args.copy_model, quick=args.quick)
    return 1 if any(s.error for s in sections) else 0


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


def _critique(args: argparse.Namespace) -> int:
    from steerlens.steering.critique import critique_study

    from . import load

    t0 = time.perf_counter()
    study = critique_study(
        load(args.model),
        args.out,
        n=args.n,
        seed=args.seed,
        mode=args.mode,
        span=args.span,
        method=args.method,
        n_detect=args.n_detect,
        alphas=[float(a) for a in args.alphas.split(",")],
    )
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s: {study.detection.verdict()}")
    return 0


def _tts(args: argparse.Namespace) -> int:
    from steerlens.steering import SteeringVector
    from steerlens.steering.tts import scaling_study

    from . import load
    from .files import read_json

    crit = Path(args.critique)
    vec_path, metrics = crit / "critique_vector.safetensors", crit / "metrics.json"
    if not vec_path.exists() or not metrics.exists():
        raise SteerlensError(
            f"no critique run in {crit} (need critique_vector.safetensors and metrics.json); run "
            f"`steerlens critique --out {crit}` first"
        )
    layer = args.layer if args.layer is not None else int(read_json(metrics)["probe"]["chosen_layer"])
    model = load(args.model)
    probe, probe_layer = None, None
    if (crit / "critique_probe.safetensors").exists():  # best-of-N with the critique probe as verifier
        from steerlens.probes.linear import Logistic

        probe, meta = Logistic.load(crit / "critique_probe.safetensors")
        if "layer" not in meta:
            raise SteerlensError(
                f"{crit / 'critique_probe.safetensors'} does not record the layer it was fitted on; rerun "
                f"`steerlens critique --out {crit}`"
            )
        probe_layer = int(meta["layer"])  # the probe reads its own layer, whatever --layer steers
    comp = scaling_study(
        model,
        SteeringVector.load(vec_path, model=model),
        layer,
        args.out,
        n_problems=args.n_problems,
        n=args.samples,
        rounds=args.rounds,
        alpha=args.alpha,
        seed=args.seed,
        probe=probe,
        probe_layer=probe_layer,
    )
    print(f"wrote {args.out}/tts.json and tts_curves.html ({len(comp.parallel)} conditions)")
    return 0


def _personality(args: argparse.Namespace) -> int:
    from steerlens.steering.personality import load_multiple_choice, personality_study

    from . import load

    t0 = time.perf_counter()
    study = personality_study(
        load(args.model),
        args.out,
        traits=args.traits.split(","),
        alphas=[float(a) for a in args.alphas.split(",")],
        method=args.method,
        layer=args.layer,
        seed=args.seed,
        mc_items=load_multiple_choice(args.mc) if args.mc else None,
        with_stability=not args.no_stability,
    )
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s (steering layer {study.vectors.layer})")
    for t, row in study.summary().items():
        e = row["steering_slope"]
        print(f"  {t:18s} slope {e['value']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]  {row['verdict']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .registry import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="steerlens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the main job: every analysis on the embedded models, one HTML report")
    p.add_argument("--model", default="smollm2-135m-instruct", help="critique, scaling and personality")
    p.add_argument("--copy-model", default=DEFAULT_MODEL, help="copy-suppression analysis")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in a few minutes")
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
    p = sub.add_parser(
        "critique", help="error-injected reasoning, probes, critique vector, detection vs alpha"
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default="runs/critique")
    p.add_argument("--n", type=int, default=200, help="synthetic problems for error injection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=["generated", "templated"], default="generated")
    p.add_argument("--span", choices=["injected", "after", "answer"], default="answer")
    p.add_argument("--method", choices=["mean", "pca", "probe"], default="mean")
    p.add_argument("--n-detect", type=int, default=100, help="held-out error-detection items")
    p.add_argument("--alphas", default="-0.2,-0.1,-0.05,0,0.05,0.1,0.2", help="in residual-norm units")
    p.set_defaults(func=_critique)
    p = sub.add_parser("tts", help="test-time scaling (parallel and 'Wait' rounds), steered vs unsteered")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--critique", default="runs/critique", help="a `steerlens critique` run directory")
    p.add_argument("--layer", type=int, default=None, help="default: the layer the critique run chose")
    p.add_argument("--out", default="runs/tts")
    p.add_argument("--n-problems", type=int, default=24)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--alpha", type=float, default=0.1, help="in residual-norm units")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tts)
    p = sub.add_parser(
        "personality", help="Big Five trait vectors, questionnaire dose-response, leakage, prompting baseline"
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default="runs/personality")
    p.add_argument("--traits", default="openness,conscientiousness,extraversion,agreeableness,neuroticism")
    p.add_argument("--alphas", default="-0.5,-0.25,0,0.25,0.5", help="in residual-norm units")
    p.add_argument("--method", choices=["mean", "pca", "probe"], default="mean")
    p.add_argument(
        "--layer", type=int, default=None, help="default: best held-out separability, middle layers"
    )
    p.add_argument("--mc", default=None, help="multiple-choice JSONL for the side-effect check")
    p.add_argument(
        "--no-stability", action="store_true", help="skip the method / split / pair stability runs"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_personality)
    from steerlens.analysis.copy_suppression import add_copy_suppression_parser

    add_copy_suppression_parser(sub)
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
