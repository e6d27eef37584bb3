#!/usr/bin/python3
"""The cross-check of examples/hessian_spectrum in PyTorch, float64 (issue 12).

The same power iteration on Hessian-vector products of the ref-CNN's mean cross-entropy,
by PyTorch's double backward (torch.autograd.grad(..., create_graph=True)), from the same
start vector: v[j] = cos(0.7 (j + 1)) over the parameters concatenated in tape-autodiff's
order and layout (conv1.weight, conv1.bias, conv2.weight, conv2.bias, fc weight as
(D_in, D_out), fc.bias), normalised.

  /usr/bin/python3 tools/hessian_spectrum.py --golden
      the committed case: tests/golden/torch_interop's c4-8 weights and 4-image batch,
      20 iterations -> tests/golden/hessian_spectrum/lambdas.npy (read by
      tests/autodiff/test_hessian_spectrum.cpp)
  /usr/bin/python3 tools/hessian_spectrum.py --weights W.safetensors --channels 16 32 \\
      --data /usr/share/datasets/fashion-mnist --batch 64 --iters 20
      any weights (train_cnn --export) on the first test images, for the README figure
"""
import argparse
import gzip
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_interop import BATCH, WEIGHTS, read_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "hessian_spectrum")


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


def loss_fn(params, images, labels):
    k1, b1, k2, b2, w3, b3 = params  # w3 in our layout (D_in, D_out)
    x = torch.max_pool2d(torch.relu(F.conv2d(images, k1, b1, padding=2)), 2)
    x = torch.max_pool2d(torch.relu(F.conv2d(x, k2, b2, padding=2)), 2)
    return F.cross_entropy(x.flatten(1) @ w3 + b3, labels)


def power_iteration(params, images, labels, iters):
    params = [p.detach().clone().requires_grad_(True) for p in params]
    n = sum(p.numel() for p in params)
    flat = torch.cos(0.7 * torch.arange(1, n + 1, dtype=torch.float64))
    flat /= flat.norm()
    v, o = [], 0
    for p in params:
        v.append(flat[o:o + p.numel()].reshape(p.shape))
        o += p.numel()
    lambdas = []
    for it in range(1, iters + 1):
        g = torch.autograd.grad(loss_fn(params, images, labels), params, create_graph=True)
        hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, v)), params)
        lam = sum((vi * hi).sum() for vi, hi in zip(v, hv)).item()
        norm = torch.sqrt(sum((hi * hi).sum() for hi in hv))
        print(f"iteration {it:3d}: lambda {lam:.12e}  |Hv| {norm.item():.6e}")
        lambdas.append(lam)
        v = [hi / norm for hi in hv]
    return lambdas, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--golden", action="store_true")
    ap.add_argument("--weights", default=WEIGHTS)
    ap.add_argument("--batch-file", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    w, _ = read_safetensors(a.weights)
    params = [w["conv1.weight"], w["conv1.bias"], w["conv2.weight"], w["conv2.bias"], w["fc.weight"].t(), w["fc.bias"]]
    params = [p.double().contiguous() for p in params]
    if a.data:
        images = read_idx(os.path.join(a.data, "t10k-images-idx3-ubyte.gz"))[:a.batch]
        labels = read_idx(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz"))[:a.batch]
        images = torch.from_numpy(images.astype(np.float64) / 255.0).reshape(-1, 1, 28, 28)
        labels = torch.from_numpy(labels.astype(np.int64))
    else:
        b, _ = read_safetensors(a.batch_file or BATCH)
        images, labels = b["images"].double(), b["labels"].long()
    lambdas, n = power_iteration(params, images, labels, a.iters)
    print(f"{n} parameters, batch of {len(labels)}: largest |eigenvalue| {lambdas[-1]:.12e}")
    if a.golden:
        os.makedirs(GOLDEN, exist_ok=True)
        np.save(os.path.join(GOLDEN, "lambdas.npy"), np.asarray(lambdas, dtype=np.float64))
        print(f"wrote {GOLDEN}/lambdas.npy")


if __name__ == "__main__":
    main()
