#!/usr/bin/env python3
"""Writes tests/fixtures/fashion-mnist-tiny: the first images of the real Fashion-MNIST
(Debian's dataset-fashion-mnist) as small gzipped IDX files, so CLI tests can train
without the full set. Run from the repo root: python3 tools/make_fixture.py"""
import gzip, os, struct

SRC = "/usr/share/datasets/fashion-mnist"
DST = "tests/fixtures/fashion-mnist-tiny"
COUNTS = {"train": 256, "t10k": 128}

def read(path):
    with gzip.open(path, "rb") as f:
        return f.read()

os.makedirs(DST, exist_ok=True)
for split, n in COUNTS.items():
    images = read(f"{SRC}/{split}-images-idx3-ubyte.gz")
    labels = read(f"{SRC}/{split}-labels-idx1-ubyte.gz")
    _, _, rows, cols = struct.unpack(">IIII", images[:16])
    out_images = struct.pack(">IIII", 0x803, n, rows, cols) + images[16:16 + n * rows * cols]
    out_labels = struct.pack(">II", 0x801, n) + labels[8:8 + n]
    for name, data in ((f"{split}-images-idx3-ubyte.gz", out_images), (f"{split}-labels-idx1-ubyte.gz", out_labels)):
        with open(os.path.join(DST, name), "wb") as f:
            f.write(gzip.compress(data, mtime=0))
    print(f"{split}: {n} images {rows}x{cols}")
