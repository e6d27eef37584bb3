#!/usr/bin/env bash
# train_cnn --export / --import, end to end on the tiny fixture: weights written as a
# safetensors file and as a directory of .npy files, read back, a PyTorch state_dict
# (tests/golden/torch_interop) imported, and every refusal an exit code 1 or 2 with a
# message naming the file or flag.
# usage: train_weights_test.sh <path to train_cnn>
set -u
bin=$1
fixture=tests/fixtures/fashion-mnist-tiny
torch=tests/golden/torch_interop/ref_cnn_c4_8.safetensors
run_flags=(--data "$fixture" --epochs 1 --batch 32 --limit 64 --threads 2)
. "$(dirname "$0")/cli_lib.sh"

# Out as safetensors and as .npy files; the last line is still the accuracy.
run 0 --channels 4 8 --export "$tmp/w.safetensors"
says "exported weights to $tmp/w.safetensors"
tail -n 1 "$tmp/out" | grep -Eq '^test accuracy: 0\.[0-9]{4}$' || fail "last line is not 'test accuracy: 0.XXXX'"
[ -s "$tmp/w.safetensors" ] || fail "no safetensors file"
run 0 --channels 4 8 --export "$tmp/npy"
for n in conv1.weight conv1.bias conv2.weight conv2.bias fc.weight fc.bias; do
  [ -s "$tmp/npy/$n.npy" ] || fail "no $n.npy"
done
# Back in, from both, and from PyTorch.
run 0 --channels 4 8 --import "$tmp/w.safetensors"
says "imported weights from $tmp/w.safetensors"
run 0 --channels 4 8 --import "$tmp/npy"
says "imported weights from $tmp/npy"
run 0 --channels 4 8 --import "$torch"
says "imported weights from $torch"

# Refusals: another architecture, a damaged file, no file, --import with --load, an
# export path that cannot be written (checked before training).
run 1 --channels 8 16 --import "$tmp/w.safetensors"
says "$tmp/w.safetensors" "holds the model \"cnn(1x28x28,c4-8,"
run 1 --channels 8 16 --import "$torch"
says "$torch" "\"conv1.weight\" has shape (4,1,5,5) but the model's is (8,1,5,5)"
head -c 100 "$tmp/w.safetensors" >"$tmp/cut.safetensors"
run 1 --channels 4 8 --import "$tmp/cut.safetensors"
says "$tmp/cut.safetensors" "truncated"
run 1 --channels 4 8 --import "$tmp/none.safetensors"
says "$tmp/none.safetensors" "cannot open"
run 2 --import "$tmp/w.safetensors" --load "$tmp/m.ckpt"
says --import --load
run 1 --export "$tmp/no-such-dir/w.safetensors"
says "--export" "no-such-dir" "does not exist"
grep -q "epoch 1/1" "$tmp/out" && fail "trained before refusing --export"
touch "$tmp/file"
run 1 --export "$tmp/file"
says "--export" "is not a directory"
echo PASS
