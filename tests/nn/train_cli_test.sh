#!/usr/bin/env bash
# The train_cnn command line, end to end on the tiny fixture: training prints the
# progress and ends with "test accuracy: 0.XXXX"; --save/--load resume; --curve
# writes an SVG; usage errors exit 2, runtime errors exit 1, both naming the problem.
# usage: train_cli_test.sh <path to train_cnn> <case>
set -u
bin=$1
case_=$2
fixture=tests/fixtures/fashion-mnist-tiny
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

run() {  # run <expected exit code> args...; output in $tmp/out
  local want=$1
  shift
  "$bin" "$@" >"$tmp/out" 2>&1
  local got=$?
  cat "$tmp/out"
  [ "$got" -eq "$want" ] || fail "exit code $got, expected $want for: $*"
}

case "$case_" in
  trains)
    run 0 --data "$fixture" --epochs 2 --batch 32 --threads 2 --curve "$tmp/curve.svg" --save "$tmp/m.ckpt"
    tail -n 1 "$tmp/out" | grep -Eq '^test accuracy: 0\.[0-9]{4}$' || fail "last line is not 'test accuracy: 0.XXXX'"
    grep -q "epoch 2/2: train loss" "$tmp/out" || fail "no epoch summary"
    grep -q "<svg" "$tmp/curve.svg" && grep -q "polyline" "$tmp/curve.svg" || fail "no SVG curve"
    # resume: the checkpoint holds 2 epochs, so a 3-epoch run trains exactly one more
    run 0 --data "$fixture" --epochs 3 --batch 32 --load "$tmp/m.ckpt"
    grep -q "loaded .*: 2 epochs done" "$tmp/out" || fail "did not resume"
    grep -q "epoch 3/3: train loss" "$tmp/out" || fail "did not train epoch 3"
    grep -q "epoch 1/3" "$tmp/out" && fail "retrained epoch 1"
    ;;
  usage)
    run 2 --bogus-flag
    grep -q "bogus-flag" "$tmp/out" || fail "message does not name the flag"
    run 2 --optimizer rmsprop
    grep -q "rmsprop" "$tmp/out" || fail "message does not name the value"
    run 2 --epochs -1
    run 0 --help
    grep -q -- "--optimizer" "$tmp/out" || fail "help lacks --optimizer"
    ;;
  runtime)
    run 1 --data "$tmp/no-such-dir"
    grep -q "no-such-dir" "$tmp/out" || fail "message does not name the directory"
    grep -q "dataset-fashion-mnist" "$tmp/out" || fail "no install hint"
    echo "garbage" >"$tmp/bad.ckpt"
    run 1 --data "$fixture" --epochs 1 --load "$tmp/bad.ckpt"
    grep -q "bad.ckpt" "$tmp/out" || fail "message does not name the checkpoint"
    run 0 --data "$fixture" --epochs 1 --batch 64 --save "$tmp/small.ckpt" --channels 4 8
    run 1 --data "$fixture" --epochs 2 --load "$tmp/small.ckpt"
    grep -q "small.ckpt" "$tmp/out" || fail "message does not name the checkpoint"
    ;;
  *) fail "unknown case $case_" ;;
esac
echo PASS
