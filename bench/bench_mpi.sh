#!/usr/bin/env bash
# ./run.sh bench --mpi [bench_mpi flags]: data-parallel ref-CNN training on this machine,
# 1 rank x 1 thread, then 2 ranks x 1 thread at the same global batch (64: 32 per rank),
# then 2 ranks x 1 thread at 64 per rank (global 128); the speed-ups of the 2-rank runs
# over the 1-rank run, per mode. bench/README.md, "Data-parallel", has the method.
# usage: bench_mpi.sh <bench_mpi> [--data DIR] [--steps S] [--warmup W]
set -euo pipefail
bin=$1
shift
root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
# A rank waiting for the other yields its core instead of spinning (Open MPI spins unless
# it sees more ranks than cores): on a machine shared with other work, spinning takes the
# core the slower rank needs. Set OMPI_MCA_mpi_yield_when_idle=0 to measure spinning.
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
mpirun=(mpirun "${root[@]}" --oversubscribe --bind-to none)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
run() {  # run <ranks> <batch> [flags]
  local ranks=$1 batch=$2
  shift 2
  "${mpirun[@]}" -np "$ranks" "$bin" --threads 1 --batch "$batch" "$@" | tee -a "$out"
  echo
}
run 1 64 "$@"
run 2 64 "$@"
run 2 128 "$@"
# img/s of each 2-rank run over the 1-rank run of the same mode.
awk '/^RESULT/ {
       for (i = 2; i <= NF; ++i) { split($i, kv, "="); f[kv[1]] = kv[2] }
       key = f["mode"]; if (f["ranks"] == 1) one[key] = f["img_s"]; else two[f["batch"], key] = f["img_s"]
       modes[key] = 1
     }
     END {
       print "speed-up over 1 rank x 1 thread (batch 64), img/s ratio:"
       for (m in modes)
         printf "  %-14s 2 ranks, global batch 64: %.2fx   2 ranks, global batch 128: %.2fx\n", m,
                two[64, m] / one[m], two[128, m] / one[m]
     }' "$out"
