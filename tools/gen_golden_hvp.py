#!/usr/bin/python3
"""Golden second derivatives for the higher-order gradients (issue 12), PyTorch float64.

Run from the repo root:  /usr/bin/python3 tools/gen_golden_hvp.py
Writes tests/golden/hvp/<case>/*.npy, read by tests/autodiff/test_golden_hvp.cpp.

Per case, for a function f of the inputs x_k, a cotangent u of f's output and a
direction v_k per input:
    s   = <u, f(x)>
    g_k = ds/dx_k                       (torch.autograd.grad(..., create_graph=True))
    hv_k = d<g, v>/dx_k = (H v)_k       (the Hessian of s applied to v, second backward)
and vhv = <v, H v>. Files: <input>.npy, u.npy, v_<input>.npy, g_<input>.npy, hv_<input>.npy,
vhv.npy, labels.npy (losses). Deterministic: each case is seeded from its name.
"""
import os
import shutil
import zlib

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "hvp")


def seed_for(name):
    torch.manual_seed(zlib.crc32(name.encode()))


def distinct(shape):
    """A shuffled grid in [-1, 1]: no ties (max pooling)."""
    n = int(np.prod(shape))
    return (torch.randperm(n).double() * (2.0 / max(n, 2)) - 1.0).reshape(shape)


def off_zero(shape, m=0.1):
    """Uniform in [-1, 1] with |x| >= m: no ReLU kinks."""
    t = torch.rand(shape) * 2 - 1
    return torch.where(t >= 0, m + t * (1 - m), -m + t * (1 - m))


def run(name, fn, inputs, labels=None):
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    out = fn(**leaves)
    u = torch.ones(out.shape) if out.dim() == 0 else torch.randn(out.shape)
    v = {k: torch.randn(t.shape) for k, t in inputs.items()}
    names = list(inputs)
    g = torch.autograd.grad(out, [leaves[k] for k in names], u, create_graph=True, allow_unused=True)
    g = [torch.zeros_like(leaves[k]) if gi is None else gi for k, gi in zip(names, g)]
    q = sum((gi * v[k]).sum() for k, gi in zip(names, g))
    hv = torch.autograd.grad(q, [leaves[k] for k in names], allow_unused=True)
    hv = [torch.zeros_like(leaves[k]) if h is None else h for k, h in zip(names, hv)]
    vhv = sum((h * v[k]).sum() for k, h in zip(names, hv))

    d = os.path.join(ROOT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    arrays = dict(inputs, u=u.reshape(out.shape or (1,)), vhv=vhv.reshape(1))
    for k, gi, h in zip(names, g, hv):
        arrays["v_" + k] = v[k]
        arrays["g_" + k] = gi
        arrays["hv_" + k] = h
    for k, a in arrays.items():
        a = a.detach().numpy()
        np.save(os.path.join(d, k + ".npy"), a.reshape(a.shape or (1,)))
    if labels is not None:
        np.save(os.path.join(d, "labels.npy"), np.asarray(labels, dtype=np.int64))
    print(f"{name:28s} inputs[{', '.join(names)}] vHv {vhv.item():+.12e}")


def sq(y):
    return y * y


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    cases = []

    def case(name):
        def deco(f):
            cases.append((name, f))
            return f
        return deco

    @case("conv2d")
    def _(n):
        run(n, lambda x, k, b: sq(F.conv2d(x, k, b, stride=(2, 1), padding=(1, 0))),
            dict(x=torch.randn(2, 2, 5, 4), k=torch.randn(3, 2, 3, 2), b=torch.randn(3)))

    @case("conv2d_dilation_groups")
    def _(n):
        run(n, lambda x, k, b: F.conv2d(x, k, b, stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2),
            dict(x=torch.randn(2, 4, 6, 5), k=torch.randn(4, 2, 2, 3), b=torch.randn(4)))

    @case("conv_transpose2d")
    def _(n):
        run(n, lambda x, k, b: F.conv_transpose2d(x, k, b, stride=2, padding=(1, 0), output_padding=(1, 0)),
            dict(x=torch.randn(2, 2, 3, 3), k=torch.randn(2, 3, 3, 2), b=torch.randn(3)))

    @case("max_pool2d")
    def _(n):
        run(n, lambda x: sq(F.max_pool2d(x, (3, 2), stride=(2, 1), padding=(1, 0))), dict(x=distinct((2, 2, 5, 4))))

    @case("avg_pool2d")
    def _(n):
        run(n, lambda x: sq(F.avg_pool2d(x, (3, 2), stride=(2, 1), padding=(1, 1))), dict(x=torch.randn(2, 2, 5, 4)))

    @case("relu")
    def _(n):
        run(n, lambda x: sq(F.relu(x)), dict(x=off_zero((2, 3, 4))))

    @case("leaky_relu")
    def _(n):
        run(n, lambda x: sq(F.leaky_relu(x, 0.2)), dict(x=off_zero((2, 3, 4))))

    @case("sigmoid")
    def _(n):
        run(n, lambda x: torch.sigmoid(x), dict(x=torch.randn(2, 5) * 2))

    @case("tanh")
    def _(n):
        run(n, lambda x: torch.tanh(x), dict(x=torch.randn(2, 5)))

    @case("linear")
    def _(n):  # our W is (D_in, D_out): x W + b
        run(n, lambda x, w, b: sq(x @ w + b), dict(x=torch.randn(3, 4), w=torch.randn(4, 2), b=torch.randn(2)))

    @case("flatten_add_mul")
    def _(n):
        run(n, lambda x, y: torch.flatten(x * y + x, 1), dict(x=torch.randn(2, 3, 2, 2), y=torch.randn(3, 1, 1)))

    @case("softmax_cross_entropy")
    def _(n):
        labels = [2, 0, 1, 1]
        run(n, lambda z: F.cross_entropy(z, torch.tensor(labels)), dict(z=torch.randn(4, 3) * 2), labels)

    @case("batch_norm2d_train")
    def _(n):
        run(n, lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, eps=1e-5),
            dict(x=torch.randn(3, 2, 3, 2), w=torch.randn(2), b=torch.randn(2)))

    @case("batch_norm2d_eval")
    def _(n):
        rm, rv = torch.tensor([0.3, -0.2]), torch.tensor([1.5, 0.7])
        run(n, lambda x, w, b: torch.tanh(F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-5)),
            dict(x=torch.randn(2, 2, 3, 3), w=torch.randn(2), b=torch.randn(2)))

    @case("ref_cnn")
    def _(n):
        labels = [1, 3]

        def f(x, k1, b1, k2, b2, w3, b3):
            a1 = F.max_pool2d(F.relu(F.conv2d(x, k1, b1, padding=1)), 2)
            a2 = F.max_pool2d(F.relu(F.conv2d(a1, k2, b2, padding=1)), 2)
            return F.cross_entropy(torch.flatten(a2, 1) @ w3 + b3, torch.tensor(labels))

        run(n, f, dict(x=torch.rand(2, 1, 8, 8), k1=torch.randn(2, 1, 3, 3) * 0.5, b1=torch.randn(2) * 0.1,
                       k2=torch.randn(3, 2, 3, 3) * 0.4, b2=torch.randn(3) * 0.1, w3=torch.randn(12, 4) * 0.5,
                       b3=torch.randn(4) * 0.1), labels)

    for name, f in cases:
        seed_for(name)
        f(name)


if __name__ == "__main__":
    main()
