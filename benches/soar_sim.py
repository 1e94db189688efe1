"""Simulates, on minilm70k with faiss k-means (1,058 spherical clusters, one level), how many codes a
partitioned index scans to reach a recall: a fixed nprobe, an adaptive stop rule (stop once the next
centroid scores below the k-th best member score found so far minus delta), and a SOAR spilled second
assignment (each row also in the cluster of least |r'|^2 + lambda (r^ . r')^2). Recall assumes an exact
re-rank of every probed member, so it is an upper bound of what codes give. Used in notes/issue-14.md
(round of 2026-12-02, second session) to choose what to build.

    /tmp/peers/bin/python benches/soar_sim.py 1000      # queries used (the first N of the query file)
"""
import sys
import numpy as np
import faiss


def fvecs(p):
    a = np.fromfile(p, dtype=np.int32)
    return a.reshape(-1, a[0] + 1)[:, 1:].view(np.float32).copy()


def ivecs(p):
    a = np.fromfile(p, dtype=np.int32)
    return a.reshape(-1, a[0] + 1)[:, 1:].copy()


D = "/work/shared/data/minilm70k/minilm70k"
X = fvecs(D + ".base.fvecs")
Q = fvecs(D + ".query.fvecs")
G = ivecs(D + ".gt.ivecs")[:, :10]
X /= np.linalg.norm(X, axis=1, keepdims=True)
Q /= np.linalg.norm(Q, axis=1, keepdims=True)
nq = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
Q, G = Q[:nq], G[:nq]
K = 1058
km = faiss.Kmeans(X.shape[1], K, niter=20, spherical=True, seed=1, verbose=False)
km.train(X)
C = km.centroids
assign = np.argmax(X @ C.T, axis=1)
sizes = np.bincount(assign, minlength=K)
S = Q @ C.T
order = np.argsort(-S, axis=1)
rank = np.empty_like(order)
for i in range(nq):
    rank[i, order[i]] = np.arange(K)
gr = np.take_along_axis(rank, assign[G], axis=1)  # probe rank of each true neighbour's cluster


def fixed(gr, sizes, label):
    for npb in [20, 30, 40, 50, 60, 80, 100, 130, 160, 200]:
        cost = np.mean([sizes[order[i, :npb]].sum() for i in range(nq)])
        print(f"{label} nprobe {npb}: recall {(gr < npb).mean():.4f} scanned {cost:.0f}", flush=True)


fixed(gr, sizes, "fixed")

XS = Q @ X.T
members = [np.where(assign == c)[0] for c in range(K)]
for delta in [0.2, 0.21, 0.22, 0.28, 0.3, 0.32, 0.34]:
    recs, costs = [], []
    for i in range(nq):
        top = np.full(10, -9.0)
        cost = 0
        j = 0
        for j in range(400):
            c = order[i, j]
            if j >= 4 and S[i, c] < top.min() - delta:
                break
            cost += len(members[c])
            top = np.sort(np.concatenate([top, XS[i, members[c]]]))[-10:]
        costs.append(cost)
        recs.append((gr[i] < j).mean())
    print(f"kth-stop delta {delta}: recall {np.mean(recs):.4f} scanned {np.mean(costs):.0f}", flush=True)

R = X - C[assign]
rn = R / np.maximum(np.linalg.norm(R, axis=1, keepdims=True), 1e-9)
XC = X @ C.T
cand = np.argpartition(-XC, 40, axis=1)[:, :40]
for lam in [0.0, 1.0, 4.0]:
    best = np.empty(len(X), dtype=np.int64)
    for s in range(0, len(X), 5000):
        cs, x, r = cand[s:s + 5000], X[s:s + 5000], rn[s:s + 5000]
        Rp = x[:, None, :] - C[cs]
        loss = (Rp ** 2).sum(-1) + lam * np.einsum("bkd,bd->bk", Rp, r) ** 2
        loss[cs == assign[s:s + 5000, None]] = 1e9
        best[s:s + 5000] = cs[np.arange(len(cs)), np.argmin(loss, axis=1)]
    sizes2 = sizes + np.bincount(best, minlength=K)
    gr2 = np.minimum(gr, np.take_along_axis(rank, best[G], axis=1))
    fixed(gr2, sizes2, f"soar lambda {lam}")
