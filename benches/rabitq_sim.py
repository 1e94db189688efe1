"""Simulates, on minilm70k (faiss spherical k-means, 1,055 clusters, one level), a 1-bit RaBitQ-style first
stage in front of LOD 2's SQ4 scan: bytes read per query and recall@10 of each cascade at fixed nprobe.

Codes. Residual r = x - c, rotated by a random orthogonal P; the code is sign(P r) (d bits, 48 B at
d = 384), x_bar = sign(P r) / sqrt(d), a = <x_bar, P r/|r|>. RaBitQ's estimator of <r/|r|, v> is
<x_bar, P v> / a, with error below sqrt(1 - a^2) / a * eps0 / sqrt(d - 1) * |v| with high probability
(eps0 = 1.9 in the paper). Here v = q - c (the query's residual), so
    q . x = q . c + <r, c> + |r| <r/|r|, q - c>
          ~ q . c + k0 + k1 <x_bar, P q>,   k1 = |r| / a,   k0 = <r, c> - k1 <x_bar, P c>
with bound k2 |q - c|, k2 = |r| sqrt(1 - a^2) / a * eps0 / sqrt(d - 1): three floats per code.
<x_bar, P q> is scored as the fast-scan kernel scores PQ4 codes of d / 4 sub-spaces: a u8 table of the
16 sign patterns of each group of 4 rotated dimensions (its rounding adds at most d / 8 table steps,
added to the bound).

Cascades (per query, clusters probed best first):
  sq4      SQ4 estimate of every probed member, the best `depth` re-ranked exactly (today's LOD 2).
  1b>sq4   1-bit estimate and bound of every member; a member goes on to SQ4 only if its upper bound
           reaches the depth-th best lower bound held so far (updated after each cluster); then as sq4.
  1b>ex    RaBitQ's own: a member is scored exactly only if its upper bound reaches the k-th best exact
           score so far.
  1b-top   the best `depth1` 1-bit estimates re-ranked exactly (no bound).
Bytes: codes x (48 + 12) for the 1-bit stage, x 192 for SQ4, exact rows x 1,536 (f32). Centroid ranking
is the same in every cascade and left out.

    /tmp/peers/bin/python benches/rabitq_sim.py 500      # queries used (the first N)
"""
import os
import sys
import numpy as np
import faiss

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
from benchutil import read_fvecs, read_ivecs  # noqa: E402  (the peers' readers, not a second copy)

D = "/work/shared/data/minilm70k/minilm70k"
X = read_fvecs(D + ".base.fvecs", mmap=False).copy()
Q = read_fvecs(D + ".query.fvecs", mmap=False).copy()
G = read_ivecs(D + ".gt.ivecs")[:, :10].copy()
X /= np.linalg.norm(X, axis=1, keepdims=True)
Q /= np.linalg.norm(Q, axis=1, keepdims=True)
nq = int(sys.argv[1]) if len(sys.argv) > 1 else 500
Q, G = Q[:nq], G[:nq]
n, d = X.shape
K = 1055
km = faiss.Kmeans(d, K, niter=20, spherical=True, seed=1, verbose=False)
km.train(X)
C = km.centroids
assign = np.argmax(X @ C.T, axis=1)
R = X - C[assign]

# SQ4 as M2M codes it: per-dimension range clipped at the 0.1% quantiles, 16 levels.
lo = np.quantile(R, 0.001, axis=0)
hi = np.quantile(R, 0.999, axis=0)
st = np.maximum((hi - lo) / 15.0, 1e-30)
R4 = lo + st * np.clip(np.round((R - lo) / st), 0, 15)

# 1-bit codes.
rng = np.random.default_rng(7)
P, _ = np.linalg.qr(rng.standard_normal((d, d)))
PR = R @ P.T
B = np.where(PR >= 0, 1.0, -1.0).astype(np.float32)
nr = np.linalg.norm(R, axis=1)
a = np.abs(PR).sum(1) / (np.sqrt(d) * np.maximum(nr, 1e-30))
k1 = nr / a
PC = C @ P.T
xc = (B * PC[assign]).sum(1) / np.sqrt(d)
k0 = (R * C[assign]).sum(1) - k1 * xc
kerr = nr * np.sqrt(np.maximum(1 - a * a, 0)) / a / np.sqrt(d - 1)
m = d // 4
nib = ((B.reshape(n, m, 4) > 0) * np.array([1, 2, 4, 8])).sum(2).astype(np.int64)
patterns = np.array([[1.0 if (c >> j) & 1 else -1.0 for j in range(4)] for c in range(16)])  # 16 x 4
print(f"a = <x_bar, o>: mean {a.mean():.3f} min {a.min():.3f}; |r| mean {nr.mean():.3f}", flush=True)

S = Q @ C.T
order = np.argsort(-S, axis=1)
members = [np.where(assign == c)[0] for c in range(K)]
c_sq = (C * C).sum(1)


def onebit(qv):
    """Integer-table estimate of <x_bar, P q> for every row, and the table's rounding bound."""
    pq = (P @ qv).reshape(m, 4) / np.sqrt(d)
    t = pq @ patterns.T  # m x 16
    tmin = t.min(1, keepdims=True)
    t = t - tmin
    scale = 255.0 / t.max()
    lut = np.floor(t * scale + 0.5)
    est = lut[np.arange(m)[None, :], nib].sum(1) / scale + tmin.sum()
    return est, 0.5 * m / scale


def run(npb, depths, eps_list, depth1s):
    res = {}
    tot = {}
    for i in range(nq):
        q = Q[i]
        cl = order[i, :npb]
        idx_list = [members[c] for c in cl]
        idx = np.concatenate(idx_list)
        cl_of = np.concatenate([np.full(len(mm), c) for mm, c in zip(idx_list, cl)])
        ex = X[idx] @ q
        sq4 = S[i, cl_of] + R4[idx] @ q
        dot1, luterr = onebit(q)
        est1 = S[i, cl_of] + k0[idx] + k1[idx] * dot1[idx]
        qc_norm = np.sqrt(np.maximum(1 - 2 * S[i, cl_of] + c_sq[cl_of], 0))
        truth = set(G[i])
        bounds = np.cumsum([0] + [len(mm) for mm in idx_list])
        tot["codes"] = tot.get("codes", 0) + len(idx)

        def recall(cand):
            top = cand[np.argsort(-ex[cand])[:10]]
            return len(truth & set(idx[top].tolist())) / 10

        for dep in depths:
            cand = np.argsort(-sq4)[:dep]
            res.setdefault(("sq4", dep), [0, 0])
            res[("sq4", dep)][0] += recall(cand)
        for eps in eps_list:
            err = eps * kerr[idx] * qc_norm + k1[idx] * luterr
            ub, lb = est1 + err, est1 - err
            for dep in depths:
                # streaming: threshold = depth-th best lower bound over the clusters already scanned
                keep = np.zeros(len(idx), bool)
                held = np.empty(0)
                for j in range(len(cl)):
                    s0, s1 = bounds[j], bounds[j + 1]
                    thr = held.min() if len(held) >= dep else -np.inf
                    keep[s0:s1] = ub[s0:s1] >= thr
                    held = np.concatenate([held, lb[s0:s1]])
                    if len(held) > dep:
                        held = np.partition(held, len(held) - dep)[-dep:]
                surv = np.where(keep)[0]
                cand = surv[np.argsort(-sq4[surv])[:dep]]
                key = ("1b>sq4", eps, dep)
                res.setdefault(key, [0, 0])
                res[key][0] += recall(cand)
                res[key][1] += len(surv)
            # RaBitQ's own: exact when the upper bound reaches the k-th best exact score so far
            kth = -np.inf
            best = np.empty(0)
            nex = 0
            found = []
            for j in range(len(cl)):
                s0, s1 = bounds[j], bounds[j + 1]
                for t in range(s0, s1):
                    if ub[t] >= kth:
                        nex += 1
                        found.append(t)
                        best = np.append(best, ex[t])
                        if len(best) >= 10:
                            best = np.partition(best, len(best) - 10)[-10:]
                            kth = best.min()
            key = ("1b>ex", eps)
            res.setdefault(key, [0, 0])
            res[key][0] += recall(np.array(found))
            res[key][1] += nex
        for d1 in depth1s:
            cand = np.argsort(-est1)[:d1]
            res.setdefault(("1b-top", d1), [0, 0])
            res[("1b-top", d1)][0] += recall(cand)
    codes = tot["codes"] / nq
    print(f"nprobe {npb}: codes/query {codes:.0f}", flush=True)
    for key, (rsum, extra) in res.items():
        rec = rsum / nq
        extra /= nq
        if key[0] == "sq4":
            b = codes * 192 + key[1] * 1536
            print(f"  sq4 depth {key[1]}: recall {rec:.4f} bytes {b / 1e6:.3f} MB")
        elif key[0] == "1b>sq4":
            b = codes * 60 + extra * 192 + key[2] * 1536
            print(f"  1b>sq4 eps {key[1]} depth {key[2]}: recall {rec:.4f} survivors {extra:.0f} "
                  f"({extra / codes:.1%}) bytes {b / 1e6:.3f} MB")
        elif key[0] == "1b>ex":
            b = codes * 60 + extra * 1536
            print(f"  1b>ex eps {key[1]}: recall {rec:.4f} exact {extra:.0f} bytes {b / 1e6:.3f} MB")
        else:
            b = codes * 60 + key[1] * 1536
            print(f"  1b-top depth {key[1]}: recall {rec:.4f} bytes {b / 1e6:.3f} MB")
    sys.stdout.flush()


for npb in [int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "50,160").split(",")]:
    run(npb, [15, 20], [1.5, 1.9, 2.5], [40, 80, 160])
