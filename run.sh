#!/usr/bin/env bash
# The one entry point for building, testing, training and benchmarking.
#
#   ./run.sh test  [ctest flags...]        build (Release) and run the whole test suite
#   ./run.sh train [train_cnn flags...]    train the 3-layer CNN on Fashion-MNIST
#   ./run.sh train --model resnet [flags...]   train a small ResNet instead (examples/resnet_fmnist)
#   ./run.sh bench [bench flags...]        benchmark against LibTorch and oneDNN
#   ./run.sh bench --mpi [bench_mpi flags] data-parallel training: 2 ranks x 1 thread against 1 x 1
#   ./run.sh train-mpi P [train_cnn flags] train_cnn --distributed on P ranks of this machine (mpirun)
#   ./run.sh test-asan [ctest flags...]    the tests under AddressSanitizer, LeakSanitizer and
#                                          UndefinedBehaviorSanitizer (Debug, build/asan)
#   ./run.sh test-tsan                     the OpenMP kernels under ThreadSanitizer (build/tsan)
#   ./run.sh fuzz [seconds]                build the libFuzzer targets with clang (build/fuzz)
#                                          and run each for `seconds` (default 60)
#   ./run.sh package                       the Debian package libtape-autodiff-dev (CPack, build/package)
#
# Missing Debian packages are installed with apt-get when run as root; otherwise the
# exact apt-get line is printed and the script stops; apt-get waits for another apt or
# dpkg to finish rather than failing. Builds use -j2; test, train and bench build with
# -march=native (AD_NATIVE), package without.
set -euo pipefail
cd "$(dirname "$0")"

# What every build needs.
BASE_PACKAGES=(build-essential cmake xtensor-dev libxtensor-blas-dev libopenblas-dev libfmt-dev
               libgtest-dev libcli11-dev zlib1g-dev graphviz gdb nlohmann-json3-dev pkg-config git)
# MPI for nn/distributed (AD_WITH_MPI): the test suite, train-mpi and bench --mpi.
MPI_PACKAGES=(libopenmpi-dev openmpi-bin)

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
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get "${APT_WAIT[@]}" install -y -q --no-install-recommends "${missing[@]}" >&2
}

# Another apt-get or dpkg holding the lock: wait for it (up to 10 minutes) instead of
# failing. DPkg::Lock::Timeout covers dpkg's lock; `apt-get update` also takes the
# package lists' lock, which it does not wait for, so update is retried while that is held.
APT_WAIT=(-o DPkg::Lock::Timeout=600)
apt_update() {
  local out try
  for try in $(seq 60); do
    if out=$(apt-get "${APT_WAIT[@]}" update -q 2>&1); then
      echo "$out" >&2
      return 0
    fi
    echo "$out" >&2
    grep -q "Could not get lock" <<<"$out" || return 1
    echo "run.sh: another apt-get holds the lock; waiting (try $try of 60)" >&2
    sleep 10
  done
  return 1
}

# build <dir> <build type> [target...]: configure once, then build the targets (all if none).
build() {
  local dir=$1 type=$2 t targets=()
  shift 2
  for t in "$@"; do targets+=(--target "$t"); done
  # nn/distributed and its tests whenever MPI is installed (./run.sh test installs it).
  local mpi=OFF
  dpkg-query -W -f='${Status}' libopenmpi-dev 2>/dev/null | grep -q "install ok installed" && mpi=ON
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" -DAD_NATIVE=ON -DAD_WITH_MPI="$mpi" >/dev/null
  cmake --build "$dir" -j2 "${targets[@]}"
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  test)
    ensure_packages "${BASE_PACKAGES[@]}" "${MPI_PACKAGES[@]}"
    build build/release Release
    ctest --test-dir build/release --output-on-failure -j2 "$@"
    ;;
  train)
    # --model cnn (the default): examples/train_cnn; --model resnet: examples/resnet_fmnist.
    # Every other flag goes to the program.
    model=cnn
    args=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --model)
          [ $# -ge 2 ] || { echo "run.sh train: --model needs a value: cnn or resnet" >&2; exit 2; }
          model=$2
          shift 2
          ;;
        --model=*) model=${1#--model=}; shift ;;
        *) args+=("$1"); shift ;;
      esac
    done
    case "$model" in
      cnn) program=train_cnn ;;
      resnet) program=resnet_fmnist ;;
      *) echo "run.sh train: unknown --model '$model' (cnn, resnet)" >&2; exit 2 ;;
    esac
    ensure_packages "${BASE_PACKAGES[@]}" dataset-fashion-mnist
    echo "run.sh: building examples/$program in build/release (the first build takes a minute or two)" >&2
    build build/release Release "$program" >/dev/null
    exec "build/release/examples/$program" ${args[@]+"${args[@]}"}
    ;;
  train-mpi)
    ranks=${1:-}
    if ! [[ $ranks =~ ^[1-9][0-9]*$ ]]; then
      echo "run.sh train-mpi: the number of ranks must be a positive whole number, not '$ranks' (./run.sh train-mpi 2 [flags])" >&2
      exit 2
    fi
    shift
    ensure_packages "${BASE_PACKAGES[@]}" "${MPI_PACKAGES[@]}" dataset-fashion-mnist
    echo "run.sh: building examples/train_cnn (with MPI) in build/release" >&2
    build build/release Release train_cnn >/dev/null
    # One machine: --oversubscribe allows more ranks than cores; root (a container)
    # needs Open MPI's consent. Across machines, run mpirun yourself (README).
    root=()
    [ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
    exec mpirun "${root[@]}" --oversubscribe -np "$ranks" build/release/examples/train_cnn --distributed "$@"
    ;;
  bench)
    if [ "${1:-}" = --mpi ]; then
      shift
      # Data-parallel ref-CNN training (bench/bench_mpi.sh; bench/README.md, "Data-parallel").
      ensure_packages "${BASE_PACKAGES[@]}" "${MPI_PACKAGES[@]}" dataset-fashion-mnist
      echo "run.sh: building bench_mpi in build/release" >&2
      build build/release Release bench_mpi >/dev/null
      exec bench/bench_mpi.sh build/release/bench/bench_mpi "$@"
    fi
    # LibTorch, oneDNN and Google Benchmark are used here only; the library and tests never link them.
    ensure_packages "${BASE_PACKAGES[@]}" dataset-fashion-mnist libtorch-dev libdnnl-dev libbenchmark-dev
    echo "run.sh: building bench/ in build/bench (Release, with LibTorch and oneDNN: the first build takes a few minutes)" >&2
    cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release -DAD_NATIVE=ON -DAD_BUILD_BENCH=ON -DAD_BUILD_TESTS=OFF \
      -DAD_BUILD_EXAMPLES=OFF >/dev/null
    cmake --build build/bench -j2 >/dev/null
    exec build/bench/bench/bench "$@"
    ;;
  test-asan)
    # The whole suite, examples and their end-to-end runs included, except the gdb test
    # (CMake leaves gdb_tape_demo out of a sanitizer build). No suppressions: libgomp's thread pool and OpenBLAS's buffers are still reachable
    # at exit, so LeakSanitizer has nothing to report about them (README, "Errors and
    # guarantees"). check_initialization_order catches static-init order bugs between
    # translation units; the libraries are unity builds here (AD_UNITY_BUILD: CI time), so
    # between files of one batch it does not (README, "Tests").
    ensure_packages "${BASE_PACKAGES[@]}"
    cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DAD_SANITIZE=ON -DAD_BUILD_EXAMPLES=ON -DAD_UNITY_BUILD=ON >/dev/null
    cmake --build build/asan -j2
    ASAN_OPTIONS=detect_leaks=1:check_initialization_order=1 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest --test-dir build/asan --output-on-failure -j2 "$@"
    ;;
  test-tsan)
    # libgomp is not instrumented for ThreadSanitizer, so its barriers are invisible to it
    # and every parallel loop looks racy. LLVM's libomp implements libgomp's ABI and, with
    # its Archer tool, tells ThreadSanitizer about OpenMP's synchronisation: GCC compiles,
    # libomp runs. ignore_noninstrumented_modules=1 is what Archer asks for: libomp's own
    # (uninstrumented) internals are not ours to check.
    ensure_packages "${BASE_PACKAGES[@]}" libomp-14-dev
    llvm_lib=/usr/lib/llvm-14/lib
    cmake -S . -B build/tsan -DCMAKE_BUILD_TYPE=Debug -DAD_BUILD_EXAMPLES=OFF -DAD_UNITY_BUILD=ON \
      -DCMAKE_CXX_FLAGS=-fsanitize=thread -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread \
      -DOpenMP_CXX_FLAGS=-fopenmp -DOpenMP_CXX_LIB_NAMES=omp -DOpenMP_omp_LIBRARY="$llvm_lib/libomp.so" >/dev/null
    cmake --build build/tsan -j2 --target test_threads
    OMP_TOOL_LIBRARIES="$llvm_lib/libarcher.so" TSAN_OPTIONS="halt_on_error=1 ignore_noninstrumented_modules=1" \
      ctest --test-dir build/tsan --output-on-failure -R '^Threads\.'
    ;;
  fuzz)
    seconds=${1:-60}
    if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
      echo "run.sh fuzz: seconds must be a positive whole number, not '$seconds'" >&2
      exit 2
    fi
    ensure_packages "${BASE_PACKAGES[@]}" clang libclang-rt-14-dev
    cmake -S tests/fuzz -B build/fuzz -DCMAKE_CXX_COMPILER=clang++ >/dev/null
    cmake --build build/fuzz -j2
    # Both targets at once (one core each). New inputs go to build/fuzz/corpus_<t>; the
    # committed seeds are only read. Each log ends with libFuzzer's report.
    targets=(idx checkpoint safetensors)
    pids=()
    mkdir -p build/fuzz/crashes
    for t in "${targets[@]}"; do
      mkdir -p "build/fuzz/corpus_$t"
      echo "run.sh: fuzzing the $t reader for $seconds s (log: build/fuzz/fuzz_$t.log)" >&2
      dict=()
      [ -f "tests/fuzz/$t.dict" ] && dict=(-dict="tests/fuzz/$t.dict")
      "build/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=30 -print_final_stats=1 "${dict[@]}" \
        -artifact_prefix="build/fuzz/crashes/$t-" "build/fuzz/corpus_$t" "tests/fuzz/corpus_$t" \
        >"build/fuzz/fuzz_$t.log" 2>&1 &
      pids+=($!)
    done
    failed=0
    for i in "${!targets[@]}"; do
      t=${targets[$i]}
      if wait "${pids[$i]}"; then
        echo "run.sh: fuzz_$t: $(grep -E '^(Done|stat::new_units_added)' "build/fuzz/fuzz_$t.log" | tr '\n' ' ')" >&2
      else
        tail -n 40 "build/fuzz/fuzz_$t.log" >&2
        # Every run draws a fresh seed (more inputs over many CI runs); this one reruns it.
        echo "run.sh: fuzz_$t failed ($(grep -m1 -o 'Seed: [0-9]*' "build/fuzz/fuzz_$t.log"));" \
          "the input is in build/fuzz/crashes/ (tests/fuzz/README.md says what next)" >&2
        failed=1
      fi
    done
    exit "$failed"
    ;;
  package)
    # Portable (no -march=native), the library alone, installed under /usr; the test
    # suite builds the same package from its own tree (Consumer.deb).
    ensure_packages "${BASE_PACKAGES[@]}"
    cmake -S . -B build/package -DCMAKE_BUILD_TYPE=Release -DAD_NATIVE=OFF -DAD_BUILD_TESTS=OFF \
      -DAD_BUILD_EXAMPLES=OFF -DCMAKE_INSTALL_PREFIX=/usr >/dev/null
    cmake --build build/package -j2
    cpack -G DEB --config build/package/CPackConfig.cmake -B build/package >&2
    for deb in build/package/*.deb; do
      echo "$deb"
      dpkg-deb -f "$deb" Package Version Depends
    done
    ;;
  help | -h | --help)
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "run.sh: unknown command '$cmd' (try: ./run.sh help)" >&2
    exit 2
    ;;
esac
