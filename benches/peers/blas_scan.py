#!/usr/bin/env python3
"""GFLOP/s of a batched BLAS scan, numpy `Q @ X.T`, for the shapes that
`cargo run --release -p m2m-index --example kernel_throughput NQ NR REPEATS` times (d = 32 .. 1536).
Run on one thread, pinned: `OPENBLAS_NUM_THREADS=1 taskset -c 0 python blas_scan.py 64 2048 15`.
Prints the best of REPEATS calls per dimension."""
import sys
import time

import numpy as np

nq, nr, rep = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print("| d | numpy Q@X.T GFLOP/s |")
for d in [32, 50, 64, 96, 128, 200, 256, 384, 512, 768, 1024, 1536]:
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((nq, d), dtype=np.float32)
    X = rng.standard_normal((nr, d), dtype=np.float32)
    best = 1e9
    for _ in range(rep):
        t = time.perf_counter()
        S = Q @ X.T
        best = min(best, time.perf_counter() - t)
    print(f"| {d} | {2 * nq * nr * d / best / 1e9:.1f} |")
