#!/usr/bin/env bash
# One-shot GPU check (what we run on a lent H100/H200): the three tiny stages through the real
# train.py path (DeepSpeed ZeRO-2, bf16, torchrun) on CUDA, then bench/train_step.py's throughput/MFU.
# Wheels the GPU image lacks (deepspeed, dagster-pipes, pydantic) travel in .whl/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)" | tee -a "$OUT/gpu.txt"
python3 - <<'PY'
import sys; sys.path.insert(0, "tests")
from pathlib import Path
from training_fixtures import write_mixture
for s in (1, 2, 3):
    write_mixture(Path("/tmp/gpu_mix"), stage=s, n=48, text_only=4, seed=s)
PY
prev=none
for s in 1 2 3; do
  timeout 80 python3 -m torch.distributed.run --standalone --nproc-per-node=1 -m training_jobs.train \
    --stage $s --data /tmp/gpu_mix/stage$s.jsonl --image-root /tmp/gpu_mix/images --init-from $prev \
    --model-config tiny --output /tmp/gpu_train/stage$s --max-length 1024 --micro-batch 2 --device cuda \
    2>&1 | tail -n 25 | tee "$OUT/stage$s.log"
  prev=/tmp/gpu_train/stage$s/export
done
timeout 300 python3 bench/train_step.py --budget-s 270 --out "$OUT/train_step.json" 2>&1 | tail -n 60
cp bench/results/train_step-*.json "$OUT/" 2>/dev/null || true
ls -la "$OUT"
