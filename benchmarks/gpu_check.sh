#!/usr/bin/env bash
# GPU readiness in one script (issue 13): on a machine with a CUDA GPU, in the repository root,
#   bash benchmarks/gpu_check.sh            # about 6 minutes on an H100/H200-class GPU
# runs, and prints as one table at the end:
#   1. the CUDA tests (pytest -m gpu: CUDA vs CPU forward/backward of every PE, bf16, the
#      training step on the device);
#   2. bench_train.py on CUDA at the paper's size, kernels reference and auto (the fast paths),
#      fp32 and bf16, with the projection of one full run (3647 train / 429 val windows);
#   3. one paper-size epoch of the real training step, timed (bench_epoch.py), and from it the
#      projection of the whole study in GPU-hours.
# Goals it measures: one full paper run <= 5 minutes on one H100-class GPU; the study <= 12 GPU-h.
#
# Needs python with torch (CUDA build), numpy, pyyaml, pytest. Packages the machine lacks
# (jsonschema and its needs, for the config checks) can travel as wheels in .whl/ (see the
# device notes: pip download --only-binary=:all: ... -d .whl jsonschema ...): when .whl/ exists
# they are installed into /tmp/site first. Nothing here writes outside $OUT (default /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
TW=${TRAIN_WINDOWS:-3647}
VW=${VAL_WINDOWS:-429}
PES=${PES:-nope,rope_c,fstripe1,ropepool,spe}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"

echo "== 1. CUDA tests"
timeout 180 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_attention.py tests/test_model.py tests/test_train.py \
  > "$OUT/pytest_gpu.log" 2>&1
tests_rc=$?
tail -3 "$OUT/pytest_gpu.log"

echo "== 2. bench_train.py on CUDA: kernels x dtype"
for k in reference auto; do
  for d in fp32 bf16; do
    timeout 120 $PY benchmarks/bench_train.py --device cuda --pes "$PES" --kernels $k --dtype $d --steps 5 --warmup 2 \
      --train-windows "$TW" --val-windows "$VW" --json "$OUT/train_${k}_${d}.json" > "$OUT/train_${k}_${d}.log" 2>&1 \
      || echo "bench_train $k $d failed: see $OUT/train_${k}_${d}.log"
  done
done

echo "== 3. one paper-size epoch, timed"
for d in fp32 bf16; do
  timeout 150 $PY benchmarks/bench_epoch.py --device cuda --pe rope_c --context bin --dtype $d \
    --train-windows "$TW" --val-windows "$VW" --json "$OUT/epoch_${d}.json" > "$OUT/epoch_${d}.log" 2>&1 \
    || echo "bench_epoch $d failed: see $OUT/epoch_${d}.log"
done

echo "== summary"
$PY - "$OUT" "$tests_rc" <<'EOF'
import json, sys
from pathlib import Path
out, rc = Path(sys.argv[1]), int(sys.argv[2])
print((out / "gpu.txt").read_text().strip())
print(f"CUDA tests: {'passed' if rc == 0 else f'FAILED (rc {rc}), see ' + str(out / 'pytest_gpu.log')}")
print(f"{'what':34s} {'s/step':>8s} {'peak MB':>8s} {'run min':>8s} {'study GPU-h':>11s}")
for f in sorted(out.glob("train_*.json")):
    d = json.loads(f.read_text())
    for r in d.get("rows", []):
        pr = (d.get("projection") or {}).get(r.get("pe"), {})
        run_min = 60 * pr["total_h"] if pr else float("nan")
        print(f"{f.stem[6:] + ' ' + str(r.get('pe')):34s} {r.get('s_per_step', float('nan')):8.3f} "
              f"{r.get('peak_mb', float('nan')):8.0f} {run_min:8.1f} {'':>11s}")
for f in sorted(out.glob("epoch_*.json")):
    d = json.loads(f.read_text())
    print(f"{'epoch ' + d['dtype'] + ' ' + d['pe'] + '+' + d['context']:34s} "
          f"{d['epoch_train_s'] / d['steps_per_epoch']:8.3f} {d['peak_mb']:8.0f} {d['run_min']:8.1f} {d['study_gpu_h']:11.1f}")
print("goals: one full run <= 5 min; the study (tuning trials + seed runs) <= 12 GPU-h")
EOF
