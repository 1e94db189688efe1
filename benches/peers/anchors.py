#!/usr/bin/env python3
"""Side-by-side ANN anchors on one dataset: faiss (Flat L2/IP, IVFFlat, HNSWFlat),
hnswlib, usearch and ScaNN.  Same base, same held-out queries, same exact ground truth.

A copy of ../shared/bench/anchors.py (kept beside M2M's own benchmark so the peers run in the same
session), extended with ScaNN (`--libs scann`): a tree of --scann-leaves partitions (default 2 sqrt(N)),
4-bit anisotropic product quantisation (2 dimensions per sub-code, threshold 0.2) and exact re-ordering,
the configuration of ../shared/bench/scann_anchor.py, swept over --scann-search (leaves searched) x
--scann-reorder (re-ordered candidates). ScaNN is told 1 thread through set_num_threads where present;
batch timings with more threads are skipped for it. usearch is optional (skipped when not installed).

For every index/parameter point it records
  build : train/add seconds (2 threads unless --build-threads), add rate (vectors/s)
  batch : QPS for the whole query batch with 1 and with 2 threads (best of --repeats)
  lat1  : one-query-at-a-time, 1 thread: p50/p95/p99 microseconds (+ QPS)
  lat2  : two concurrent client threads, one query at a time each, lib threads=1
  recall@k (from the 1-thread batch result) against the exact top-k
plus the cores used by *other* processes during each timed section (other_cores);
sections with other_cores > --noise are re-run after waiting for a quiet machine.

Dataset layout is the one make_datasets.py writes: PREFIX.{base,query,gt}.npy + PREFIX.json
(.npy, or .fvecs for base/query and .ivecs for gt).

Examples
  python anchors.py $SA_PERF/data/glove50 --out results/glove50.json
  python anchors.py $SA_PERF/data/minilm_defs --libs flat,ivf,hnsw --nlist 500,2000 \
      --nprobe 1,4,16,64 --ef 16,64,256 --nq-lat 500
  OPENBLAS_CORETYPE must be chosen deliberately: see RESULTS.md (faiss's bundled OpenBLAS
  0.3.15 falls back to 'Barcelona' (SSE) kernels on this CPU when the variable is unset).
"""
import argparse
import gc
import json
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchutil as bu  # noqa: E402

ARGS = None
TIMED_CPU = {}


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ------------------------------------------------------------- timing core
def timed(fn, repeats=1, noise=0.3, label="", min_time=1.0):
    """Time fn() `repeats` times (each sample loops fn until >= min_time s, so
    short batches are not below timer/jiffy resolution); re-run samples during
    which other processes used > noise cores (max 3 extra).  Returns
    (best seconds per call, other_cores of best, result, n_noisy_samples)."""
    best = None
    extra = 0
    noisy = 0
    i = 0
    while i < repeats:
        gc.collect()
        calls = 0
        with bu.Meter() as m:
            t0 = time.perf_counter()
            while True:
                r = fn()
                calls += 1
                if time.perf_counter() - t0 >= min_time:
                    break
        per = m.wall / calls
        # CPU seconds of this process per call: unlike wall time, not inflated when the scheduler lends
        # the core to other jobs (the machine this copy was written on was shared).
        TIMED_CPU[label] = min(TIMED_CPU.get(label, 1e30), m.wall * m.own_cores / calls)
        if m.other_cores > noise:
            noisy += 1
            if extra < 3:
                extra += 1
                log(f"  noisy run {label}: other_cores={m.other_cores:.2f}; waiting for quiet and repeating")
                bu.wait_quiet(0.15, max_wait=120, verbose=False)
                continue
        if best is None or per < best[0]:
            best = (per, m.other_cores, r)
        i += 1
    return best[0], best[1], best[2], noisy


def latency_run(search1, Q, warm=50):
    """One query at a time; returns array of per-query seconds and ids."""
    for i in range(min(warm, len(Q))):
        search1(Q[i:i + 1])
    lat = np.empty(len(Q))
    pc = time.perf_counter
    for i in range(len(Q)):
        q = Q[i:i + 1]
        t = pc()
        search1(q)
        lat[i] = pc() - t
    return lat


def latency_run_2clients(search1, Q, thread_init=None):
    """Two client threads, each issuing one query at a time (lib threads = 1).
    thread_init runs first in each client thread (OpenMP's thread count is a
    per-thread setting: faiss needs omp_set_num_threads(1) in every caller)."""
    half = len(Q) // 2
    parts = [Q[:half], Q[half:2 * half]]
    lats = [None, None]

    def work(j):
        if thread_init:
            thread_init()
        lats[j] = latency_run(search1, parts[j], warm=0)

    ths = [threading.Thread(target=work, args=(j,)) for j in range(2)]
    t0 = time.perf_counter()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    return np.concatenate(lats), wall


def pct(lat):
    return dict(p50_us=float(np.percentile(lat, 50) * 1e6), p95_us=float(np.percentile(lat, 95) * 1e6),
                p99_us=float(np.percentile(lat, 99) * 1e6), mean_us=float(lat.mean() * 1e6))


def measure_point(name, params, set_threads, search_batch, search1, Q, Qlat, gt, k, res, thread_init=None):
    """set_threads(t); search_batch(Q) -> ids; search1(q) -> anything."""
    rec = dict(index=name, **params)
    out = {}
    for t in ARGS.threads:
        set_threads(t)
        wall, oc, ids, noisy = timed(lambda: search_batch(Q), ARGS.repeats, ARGS.noise, f"{name} {params} batch t={t}")
        out[t] = ids
        rec[f"batch_qps_t{t}"] = len(Q) / wall
        cpu = TIMED_CPU.get(f"{name} {params} batch t={t}", 0)
        rec[f"batch_cpu_qps_t{t}"] = len(Q) / cpu if cpu > 0 else float("nan")
        rec[f"batch_other_cores_t{t}"] = oc
    ids = out[ARGS.threads[0]]
    rec[f"recall@{k}"] = bu.recall_at_k(ids, gt[:len(Q)], k)
    if len(ARGS.threads) > 1:
        a, b = out[ARGS.threads[0]], out[ARGS.threads[-1]]
        rec["recall_threads_agree"] = float(np.mean(np.sort(a[:, :k], 1) == np.sort(b[:, :k], 1)))
    if ARGS.nq_lat > 0 and not ARGS.no_lat:
        set_threads(1)
        with bu.Meter() as m:
            lat = latency_run(search1, Qlat)
        if m.wall > 0.2 and m.other_cores > ARGS.noise:
            log(f"  noisy latency run {name} {params}: other_cores={m.other_cores:.2f}; repeating once when quiet")
            bu.wait_quiet(0.15, max_wait=120, verbose=False)
            with bu.Meter() as m:
                lat = latency_run(search1, Qlat)
        rec["lat1"] = pct(lat)
        rec["lat1_qps"] = len(Qlat) / lat.sum()
        rec["lat1_other_cores"] = m.other_cores
        if ARGS.lat2:
            with bu.Meter() as m:
                lat2, wall2 = latency_run_2clients(search1, Qlat, thread_init)
            rec["lat2"] = pct(lat2)
            rec["lat2_qps"] = len(lat2) / wall2
            rec["lat2_other_cores"] = m.other_cores
    res["points"].append(rec)
    l1 = rec.get("lat1", {})
    log(f"  {name} {params}: R@{k}={rec[f'recall@{k}']:.4f} "
        + " ".join(f"qps_t{t}={rec[f'batch_qps_t{t}']:.0f} cpu_qps_t{t}={rec[f'batch_cpu_qps_t{t}']:.0f}"
                   for t in ARGS.threads)
        + (f" lat1 p50={l1.get('p50_us', 0):.0f}us p99={l1.get('p99_us', 0):.0f}us" if l1 else "")
        + (f" lat2_qps={rec['lat2_qps']:.0f}" if 'lat2_qps' in rec else ""))
    return rec


# ------------------------------------------------------------------ libs
def run_faiss(X, Q, Qlat, gt, metric, k, res):
    import faiss
    d = X.shape[1]
    n = len(X)
    fm = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2

    def st(t):
        faiss.omp_set_num_threads(t)

    def ti():
        faiss.omp_set_num_threads(1)

    def batch(idx):
        return lambda q: idx.search(q, k)[1]

    def one(idx):
        return lambda q: idx.search(q, k)

    if "flat" in ARGS.libs:
        for kind in (["l2", "ip"] if metric == "ip" else ["l2"]):
            st(ARGS.build_threads)
            idx = faiss.IndexFlatIP(d) if kind == "ip" else faiss.IndexFlatL2(d)
            with bu.Meter() as m:
                idx.add(X)
            res["builds"].append(dict(index=f"faiss.IndexFlat{kind.upper()}", add_s=m.wall, add_vps=n / m.wall,
                                      other_cores=m.other_cores))
            ql = Qlat[:ARGS.nq_lat_flat]
            measure_point(f"faiss.IndexFlat{kind.upper()}", {}, st, batch(idx), one(idx), Q, ql, gt, k, res, ti)
            del idx

    if "ivf" in ARGS.libs:
        nlists = ARGS.nlist or sorted({int(round(np.sqrt(n))), int(round(4 * np.sqrt(n)))})
        for nlist in nlists:
            st(ARGS.build_threads)
            quant = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
            idx = faiss.IndexIVFFlat(quant, d, nlist, fm)
            with bu.Meter() as m1:
                idx.train(X)
            with bu.Meter() as m2:
                idx.add(X)
            name = f"faiss.IVFFlat{nlist}"
            res["builds"].append(dict(index=name, train_s=m1.wall, add_s=m2.wall, add_vps=n / m2.wall,
                                      train_points=min(n, 256 * nlist), other_cores=max(m1.other_cores, m2.other_cores)))
            log(f"  {name}: train {m1.wall:.2f}s add {m2.wall:.2f}s")
            for nprobe in ARGS.nprobe:
                if nprobe > nlist:
                    continue
                idx.nprobe = nprobe
                measure_point(name, dict(nprobe=nprobe), st, batch(idx), one(idx), Q, Qlat, gt, k, res, ti)
            del idx, quant

    if "hnsw" in ARGS.libs:
        for M in ARGS.M:
            st(ARGS.build_threads)
            idx = faiss.IndexHNSWFlat(d, M, fm)
            idx.hnsw.efConstruction = ARGS.efc
            with bu.Meter() as m:
                idx.add(X)
            name = f"faiss.HNSWFlat_M{M}"
            res["builds"].append(dict(index=name, efConstruction=ARGS.efc, add_s=m.wall, add_vps=n / m.wall,
                                      other_cores=m.other_cores, threads=ARGS.build_threads))
            log(f"  {name}: build {m.wall:.2f}s")
            for ef in ARGS.ef:
                idx.hnsw.efSearch = max(ef, k)
                measure_point(name, dict(ef=max(ef, k)), st, batch(idx), one(idx), Q, Qlat, gt, k, res, ti)
            del idx


def run_hnswlib(X, Q, Qlat, gt, metric, k, res):
    import hnswlib
    d = X.shape[1]
    n = len(X)
    for M in ARGS.M:
        idx = hnswlib.Index(space="ip" if metric == "ip" else "l2", dim=d)
        idx.init_index(max_elements=n, ef_construction=ARGS.efc, M=M, random_seed=100)
        idx.set_num_threads(ARGS.build_threads)
        with bu.Meter() as m:
            idx.add_items(X, np.arange(n), num_threads=ARGS.build_threads)
        name = f"hnswlib_M{M}"
        res["builds"].append(dict(index=name, efConstruction=ARGS.efc, add_s=m.wall, add_vps=n / m.wall,
                                  other_cores=m.other_cores, threads=ARGS.build_threads))
        log(f"  {name}: build {m.wall:.2f}s")
        state = {"t": 1}

        def st(t):
            state["t"] = t
            idx.set_num_threads(t)

        for ef in ARGS.ef:
            idx.set_ef(max(ef, k))
            measure_point(name, dict(ef=max(ef, k)), st,
                          lambda q: idx.knn_query(q, k=k, num_threads=state["t"])[0],
                          lambda q: idx.knn_query(q, k=k, num_threads=1), Q, Qlat, gt, k, res)
        del idx


def run_usearch(X, Q, Qlat, gt, metric, k, res):
    from usearch.index import Index
    d = X.shape[1]
    n = len(X)
    for dtype in ARGS.usearch_dtypes:
        for M in ARGS.M:
            idx = Index(ndim=d, metric="ip" if metric == "ip" else "l2sq", dtype=dtype, connectivity=M,
                        expansion_add=ARGS.efc, expansion_search=64)
            keys = np.arange(n, dtype=np.uint64)
            with bu.Meter() as m:
                idx.add(keys, X, threads=ARGS.build_threads)
            name = f"usearch_{dtype}_M{M}"
            res["builds"].append(dict(index=name, efConstruction=ARGS.efc, add_s=m.wall, add_vps=n / m.wall,
                                      other_cores=m.other_cores, threads=ARGS.build_threads))
            log(f"  {name}: build {m.wall:.2f}s")
            state = {"t": 1}

            def st(t):
                state["t"] = t

            for ef in ARGS.ef:
                idx.expansion_search = max(ef, k)
                measure_point(name, dict(ef=max(ef, k)), st,
                              lambda q: idx.search(q, k, threads=state["t"]).keys,
                              lambda q: idx.search(q, k, threads=1), Q, Qlat, gt, k, res)
            del idx


def run_scann(X, Q, Qlat, gt, metric, k, res):
    """ScaNN as in scann_anchor.py: partitions + anisotropic 4-bit PQ + exact reorder."""
    import scann
    n = len(X)
    leaves = ARGS.scann_leaves or int(2 * n ** 0.5)
    Xs = X / np.linalg.norm(X, axis=1, keepdims=True) if metric in ("ip", "cosine") else X
    dist = "dot_product" if metric in ("ip", "cosine") else "squared_l2"
    with bu.Meter() as m:
        s = (scann.scann_ops_pybind.builder(Xs, k, dist)
             .tree(num_leaves=leaves, num_leaves_to_search=100, training_sample_size=min(n, 250000))
             .score_ah(2, anisotropic_quantization_threshold=0.2).reorder(max(ARGS.scann_reorder)).build())
    name = f"scann_leaves{leaves}"
    res["builds"].append(dict(index=name, add_s=m.wall, add_vps=n / m.wall, other_cores=m.other_cores))
    log(f"  {name}: build {m.wall:.2f}s")
    if hasattr(s, "set_num_threads"):
        s.set_num_threads(1)

    def st(t):
        if t != 1:
            log(f"  {name}: only 1-thread batches are timed")

    for nl in ARGS.scann_search:
        for ro in ARGS.scann_reorder:
            measure_point(name, dict(leaves=nl, reorder=ro), st,
                          lambda q: s.search_batched(q, leaves_to_search=nl, pre_reorder_num_neighbors=ro)[0],
                          lambda q: s.search(q[0], leaves_to_search=nl, pre_reorder_num_neighbors=ro)[0],
                          Q, Qlat, gt, k, res)


def run_numpy(X, Q, Qlat, gt, metric, k, res):
    """Brute force with BLAS sgemm + argpartition (what a naive exact scan costs)."""
    from threadpoolctl import threadpool_limits
    state = {"t": 1}

    def st(t):  # global BLAS thread limit (applies to the latency loop too)
        state["t"] = t
        threadpool_limits(limits=t, user_api="blas")

    def batch(q):
        return bu.exact_knn(X, q, k, metric, bs=1024)[0]

    xn = (X * X).sum(1) if metric == "l2" else None

    def one(q):
        s = X @ q[0]
        if metric == "l2":
            s = 2 * s - xn  # larger is closer
        p = np.argpartition(-s, k)[:k]
        return p[np.argsort(-s[p])]

    measure_point("numpy.sgemm+argpartition", {}, st, batch, one, Q, Qlat[:ARGS.nq_lat_flat], gt, k, res)


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prefix", help="dataset prefix, e.g. $SA_PERF/data/glove50")
    ap.add_argument("--out", default=None)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nq", type=int, default=10000, help="batch queries used (<= available)")
    ap.add_argument("--nq-lat", type=int, default=1000, help="queries for one-at-a-time latency")
    ap.add_argument("--nq-lat-flat", type=int, default=200, help="latency queries for exact scans")
    ap.add_argument("--no-lat", action="store_true")
    ap.add_argument("--lat2", action="store_true", help="also 2 concurrent single-query clients")
    ap.add_argument("--libs", default="flat,numpy,ivf,hnsw,hnswlib,usearch")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--nlist", default="", help="comma list; default sqrt(N),4*sqrt(N)")
    ap.add_argument("--nprobe", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--M", default="16")
    ap.add_argument("--efc", type=int, default=200)
    ap.add_argument("--ef", default="10,16,32,64,128,256")
    ap.add_argument("--usearch-dtypes", default="f32")
    ap.add_argument("--scann-leaves", type=int, default=0, help="ScaNN partitions (0: 2 sqrt(N))")
    ap.add_argument("--scann-search", default="10,20,30,50,75,100,150")
    ap.add_argument("--scann-reorder", default="40,100,200")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--start-wait", type=float, default=120, help="max seconds to wait for a quiet machine first")
    ap.add_argument("--noise", type=float, default=0.3, help="other_cores above which a timing is redone")
    ARGS = a = ap.parse_args()
    a.libs = a.libs.split(",")
    a.threads = [int(x) for x in a.threads.split(",")]
    a.nlist = [int(x) for x in a.nlist.split(",") if x]
    a.nprobe = [int(x) for x in a.nprobe.split(",")]
    a.M = [int(x) for x in a.M.split(",")]
    a.ef = [int(x) for x in a.ef.split(",")]
    a.usearch_dtypes = a.usearch_dtypes.split(",")
    a.scann_search = [int(x) for x in a.scann_search.split(",")]
    a.scann_reorder = [int(x) for x in a.scann_reorder.split(",")]

    meta = json.load(open(a.prefix + ".json")) if os.path.exists(a.prefix + ".json") else {}
    def pick(part, exts):
        for e in exts:
            if os.path.exists(a.prefix + part + e):
                return a.prefix + part + e
        raise SystemExit(f"no {a.prefix}{part}{{{','.join(exts)}}}")
    X = np.ascontiguousarray(bu.load_vectors(pick(".base", [".npy", ".fvecs"])), dtype=np.float32)
    Qall = np.ascontiguousarray(bu.load_vectors(pick(".query", [".npy", ".fvecs"])), dtype=np.float32)
    g = pick(".gt", [".npy", ".ivecs"])
    gt = np.load(g) if g.endswith(".npy") else bu.read_ivecs(g)
    metric = meta.get("metric", "l2")
    Q = Qall[:a.nq]
    gt = gt[:len(Q)]
    Qlat = Qall[:min(a.nq_lat, len(Qall))]
    k = a.k
    res = dict(dataset=os.path.basename(a.prefix), meta=meta, n=len(X), d=X.shape[1], metric=metric,
               nq=len(Q), nq_lat=len(Qlat), k=k, env=bu.env_info(), args=vars(a), builds=[], points=[],
               started=time.strftime("%Y-%m-%d %H:%M:%S"))
    import faiss
    import hnswlib  # noqa
    res["versions"] = dict(numpy=np.__version__, faiss=faiss.__version__,
                           hnswlib=getattr(hnswlib, "__version__", "0.8.0"))
    try:
        import usearch
        res["versions"]["usearch"] = usearch.__version__
    except ImportError:
        a.libs = [x for x in a.libs if x != "usearch"]
    if "scann" in a.libs:
        import scann
        res["versions"]["scann"] = getattr(scann, "__version__", "?")
    log(f"dataset {res['dataset']}: N={len(X)} d={X.shape[1]} metric={metric} nq={len(Q)} nq_lat={len(Qlat)}"
        f" OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} load={res['env']['loadavg']}")
    log(f"other-process load now: {bu.wait_quiet(0.15, max_wait=a.start_wait):.2f} cores")
    out = a.out or f"results/{res['dataset']}.json"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    for lib, fn in [("faiss", run_faiss), ("numpy", run_numpy), ("hnswlib", run_hnswlib), ("usearch", run_usearch),
                    ("scann", run_scann)]:
        if lib == "faiss" and not ({"flat", "ivf", "hnsw"} & set(a.libs)):
            continue
        if lib != "faiss" and lib not in a.libs:
            continue
        fn(X, Q, Qlat, gt, metric, k, res)
        bu.dump_json(out, res)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    bu.dump_json(out, res)
    log("wrote", out)


if __name__ == "__main__":
    main()
