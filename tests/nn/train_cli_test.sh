#!/usr/bin/env bash
# The train_cnn command line, end to end on the tiny fixture: training prints the
# progress and ends with "test accuracy: 0.XXXX"; --save/--load resume; --curve
# writes an SVG; usage errors exit 2, runtime errors exit 1, both naming the problem.
# The bad-* cases go through every bad flag, data directory and checkpoint the README's
# "Errors and guarantees" lists: each must end with exit code 1 or 2 and a message
# naming the flag or file, never with a signal (a crash, an abort, a core dump) or a hang.
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
  # A hang is a failure too: SIGKILL after 10 minutes (exit code 137).
  timeout -s KILL 600 "$bin" "$@" >"$tmp/out" 2>&1
  local got=$?
  cat "$tmp/out"
  [ "$got" -gt 128 ] && fail "killed by signal $((got - 128)) for: $*"
  [ "$got" -eq "$want" ] || fail "exit code $got, expected $want for: $*"
}

says() {  # says <text>...: the last run's output contains every text
  local t
  for t in "$@"; do grep -qF -- "$t" "$tmp/out" || fail "the message does not say \"$t\""; done
}

# A copy of the fixture in $tmp/<name> to damage.
data_copy() {
  rm -rf "${tmp:?}/$1"
  mkdir -p "$tmp/$1"
  cp "$fixture"/* "$tmp/$1/"
  echo "$tmp/$1"
}

# flip_byte <file> <offset>: replaces the byte at offset by its complement.
flip_byte() {
  local b
  b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
  printf "\\$(printf %03o $((255 - b)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

case "$case_" in
  trains)
    run 0 --data "$fixture" --epochs 2 --batch 32 --threads 2 --curve "$tmp/curve.svg" --save "$tmp/m.ckpt"
    tail -n 1 "$tmp/out" | grep -Eq '^test accuracy: 0\.[0-9]{4}$' || fail "last line is not 'test accuracy: 0.XXXX'"
    grep -q "epoch 2/2: train loss" "$tmp/out" || fail "no epoch summary"
    grep -q "<svg" "$tmp/curve.svg" && grep -q "polyline" "$tmp/curve.svg" || fail "no SVG curve"
    for t in ">epoch<" ">running average (per batch)<" ">test loss (per epoch)<" "optimizer adam lr 0.003"; do
      grep -qF -- "$t" "$tmp/curve.svg" || fail "the curve lacks \"$t\""
    done
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
    run 2 --curve "$tmp/curve.png"
    says "curve.png" "ending in .svg"
    run 0 --help
    grep -q -- "--optimizer" "$tmp/out" || fail "help lacks --optimizer"
    # valid values the range checks must let through (and read in decimal: 010 is 10)
    run 0 --data "$fixture" --epochs 02 --limit 064 --lr 1e-3 --seed 0 --weight-decay 0 --threads 0 --batch 032
    says "batch 32" "seed 0" "epoch 2/2: train loss" "using the first 64"
    run 0 --data "$fixture" --epochs 1 --limit 32 --seed 18446744073709551615
    says "seed 18446744073709551615"
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
  bad-flags)  # usage errors: exit 2, naming the flag (and the bad value)
    run 2 --epochs abc
    says --epochs abc
    run 2 --epochs 0
    says --epochs
    run 2 --batch 0
    says --batch
    run 2 --lr -0.1
    says --lr
    run 2 --threads -2
    says --threads
    run 2 --channels 4
    says --channels
    run 2 --channels four eight
    says --channels
    run 2 --pool median
    says --pool median
    run 2 --activation gelu
    says --activation gelu
    run 2 --schedule linear
    says --schedule linear
    run 2 --data
    says --data
    run 2 --epochs 1 stray-argument
    says stray-argument
    run 2 --channels -1 8
    says --channels -1
    run 2 --channels 0 8
    says --channels 0
    run 2 --limit -3
    says --limit -3
    run 2 --seed -1
    says --seed -1
    run 2 --batch 100000000000000000000
    says --batch
    run 2 --batch 1e20
    says --batch
    run 2 --threads 100000
    says --threads
    run 2 --max-memory 0
    says --max-memory
    run 2 --epochs 0x10
    says --epochs 0x10
    run 2 --seed 18446744073709551616
    says --seed 18446744073709551616
    run 2 --lr 0
    says --lr "(0, 1000]"
    run 2 --lr nan
    says --lr nan
    run 2 --weight-decay -1
    says --weight-decay
    ;;
  bad-data)  # runtime errors: exit 1, naming the file and what is wrong with it
    run 1 --data "$fixture/train-images-idx3-ubyte.gz"
    says "train-images-idx3-ubyte.gz is not a directory"
    d=$(data_copy no-labels)
    rm "$d/train-labels-idx1-ubyte.gz"
    run 1 --data "$d"
    says "$d" "has no train-labels-idx1-ubyte" "dataset-fashion-mnist"
    d=$(data_copy truncated)
    head -c 3000 "$fixture/train-images-idx3-ubyte.gz" >"$d/train-images-idx3-ubyte.gz"
    run 1 --data "$d"
    says "$d/train-images-idx3-ubyte.gz" "gzip stream is truncated"
    d=$(data_copy corrupt)
    dd if=/dev/zero of="$d/train-images-idx3-ubyte.gz" bs=1 seek=5000 count=64 conv=notrunc status=none
    run 1 --data "$d"
    says "$d/train-images-idx3-ubyte.gz" "corrupt gzip stream"
    d=$(data_copy bad-magic)
    rm "$d/t10k-images-idx3-ubyte.gz"
    printf '\x01\x00\x08\x03' >"$d/t10k-images-idx3-ubyte"
    run 1 --data "$d"
    says "$d/t10k-images-idx3-ubyte" "bad magic 01 00 08 03"
    d=$(data_copy size-mismatch)
    rm "$d/t10k-labels-idx1-ubyte.gz"
    printf '\x00\x00\x08\x01\x00\x00\x00\x80abc' >"$d/t10k-labels-idx1-ubyte"  # 128 labels announced, 3 present
    run 1 --data "$d"
    says "$d/t10k-labels-idx1-ubyte" "payload is 3 bytes but dims (128) need 128"
    d=$(data_copy count-mismatch)
    cp "$fixture/t10k-labels-idx1-ubyte.gz" "$d/train-labels-idx1-ubyte.gz"
    run 1 --data "$d"
    says "count mismatch" "$d/train-images-idx3-ubyte.gz" "$d/train-labels-idx1-ubyte.gz"
    d=$(data_copy fifo)
    rm "$d/train-images-idx3-ubyte.gz"
    mkfifo "$d/train-images-idx3-ubyte.gz"
    run 1 --data "$d"
    says "$d/train-images-idx3-ubyte.gz" "is not a regular file"
    ;;
  bad-load)  # runtime errors: exit 1, naming the checkpoint and the problem
    run 0 --data "$fixture" --epochs 1 --limit 64 --channels 2 4 --save "$tmp/good.ckpt"
    run 0 --data "$fixture" --epochs 2 --limit 64 --channels 2 4 --load "$tmp/good.ckpt"
    says "loaded $tmp/good.ckpt: 1 epochs done"
    run 1 --data "$fixture" --load "$tmp/missing.ckpt" --channels 2 4
    says "$tmp/missing.ckpt" "cannot open"
    run 1 --data "$fixture" --load "$tmp" --channels 2 4
    says "$tmp" "is a directory"
    run 1 --data "$fixture" --load /dev/null --channels 2 4
    says /dev/null "is not a regular file"
    head -c 1000 "$tmp/good.ckpt" >"$tmp/truncated.ckpt"
    run 1 --data "$fixture" --load "$tmp/truncated.ckpt" --channels 2 4
    says "$tmp/truncated.ckpt" "truncated"
    cp "$tmp/good.ckpt" "$tmp/flipped.ckpt"
    flip_byte "$tmp/flipped.ckpt" $(($(stat -c %s "$tmp/good.ckpt") / 2))
    run 1 --data "$fixture" --load "$tmp/flipped.ckpt" --channels 2 4
    says "$tmp/flipped.ckpt" "checksum mismatch"
    run 1 --data "$fixture" --load "$tmp/good.ckpt" --channels 2 5
    says "$tmp/good.ckpt" "model tag is" "c2-4" "c2-5"
    run 1 --data "$fixture" --load "$tmp/good.ckpt" --channels 2 4 --optimizer sgd
    says "$tmp/good.ckpt" "unexpected tensors the model does not have" "optim.step"
    # a run over its memory budget is refused before training (the default budget is
    # 80% of the memory available: --batch 65536 on the full data set needs ~23 GB)
    run 1 --data "$fixture" --epochs 1 --max-memory 1
    says "--batch 64: training 64 images a step needs about" "more than the budget of 0.001 GB"
    grep -q "epoch 1/1" "$tmp/out" && fail "started training a run over its memory budget"
    run 0 --data "$fixture" --epochs 1 --limit 64 --max-memory 2000
    # --save and --curve into a missing directory fail before any training
    run 1 --data "$fixture" --epochs 1 --limit 64 --channels 2 4 --save "$tmp/no/such/dir/m.ckpt"
    says "--save $tmp/no/such/dir/m.ckpt" "does not exist"
    grep -q "epoch 1/1" "$tmp/out" && fail "trained before finding that --save cannot be written"
    run 1 --data "$fixture" --epochs 1 --limit 64 --channels 2 4 --curve "$tmp/no/such/dir/c.svg"
    says "--curve $tmp/no/such/dir/c.svg" "does not exist"
    grep -q "epoch 1/1" "$tmp/out" && fail "trained before finding that --curve cannot be written"
    run 1 --data "$fixture" --epochs 1 --limit 64 --channels 2 4 --save "$tmp"
    says "--save $tmp" "is a directory"
    [ -e "$tmp/good.ckpt" ] && run 0 --data "$fixture" --epochs 2 --limit 64 --channels 2 4 --load "$tmp/good.ckpt"
    ;;
  *) fail "unknown case $case_" ;;
esac
echo PASS
