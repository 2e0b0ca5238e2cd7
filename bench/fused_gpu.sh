#!/usr/bin/env bash
# The fused steering kernel on a GPU machine, unattended, in under 4 minutes. Needs python3 with torch, triton
# and jaxtyping (transformers for the decode step; without it a stand-in model is used); NOT steerlens or its
# dependencies: steering/fused.py is loaded on its own. Run from the repository root:
#
#   bash bench/fused_gpu.sh          # log: $OUT/fused_gpu.log (./fused_gpu.log when OUT is unset)
#
# 1. kernel == reference on 300 random step lists on CUDA (fp32 / bf16 / fp16, masks, per-row, NaN clamp)
#    and CUDA-graph capture + replay with in-place coefficient and direction updates;
# 2. bench/fused.py --gpu: per-layer op time (host and in-graph GPU time), bandwidth vs a plain copy for a sweep
#    of launch shapes (BLOCK_M x num_warps; STEERLENS_FUSED_SHAPE sets them);
# 3. bench/fused_decode.py: steered decode at batch 64 under CUDA graphs (transformers' Llama in a child
#    process; the stand-in in a fresh one if that fails).
# Each part runs even if an earlier one failed; the exit status says if any did. A summary ends the log.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
LOG="$OUT/fused_gpu.log"
PY=${PYTHON:-python3}
export PYTHONPATH=. STEERLENS_FUSED_STANDALONE=1 PYTHONUNBUFFERED=1
export FUSED_SUMMARY="$OUT/fused_gpu_summary.txt"
: >"$FUSED_SUMMARY"
failed=0
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log it, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  if timeout "$limit" "$@"; then echo "=== $name: ok in $((SECONDS - t0))s"; else
    echo "=== $name: FAILED (exit $?) after $((SECONDS - t0))s"; echo "$name: FAILED" >>"$FUSED_SUMMARY"; failed=1; fi
}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  part "kernel vs reference + CUDA graph" 70 $PY tests/steering/fused_cases.py --device cuda --cases 300 --seed 0 --graph
  part "bench/fused.py --gpu" 140 $PY bench/fused.py --gpu --skip-decode --sweep-seconds 90
  part "decode under CUDA graphs" 100 $PY bench/fused_decode.py
  echo "=== all parts: $([ $failed = 0 ] && echo ok || echo SOME FAILED) in ${SECONDS}s"
  echo "=== summary (for bench/RESULTS.md)"
  cat "$FUSED_SUMMARY"
  exit $failed
} 2>&1 | tee "$LOG"
