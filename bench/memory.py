"""Peak RSS of collecting 5k vs 50k tokens (each in a fresh process): RAM must not grow with the dataset.

python bench/memory.py [--model gemma-3-270m] [--small 5000] [--large 50000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import sys, time, torch
sys.path.insert(0, {bench!r})
from _common import token_windows
import steerlens
torch.set_grad_enabled(False)
model = steerlens.load({model!r})
windows = token_windows(model.tokenizer, {n} // 128, 128)
t = time.perf_counter()
store = steerlens.collect(model, windows, {sites!r}, path={path!r}, batch_size=8, progress=False)
mean = store.mean({sites!r}[0])  # a streamed read over the whole store
print(len(store), round(time.perf_counter() - t, 1))
"""


def run(model: str, n_tokens: int, sites: list[str], path: Path) -> tuple[float, str]:
    code = CHILD.format(
        bench=str(Path(__file__).parent), model=model, n=n_tokens, sites=sites, path=str(path)
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read().strip() if proc.stdout else ""
    if status != 0:
        raise SystemExit(f"child failed for {n_tokens} tokens: status {status}")
    return usage.ru_maxrss / 1024, out  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--small", type=int, default=5000)
    ap.add_argument("--large", type=int, default=50000)
    args = ap.parse_args()
    sites = [f"blocks.{l}.hook_resid_post" for l in (2, 4, 6, 8)]
    tmp = Path(tempfile.mkdtemp(prefix="steerlens-mem-"))
    t = time.perf_counter()
    small, out_s = run(args.model, args.small, sites, tmp / "small")
    large, out_l = run(args.model, args.large, sites, tmp / "large")
    print(f"model {args.model}, sites {sites}")
    print(f"{args.small:>6d} tokens: peak RSS {small:7.0f} MiB  (rows, seconds: {out_s})")
    print(f"{args.large:>6d} tokens: peak RSS {large:7.0f} MiB  (rows, seconds: {out_l})")
    print(
        f"ratio peak RSS large/small: {large / small:.3f} (target <= 1.20); total {time.perf_counter() - t:.0f} s"
    )


if __name__ == "__main__":
    main()
