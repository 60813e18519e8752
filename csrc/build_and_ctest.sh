#!/usr/bin/env bash
# Configure, build (-j2) and test (ctest) the native mtlguard ops library against the installed libtorch.
# Usage: csrc/build_and_ctest.sh [build-dir]   (default: build/cmake; extra cmake args via MTLGUARD_CMAKE_ARGS)
# CUDA kernels too (compiles with nvcc, no GPU needed; ctest runs the CPU checks):
#   MTLGUARD_CMAKE_ARGS=-DMTLGUARD_CMAKE_CUDA=ON csrc/build_and_ctest.sh build/cmake-cuda
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${1:-build/cmake}"
PREFIX="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
start=$(date +%s)
# shellcheck disable=SC2086
cmake -S . -B "$BUILD_DIR" -DCMAKE_PREFIX_PATH="$PREFIX" -DCMAKE_BUILD_TYPE=Release ${MTLGUARD_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
ctest --test-dir "$BUILD_DIR" --output-on-failure
echo "mtlguard: native build + ctest took $(( $(date +%s) - start )) s"
