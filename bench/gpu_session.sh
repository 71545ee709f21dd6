#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one prepared run (issue 8 §4), sized for about
# 8 minutes on one H200 so that a 15-minute device budget leaves room for one rerun.
#
#   OUT=<dir> bash bench/gpu_session.sh            # on the GPU machine (the device tool sets $OUT)
#   OUT=/tmp/gpu DRY_RUN=1 bash bench/gpu_session.sh   # here, on the CPU: tiny sizes, same commands
#
# What it measures, each written into $OUT/summary.{md,json} by bench/gpu_summary.py:
#   1. the released MetaGait step (P×K 8×8 = 64 sequences × 30 frames of 64×44) in 16-mixed and
#      bf16-mixed, eager and torch.compile'd, with peak memory;
#   2. one ACL meta iteration of DR50 at 256×128 with the released batch (64 merged images,
#      3 × 32 single-domain images), with peak memory;
#   3. the packed data pipeline feeding a real `src/train.py` run (experiment=metagait_casiab on a
#      synthetic store of CASIA-B size) for 200 steps, GPU utilisation sampled by nvidia-smi;
#   4. the DDP strategy with SyncBatchNorm on the one GPU (1 process: exercises the code path,
#      NCCL between 2 processes on one GPU would measure nothing).
#
# The GPU image has torch, Lightning, torchmetrics, einops and rich but not Hydra/OmegaConf/kornia:
# carry them as wheels (device README): here, once,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.0 \
#     antlr4-python3-runtime==4.9.3 kornia==0.9.0 kornia_rs==0.1.10
#   (antlr4 is a pure sdist-free wheel; add `--platform any` if pip asks), and run with carry=[".whl"].
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
WORK=${WORK:-/tmp/metareid_gpu}
PY=${PY:-python3}
DRY_RUN=${DRY_RUN:-0}
mkdir -p "$OUT" "$WORK/json"
LOG="$OUT/gpu_session.log"
exec > >(tee -a "$LOG") 2>&1

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
export PROJECT_ROOT=$PWD

if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu; PRECISIONS="bf16-mixed"; COMPILES="eager"
  GAIT_ARGS="--batch 4 --frames 8 --channels 4 8 8 --bins 4 --eval-batch 2 --eval-frames 10 --quick"
  DR50_ARGS="--width 0.125 --height 64 --width-px 32 --quick"
  DATA="data.synthetic.num_subjects=6 data.synthetic.train_subjects=3 ++data.synthetic.views=[000,090] ++data.synthetic.frames=[8,12] data.p=3 data.k=2 data.frames_num_fixed=6 data.num_workers=0 model.net.channels=[4,8,8] ++model.net.bin_num=4"
  STEPS=4; TRAINER="trainer.accelerator=cpu trainer.precision=bf16-mixed trainer.sync_batchnorm=false"
else
  DEVICE=cuda; PRECISIONS="16-mixed bf16-mixed"; COMPILES="eager compile"
  GAIT_ARGS="--batch 64 --frames 30 --eval-batch 16 --eval-frames 90 --repeats 20"
  DR50_ARGS="--width 1.0 --height 256 --width-px 128 --batch 64 --repeats 10"
  # CASIA-B size: 124 subjects (74 train) × 10 types × 11 views × 80-100 frames, packed store.
  DATA="data.synthetic.num_subjects=124 data.synthetic.train_subjects=74 ++data.synthetic.frames=[80,100] data.num_workers=8"
  STEPS=200; TRAINER=""
  nvidia-smi > "$WORK/nvidia_smi.txt"
fi

echo "== 1. MetaGait released step: precision × eager/compiled"
for precision in $PRECISIONS; do
  for mode in $COMPILES; do
    flag=""; [ "$mode" = compile ] && flag="--compile"
    $PY bench/bench_metagait.py $GAIT_ARGS --device $DEVICE --precision "$precision" $flag \
      --out "$WORK/json/metagait_${precision}_${mode}.json" || echo "FAILED metagait $precision $mode"
  done
done

echo "== 2. DR50 meta iteration at 256×128"
for mode in $COMPILES; do
  flag=""; [ "$mode" = compile ] && flag="--compile"
  $PY bench/bench_dr50_meta.py $DR50_ARGS --device $DEVICE $flag \
    --out "$WORK/json/dr50_meta_${mode}.json" || echo "FAILED dr50 $mode"
done

echo "== 3. Packed data pipeline feeding a real training run ($STEPS steps)"
RUN_LOGS="$WORK/logs"
UTIL="$WORK/gpu_util.csv"
if [ "$DRY_RUN" != 1 ]; then
  # Generate (and pack) the store first, so the sampled window covers training only.
  $PY src/train.py experiment=metagait_casiab data=casiab_synthetic $DATA \
    data.root="$WORK/data" trainer.max_steps=1 test=false paths.log_dir="$RUN_LOGS/warm" \
    trainer.enable_progress_bar=false || echo "FAILED data generation"
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
    -lms 200 > "$UTIL" &
  SAMPLER=$!
fi
start=$($PY -c "import time; print(time.time())")
$PY src/train.py experiment=metagait_casiab data=casiab_synthetic $DATA $TRAINER \
  data.root="$WORK/data" trainer.max_steps=$STEPS trainer.val_check_interval=$((STEPS * 10)) \
  test=false paths.log_dir="$RUN_LOGS/train" trainer.enable_progress_bar=false \
  || echo "FAILED training run"
end=$($PY -c "import time; print(time.time())")
[ "$DRY_RUN" != 1 ] && kill "$SAMPLER" 2>/dev/null
$PY -c "import json; json.dump({'steps': $STEPS, 'seconds': $end - $start, 'steps_per_s': $STEPS / ($end - $start)}, open('$WORK/json/train_run.json', 'w'))"

echo "== 4. DDP strategy with SyncBatchNorm, one GPU"
DDP_TRAINER="trainer=ddp trainer.devices=1"
[ "$DRY_RUN" = 1 ] && DDP_TRAINER="$DDP_TRAINER trainer.accelerator=cpu trainer.sync_batchnorm=false"
$PY src/train.py experiment=metagait_casiab data=casiab_synthetic $DATA $DDP_TRAINER \
  data.root="$WORK/data" trainer.max_steps=20 trainer.val_check_interval=1000 test=false \
  paths.log_dir="$RUN_LOGS/ddp" trainer.enable_progress_bar=false \
  && echo '{"ddp_syncbn": "ok"}' > "$WORK/json/ddp.json" \
  || { echo '{"ddp_syncbn": "failed"}' > "$WORK/json/ddp.json"; echo "FAILED ddp"; }

$PY bench/gpu_summary.py --json-dir "$WORK/json" --util "$UTIL" --out "$OUT"
[ -f "$WORK/nvidia_smi.txt" ] && cp "$WORK/nvidia_smi.txt" "$OUT/"
echo "== done: $OUT"
