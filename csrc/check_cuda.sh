#!/usr/bin/env bash
# Compile-check the CUDA kernels (csrc/*.cu) for sm_80 and sm_90 with the machine's nvcc.
# They include no torch headers, so this works with a CPU-only torch. Exits 0 with a note when nvcc is absent.
set -euo pipefail
cd "$(dirname "$0")"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [ -z "$NVCC" ]; then
  echo "check_cuda: nvcc not found; CUDA sources not compile-checked (fine on a CPU-only machine)"
  exit 0
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
pids=()
for src in softmax.cu attention.cu adamw.cu; do
  "$NVCC" -std=c++17 -O3 --use_fast_math -Werror all-warnings \
    -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90 \
    -c "$src" -o "$out/${src%.cu}.o" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
if [ "$status" -ne 0 ]; then echo "check_cuda: FAILED to compile the CUDA kernels"; exit 1; fi
echo "check_cuda: softmax.cu attention.cu adamw.cu compile for sm_80 and sm_90 ($("$NVCC" --version | tail -1))"
