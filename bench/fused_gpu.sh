#!/usr/bin/env bash
# The fused steering kernel on a GPU machine, unattended, in under 5 minutes. Needs python3 with torch, triton
# and jaxtyping (transformers for the decode step; without it a stand-in model is used); NOT steerlens or its
# dependencies: steering/fused.py is loaded on its own. Run from the repository root:
#
#   bash bench/fused_gpu.sh          # log: $OUT/fused_gpu.log (./fused_gpu.log when OUT is unset)
#
# 1. kernel == reference on 300 random step lists on CUDA (fp32 / bf16 / fp16, masks, per-row, NaN clamp)
#    and CUDA-graph capture + replay with in-place coefficient and direction updates;
# 2. bench/fused.py's GPU sections: per-layer op time, bandwidth vs a plain copy, steered decode at batch 64
#    under CUDA graphs. Each part runs even if an earlier one failed; the exit status says if any did.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.}
LOG="$OUT/fused_gpu.log"
PY=${PYTHON:-python3}
export PYTHONPATH=. STEERLENS_FUSED_STANDALONE=1 PYTHONUNBUFFERED=1
failed=0
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log it, remember a failure
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  if timeout "$limit" "$@"; then echo "=== $name: ok in $((SECONDS - t0))s"; else
    echo "=== $name: FAILED (exit $?) after $((SECONDS - t0))s"; failed=1; fi
}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  part "kernel vs reference + CUDA graph" 120 $PY tests/steering/fused_cases.py --device cuda --cases 300 --seed 0 --graph
  part "bench/fused.py --gpu" 150 $PY bench/fused.py --gpu
  echo "=== all parts: $([ $failed = 0 ] && echo ok || echo SOME FAILED) in ${SECONDS}s"
  exit $failed
} 2>&1 | tee "$LOG"
