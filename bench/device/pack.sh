#!/usr/bin/env bash
# Packs a portable build for bench/device/run.sh on a machine without our packages:
#   bench/device/pack.sh BUILD_DIR DEST
# BUILD_DIR: a Release build with -DAD_NATIVE=OFF -DAD_BASELINE_ARCH=x86-64-v3
# -DAD_BUILD_BENCH=ON (and -DCMAKE_DISABLE_FIND_PACKAGE_Torch=ON: LibTorch's shared
# libraries come to 500 MB with their dependencies, too much to carry). DEST gets bin/
# (stripped, their ELF interpreter set to DEST/lib's loader relative to the checkout
# root, DT_RPATH $ORIGIN/../lib), libs.tgz (every shared library they load, the loader
# and libc included) and data/ (the first 12,800 training and 5,000 test images).
# Needs patchelf.
set -euo pipefail
build=$1 dest=$2
rm -rf "$dest" && mkdir -p "$dest/bin" "$dest/data"
stage=$(mktemp -d)
bins=(bench/bench bench/bench_ours bench/bench_onednn bench/bench_ops tests/test_isa tests/test_conv2d tests/test_threads)
for b in "${bins[@]}"; do
  [ -x "$build/$b" ] || { echo "pack.sh: $build/$b missing" >&2; exit 1; }
  cp "$build/$b" "$dest/bin/"
  ldd "$build/$b" | awk '/=> \// {print $3} /ld-linux/ {print $1}' | while read -r lib; do
    cp -L "$lib" "$stage/$(basename "$lib")"
  done
done
for f in "$dest"/bin/*; do
  strip "$f"
  patchelf --set-interpreter "$(basename "$dest")/lib/ld-linux-x86-64.so.2" --force-rpath --set-rpath '$ORIGIN/../lib' "$f"
done
# the LD_PRELOAD library of run.sh's serial-time phase (bench/serial_time.cpp)
[ -e "$build/bench/libserial_time.so" ] || { echo "pack.sh: $build/bench/libserial_time.so missing" >&2; exit 1; }
cp "$build/bench/libserial_time.so" "$dest/bin/"
strip "$dest/bin/libserial_time.so"
patchelf --force-rpath --set-rpath '$ORIGIN/../lib' "$dest/bin/libserial_time.so"
tar -czf "$dest/libs.tgz" -C "$stage" .
rm -rf "$stage"
python3 - "$dest/data" <<'PY'
import gzip, struct, sys
src, dst = '/usr/share/datasets/fashion-mnist/', sys.argv[1]
for split, n in (('train', 12800), ('t10k', 5000)):
    im = gzip.open(src + split + '-images-idx3-ubyte.gz').read()
    lb = gzip.open(src + split + '-labels-idx1-ubyte.gz').read()
    magic, _, r, c = struct.unpack('>IIII', im[:16])
    gzip.open(f'{dst}/{split}-images-idx3-ubyte.gz', 'wb').write(struct.pack('>IIII', magic, n, r, c) + im[16:16 + n * r * c])
    gzip.open(f'{dst}/{split}-labels-idx1-ubyte.gz', 'wb').write(struct.pack('>II', struct.unpack('>I', lb[:4])[0], n) + lb[8:8 + n])
PY
cp "$(dirname "$0")/run.sh" "$dest/run.sh"
du -sh "$dest"
