#!/usr/bin/env bash
# The one entry point for building, testing, training and benchmarking.
#
#   ./run.sh test  [ctest flags...]        build (Release) and run the whole test suite
#   ./run.sh train [train_cnn flags...]    train the 3-layer CNN on Fashion-MNIST
#   ./run.sh bench [bench flags...]        benchmark against LibTorch (when installed)
#
# Missing Debian packages are installed with apt-get when run as root; otherwise the
# exact apt-get line is printed and the script stops. Builds use -j2.
set -euo pipefail
cd "$(dirname "$0")"

# What every build needs.
BASE_PACKAGES=(build-essential cmake xtensor-dev libxtensor-blas-dev libopenblas-dev libfmt-dev
               libgtest-dev libcli11-dev zlib1g-dev graphviz gdb)

ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "run.sh: missing Debian packages. Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  echo "run.sh: installing ${missing[*]}" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# build <dir> <build type> [target...]: configure once, then build the targets (all if none).
build() {
  local dir=$1 type=$2 t targets=()
  shift 2
  for t in "$@"; do targets+=(--target "$t"); done
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" >/dev/null
  cmake --build "$dir" -j2 "${targets[@]}"
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  test)
    ensure_packages "${BASE_PACKAGES[@]}"
    build build/release Release
    ctest --test-dir build/release --output-on-failure -j2 "$@"
    ;;
  train)
    ensure_packages "${BASE_PACKAGES[@]}" dataset-fashion-mnist
    echo "run.sh: building examples/train_cnn in build/release (the first build takes a minute or two)" >&2
    build build/release Release train_cnn >/dev/null
    exec build/release/examples/train_cnn "$@"
    ;;
  bench)
    # LibTorch and Google Benchmark are used here only; the library and tests never link them.
    ensure_packages "${BASE_PACKAGES[@]}" dataset-fashion-mnist libtorch-dev libbenchmark-dev
    echo "run.sh: building bench/ in build/bench (Release, with LibTorch: the first build takes a few minutes)" >&2
    cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DAD_BUILD_BENCH=ON -DAD_BUILD_TESTS=OFF \
      -DAD_BUILD_EXAMPLES=OFF >/dev/null
    cmake --build build/bench -j2 >/dev/null
    exec build/bench/bench/bench "$@"
    ;;
  help | -h | --help)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "run.sh: unknown command '$cmd' (try: ./run.sh help)" >&2
    exit 2
    ;;
esac
