#!/usr/bin/env bash
# GPU check: one run of under 10 minutes on a machine with a CUDA GPU answers every open GPU question,
# and ends with one table (benchmarks/gpu_table.py: check, setting, figure, value, device). Without
# CUDA it runs a small CPU fallback. Steps, each under timeout(1) with its own limit, clipped to what
# is left of BUDGET; a failed or timed-out step is recorded in the table and the next one runs:
#  1. extraction (extract.py): fp32 baseline loop vs the engine in fp32/bf16/fp16 over JPEGs on disk;
#     the network alone on in-memory tensors (fp32 vs autocast); JPEG decoding alone, by Pillow in
#     CPU workers and by nvJPEG in batches on the GPU (extraction.decode: device: the engine with it,
#     and its features' cosine to Pillow's);
#  2. the evaluation at the 70,000-image scale (eval_scale.py): exact rankings of 2,000 stratified
#     test queries on the CPU (the baseline), every query on the CPU (CUDA only: --full-cpu) and
#     every query and the 2,000 on CUDA, with mAP, its interval and the bounded - full difference;
#  3. a whole query's latency (serve.py): `cbir index` on a small labelled photo folder (PER_CLASS
#     Corel-1K photos of each class, generated JPEGs without Corel-1K), then uploads to `cbir serve`
#     and the in-process `cbir query` path (decode, network, searches) on its cell, both on the
#     device `auto` finds; the cell's features/<backbone>.timing.json gives the network alone;
#  4. fine-tuning (benchmarks/finetune.py, once it exists; a row "not built yet" until then);
#  5. reduced precision on real images (precision.py, CUDA and Corel-1K only): cosine to fp32,
#     accuracy and mAP of torch bf16 and fp16.
# Settings by environment: IMAGES (default 2048 on CUDA, 16 on the CPU), ARCH (vgg16), WORKERS,
# CBIR_DATA (a folder holding corel1k/), PER_CLASS (photos per class indexed for the query latency:
# 20 on CUDA, 8 on the CPU), QUERY_BACKBONE (efficientnet_lite2 on CUDA, cbir index's default for
# photos; efficientnet_lite0 on the CPU), FINETUNE_ARGS, BUDGET (seconds for the whole run, 560),
# PYTHON. Where $OUT names a folder (a device runner's, which comes back), the table, the steps and
# benchmarks/results/*.jsonl (git-ignored, so not otherwise returned) are copied to $OUT/gpu_check.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
started=$(date +%s)
since=$(date +%Y-%m-%dT%H:%M:%S) # records of this run are stamped at or after this (benchmarks/_common.py)
budget=${BUDGET:-560}
reserve=40 # kept for the table and for a killed step's grace (timeout -k)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
steps="$work/steps.tsv"
: >"$steps"
cores=$(nproc 2>/dev/null || echo 2)
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  device=cuda; images=${IMAGES:-2048}; workers=${WORKERS:-8}; threads=8; precisions=fp32,bf16,fp16
  per_class=${PER_CLASS:-20}; query_backbone=${QUERY_BACKBONE:-efficientnet_lite2}; eval_options=--full-cpu
  timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  device=cpu; images=${IMAGES:-16}; workers=${WORKERS:-2}; threads=2; precisions=fp32
  per_class=${PER_CLASS:-8}; query_backbone=${QUERY_BACKBONE:-efficientnet_lite0}; eval_options=
  echo "no CUDA device: running the CPU fallback"
fi
arch=${ARCH:-vgg16}
corel="${CBIR_DATA:-../shared/data}/corel1k"

# step NAME LIMIT COMMAND...: COMMAND under timeout, at most LIMIT s and what the budget leaves; its
# status (exit code; 124/137: timed out), seconds and limit appended to $steps for the table
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((budget - reserve - ($(date +%s) - started)))
  ((left < limit)) && limit=$left
  if ((limit < 15)); then
    echo "== $name: skipped, the budget of $budget s is spent"
    printf '%s\tskipped\t0\tthe budget is spent\n' "$name" >>"$steps"
    return 0
  fi
  echo "== $name (at most $limit s): $*"
  local t0 status=0
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" || status=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" $(($(date +%s) - t0)) "$limit" >>"$steps"
  ((status == 0)) || echo "== $name: exit $status"
}

skip() { # skip NAME REASON: a step that does not apply here, named in the table
  echo "== $1: skipped, $2"
  printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$steps"
}

# a whole query: a small labelled folder indexed, then serve.py on the cell cbir index names
query_latency() {
  "$PY" - "$work/photos" "$per_class" "$corel" <<'EOF' || return
import shutil, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from _common import make_jpegs

out, per_class, corel = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
classes = sorted(p for p in corel.iterdir() if p.is_dir()) if corel.is_dir() else []
for folder in classes:  # Corel-1K's first photos of each class
    (out / folder.name).mkdir(parents=True, exist_ok=True)
    for photo in sorted(folder.glob("*.jpg"))[:per_class]:
        shutil.copy(photo, out / folder.name / photo.name)
for c in range(0 if classes else 4):  # without Corel-1K: generated JPEGs in 4 class folders
    make_jpegs(out / f"class{c}", per_class, seed=c)
print(f"{sum(1 for _ in out.rglob('*.jpg'))} photos in {out} ({'Corel-1K' if classes else 'generated'})")
EOF
  "$PY" -m cbir.cli index "$work/photos" --name gpucheck --workdir "$work/index" --backbone "$query_backbone" \
    --cores "$cores" >"$work/index.out" || return
  cat "$work/index.out"
  local cell
  cell=$(sed -n 's/^  cbir serve --model //p' "$work/index.out")
  [ -n "$cell" ] || { echo "cbir index named no cell to serve"; return 1; }
  cp "$work/index/results/gpucheck/features/$query_backbone.timing.json" "$work/timing.json" || true
  "$PY" benchmarks/serve.py --model "$cell" --requests 30 --warmup 5 --cache "$work/cache"
}
export -f query_latency
export PY work per_class corel query_backbone cores

step extraction 240 "$PY" benchmarks/extract.py --device "$device" --arch "$arch" --images "$images" \
  --batch-size 64 --workers "$workers" --threads "$threads" --precisions "$precisions" --with memory,decode \
  --decoders pillow,device
# shellcheck disable=SC2086  # eval_options: no option or one word
step "evaluation 70k" 120 "$PY" benchmarks/eval_scale.py --n 70000 --eval-queries 2000 $eval_options
step "query latency" 150 bash -c query_latency
if [ -f benchmarks/finetune.py ]; then
  # expected of finetune.py (a later issue adds it): --device and --epochs, a run of a minute or two at
  # --epochs 1, and its rows recorded as record("finetune", rows, settings=vars(args)) for the table
  # shellcheck disable=SC2086  # FINETUNE_ARGS: words
  step fine-tuning 90 "$PY" benchmarks/finetune.py --device "$device" ${FINETUNE_ARGS:---epochs 1}
else
  printf 'fine-tuning\tabsent\t0\t-\n' >>"$steps"
fi
if [ "$device" != cuda ]; then
  skip precision "no CUDA device"
elif [ ! -d "$corel" ]; then
  skip precision "no Corel-1K at $corel"
else
  step precision 90 "$PY" benchmarks/precision.py --folder "$corel" --device cuda --paths torch-bf16,torch-fp16 \
    --workers "$workers" --threads "$threads"
fi

echo
echo "== GPU check: every result of this run (since $since)"
timing=()
[ -f "$work/timing.json" ] && timing=(--timing "$work/timing.json")
{
  timeout 60 "$PY" benchmarks/gpu_table.py --since "$since" --steps "$steps" ${timing[@]+"${timing[@]}"} ||
    { echo "gpu_table.py failed; the steps:"; cat "$steps"; }
  echo "total wall time: $(($(date +%s) - started)) s (budget $budget s)"
} | tee "$work/table.txt"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then # a device runner's folder that comes back: the table and the records
  mkdir -p "$OUT/gpu_check" && cp "$work/table.txt" "$steps" benchmarks/results/*.jsonl "$OUT/gpu_check/" &&
    echo "table, steps and benchmarks/results/*.jsonl copied to $OUT/gpu_check"
fi
