"""Batches per second into torch: M2M's data lake (one epoch, shuffled, batches of 256, 2 DataLoader
workers and in-process) against iterating a numpy memmap of the same vectors in the same shuffled order
(torch.from_numpy of each gathered batch). Prints one line per case.

    target/py-venv/bin/python crates/py/bench/bench_loader.py [ROWS] [DIM]
"""

import sys
import tempfile
import time

import numpy as np
import torch

import m2m


def rate(loader):
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += 1
    return n / (time.perf_counter() - start), n


def main():
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    dim = int(sys.argv[2]) if len(sys.argv) > 2 else 384
    data = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        mm = np.lib.format.open_memmap(f"{tmp}/v.npy", mode="w+", dtype=np.float32, shape=data.shape)
        mm[:] = data
        mm.flush()
        del mm
        engine = m2m.create_m2m(dim=dim, data_dir=f"{tmp}/lake", durable=False)
        engine.add_splats(data)
        engine.flush()
        mm = np.load(f"{tmp}/v.npy", mmap_mode="r")

        class Memmap(torch.utils.data.IterableDataset):
            def __iter__(self):
                order = np.random.default_rng(0).permutation(rows)
                for s in range(0, rows, 256):
                    idx = np.sort(order[s : s + 256])
                    yield {"mu": torch.from_numpy(mm[idx]), "ids": torch.from_numpy(idx)}

        r, n = rate(torch.utils.data.DataLoader(Memmap(), batch_size=None, num_workers=0))
        print(f"numpy memmap, in-process: {r:.0f} batches/s ({n} batches of 256 x {dim})")
        for workers in [0, 2]:
            ds = engine.export_to_dataloader(batch_size=256)
            r, n = rate(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers))
            print(f"m2m data lake, num_workers={workers}: {r:.0f} batches/s ({n} batches of 256 x {dim})")


if __name__ == "__main__":
    main()
