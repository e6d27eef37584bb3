#!/usr/bin/python3
"""Weights between PyTorch and tape-autodiff, both ways (README, "Weights in and out").

Run from the repository root with Debian's PyTorch (apt-get install python3-torch);
by hand, not in CI (the tests read the committed files and never need PyTorch):

  /usr/bin/python3 tools/torch_interop.py write       # regenerates tests/golden/torch_interop
  /usr/bin/python3 tools/torch_interop.py check DIR   # reads our export, compares the logits

write: trains a small ref-CNN in PyTorch (the ref-CNN of bench/bench_torch.cpp with 4 and
8 channels: conv 5x5 1->4 pad 2, ReLU, max pool 2, conv 5x5 4->8 pad 2, ReLU, max pool 2,
flatten (392), linear 10; 1x28x28 in) for a few SGD steps on a seeded random batch, and writes
  tests/golden/torch_interop/ref_cnn_c4_8.safetensors   its state_dict (conv1.weight ... fc.bias), float32
  tests/golden/torch_interop/batch.safetensors          images (4,1,28,28), labels (4,) (as float32),
                                                        logits (4,10): the model's output on the images
TorchInterop.APyTorchStateDictReproducesPyTorchsLogits (tests/nn/test_weights.cpp) loads
the state_dict into nn::make_cnn and must reproduce the logits to 1e-5.

check DIR: the reverse direction. DIR holds weights.safetensors (a ref-CNN fine-tuned and
exported by tape-autodiff, PyTorch's layout) and logits.safetensors (its logits, computed
by tape-autodiff, on the same batch), both written by
  AD_TORCH_INTEROP_OUT=DIR build/release/tests/nn/test_nn --gtest_filter='TorchInterop.*'
The script loads the weights with load_state_dict(strict=True), runs the batch in
PyTorch, and compares the logits (exit 1 above 1e-5). Any export of this architecture
works the same way: `train_cnn --channels 4 8 --export FILE.safetensors` writes one.

The safetensors files are written and read with struct and json: Debian 12 has no
Python safetensors package, and the format is small (nn/tensor_files.hpp).
"""
import json
import os
import struct
import sys

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
GOLDEN = os.path.join(ROOT, "tests", "golden", "torch_interop")
WEIGHTS = os.path.join(GOLDEN, "ref_cnn_c4_8.safetensors")
BATCH = os.path.join(GOLDEN, "batch.safetensors")
DTYPES = {"F32": "<f4", "F64": "<f8"}


class RefCnn(torch.nn.Module):
    """bench/bench_torch.cpp's ref-CNN, with c1 and c2 channels."""

    def __init__(self, c1=4, c2=8):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, c1, 5, padding=2)
        self.conv2 = torch.nn.Conv2d(c1, c2, 5, padding=2)
        self.fc = torch.nn.Linear(c2 * 7 * 7, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def write_safetensors(path, tensors, metadata=None):
    """tensors: name -> torch tensor (float32 or float64), in the order given."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        a = t.detach().contiguous().numpy()
        dtype = {np.float32: "F32", np.float64: "F64"}[a.dtype.type]
        raw = a.astype(DTYPES[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path):
    """-> (name -> torch tensor in the header's order, metadata)"""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    metadata = header.pop("__metadata__", {})
    body = data[8 + n:]
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        a = np.frombuffer(body[b:e], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(a.astype(a.dtype.newbyteorder("=")).copy())
    return out, metadata


def write():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = RefCnn()
    images = torch.rand(4, 1, 28, 28)
    labels = torch.randint(0, 10, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(5):  # trained a little, so the weights are not an initialisation
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        opt.step()
    with torch.no_grad():
        logits = model(images)
    os.makedirs(GOLDEN, exist_ok=True)
    write_safetensors(WEIGHTS, model.state_dict(), {"format": "pt"})
    write_safetensors(BATCH, {"images": images, "labels": labels.float(), "logits": logits})
    print(f"wrote {WEIGHTS} ({os.path.getsize(WEIGHTS)} bytes): " +
          ", ".join(f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()))
    print(f"wrote {BATCH} ({os.path.getsize(BATCH)} bytes): images {tuple(images.shape)}, "
          f"labels {labels.tolist()}, logits {tuple(logits.shape)}")


def check(directory):
    weights, metadata = read_safetensors(os.path.join(directory, "weights.safetensors"))
    ours, _ = read_safetensors(os.path.join(directory, "logits.safetensors"))
    batch, _ = read_safetensors(BATCH)
    print(f"our export: {', '.join(f'{k} {tuple(v.shape)} {v.dtype}' for k, v in weights.items())}; metadata {metadata}")
    model = RefCnn()
    model.load_state_dict(weights, strict=True)  # every name and shape, PyTorch's layout
    with torch.no_grad():
        logits = model(batch["images"])
        golden, _ = read_safetensors(WEIGHTS)
        moved = max((weights[k] - golden[k]).abs().max().item() for k in golden)
    diff = (logits - ours["logits"]).abs().max().item()
    print(f"largest change from the PyTorch-trained weights: {moved:.3g} (fine-tuned here)")
    print(f"max |PyTorch - tape-autodiff| over the logits: {diff:.3g}")
    if diff > 1e-5:
        print("FAIL: above 1e-5")
        sys.exit(1)
    print("PASS: PyTorch runs our export to the same logits (1e-5)")


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "write":
        write()
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        print(__doc__)
        sys.exit(2)
