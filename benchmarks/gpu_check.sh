#!/usr/bin/env bash
# GPU check, one call of a few minutes on a machine with a CUDA GPU (runs on the CPU otherwise):
#  1. extraction on CUDA: fp32 baseline loop vs the engine in fp32/bf16/fp16, over JPEGs on disk;
#  2. the network alone on in-memory tensors (fp32 vs autocast) and JPEG decoding alone (the
#     ceiling for on-disk data), by Pillow in CPU workers and by nvJPEG in batches on the GPU
#     (extraction.decode: device; the engine with it, and its features' cosine to Pillow's);
#  3. reduced precision on real images (Corel-1K, if present): cosine vs fp32 and accuracy.
# Settings by environment: IMAGES (default 2048 on CUDA, 16 on the CPU), ARCH (vgg16),
# WORKERS, CBIR_DATA (a folder holding corel1k/), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  device=cuda; images=${IMAGES:-2048}; workers=${WORKERS:-8}; threads=8; precisions=fp32,bf16,fp16
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  device=cpu; images=${IMAGES:-16}; workers=${WORKERS:-2}; threads=2; precisions=fp32
  echo "no CUDA device: running the CPU fallback"
fi
arch=${ARCH:-vgg16}
"$PY" benchmarks/extract.py --device "$device" --arch "$arch" --images "$images" --batch-size 64 \
  --workers "$workers" --threads "$threads" --precisions "$precisions" --with memory,decode \
  --decoders pillow,device
corel="${CBIR_DATA:-../shared/data}/corel1k"
if [ "$device" = cuda ] && [ -d "$corel" ]; then
  for precision in bf16 fp16; do
    "$PY" benchmarks/precision.py --folder "$corel" --device cuda --precision "$precision" --workers "$workers"
  done
fi
