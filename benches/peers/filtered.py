#!/usr/bin/env python3
"""Filtered-search peers for `cargo xtask bench filter`: hnswlib with a filter function and LanceDB with a
pre-filter, on the same base, queries, filters and exact filtered truth as M2M's benchmark.

The filters and truth come from `cargo xtask bench filter --export DIR` (DIR/filters.json: for each filter
its matching row numbers and, per query, the exact filtered top-k ids). Run pinned to one core, as M2M's
benchmark is:

  taskset -c 1 python benches/peers/filtered.py ../shared/data/minilm70k/minilm70k DIR/filters.json \
      --out DIR/peers.json

For each filter and setting it prints recall@k against the exact filtered truth, wall QPS and QPS per CPU
second of this process (all its threads), one query at a time, as M2M's single-query figure is measured
(and for hnswlib also one batch call with the filter). hnswlib: M 16, efConstruction 200, inner product
(the vectors are unit), swept over ef; its filter is a Python callable over a numpy mask, called per
visited node. LanceDB: one table with a boolean column per filter, queried with `.where(col,
prefilter=True)`: without a vector index (a flat scan of the matching rows) and, with `--lance-ivf`,
with an IVF_PQ index swept over nprobes (refine_factor 10). A library that does not import is named and
skipped.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchutil as bu  # noqa: E402


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def recall(ids, truth, k):
    found = total = 0
    for r, t in zip(ids, truth):
        t = list(t)[:k]
        found += len(set(int(x) for x in r[:k]) & set(t))
        total += len(t)
    return found / total if total else 1.0


def timed(fn):
    """(wall seconds, CPU seconds of this process, result) of the best of two runs."""
    best = None
    for _ in range(2):
        w0, c0 = time.perf_counter(), time.process_time()
        r = fn()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        if best is None or w < best[0]:
            best = (w, max(c, 1e-3), r)
    return best


def point(res, lib, setting, name, nq, k, truth, wall, cpu, ids, extra=None):
    rec = dict(lib=lib, setting=setting, filter=name, recall=recall(ids, truth, k), qps=nq / wall, cpu_qps=nq / cpu)
    rec.update(extra or {})
    res["points"].append(rec)
    log(f"  {lib} {setting} [{name}]: R@{k}={rec['recall']:.4f} qps={rec['qps']:.0f} cpu_qps={rec['cpu_qps']:.0f}")


def run_hnswlib(X, Q, filters, k, res, args):
    import hnswlib
    n, d = X.shape
    idx = hnswlib.Index(space="ip", dim=d)
    cache = os.path.join(args.workdir, "hnswlib_M16_efc200.bin")
    if os.path.exists(cache):
        # A graph this script built and saved before (the build is minutes on a shared machine).
        idx.load_index(cache, max_elements=n)
        log(f"hnswlib M16 loaded from {cache}")
    else:
        idx.init_index(max_elements=n, ef_construction=200, M=16, random_seed=100)
        with bu.Meter() as m:
            idx.add_items(X, np.arange(n), num_threads=args.build_threads)
        log(f"hnswlib M16 build {m.wall:.1f}s")
        res["builds"].append(dict(lib="hnswlib", M=16, efc=200, seconds=m.wall))
        idx.save_index(cache)
    idx.set_num_threads(1)
    for f in filters:
        mask = np.zeros(n, dtype=bool)
        mask[np.asarray(f["rows"], dtype=np.int64)] = True
        allowed = mask.tolist()  # a Python list: the cheapest per-call lookup for the callable

        def keep(label, allowed=allowed):
            return allowed[label]

        for ef in args.ef:
            idx.set_ef(max(ef, k))

            def one():
                out = []
                for q in Q:
                    labels, _ = idx.knn_query(q[None, :], k=k, num_threads=1, filter=keep)
                    out.append(labels[0])
                return out

            wall, cpu, ids = timed(one)
            point(res, "hnswlib", f"ef={max(ef, k)}", f["name"], len(Q), k, f["truth"], wall, cpu, ids)


def run_lancedb(X, Q, filters, k, res, args):
    import lancedb
    import pyarrow as pa
    n, d = X.shape
    path = os.path.join(args.workdir, "lance")
    db = lancedb.connect(path)
    cols = {"id": pa.array(np.arange(n, dtype=np.int64)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), d)}
    for i, f in enumerate(filters):
        mask = np.zeros(n, dtype=bool)
        mask[np.asarray(f["rows"], dtype=np.int64)] = True
        cols[f"f{i}"] = pa.array(mask)
    table = db.create_table("base", pa.table(cols), mode="overwrite")
    settings = [("flat", None)]
    if args.lance_ivf:
        with bu.Meter() as m:
            table.create_index(metric="dot", vector_column_name="vector", index_type="IVF_PQ",
                               num_partitions=args.lance_partitions, num_sub_vectors=d // 8)
        log(f"lancedb IVF_PQ build {m.wall:.1f}s")
        res["builds"].append(dict(lib="lancedb", index="IVF_PQ", partitions=args.lance_partitions,
                                  sub_vectors=d // 8, seconds=m.wall))
        settings += [("ivf_pq", p) for p in args.nprobes]
    for i, f in enumerate(filters):
        for kind, nprobes in settings:
            def one():
                out = []
                for q in Q:
                    s = table.search(q, vector_column_name="vector").metric("dot").where(f"f{i}", prefilter=True)
                    if kind == "flat":
                        s = s.bypass_vector_index()
                    else:
                        s = s.nprobes(nprobes).refine_factor(10)
                    out.append(s.limit(k).select(["id"]).to_arrow()["id"].to_numpy())
                return out

            wall, cpu, ids = timed(one)
            setting = "flat" if kind == "flat" else f"ivf_pq nprobes={nprobes}"
            point(res, "lancedb", setting, f["name"], len(Q), k, f["truth"], wall, cpu, ids)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prefix", help="dataset prefix (PREFIX.base.fvecs, PREFIX.query.fvecs)")
    ap.add_argument("filters", help="filters.json from `cargo xtask bench filter --export DIR`")
    ap.add_argument("--out", default=None)
    ap.add_argument("--nq", type=int, default=100, help="queries timed (the first ones)")
    ap.add_argument("--libs", default="hnswlib,lancedb")
    ap.add_argument("--ef", default="16,64,256")
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--lance-ivf", action="store_true")
    ap.add_argument("--lance-partitions", type=int, default=256)
    ap.add_argument("--nprobes", default="20,64")
    ap.add_argument("--only", default="", help="run only the filters whose name contains this")
    ap.add_argument("--workdir", default="/tmp/m2m-filtered-peers")
    args = ap.parse_args()
    args.ef = [int(x) for x in args.ef.split(",")]
    args.nprobes = [int(x) for x in args.nprobes.split(",")]
    libs = args.libs.split(",")
    spec = json.load(open(args.filters))
    k = spec["k"]
    X = np.ascontiguousarray(bu.load_vectors(args.prefix + ".base.fvecs"), dtype=np.float32)
    Qall = np.ascontiguousarray(bu.load_vectors(args.prefix + ".query.fvecs"), dtype=np.float32)
    nq = min(args.nq, spec["nq"], len(Qall))
    Q = Qall[:nq]
    filters = [dict(name=f["name"], rows=f["rows"], truth=f["truth"][:nq]) for f in spec["filters"]
               if args.only in f["name"]]
    res = dict(dataset=os.path.basename(args.prefix), n=len(X), d=X.shape[1], nq=nq, k=k, args=vars(args),
               builds=[], points=[], versions={}, skipped={}, env=bu.env_info())
    os.makedirs(args.workdir, exist_ok=True)
    for lib, fn in [("hnswlib", run_hnswlib), ("lancedb", run_lancedb)]:
        if lib not in libs:
            continue
        try:
            mod = __import__(lib)
            res["versions"][lib] = getattr(mod, "__version__", "?")
        except ImportError as e:
            log(f"{lib} does not import ({e}): skipped")
            res["skipped"][lib] = str(e)
            continue
        fn(X, Q, filters, k, res, args)
        if args.out:
            bu.dump_json(args.out, res)
    if args.out:
        bu.dump_json(args.out, res)
        log("wrote", args.out)


if __name__ == "__main__":
    main()
