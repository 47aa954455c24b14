#!/usr/bin/env bash
# Install llama-cpp-python into the venv from a wheel we build once per machine.
#
# Why not plain `pip install llama-cpp-python`: pip builds llama.cpp with -march=native,
# which crashed here (AVX-512/AMX kernels in a VM), and pip's wheel cache would then hand
# that CPU-specific wheel to any later install on the same machine. We build a portable
# wheel (GGML_NATIVE=OFF) and keep it in ~/.cache/koprogo/wheels keyed by version and
# architecture: the ~10 minute compile happens once per machine, and a missing cache
# only costs time.
set -euo pipefail
PIP="$1/bin/pip"
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
WHEELS="${KOPROGO_WHEEL_CACHE:-$HOME/.cache/koprogo/wheels}/llama-cpp-python-$VERSION-$(uname -m)-portable"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "Building llama-cpp-python $VERSION (portable, once per machine: ~10 min on 2 cores) ..."
  mkdir -p "$WHEELS.tmp"
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$PIP" wheel --no-deps --no-cache-dir "llama-cpp-python==$VERSION" -w "$WHEELS.tmp"
  rm -rf "$WHEELS" && mv "$WHEELS.tmp" "$WHEELS"
fi
"$PIP" install "$WHEELS"/llama_cpp_python-*.whl
