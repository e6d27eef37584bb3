#!/usr/bin/env bash
# resnet_fmnist end to end on the tiny fixture (a smoke test, not the benchmark): a few
# epochs of a narrow ResNet, the training loss falls, the last line is "test accuracy:
# 0.XXXX", the checkpoint (with batch-norm statistics) resumes, the curve is written;
# bad flags are usage errors (exit 2).
# usage: resnet_cli_test.sh <path to resnet_fmnist>
set -u
bin=$1
fixture=tests/fixtures/fashion-mnist-tiny
. "$(dirname "$0")/cli_lib.sh"

train_loss() {  # train_loss <epoch>: the training loss the summary line of that epoch gives
  sed -n "s/^epoch $1\/[0-9]*: train loss \([0-9.]*\) .*/\1/p" "$tmp/out"
}

run 0 --data "$fixture" --epochs 4 --batch 32 --widths 8 16 --threads 2 --optimizer adam --lr 0.01 \
  --save "$tmp/r.ckpt" --curve "$tmp/r.svg"
tail -n 1 "$tmp/out" | grep -Eq '^test accuracy: 0\.[0-9]{4}$' || fail "last line is not 'test accuracy: 0.XXXX'"
first=$(train_loss 1)
last=$(train_loss 4)
[ -n "$first" ] && [ -n "$last" ] || fail "no epoch summaries"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.9 * a) }' || fail "the training loss did not fall: $first -> $last"
grep -q "resnet(1x28x28,w8-16,b1,s2,10)" "$tmp/out" || fail "the model line lacks the tag"
grep -q ">running average (per batch)<" "$tmp/r.svg" || fail "no training curve"
# resume: the checkpoint holds 4 epochs (and the running statistics), one more is trained
run 0 --data "$fixture" --epochs 5 --batch 32 --widths 8 16 --threads 2 --optimizer adam --lr 0.01 --load "$tmp/r.ckpt"
grep -q "loaded .*: 4 epochs done" "$tmp/out" || fail "did not resume"
grep -q "epoch 5/5: train loss" "$tmp/out" || fail "did not train epoch 5"
grep -q "epoch 1/5" "$tmp/out" && fail "retrained epoch 1"
# another architecture's checkpoint is refused, naming both tags
run 1 --data "$fixture" --epochs 5 --widths 8 6 --load "$tmp/r.ckpt"
grep -q "w8-16" "$tmp/out" && grep -q "w8-6" "$tmp/out" || fail "the refusal does not name both models"
run 2 --widths 0 8
run 2 --curve "$tmp/r.png"
grep -q "ending in .svg" "$tmp/out" || fail "a --curve that is not .svg is not refused"
echo PASS
