#!/usr/bin/python3
# A cross-check of the LibTorch rows of ./run.sh bench: ref-CNN trained from Python with
# Debian's python3-torch (the same libtorch build), random batch 64, SGD lr 0.05.
# Prints the median img/s of 7 blocks of 20 steps after 10 warm-up steps.
#   OPENBLAS_NUM_THREADS=1 /usr/bin/python3 bench/pytorch_ref_cnn.py 2
# Not part of CI or of the benchmark driver (no PyTorch is needed to build or test).
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
torch.manual_seed(1)
model = torch.nn.Sequential(
    torch.nn.Conv2d(1, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Conv2d(16, 32, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
    torch.nn.Flatten(), torch.nn.Linear(1568, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.rand(64, 1, 28, 28)
y = torch.randint(0, 10, (64,))


def step():
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


for _ in range(10):
    step()
rates = []
for _ in range(7):
    t0 = time.perf_counter()
    for _ in range(20):
        step()
    rates.append(20 * 64 / (time.perf_counter() - t0))
rates.sort()
print(f"pytorch ref-CNN train, {threads} thread(s): median {rates[3]:.0f} img/s "
      f"(blocks: {', '.join(f'{r:.0f}' for r in rates)})")
