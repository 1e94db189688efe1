"""A hard synthetic set for the index benchmarks: a Gaussian mixture whose components overlap.

    python3 benches/gen_mixture.py OUT_PREFIX [--n 100000] [--nq 2000] [--dim 64] [--centres 200]
        [--sigma 0.35] [--seed 7]

Writes OUT_PREFIX.base.fvecs, .query.fvecs (fresh draws of the same mixture, normalised to unit length,
so cosine and inner product agree), .gt.ivecs (the exact top 100) and OUT_PREFIX.json (`{"metric": "ip"}`,
read by ../shared/bench/anchors.py). Centres are unit-variance Gaussians; each point is a centre plus sigma
times a Gaussian per coordinate, so with sigma near 1 (the default) the noise is as large as the centres and neighbouring components overlap and
k-means clusters cut through them: a query's neighbours spread over many clusters (what a fixed nprobe
tuned on well-clustered data under-probes). Needs numpy.
"""
import argparse

import numpy as np


def write_vecs(path, a, dtype):
    a = np.ascontiguousarray(a, dtype=dtype)
    n, d = a.shape
    out = np.empty((n, d + 1), dtype=dtype)
    out[:, 0] = np.array([d], dtype=np.int32).view(dtype)[0]
    out[:, 1:] = a
    out.tofile(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--nq", type=int, default=2_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--centres", type=int, default=200)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    centres = rng.standard_normal((a.centres, a.dim)).astype(np.float32)

    def draw(n):
        j = rng.integers(0, a.centres, n)
        return centres[j] + a.sigma * rng.standard_normal((n, a.dim)).astype(np.float32)

    base, queries = draw(a.n), draw(a.nq)
    bn = base / np.linalg.norm(base, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    gt = np.empty((a.nq, 100), dtype=np.int32)
    for lo in range(0, a.nq, 256):
        s = qn[lo:lo + 256] @ bn.T
        top = np.argpartition(-s, 100, axis=1)[:, :100]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
        gt[lo:lo + 256] = np.take_along_axis(top, order, axis=1)
    write_vecs(a.out + ".base.fvecs", bn, np.float32)
    write_vecs(a.out + ".query.fvecs", qn, np.float32)
    with open(a.out + ".json", "w") as f:
        f.write('{"metric": "ip"}\n')
    write_vecs(a.out + ".gt.ivecs", gt, np.int32)


if __name__ == "__main__":
    main()
