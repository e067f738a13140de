#!/usr/bin/env bash
# Cross-builds the CUDA binary (`--features cuda`) on a machine without a GPU or a CUDA install,
# for a GPU box that has a driver but no Rust: nvcc, headers and libraries come from NVIDIA's
# PyPI wheels (CUDA 13.0), and libcuda (which only the driver provides) is replaced at link time
# by a stub exporting the driver API names cudarc declares. The binary loads the real libcuda.so.1
# on the GPU box.
#
# Usage: scripts/build_cuda.sh [COMPUTE_CAP]   (default 90, H100)
# Output: $CUDA_TARGET_DIR/release/runner and $CUDA_TARGET_DIR/runner-cuda.xz (default
# target-cuda/; a separate build from the CPU one, since it links libcuda). On the GPU box the
# binary needs the driver's libcuda.so.1 and CUDA 13's cuBLAS, cuBLASLt, cuRAND and cudart (the
# toolkit's, or the wheels' lib/ directory on LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
cap="${1:-90}"
out="${CUDA_TARGET_DIR:-target-cuda}"
cache="${RUNNER_CACHE:-$HOME/.cache/runner}/cuda-13.0"
root="$cache/nvidia/cu13"
if [ ! -x "$root/bin/nvcc" ] || [ ! -x "$root/nvvm/bin/cicc" ]; then
  mkdir -p "$cache/wheels"
  pip download --no-deps -d "$cache/wheels" \
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*" \
    "nvidia-cublas==13.0.*" "nvidia-curand==10.4.*"
  for w in "$cache"/wheels/*.whl; do python3 -m zipfile -e "$w" "$cache"; done
  chmod +x "$root"/bin/* "$root"/nvvm/bin/*
fi
# Unversioned names for the linker.
for lib in "$root"/lib/lib{cudart,cublas,cublasLt,curand,nvrtc}.so.*; do
  case "$lib" in *.alt.*) continue ;; esac
  ln -sf "$(basename "$lib")" "$root/lib/$(basename "$lib" | sed 's/\.so\..*/.so/')"
done
# libcuda stub: every driver function cudarc's bindings name, soname libcuda.so.1.
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | tail -1)
if [ -z "$cudarc" ]; then
  cargo fetch >/dev/null
  cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)
fi
stub="$cache/stub"
mkdir -p "$stub"
grep -oE "pub (unsafe )?fn cu[A-Za-z0-9_]+" "$cudarc/src/driver/sys/mod.rs" | awk '{print $NF}' | sort -u |
  sed 's/.*/void &(void){}/' >"$stub/stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/stub.c"

PATH="$root/bin:$PATH" CUDA_ROOT="$root" CUDA_PATH="$root" CUDA_TOOLKIT_ROOT_DIR="$root" \
  CUDA_COMPUTE_CAP="$cap" LIBRARY_PATH="$root/lib:$stub" LD_LIBRARY_PATH="$root/lib" \
  CARGO_TARGET_DIR="$out" cargo build --release --features cuda --bin runner
xz -T0 -c "$out/release/runner" >"$out/runner-cuda.xz"
ls -la "$out/release/runner" "$out/runner-cuda.xz"
