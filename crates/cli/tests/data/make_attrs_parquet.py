"""Writes attrs.parquet, the CLI test's Parquet attributes (pyarrow, snappy: what users' tools write).

    python3 make_attrs_parquet.py     # needs pyarrow

1,000 rows, ids 0..999: label = id % 4, tenant "t{id % 2}", score = id / 10 (null for every 7th row),
flag = id is even, ts = id seconds past 2026-01-01 (microseconds, UTC), tags ["x", "t{id % 3}"],
blob = 4 bytes (id, little-endian u32).
"""
import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq

n = 1000
t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
table = pa.table(
    {
        "id": pa.array(range(n), pa.int64()),
        "label": pa.array([i % 4 for i in range(n)], pa.int32()),
        "tenant": pa.array([f"t{i % 2}" for i in range(n)], pa.string()),
        "score": pa.array([None if i % 7 == 0 else i / 10 for i in range(n)], pa.float64()),
        "flag": pa.array([i % 2 == 0 for i in range(n)], pa.bool_()),
        "ts": pa.array([t0 + dt.timedelta(seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC")),
        "tags": pa.array([["x", f"t{i % 3}"] for i in range(n)], pa.list_(pa.string())),
        "blob": pa.array([i.to_bytes(4, "little") for i in range(n)], pa.binary()),
    }
)
pq.write_table(table, os.path.join(os.path.dirname(os.path.abspath(__file__)), "attrs.parquet"), compression="snappy")
