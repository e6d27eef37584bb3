#!/usr/bin/env bash
# The measurement on another x86-64 machine (bench/README.md, "16 cores, AVX-512"):
# runs from the root of a checkout holding the folder that bench/device/pack.sh made
# (.devcarry: portable binaries, their shared libraries with the loader, a slice of
# Fashion-MNIST), writes its results under $OUT. No network, no packages needed there.
set -u
D=.devcarry
OUT=${OUT:-/tmp/devcarry-out}
mkdir -p "$OUT" "$D/lib"
if ! tar -xzf "$D/libs.tgz" -C "$D/lib" 2>/dev/null; then
  python3 -c "import tarfile; tarfile.open('$D/libs.tgz').extractall('$D/lib')" || { echo "cannot unpack libs"; exit 1; }
fi
# (no LD_LIBRARY_PATH: the binaries carry their loader and DT_RPATH; the machine's own tools
# must keep its own libc)
export OPENBLAS_NUM_THREADS=1
B=$D/bin
DATA=$D/data
# QUICK=1: a smoke run of the whole script (to try it before spending device time)
QUICK=${QUICK:-0}
# The full run must fit one device command (10 minutes at most, and the session's device
# time is 15 minutes with the machine's start): REPS (A/B rounds, default 1) and
# BENCH_REPS (the table's repetitions, default 2) trade time for repetitions; each
# phase's start time goes to $OUT/times.txt.
if [ "$QUICK" = 1 ]; then ISAS=avx2 REPS=1 BLOCKS=1 THREADS=1,2 BENCH_FLAGS=--quick
else ISAS="avx512 avx2" REPS=${REPS:-1} BLOCKS=5 THREADS=1,2,4,8,16 BENCH_FLAGS="--reps ${BENCH_REPS:-2}"; fi
stamp() { echo "$(date -u +%T) $1" >> "$OUT/times.txt"; }
stamp start
{
  echo "date: $(date -u)"
  echo "cores: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo
  echo "avx512 flags: $(grep -o 'avx512[a-z0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  # hardware threads against cores: with two threads a core, 16 threads run on 8 cores'
  # vector units (a limit on the 16-thread figures that no program removes)
  echo "cores (distinct package:core ids): $(for c in /sys/devices/system/cpu/cpu[0-9]*/topology; do
    echo "$(cat $c/physical_package_id):$(cat $c/core_id)"; done | sort -u | wc -l)"
  echo "thread siblings of cpu0: $(cat /sys/devices/system/cpu/cpu0/topology/thread_siblings_list 2>/dev/null)"
  echo "load: $(cat /proc/loadavg)"
  $B/bench_ours --mode infer --threads 1 --warmup 0 --blocks 0 --data $DATA >/dev/null && echo "bench_ours starts"
} 2>&1 | tee "$OUT/info.txt"

stamp tests
# Every kernel variant this processor runs, against double (AD_TEST_REQUIRE_ISAS: fail
# if AVX-512 were missing here), then the conv and thread tests on each variant.
{
  AD_TEST_REQUIRE_ISAS=avx2,avx512 $B/test_isa
  for isa in avx512 avx512-emulated avx2 baseline; do
    echo "=== AD_ISA=$isa"
    AD_ISA=$isa $B/test_conv2d --gtest_brief=1
    AD_ISA=$isa $B/test_threads --gtest_brief=1
  done
  # avx512-emulated is the AVX-512 code compiled for AVX2 (ops/isa.hpp): its training
  # losses should be the real AVX-512 variant's, digit for digit
  for isa in avx512 avx512-emulated; do
    echo "=== losses, AD_ISA=$isa: $(AD_ISA=$isa $B/bench_ours --mode train --threads 1 --warmup 0 --blocks 1 \
      --steps 20 --data $DATA | grep '^loss')"
  done
} > "$OUT/tests.txt" 2>&1
echo "tests: $(grep -c 'PASSED' "$OUT/tests.txt") passed blocks, $(grep -c 'FAILED' "$OUT/tests.txt") FAILED lines"

stamp ab
# A/B inside one run: vector width and Winograd, ours alone, 1 and 16 threads.
med() { grep '^block' | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
{
  echo "variant                     train1  train16  infer64_1  infer64_16   (img/s, median of 5 blocks)"
  for rep in $(seq $REPS); do
    for isa in $ISAS; do
      for w in 1 0; do
        r="$(AD_ISA=$isa AD_WINOGRAD=$w $B/bench_ours --mode train --threads 1 --blocks $BLOCKS --data $DATA | med)"
        r="$r $(AD_ISA=$isa AD_WINOGRAD=$w $B/bench_ours --mode train --threads 16 --blocks $BLOCKS --data $DATA | med)"
        r="$r $(AD_ISA=$isa AD_WINOGRAD=$w $B/bench_ours --mode infer --threads 1 --blocks $BLOCKS --data $DATA | med)"
        r="$r $(AD_ISA=$isa AD_WINOGRAD=$w $B/bench_ours --mode infer --threads 16 --blocks $BLOCKS --data $DATA | med)"
        echo "rep$rep isa=$isa winograd=$w   $r"
      done
    done
  done
} 2>&1 | tee "$OUT/ab.txt"

stamp serial
# Serial time (bench/README.md, "Serial time"): wall time between parallel regions, by
# call site; symbolize here with bench/serial_time.sh and the unstripped build/portable.
for t in 1 16; do
  LD_PRELOAD=$B/libserial_time.so AD_SERIAL_TIME_OUT="$OUT/serial_$t.txt" $B/bench_ours --mode train \
    --threads $t --blocks 1 --steps $([ "$QUICK" = 1 ] && echo 20 || echo 200) --data $DATA >/dev/null
  head -1 "$OUT/serial_$t.txt"
done

stamp ops
# Per-op times, ours (the profile of a step), 1 and 16 threads.
for t in 1 16; do
  $B/bench_ops --threads=$t --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
    --benchmark_min_time=0.05 2>&1 | grep -E '_median|^Run|CPU' > "$OUT/ops_$t.txt"
done

stamp bench
# The table: ours and oneDNN, 1..16 threads.
$B/bench --threads $THREADS $BENCH_FLAGS --no-ops --engines ours,onednn --data $DATA > "$OUT/bench.txt" 2> "$OUT/bench_log.txt"
tail -40 "$OUT/bench.txt"
stamp end
