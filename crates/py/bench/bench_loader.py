"""Batches per second into torch: M2M's data lake (shuffled epochs, batches of 256, from RAM or from the
tiers, in-process and with 2 DataLoader workers) against iterating a numpy memmap of the same vectors in
a shuffled order (torch.from_numpy of each gathered batch, sharded the same way). One line per case.

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

        path = f"{tmp}/v.npy"

        class Memmap(torch.utils.data.IterableDataset):
            def __init__(self, epochs):
                self.epochs = epochs

            def __iter__(self):
                info = torch.utils.data.get_worker_info()
                wid, workers = (0, 1) if info is None else (info.id, info.num_workers)
                vectors = np.load(path, mmap_mode="r")
                for epoch in range(self.epochs):
                    order = np.random.default_rng(epoch).permutation(rows)
                    for b, s in enumerate(range(0, rows, 256)):
                        if b % workers == wid:
                            idx = np.sort(order[s : s + 256])
                            yield {"mu": torch.from_numpy(vectors[idx]), "ids": torch.from_numpy(idx)}

        for workers, epochs in [(0, 1), (0, 10), (2, 1), (2, 10)]:
            r, n = rate(torch.utils.data.DataLoader(Memmap(epochs), batch_size=None, num_workers=workers))
            print(f"numpy memmap, num_workers={workers}, {epochs} epoch(s): {r:.0f} batches/s ({n} batches of 256 x {dim})")
        for source in ["memory", "tiers"]:
            for workers, epochs in [(0, 1), (0, 10), (2, 1), (2, 10)]:
                ds = engine.export_to_dataloader(batch_size=256, epochs=epochs, source=source)
                r, n = rate(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers))
                print(
                    f"m2m data lake ({source}), num_workers={workers}, {epochs} epoch(s): {r:.0f} batches/s "
                    f"({n} batches of 256 x {dim})"
                )


if __name__ == "__main__":
    main()
