#!/usr/bin/python3
"""How much float32 error larger Winograd tiles would cost conv2d (issue 16), numpy only.

Run from the repo root:  /usr/bin/python3 tools/winograd_tile_error.py [--quick]   (about 2 s)

conv2d's float path runs 5x5 convolutions as Winograd F(2x2, 5x5) (ops/conv2d_simd.inc):
36 multiplies per input/output channel pair for 4 outputs, against 100 for the direct
sum. Larger output tiles need fewer: F(3x3, 5x5) 49 for 9, F(4x4, 5x5) 64 for 16, the
mixed F(4x2, 5x5) (F(4, 5) down the columns, F(2, 5) along the rows) 48 for 8; but
their transforms have larger entries, so the float result drifts further from the exact
one. This script builds each F(m, 5) from its interpolation points by Toom-Cook (exact
rationals; the 1-D identity is checked exactly), runs the 2-D algorithm in float32 on
random data (the transforms and the per-position channel sums as float32 arrays) and
compares it with the direct sum in float64, the way tests/ops/test_isa.cpp compares
our float path: |float - exact| <= 1e-4 + 1e-4 |exact| for every output.

Printed per tile size: the multiplies of ref-CNN's conv2 (16 -> 32 channels, 14x14
output) against F(2x2, 5x5)'s, and the worst |error| / tolerance over the outputs (1.0
is the tolerance; F(2x2, 5x5) is what passes today). These are numpy's float32 sums, not
our kernels' order of operations, over few outputs: read the ratios between tile sizes.
It ranks tiles; it does not clear one. F(3x3, 5x5) built into our kernels (branch
winograd-f3) reached 1.11 of the tolerance at 16 channels over millions of outputs
(bench/README.md, "Larger tiles").
"""
import sys
from fractions import Fraction

import numpy as np


def solve_exact(rows, rhs):
    """The solution of a consistent (possibly overdetermined) system, in Fractions."""
    a = [list(r) + [b] for r, b in zip(rows, rhs)]
    n = len(rows[0])
    piv_cols, r = [], 0
    for c in range(n):
        p = next((i for i in range(r, len(a)) if a[i][c] != 0), None)
        if p is None:
            continue
        a[r], a[p] = a[p], a[r]
        a[r] = [v / a[r][c] for v in a[r]]
        for i in range(len(a)):
            if i != r and a[i][c] != 0:
                f = a[i][c]
                a[i] = [vi - f * vr for vi, vr in zip(a[i], a[r])]
        piv_cols.append(c)
        r += 1
    assert all(all(v == 0 for v in row) for row in a[r:]), "inconsistent system"
    assert len(piv_cols) == n, "underdetermined system"
    return [a[i][n] for i in range(n)]


def winograd(m, r, points):
    """A^T (m x n), G (n x r), B^T (n x n) of F(m, r) for the finite `points` and infinity,
    such that y = A^T [(G g) * (B^T d)] is the correlation y_i = sum_k g_k d_{i+k}."""
    n = m + r - 1
    pts = [Fraction(p) for p in points]
    assert len(pts) == n - 1
    AT = [[Fraction(0)] * n for _ in range(m)]
    G = [[Fraction(0)] * r for _ in range(n)]
    for j, a in enumerate(pts):
        f = Fraction(1)
        for b in pts:
            if b != a:
                f *= a - b
        for i in range(m):
            AT[i][j] = a ** i
        for k in range(r):
            G[j][k] = a ** k / f
    AT[m - 1][n - 1] = Fraction(1)
    G[n - 1][r - 1] = Fraction(1)
    BT = [[Fraction(0)] * n for _ in range(n)]
    for col in range(n):  # sum_j AT[i][j] G[j][k] BT[j][col] = [col == i + k]
        rows = [[AT[i][j] * G[j][k] for j in range(n)] for i in range(m) for k in range(r)]
        rhs = [Fraction(1 if col == i + k else 0) for i in range(m) for k in range(r)]
        for j, v in enumerate(solve_exact(rows, rhs)):
            BT[j][col] = v
    # the 1-D identity, exactly, on every basis pair
    for k in range(r):
        for l in range(n):
            for i in range(m):
                got = sum(AT[i][j] * G[j][k] * BT[j][l] for j in range(n))
                assert got == (1 if l == i + k else 0), (m, r, points)
    to = lambda M: np.array([[float(v) for v in row] for row in M])
    return to(AT), to(G), to(BT)


def worst_error(m, points, C, O, H, rng, r=5, mc=None, points_c=None):
    """Worst |error| / (1e-4 + 1e-4 |exact|) of one float32 Winograd convolution: F(m x m),
    or, given mc and points_c, the mixed F(m x mc): F(m, r) down the columns, F(mc, r)
    along the rows, m x mc output tiles."""
    mc, points_c = (m, points) if mc is None else (mc, points_c)
    A1, G1, B1 = (M.astype(np.float32) for M in winograd(m, r, points))
    A2, G2, B2 = (M.astype(np.float32) for M in winograd(mc, r, points_c))
    n1, n2 = m + r - 1, mc + r - 1
    x = rng.uniform(-1, 1, (C, H + r - 1, H + r - 1))  # input with its padding of 2
    k = rng.uniform(-1, 1, (O, C, r, r))
    exact = np.zeros((O, H, H))
    for p in range(r):
        for q in range(r):
            exact += np.einsum("oc,chw->ohw", k[:, :, p, q], x[:, p:p + H, q:q + H])
    T1, T2 = -(-H // m), -(-H // mc)  # tiles down and across; a partial last tile reads zeros
    xp = np.zeros((C, T1 * m + r - 1, T2 * mc + r - 1), np.float32)
    xp[:, :H + r - 1, :H + r - 1] = x
    U = np.einsum("ik,ockl,jl->ijoc", G1, k.astype(np.float32), G2).astype(np.float32)
    y = np.zeros((O, T1 * m, T2 * mc), np.float32)
    for ti in range(T1):
        for tj in range(T2):
            d = xp[:, ti * m:ti * m + n1, tj * mc:tj * mc + n2]
            V = np.einsum("ik,ckl,jl->ijc", B1, d, B2).astype(np.float32)
            M = np.einsum("ijoc,ijc->ijo", U, V).astype(np.float32)
            y[:, ti * m:ti * m + m, tj * mc:tj * mc + mc] = np.einsum("ai,ijo,bj->oab", A1, M, A2)
    err = np.abs(y[:, :H, :H].astype(np.float64) - exact)
    return float((err / (1e-4 + 1e-4 * np.abs(exact))).max())


def main():
    quick = "--quick" in sys.argv
    rng = np.random.default_rng(2026)
    p2, p3 = [0, 1, -1, 2, -2], [0, 1, -1, 2, -2, Fraction(1, 2)]
    p4 = [0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)]
    tiles = [  # (name, rows' m and points, columns' m and points)
        ("F(2x2, 5x5)", 2, p2, 2, p2),
        ("F(3x3, 5x5)", 3, p3, 3, p3),
        ("F(4x4, 5x5)", 4, p4, 4, p4),
        ("F(4x2, 5x5)", 4, p4, 2, p2),  # mixed: 4x2 output tiles, 8x6 input tiles (last: the
    ]                                   # draws of the rows above stay those bench/README quotes)
    base = None
    draws = 3 if quick else 10
    print(f"tile          conv2 multiplies vs F(2x2)   worst error / tolerance, max (median) of {draws} draws, x, k ~ U(-1, 1)")
    for name, m, pts, mc, pc in tiles:
        mults = -(-14 // m) * -(-14 // mc) * (m + 4) * (mc + 4)  # per channel pair, one 14x14 output
        base = base or mults
        cells = []
        for C, O, H in ([(8, 7, 10), (32, 12, 10)] if quick else [(8, 7, 10), (16, 32, 14), (32, 12, 10)]):
            w = sorted(worst_error(m, pts, C, O, H, rng, mc=mc, points_c=pc) for _ in range(draws))
            cells.append(f"C={C}: {w[-1]:.2f} ({w[len(w) // 2]:.2f})")
        print(f"{name}   {mults:5d} ({base / mults:.2f}x fewer)      {', '.join(cells)}")


if __name__ == "__main__":
    main()
