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
. "$(dirname "$0")/cli_lib.sh"

# A copy of the fixture in $tmp/<name> to damage.
data_copy() {
  rm -rf "${tmp:?}/$1"
  mkdir -p "$tmp/$1"
  cp "$fixture"/* "$tmp/$1/"
  echo "$tmp/$1"
}

# be32 <n>: n as 4 big-endian bytes (an IDX dimension).
be32() {
  printf "\\x%02x\\x%02x\\x%02x\\x%02x" $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) $(($1 >> 8 & 255)) $(($1 & 255))
}
# idx_images <file> <count> <rows> <cols>: a raw IDX images file of zero pixels.
idx_images() {
  { printf '\x00\x00\x08\x03'; printf "$(be32 "$2")$(be32 "$3")$(be32 "$4")"; head -c $(($2 * $3 * $4)) /dev/zero; } >"$1"
}
# idx_labels <file> <label>...: a raw IDX labels file.
idx_labels() {
  local f=$1 l
  shift
  { printf '\x00\x00\x08\x01'; printf "$(be32 $#)"; for l in "$@"; do printf "\\x$(printf %02x "$l")"; done; } >"$f"
}
# not_asan: true unless the binary runs under AddressSanitizer (which needs far more
# virtual memory than `ulimit -v` allows).
not_asan() { ! ldd "$bin" 2>/dev/null | grep -q libasan; }

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
    # a budget below one byte would round to 0, which means "no budget"
    run 2 --max-memory 1e-7
    says --max-memory 1e-7
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
    # a valid gzip stream followed by junk (gzread would ignore it)
    d=$(data_copy gz-junk)
    printf 'junk' >>"$d/t10k-labels-idx1-ubyte.gz"
    run 1 --data "$d"
    says "$d/t10k-labels-idx1-ubyte.gz" "4 bytes of junk after the end of the gzip data"
    # labels past Fashion-MNIST's 10 classes: the class count is the data set's, not max label + 1
    d=$(data_copy label-255)
    gzip -dc "$fixture/train-labels-idx1-ubyte.gz" >"$d/train-labels-idx1-ubyte"
    rm "$d/train-labels-idx1-ubyte.gz"
    printf '\xff' | dd of="$d/train-labels-idx1-ubyte" bs=1 seek=13 conv=notrunc status=none  # label 5
    run 1 --data "$d" --epochs 1
    says "$d/train-labels-idx1-ubyte" "label 255 at position 5" "10 classes"
    grep -q "epoch 1/1" "$tmp/out" && fail "trained on a label of 255"
    d=$(data_copy test-label-10)
    rm "$d/t10k-labels-idx1-ubyte.gz"
    idx_labels "$d/t10k-labels-idx1-ubyte" $(for i in $(seq 127); do echo $((i % 10)); done) 10
    run 1 --data "$d" --epochs 1
    says "$d/t10k-labels-idx1-ubyte" "label 10 at position 127"
    grep -q "epoch 1/1" "$tmp/out" && fail "trained before finding a test label of 10"
    # a test set of other image sizes than the training set: refused at load time, naming both
    for size in "28 29" "14 14" "1 1"; do
      d=$(data_copy "test-${size/ /x}")
      rm "$d/t10k-images-idx3-ubyte.gz"
      idx_images "$d/t10k-images-idx3-ubyte" 128 $size
      run 1 --data "$d" --epochs 1 --save "$tmp/never.ckpt"
      says "$d/t10k-images-idx3-ubyte" "${size/ /x} images" "$d/train-images-idx3-ubyte.gz" "28x28 images"
      grep -q "epoch 1/1" "$tmp/out" && fail "trained before finding the test set's ${size/ /x} images"
    done
    # images too small for the model (in both sets): refused before training, naming the file
    d=$(data_copy tiny-images)
    rm "$d"/*-images-idx3-ubyte.gz
    idx_images "$d/train-images-idx3-ubyte" 256 1 1
    idx_images "$d/t10k-images-idx3-ubyte" 128 1 1
    run 1 --data "$d" --epochs 1
    says "$d/train-images-idx3-ubyte" "1x1 images do not fit the model"
    [ -e "$tmp/never.ckpt" ] && fail "a checkpoint was written"
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
    # A run whose loss becomes non-finite (SGD with lr 1000 and weight decay 1 multiplies
    # the weights by -999 a step) stops with exit 1 naming the step, and the checkpoint
    # it resumed from is not overwritten.
    run 0 --data "$fixture" --epochs 1 --channels 2 4 --optimizer sgd --save "$tmp/sgd.ckpt"
    cp "$tmp/sgd.ckpt" "$tmp/sgd-before.ckpt"
    run 1 --data "$fixture" --epochs 3 --channels 2 4 --optimizer sgd --lr 1000 --weight-decay 1 --batch 16 \
      --load "$tmp/sgd.ckpt" --save "$tmp/sgd.ckpt"
    says "training stopped in epoch 2: the loss is" "at step 4 of the epoch" "$tmp/sgd.ckpt was left as it was"
    grep -q "epoch 2/3: train loss" "$tmp/out" && fail "finished an epoch with a non-finite loss"
    cmp -s "$tmp/sgd.ckpt" "$tmp/sgd-before.ckpt" || fail "the last good checkpoint was overwritten"
    ;;
  memory)  # a run too large for its budget is refused from the shapes, before allocating it
    # Two 4000x4000 images: the model's linear layer alone would be 1.3 GB, one image's
    # forward 2 GB. Refused at once, under a 1.5 GB address-space limit that any
    # allocation of the model or of a forward would break (not under ASan).
    d="$tmp/huge"
    mkdir -p "$d"
    idx_images "$d/train-images-idx3-ubyte" 2 4000 4000
    idx_labels "$d/train-labels-idx1-ubyte" 3 7
    cp "$d/train-images-idx3-ubyte" "$d/t10k-images-idx3-ubyte"
    cp "$d/train-labels-idx1-ubyte" "$d/t10k-labels-idx1-ubyte"
    limit=unlimited
    not_asan && limit=1500000
    ( ulimit -v $limit; exec timeout -s KILL 600 "$bin" --data "$d" --epochs 1 --max-memory 100 ) >"$tmp/out" 2>&1
    got=$?
    cat "$tmp/out"
    [ "$got" -eq 1 ] || fail "exit code $got, expected 1"
    says "--batch 64: training 2 images a step needs about" "more than the budget of 0.100 GB"
    grep -q "^model:" "$tmp/out" && fail "built the model before refusing the run"
    ;;
  signals)  # SIGTERM and SIGINT: a message, exit 128 + signal, no temp file, a whole checkpoint
    set -m  # job control: a background job keeps SIGINT (a shell script's would ignore it)
    for sig in TERM INT; do
      rm -f "$tmp/sig.ckpt"
      "$bin" --data "$fixture" --epochs 100000 --channels 2 4 --save "$tmp/sig.ckpt" >"$tmp/out" 2>&1 &
      pid=$!
      for _ in $(seq 600); do [ -e "$tmp/sig.ckpt" ] && break; sleep 0.1; done
      [ -e "$tmp/sig.ckpt" ] || { kill -KILL "$pid"; fail "no checkpoint after 60 s"; }
      sleep 0.5  # a few more epochs, each ending in a save
      kill -s "$sig" "$pid"
      wait "$pid"
      got=$?
      cat "$tmp/out"
      want=$((128 + $(kill -l "$sig")))
      [ "$got" -eq "$want" ] || fail "SIG$sig: exit code $got, expected $want"
      if [ "$sig" = TERM ]; then says "train_cnn: terminated (SIGTERM)"; else says "train_cnn: interrupted (SIGINT)"; fi
      ls "$tmp" | grep -q "sig.ckpt.tmp" && fail "SIG$sig left $(ls "$tmp" | grep sig.ckpt.tmp) behind"
      # the checkpoint is whole: it loads (and, holding more epochs than asked, trains none)
      run 0 --data "$fixture" --epochs 1 --channels 2 4 --load "$tmp/sig.ckpt"
    done
    ;;
  bad-output)  # files that cannot take the output: exit 1 before training, naming the flag and file
    mkfifo "$tmp/fifo"
    run 1 --data "$fixture" --epochs 1 --limit 64 --channels 2 4 --save "$tmp/fifo"
    says "--save $tmp/fifo" "not a regular file"
    grep -q "epoch 1/1" "$tmp/out" && fail "trained before refusing --save onto a FIFO"
    [ -p "$tmp/fifo" ] || fail "--save replaced the FIFO"
    mkfifo "$tmp/fifo.svg"
    run 1 --data "$fixture" --epochs 1 --limit 64 --channels 2 4 --curve "$tmp/fifo.svg"
    says "--curve $tmp/fifo.svg" "not a regular file"
    [ -p "$tmp/fifo.svg" ] || fail "--curve replaced the FIFO"
    # --curve into a full disk (a 1 KB file size limit: write(2) fails with EFBIG): the
    # message gives the reason and no temp file is left behind
    ( ulimit -f 1; trap '' XFSZ; exec timeout -s KILL 600 "$bin" --data "$fixture" --epochs 1 --limit 64 \
        --channels 2 4 --curve "$tmp/c.svg" ) >"$tmp/out" 2>&1
    got=$?
    cat "$tmp/out"
    [ "$got" -eq 1 ] || fail "--curve into a full disk: exit code $got, expected 1"
    says "--curve: $tmp/c.svg" "File too large"
    ls "$tmp" | grep -q "c.svg" && fail "--curve left $(ls "$tmp" | grep c.svg) behind"
    # stdout that fails: `| head -1` closes the pipe (SIGPIPE must not kill the run before
    # it saves), /dev/full and a closed stdout lose the results: exit 1, never 0
    timeout -s KILL 600 "$bin" --data "$fixture" --epochs 2 --limit 128 --channels 2 4 --save "$tmp/pipe.ckpt" \
      2>"$tmp/err" | head -n 1 >"$tmp/out"
    got=${PIPESTATUS[0]}
    cat "$tmp/out" "$tmp/err"
    [ "$got" -eq 1 ] || fail "| head -1: exit code $got, expected 1"
    grep -q "^data: " "$tmp/out" || fail "| head -1 did not get the first line"
    grep -q "Broken pipe" "$tmp/err" || fail "| head -1: the error does not say Broken pipe"
    [ -f "$tmp/pipe.ckpt" ] || fail "| head -1: no checkpoint was saved"
    timeout -s KILL 600 "$bin" --data "$fixture" --epochs 1 --limit 64 --channels 2 4 >/dev/full 2>"$tmp/err"
    got=$?
    cat "$tmp/err"
    [ "$got" -eq 1 ] || fail ">/dev/full: exit code $got, expected 1"
    grep -q "No space left on device" "$tmp/err" || fail ">/dev/full: the error does not give the reason"
    timeout -s KILL 600 "$bin" --data "$fixture" --epochs 1 --limit 64 --channels 2 4 >&- 2>"$tmp/err"
    got=$?
    cat "$tmp/err"
    [ "$got" -eq 1 ] || fail "closed stdout: exit code $got, expected 1"
    grep -q "standard output is closed" "$tmp/err" || fail "closed stdout: no message"
    ;;
  *) fail "unknown case $case_" ;;
esac
echo PASS
