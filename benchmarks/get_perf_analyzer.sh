#!/usr/bin/env bash
# Triton's load tool, perf_analyzer, from packages: today's tritonclient wheels carry no binary and
# the `perf-analyzer` package reachable here is empty, but the tritonclient 2.41.1 wheel ships one
# (its .data/data/bin/). It needs libb64 (Debian libb64-0d) and libcudart.so.12 (the
# nvidia-cuda-runtime-cu12 wheel) to start, even against a CPU-only server. Installs into
# DEST (default .venv/perf-analyzer) a `perf_analyzer` wrapper that finds that library; the
# project's own tritonclient is left as it is.
set -euo pipefail
VENV=${VENV:-.venv}
DEST=${1:-$VENV/perf-analyzer}
TRITONCLIENT=2.41.1
CUDART=12.9.79

if [ -x "$DEST/perf_analyzer" ] && "$DEST/perf_analyzer" --version >/dev/null 2>&1; then exit 0; fi
if ! dpkg-query -W -f='${Status}' libb64-0d 2>/dev/null | grep -q "ok installed"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq libb64-0d >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null)) \
      || { echo "apt-get install libb64-0d failed"; exit 1; }
  else
    echo "perf_analyzer needs libb64: run sudo apt-get install libb64-0d"; exit 1
  fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/pip" download -q --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
  "tritonclient==$TRITONCLIENT" -d "$work" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/pip" download -q --no-deps --only-binary=:all: "nvidia-cuda-runtime-cu12==$CUDART" -d "$work" \
  2>&1 | grep -v "^WARNING: Location" || true
mkdir -p "$work/tc" "$work/cu" "$DEST.tmp/lib"
"$VENV/bin/python" -m zipfile -e "$work"/tritonclient-*.whl "$work/tc"
"$VENV/bin/python" -m zipfile -e "$work"/nvidia_cuda_runtime_cu12-*.whl "$work/cu"
cp "$work/tc/tritonclient-$TRITONCLIENT.data/data/bin/perf_analyzer" "$DEST.tmp/perf_analyzer.bin"
cp "$work"/cu/nvidia/cuda_runtime/lib/libcudart.so.12 "$DEST.tmp/lib/"
chmod +x "$DEST.tmp/perf_analyzer.bin"
cat > "$DEST.tmp/perf_analyzer" <<'WRAP'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/perf_analyzer.bin" "$@"
WRAP
chmod +x "$DEST.tmp/perf_analyzer"
"$DEST.tmp/perf_analyzer" --version >/dev/null 2>&1
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
echo "perf_analyzer: $DEST/perf_analyzer ($("$DEST/perf_analyzer" --version 2>&1 | head -1))"
