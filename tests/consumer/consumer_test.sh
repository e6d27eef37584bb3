#!/usr/bin/env bash
# Builds tests/consumer, a project of its own, against tape-autodiff in one of the ways
# the README's "Use it in your project" shows, runs it (it trains a tiny CNN and must
# print "consumer: OK"), and checks what a good CMake citizen owes its consumer: no
# warning flags or -march=native on the consumer's own files, no include directory that
# exposes tests/, no build type written into the consumer's cache, no tests or examples
# built as a subproject, a SONAME for shared builds, PIC static libraries (the consumer's
# model is a shared library), and an installed gdb script named by a relative path.
# With AD_WITH_MPI, install and find_package also check the component "distributed"
# (only configured: tests/consumer/distributed).
#
# usage: consumer_test.sh <way> <source dir> <build dir> <work dir> <cmake> <cpack> <c++ compiler>
#   way: install | find_package | pkg_config | deb | add_subdirectory | fetch_content
#   install must run before find_package and pkg_config (ctest: fixture consumer_prefix).
# Prints PASS or FAIL: <why>; exits 77 (skipped) for fetch_content outside a git checkout.
set -euo pipefail
way=$1 src=$2 build=$3 work=$4 cmake=$5 cpack=$6 cxx=$7
consumer=$src/tests/consumer
prefix=$work/prefix
mkdir -p "$work"

fail() {
  echo "FAIL: $*"
  exit 1
}
step() { echo "consumer_test: $way: $* ($SECONDS s)"; }

# The compile command of one of the consumer's own files.
compile_command() { awk -v f="tests/consumer/$2" '/"command"/ && index($0, f) { print; exit }' "$1/compile_commands.json"; }

# Our warning flags and -march=native stay ours; no include directory exposes tests/.
check_consumer_flags() {
  local cmd d found=0
  cmd=$(compile_command "$1" main.cpp)
  [ -n "$cmd" ] || fail "no compile command for main.cpp in $1/compile_commands.json"
  for flag in -march=native -Wall -Wextra -Wpedantic -Werror; do
    case " $cmd " in *" $flag "*) fail "the consumer's main.cpp is compiled with $flag: $cmd" ;; esac
  done
  for d in $(echo "$cmd" | tr ' ' '\n' | awk 'prev == "-isystem" { print } /^-I/ { print substr($0, 3) } { prev = $0 }'); do
    [ -e "$d/tests" ] && fail "the include directory $d exposes tests/"
    [ -e "$d/autodiff/ad.hpp" ] && found=1
  done
  [ "$found" = 1 ] || fail "no include directory holds autodiff/ad.hpp: $cmd"
  return 0
}

# Was the library under test built with nn/distributed (AD_WITH_MPI)?
with_mpi() { grep -q '^AD_WITH_MPI:BOOL=ON$' "$build/CMakeCache.txt"; }

# Configure (only) tests/consumer/distributed in <dir> against the prefix <prefix>.
configure_distributed() {
  step "configure $1 (find_package(tape_autodiff COMPONENTS distributed), prefix $2)"
  "$cmake" -S "$consumer/distributed" -B "$1" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_PREFIX_PATH="$2" >"$1.configure.log" 2>&1
}

# Configure, build and run the consumer in <dir>, with further cmake arguments.
configure_build_run() {
  local dir=$1
  shift
  step "configure $dir"
  "$cmake" -S "$consumer" -B "$dir" -DCMAKE_CXX_COMPILER="$cxx" "$@" >"$dir.configure.log" 2>&1 ||
    { cat "$dir.configure.log"; fail "cmake could not configure the consumer ($way)"; }
  step "build"
  "$cmake" --build "$dir" -j2 >"$dir.build.log" 2>&1 || { tail -n 60 "$dir.build.log"; fail "the consumer does not build ($way)"; }
  step "run"
  "$dir/consumer" "$dir/weights.safetensors" | tee "$dir.run.log"
  grep -q "consumer: OK" "$dir.run.log" || fail "the consumer ran but did not train ($way)"
  check_consumer_flags "$dir"
}

# As a subproject: the consumer's cache keeps its own (empty) build type, and the
# library's tests and examples are not configured.
check_subproject() {
  local dir=$1 sub=$2
  grep -q '^CMAKE_BUILD_TYPE:STRING=$' "$dir/CMakeCache.txt" ||
    fail "the build type in the consumer's cache was changed: $(grep '^CMAKE_BUILD_TYPE' "$dir/CMakeCache.txt")"
  grep -q '^AD_BUILD_TESTS:BOOL=OFF$' "$dir/CMakeCache.txt" || fail "AD_BUILD_TESTS is not OFF by default in a subproject"
  grep -q '^AD_BUILD_EXAMPLES:BOOL=OFF$' "$dir/CMakeCache.txt" || fail "AD_BUILD_EXAMPLES is not OFF by default in a subproject"
  [ ! -e "$sub/tests" ] && [ ! -e "$sub/examples" ] || fail "the subproject configured its tests or examples ($sub)"
}

# The .debug_gdb_scripts entry names the printers by a relative path.
check_gdb_entry() {
  local lib=$1
  # (never `cmd | grep -q`: with pipefail, grep quitting early can fail the pipe)
  local sections text
  sections=$(objdump -h "$lib")
  text=$(strings "$lib")
  grep -q '\.debug_gdb_scripts' <<<"$sections" || fail "$lib has no .debug_gdb_scripts section"
  grep -qF "$src/tools/gdb" <<<"$text" && fail "$lib holds the absolute path $src/tools/gdb"
  grep -qxF "tools/gdb/ad_printers.py" <<<"$text" || fail "$lib does not name tools/gdb/ad_printers.py"
  return 0
}

# conv2d's vector kernels are in the library for every instruction set (ops/isa/), chosen
# at run time: a portable build (no -march=native) still holds the AVX2 and AVX-512 ones.
check_isa_variants() {
  local lib=$1 symbols isa
  symbols=$(nm -C "$lib" 2>/dev/null)
  for isa in baseline avx2 avx512; do
    grep -qF "ad::conv::isa_$isa::" <<<"$symbols" || fail "$lib lacks conv2d's $isa kernels (ad::conv::isa_$isa)"
  done
  return 0
}

case "$way" in
  install)
    rm -rf "$prefix"
    step "cmake --install $build --prefix $prefix"
    "$cmake" --install "$build" --prefix "$prefix" >"$work/install.log" 2>&1 || { cat "$work/install.log"; fail "cmake --install"; }
    for f in include/tape_autodiff/autodiff/ad.hpp include/tape_autodiff/ops/conv2d.hpp include/tape_autodiff/nn/weights.hpp \
             share/tape_autodiff/tools/gdb/ad_printers.py share/doc/tape_autodiff/LICENSE; do
      [ -f "$prefix/$f" ] || fail "not installed: $f"
    done
    for f in file_io.hpp shape_checks.hpp; do
      [ ! -e "$prefix/include/tape_autodiff/nn/$f" ] || fail "an internal header was installed: nn/$f"
    done
    [ ! -e "$prefix/include/tape_autodiff/tests" ] && [ ! -e "$prefix/include/tests" ] || fail "tests/ was installed"
    cmakedir=$(dirname "$(find "$prefix" -name tape_autodiffConfig.cmake)")
    for f in tape_autodiffConfig.cmake tape_autodiffConfigVersion.cmake tape_autodiffTargets.cmake FindOpenBLAS.cmake; do
      [ -f "$cmakedir/$f" ] || fail "not installed: $cmakedir/$f"
    done
    grep -q 'tape_autodiff::autodiff' "$cmakedir/tape_autodiffTargets.cmake" || fail "no tape_autodiff::autodiff target"
    grep -q 'tape_autodiff::nn' "$cmakedir/tape_autodiffTargets.cmake" || fail "no tape_autodiff::nn target"
    # nn/distributed: its own export set, so that a consumer without MPI never needs it.
    grep -q 'MPI::' "$cmakedir/tape_autodiffTargets.cmake" && fail "tape_autodiffTargets.cmake refers to MPI"
    if with_mpi; then
      [ -f "$prefix/include/tape_autodiff/nn/distributed.hpp" ] || fail "not installed: nn/distributed.hpp (AD_WITH_MPI)"
      [ -n "$(find "$prefix" -name 'libtape_autodiff_distributed.a' -o -name 'libtape_autodiff_distributed.so.*.*.*')" ] ||
        fail "libtape_autodiff_distributed was not installed (AD_WITH_MPI)"
      grep -q 'tape_autodiff::distributed' "$cmakedir/tape_autodiffDistributedTargets.cmake" ||
        fail "no tape_autodiff::distributed target in $cmakedir/tape_autodiffDistributedTargets.cmake"
    else
      [ ! -e "$prefix/include/tape_autodiff/nn/distributed.hpp" ] && [ ! -e "$cmakedir/tape_autodiffDistributedTargets.cmake" ] ||
        fail "nn/distributed was installed by a build without MPI"
    fi
    pc=$(find "$prefix" -name tape_autodiff.pc)
    [ -n "$pc" ] || fail "no pkg-config file"
    if grep -rlE -- '-march|-Wall|-Wextra|-Wpedantic|fsanitize' "$cmakedir" "$pc"; then
      fail "the exported targets or the pkg-config file carry build flags of ours (files above)"
    fi
    lib=$(find "$prefix" -name 'libtape_autodiff.a' -o -name 'libtape_autodiff.so.*.*.*' | head -n1)
    [ -n "$lib" ] || fail "libtape_autodiff was not installed"
    check_gdb_entry "$lib"
    check_isa_variants "$lib"
    echo "PASS"
    ;;
  find_package)
    configure_build_run "$work/find_package" -DAD_CONSUME=find_package -DCMAKE_PREFIX_PATH="$prefix"
    # gdb finds the installed printers through its source path, as the README says.
    if command -v gdb >/dev/null; then
      share=$prefix/share/tape_autodiff
      scripts=$(cd / && gdb -batch -nx -iex "directory $share" -iex "add-auto-load-safe-path $share" -ex "break main" \
        -ex run -ex "info auto-load python-scripts" "$work/find_package/consumer" 2>&1)
      grep -qE "^Yes +tools/gdb/ad_printers.py" <<<"$scripts" && grep -qF "full name: $share/tools/gdb/ad_printers.py" <<<"$scripts" ||
        { echo "$scripts"; fail "gdb did not load the installed printers"; }
    fi
    # COMPONENTS distributed: found (with MPI, through the package config) in a build with
    # AD_WITH_MPI, refused with the package's message in one without. A build with MPI
    # also checks the refusal, on a copy of its package config without the component (the
    # rest of the prefix linked).
    refused_message="this tape_autodiff was built without MPI"
    nompi=$prefix
    if with_mpi; then
      configure_distributed "$work/distributed" "$prefix" ||
        { cat "$work/distributed.configure.log"; fail "find_package(tape_autodiff COMPONENTS distributed) failed"; }
      grep -h "consumer_distributed:" "$work/distributed.configure.log"
      nompi=$work/prefix_without_mpi
      cmakedir=$(dirname "$(find "$prefix" -name tape_autodiffConfig.cmake)")
      cmakerel=${cmakedir#"$prefix"/}
      rm -rf "$nompi"
      cp -as "$prefix" "$nompi"
      rm -rf "${nompi:?}/$cmakerel"
      cp -r "$cmakedir" "$nompi/$cmakerel"
      rm -f "$nompi/$cmakerel"/tape_autodiffDistributedTargets*.cmake
    fi
    if configure_distributed "$work/distributed_without_mpi" "$nompi"; then
      fail "find_package(tape_autodiff COMPONENTS distributed) succeeded on an install without it ($nompi)"
    fi
    grep -qF "$refused_message" "$work/distributed_without_mpi.configure.log" ||
      { cat "$work/distributed_without_mpi.configure.log"; fail "the refusal does not say '$refused_message'"; }
    echo "COMPONENTS distributed without it: refused ($refused_message ...)"
    echo "PASS"
    ;;
  pkg_config)
    PKG_CONFIG_PATH=$(dirname "$(find "$prefix" -name tape_autodiff.pc)")
    export PKG_CONFIG_PATH
    flags=$(pkg-config --cflags --libs tape_autodiff) || fail "pkg-config --cflags --libs tape_autodiff"
    echo "pkg-config --cflags --libs tape_autodiff: $flags"
    mkdir -p "$work/pkg_config"
    step "build with $cxx"
    # shellcheck disable=SC2086  # the flags are words
    "$cxx" -std=c++20 "$consumer/main.cpp" "$consumer/model.cpp" $flags -o "$work/pkg_config/consumer" ||
      fail "the consumer does not build with pkg-config's flags"
    "$work/pkg_config/consumer" "$work/pkg_config/weights.safetensors" | tee "$work/pkg_config.run.log"
    grep -q "consumer: OK" "$work/pkg_config.run.log" || fail "the consumer ran but did not train"
    echo "PASS"
    ;;
  deb)
    rm -rf "$work/deb" "$work/debroot"
    step "cpack -G DEB"
    "$cpack" -G DEB --config "$build/CPackConfig.cmake" -B "$work/deb" >"$work/cpack.log" 2>&1 || { cat "$work/cpack.log"; fail "cpack -G DEB"; }
    deb=$(ls "$work"/deb/*.deb)
    dpkg-deb -f "$deb" Package Version Architecture Depends
    [ "$(dpkg-deb -f "$deb" Package)" = libtape-autodiff-dev ] || fail "the package is not named libtape-autodiff-dev"
    # Every dependency is a Debian package, installed here in a version it accepts (the
    # consumer is then built against exactly those).
    IFS=',' read -ra deps <<<"$(dpkg-deb -f "$deb" Depends)"
    for dep in "${deps[@]}"; do
      name=$(echo "$dep" | awk '{ print $1 }')
      have=$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null) || fail "depends on $name, which is not an installed Debian package"
      if [[ $dep =~ \(([<>=]+)\ *([^\)]+)\) ]]; then
        op=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
        case "$op" in ">=") rel=ge ;; "<<") rel=lt ;; "<=") rel=le ;; ">>") rel=gt ;; "=") rel=eq ;; *) fail "odd relation $op" ;; esac
        dpkg --compare-versions "$have" "$rel" "$want" || fail "$dep: $name $have is installed"
      fi
    done
    contents=$(dpkg-deb -c "$deb")
    grep -q '/usr/include/tape_autodiff/autodiff/ad.hpp$' <<<"$contents" || fail "the package lacks the headers"
    dpkg-deb -x "$deb" "$work/debroot"
    check_isa_variants "$(find "$work/debroot" -name 'libtape_autodiff.a' -o -name 'libtape_autodiff.so.*.*.*' | head -n1)"
    configure_build_run "$work/deb_consumer" -DAD_CONSUME=find_package -DCMAKE_PREFIX_PATH="$work/debroot/usr"
    echo "PASS"
    ;;
  add_subdirectory)
    # Shared libraries this time: the SONAME is checked too. The library compiles at -O0
    # here (the consumer's empty build type), as a unity build (AD_UNITY_BUILD): its 40
    # files in 9 translation units (5 unity batches; tape.cpp and the 3 ops/isa kernels
    # alone). As 40, this test took 76 s of CI.
    configure_build_run "$work/add_subdirectory" -DAD_CONSUME=add_subdirectory -DAD_SOURCE_DIR="$src" -DBUILD_SHARED_LIBS=ON \
      -DAD_UNITY_BUILD=ON
    check_subproject "$work/add_subdirectory" "$work/add_subdirectory/tape_autodiff"
    so=$(find "$work/add_subdirectory/tape_autodiff" -name 'libtape_autodiff.so.*.*.*' | head -n1)
    [ -n "$so" ] || fail "no versioned libtape_autodiff.so.X.Y.Z"
    soname=$(objdump -p "$so" | awk '$1 == "SONAME" { print $2 }')
    echo "$(basename "$so"): SONAME $soname"
    [[ $soname =~ ^libtape_autodiff\.so\.[0-9]+\.[0-9]+$ ]] || fail "SONAME '$soname' is not libtape_autodiff.so.<major>.<minor>"
    check_gdb_entry "$so"
    echo "PASS"
    ;;
  fetch_content)
    if ! git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      echo "SKIP: $src is not a git checkout"
      exit 77
    fi
    # A git repository holding this working tree (tracked and new files, uncommitted
    # changes included), which FetchContent clones as it would any remote.
    repo=$work/fetch_repo
    rm -rf "$repo" "$work/fetch_content"
    mkdir -p "$repo"
    (cd "$src" && git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done | xargs -0 cp -P --parents -t "$repo")
    git -C "$repo" -c init.defaultBranch=main init -q
    git -C "$repo" add -A
    git -C "$repo" -c user.name=consumer_test -c user.email=consumer_test@localhost commit -qm "snapshot for consumer_test.sh"
    sha=$(git -C "$repo" rev-parse HEAD)
    # FetchContent_MakeAvailable adds the fetched tree with add_subdirectory, so the
    # library's build as a subproject is the add_subdirectory way's (which builds it,
    # shared, and trains): here the fetch itself, the subproject's settings and the
    # consumer's own files compiled against the fetched targets, without compiling the
    # library a second time (75 s of CI at -O0).
    dir=$work/fetch_content
    step "configure $dir"
    "$cmake" -S "$consumer" -B "$dir" -DCMAKE_CXX_COMPILER="$cxx" -DAD_CONSUME=fetch_content \
      -DAD_GIT_REPOSITORY="file://$repo" -DAD_GIT_TAG="$sha" >"$dir.configure.log" 2>&1 ||
      { cat "$dir.configure.log"; fail "cmake could not configure the consumer ($way)"; }
    fetched=$(git -C "$dir/_deps/tape_autodiff-src" rev-parse HEAD 2>/dev/null) || fail "FetchContent did not clone $repo"
    [ "$fetched" = "$sha" ] || fail "FetchContent checked out $fetched, not $sha"
    step "compile the consumer's own files"
    "$cmake" --build "$dir" -j2 --target main.cpp.o model.cpp.o >"$dir.build.log" 2>&1 ||
      { tail -n 60 "$dir.build.log"; fail "the consumer's files do not compile against the fetched library ($way)"; }
    check_consumer_flags "$dir"
    check_subproject "$dir" "$dir/_deps/tape_autodiff-build"
    echo "PASS"
    ;;
  *)
    fail "unknown way '$way'"
    ;;
esac
