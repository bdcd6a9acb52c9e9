#!/usr/bin/env bash
# One-shot GPU check (what we run on a lent H100/H200), at most 9.5 minutes (timeouts) on one H200:
#   1. a tiny stage III through the real train.py path on CUDA (DeepSpeed ZeRO-2, bf16, torchrun, the packed-
#      sample isolation probe on flex_attention) with --liger and --compile, then the stage III scoring pass;
#   2. bench/train_step.py at the 7B then the 1.8B shape, stages I-III: packed rows (flex_attention) and the
#      no-mask bound as today, plus packed with liger-kernel, torch.compile and both, each in the same run.
#      Goal: stage I/II >= 50% MFU and stage III >= 45% at 7B; packed >= 0.95x the bound.
# Usage: bash bench/gpu_run.sh [shapes...]   (default: 7b 1.8b); results land in $OUT.
# Wheels the GPU image lacks travel in .whl/ (the device has no network). Before the device call, on the CPU
# machine:  pip download --no-deps -d .whl deepspeed dagster-pipes pydantic pydantic-core 'liger-kernel>=0.8.2'
# (liger-kernel is pure Python; its Triton comes with the image's CUDA torch) and carry .whl.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
SHAPES=("${@:-7b 1.8b}"); read -r -a SHAPES <<< "${SHAPES[*]}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)" | tee -a "$OUT/gpu.txt"
KERNELS=(compile)
if python3 -c "import liger_kernel, triton; print('liger-kernel', liger_kernel.__version__ if hasattr(liger_kernel, '__version__') else '?', 'triton', triton.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"; then
  KERNELS=(compile liger liger+compile)
fi
python3 - <<'PY'
import sys; sys.path.insert(0, "tests")
from pathlib import Path
from training_fixtures import write_mixture
write_mixture(Path("/tmp/gpu_mix"), stage=3, n=48, text_only=4, seed=3)
PY
LIGER_FLAG=""; [[ " ${KERNELS[*]} " == *" liger "* ]] && LIGER_FLAG="--liger"
timeout 90 python3 -m torch.distributed.run --standalone --nproc-per-node=1 -m training_jobs.train \
  --stage 3 --data /tmp/gpu_mix/stage3.jsonl --image-root /tmp/gpu_mix/images --model-config tiny \
  --output /tmp/gpu_train/stage3 --max-length 1024 --micro-batch 2 --device cuda --compile $LIGER_FLAG \
  2>&1 | tail -n 20 | tee "$OUT/stage3_kernels.log"
timeout 60 python3 -m training_jobs.score --model /tmp/gpu_train/stage3/export --data /tmp/gpu_mix/stage3.jsonl \
  --image-root /tmp/gpu_mix/images --output /tmp/gpu_train/scores --max-length 1024 --device cuda \
  2>&1 | tail -n 5 | tee "$OUT/score.log"
head -c 600 /tmp/gpu_train/scores/scores.jsonl >> "$OUT/score.log" 2>/dev/null
for shape in "${SHAPES[@]}"; do
  budget=$([[ $shape == 7b ]] && echo 230 || echo 110)
  timeout $((budget + 40)) python3 bench/train_step.py --llm-shape "$shape" --modes packed bound \
    --kernels "${KERNELS[@]}" --budget-s "$budget" --out "$OUT/train_step-kernels-$shape.json" 2>&1 | tail -n 30
done
ls -la "$OUT"
