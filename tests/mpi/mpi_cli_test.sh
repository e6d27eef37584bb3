#!/usr/bin/env bash
# train_cnn --distributed end to end, 2 ranks on the tiny fixture (and dist_fault, a
# data-parallel run whose rank 1 fails on purpose):
#   resume   a checkpoint of a 2-rank run resumes in one process and the reverse; only
#            rank 0 prints (one "test accuracy" line)
#   refused  ranks started with different flags: exit 2, the message names rank 1 and
#            both values
#   throws   rank 1 cannot read its --data: the job ends, non-zero, naming rank 1 and the cause
#   exits    rank 1 calls _exit(3) mid-training: the job ends with exit 3 naming rank 1
#   killed   rank 1 gets SIGKILL mid-training: the job ends naming rank 1 and the signal
# Every mpirun runs under `timeout 60`: a hang (exit 124) is a failure.
# usage: mpi_cli_test.sh <case> <train_cnn> <dist_fault> <mpirun>
set -u
case_=$1
bin=$2
fault=$3
mpirun=$4
fixture=tests/fixtures/fashion-mnist-tiny
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
base=(--optimizer momentum --threads 1 --epochs 1)  # CLI11 takes a flag once: --data and --batch per rank
flags=(--data "$fixture" --batch 32 --optimizer momentum --threads 1)

# run <expected exit code | nonzero> command...: output in $tmp/out
run() {
  local want=$1
  shift
  timeout 60 "$@" >"$tmp/out" 2>&1
  local got=$?
  cat "$tmp/out"
  [ "$got" -eq 124 ] && fail "hung (killed by timeout after 60 s): $*"
  if [ "$want" = nonzero ]; then
    [ "$got" -ne 0 ] || fail "exit code 0, expected a failure, for: $*"
  else
    [ "$got" -eq "$want" ] || fail "exit code $got, expected $want, for: $*"
  fi
}
says() {  # says <text>...: the last run's output contains every text
  local t
  for t in "$@"; do grep -qF -- "$t" "$tmp/out" || fail "the output does not say \"$t\""; done
}
count() { grep -cF -- "$1" "$tmp/out"; }
mpi2() { run "$1" "$mpirun" --oversubscribe -np 2 "${@:2}"; }

case "$case_" in
  resume)
    mpi2 0 "$bin" --distributed "${flags[@]}" --epochs 1 --save "$tmp/two.ckpt"
    says "data-parallel: 2 ranks, each on 16 of every batch of 32" "epoch 1/1:" "test accuracy: 0."
    [ "$(count "test accuracy:")" -eq 1 ] || fail "more than one rank printed the results"
    run 0 "$bin" "${flags[@]}" --epochs 2 --load "$tmp/two.ckpt"
    says "loaded $tmp/two.ckpt: 1 epochs done" "epoch 2/2:" "test accuracy: 0."
    [ "$(count "epoch 1/2:")" -eq 0 ] || fail "the resumed run trained epoch 1 again"
    run 0 "$bin" "${flags[@]}" --epochs 1 --save "$tmp/one.ckpt"
    mpi2 0 "$bin" --distributed "${flags[@]}" --epochs 2 --load "$tmp/one.ckpt" --save "$tmp/one.ckpt"
    says "loaded $tmp/one.ckpt: 1 epochs done" "epoch 2/2:" "test accuracy: 0."
    [ "$(count "loaded")" -eq 1 ] || fail "a rank other than 0 read the checkpoint or printed"
    [ "$(count "epoch 1/2:")" -eq 0 ] || fail "the resumed run trained epoch 1 again"
    # The 2-rank run's checkpoint (written by rank 0) resumes once more, in one process.
    run 0 "$bin" "${flags[@]}" --epochs 3 --load "$tmp/one.ckpt"
    says "2 epochs done" "epoch 3/3:"
    ;;
  refused)
    run 2 "$mpirun" --oversubscribe -np 1 "$bin" --distributed "${base[@]}" --data "$fixture" --batch 32 : \
      -np 1 "$bin" --distributed "${base[@]}" --data "$fixture" --batch 64
    says "ranks were not started alike: rank 1 has batch 64, rank 0 has batch 32"
    run 2 "$mpirun" --oversubscribe -np 1 "$bin" --distributed "${flags[@]}" --epochs 1 : \
      -np 1 "$bin" --distributed "${flags[@]}" --epochs 1 --channels 8 32
    says "rank 1 has model cnn(1x28x28,c8-32"
    [ "$(count "train_cnn: error:")" -eq 1 ] || fail "the refusal should be printed once, by rank 0"
    ;;
  throws)
    run nonzero "$mpirun" --oversubscribe -np 1 "$bin" --distributed "${base[@]}" --data "$fixture" : \
      -np 1 "$bin" --distributed "${base[@]}" --data "$tmp/no-such-dir"
    says "train_cnn: rank 1 of 2 on" "error: load_fashion_mnist: directory $tmp/no-such-dir does not exist"
    mpi2 nonzero "$fault" throw
    # (Open MPI's own "MPI_ABORT was invoked on rank 1" notice is now and then lost; ours is printed first.)
    says "dist_fault: rank 1 of 2 on" "error: injected failure at step 3"
    ;;
  exits)
    mpi2 3 "$fault" exit
    says "Process name: [[" "],1]" "Exit code:    3"
    ;;
  killed)
    mpi2 nonzero "$fault" kill
    says "process rank 1 with PID" "exited on signal 9"
    ;;
  *) fail "unknown case $case_" ;;
esac
echo PASS
