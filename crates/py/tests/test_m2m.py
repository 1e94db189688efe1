"""The Python bindings: every call, every bad input, zero-copy outputs, the DataLoader with workers under
fork and spawn, determinism and resumption. Run by `cargo xtask ci` (crates/py, pytest)."""

import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import m2m

DIM = 32


def vectors(n, seed=0):
    rng = np.random.default_rng(seed)
    # Clustered rows, so that the index has structure to find.
    centres = rng.standard_normal((20, DIM)).astype(np.float32)
    rows = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return rows.astype(np.float32)


@pytest.fixture(scope="module")
def engine():
    e = m2m.create_m2m(dim=DIM, seed=7)
    e.add_splats(vectors(3000))
    e.build_index()
    return e


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    path = tmp_path_factory.mktemp("lake") / "db"
    e = m2m.create_m2m(m2m.M2MConfig(dim=DIM, data_dir=path, durable=False))
    e.add_splats(vectors(1200, seed=3))
    e.build_index()
    e.flush()
    return e, path


def test_ingest_retrieve_and_every_call(engine):
    assert len(engine) == 3000 and engine.dim == DIM
    data = vectors(3000)
    ids, scores, kappa, alpha = engine.retrieve(data[5], k=10, lod=3)
    assert kappa.shape == alpha.shape == (10,) and kappa.dtype == np.float32
    assert ids.dtype == np.uint64 and scores.dtype == np.float32 and ids.shape == (10,)
    assert ids[0] == 5 and scores[0] == pytest.approx(1.0, abs=1e-5)
    exact = engine.retrieve_batch(data[:50], k=10, lod=3).ids
    for lod, floor in [(1, 0.5), (2, 0.9)]:
        got = engine.retrieve_batch(data[:50], k=10, lod=lod).ids
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
        assert recall >= floor, (lod, recall)
    coarse = engine.retrieve_batch(data[:3], k=4, lod=0).ids
    assert coarse.shape == (3, 4)
    none = engine.retrieve_batch(np.zeros((0, DIM), np.float32)).ids
    assert none.shape == (0, 0)
    assert np.isfinite(engine.energy(data[0]))
    samples = engine.generate(8, steps=5)
    assert samples.shape == (8, DIM)
    np.testing.assert_allclose(np.linalg.norm(samples, axis=1), 1.0, atol=1e-4)
    moved = engine.generate(data[:4], steps=5)
    assert moved.shape == (4, DIM)
    stats = engine.stats()
    assert stats.splats == 3000 and stats.dim == DIM and stats.fine_clusters is not None
    # Learned kappa: at least min_kappa (1), spread by the data (not one value for every splat), finite,
    # and below max_kappa x (p - 1) for any fitted dimension p the ambient one allows (50 x (DIM - 1)).
    # Catches a build that leaves kappa at one value, or a clip that no longer holds.
    assert 1.0 <= stats.kappa_min < stats.kappa_max <= 50.0 * (DIM - 1)
    assert 0.0 <= stats.kappa_clipped < 1.0


def test_add_with_ids_and_delete():
    e = m2m.create_m2m(dim=DIM)
    e.add_splats(vectors(5, seed=4), ids=np.arange(500, 505))
    e.build_index()
    assert e.delete(np.arange(500, 505)) == 5
    ids, scores, _, _ = e.retrieve(vectors(1)[0], k=3, lod=2)
    assert ids.shape == (0,) and scores.shape == (0,), "no live splat: no hit, one row of width 0"
    ids = e.add_splats(vectors(10), ids=np.arange(100, 110), kappa=np.full(10, 3.0))
    assert list(ids) == list(range(100, 110)) and 105 in e
    assert e.delete([105, 105, 999]) == 1
    assert 105 not in e and len(e) == 9
    # Float64 and non-contiguous inputs are converted once.
    assert len(e.add_splats(np.asfortranarray(vectors(4, seed=1).astype(np.float64)))) == 4


def test_bad_input_raises_and_changes_nothing(tmp_path):
    e = m2m.create_m2m(dim=DIM)
    e.add_splats(vectors(20))
    bad = vectors(5)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="(?i)nan|finite"):
        e.add_splats(bad)
    with pytest.raises(ValueError, match="columns"):
        e.add_splats(np.zeros((3, DIM + 1), np.float32))
    with pytest.raises(ValueError):
        e.add_splats(np.zeros((0, DIM), np.float32))
    with pytest.raises(ValueError):
        e.add_splats(vectors(2), kappa=np.array([1.0, -2.0]))
    with pytest.raises(ValueError):
        e.add_splats(vectors(2), ids=np.array([0, 1]))  # ids already present
    with pytest.raises(ValueError, match=">= 0"):
        e.add_splats(vectors(1), ids=[-1])
    with pytest.raises(ValueError, match="integers"):
        e.add_splats(vectors(1), ids=[0.5])
    with pytest.raises(ValueError, match="at least 1"):
        e.generate(0)
    assert len(e) == 20, "nothing of a refused batch is kept"
    with pytest.raises(RuntimeError, match="index"):
        e.retrieve(vectors(1)[0], lod=2)
    with pytest.raises(ValueError, match="lod"):
        e.retrieve(vectors(1)[0], lod=7)
    with pytest.raises(ValueError, match="unknown"):
        m2m.M2MConfig(dimension=3)
    with pytest.raises(ValueError):
        m2m.create_m2m(dim=0)
    with pytest.raises(OSError):
        m2m.open(tmp_path / "missing")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "m2m-config.blob").write_bytes(b"garbage")
    with pytest.raises(OSError):
        m2m.open(tmp_path / "corrupt")


def test_read_only_beside_the_writer(stored):
    writer, path = stored
    reader = m2m.open(path, read_only=True)
    assert reader.read_only and len(reader) == len(writer)
    q = vectors(3, seed=3)
    np.testing.assert_array_equal(reader.retrieve_batch(q).ids, writer.retrieve_batch(q).ids)
    with pytest.raises(RuntimeError, match="read-only"):
        reader.add_splats(vectors(1))
    with pytest.raises(OSError):
        m2m.open(path)  # the writer holds the lock


def test_the_lake_reads_the_tiers_or_ram(stored):
    writer, _ = stored
    ids = {}
    for source in ["tiers", "memory"]:
        batches = list(writer._engine.loader(batch_size=100, seed=2, source=source))
        ids[source] = sorted(i for b in batches for i in b["ids"].tolist())
    assert ids["tiers"] == ids["memory"] == list(range(1200))
    with pytest.raises(ValueError, match="source"):
        writer._engine.loader(source="disk")
    e = m2m.create_m2m(dim=DIM)
    e.add_splats(vectors(10))
    with pytest.raises(ValueError, match="data directory"):
        e._engine.loader(source="tiers")


def test_long_calls_release_the_gil(engine):
    # While a native call runs in a thread, this thread keeps running Python. Were the GIL held, it
    # could run only between switch intervals (5 ms each) before the call entered Rust.
    started = threading.Event()
    queries = vectors(40000, seed=9)

    def work():
        started.set()
        engine.retrieve_batch(queries, k=10, lod=3)

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    begin, spins = time.perf_counter(), 0
    while t.is_alive():
        spins += 1
    elapsed = time.perf_counter() - begin
    t.join()
    assert elapsed > 0.05, f"the call was too short to tell ({elapsed:.3f} s)"
    assert spins > 100_000, f"{spins} iterations in {elapsed:.3f} s"


def test_the_torch_example_trains():
    pytest.importorskip("torch")
    script = Path(__file__).resolve().parents[3] / "examples" / "python" / "train_torch.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mean loss of the first 10" in out.stdout


def test_without_torch_the_dataset_yields_numpy_batches():
    # torch blocked from import in a fresh interpreter: the same dataset, as numpy dicts.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, m2m\n"
        "e = m2m.create_m2m(dim=8)\n"
        "e.add_splats(np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32))\n"
        "batches = list(e.export_to_dataloader(batch_size=64, seed=1))\n"
        "assert all(isinstance(b['mu'], np.ndarray) and b['ids'].dtype == np.uint64 for b in batches)\n"
        "assert sorted(i for b in batches for i in b['ids'].tolist()) == list(range(300))\n"
        "print('numpy batches', len(batches))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "numpy batches 5" in out.stdout


def root_base(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a.base


def test_outputs_are_numpy_views_of_rust_buffers(engine):
    batch = next(iter(engine._engine.loader(batch_size=64)))
    for name in ["ids", "mu", "kappa", "alpha", "weights", "generated"]:
        arr = batch[name]
        assert not arr.flags.owndata, name
        assert type(root_base(arr)).__name__ == "PySliceContainer", (name, type(root_base(arr)))
    assert batch["mu"].shape == (64, DIM) and batch["mu"].flags.c_contiguous
    ids = engine.retrieve_batch(vectors(2), k=3).ids
    assert not ids.flags.owndata


torch = pytest.importorskip("torch")


def epoch_ids(ds, workers, context=None):
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context=context)
    return [b["ids"].tolist() for b in loader]


def test_torch_batches_shards_and_zero_copy(engine):
    ds = engine.export_to_dataloader(batch_size=100, importance_sampling=True, generate_samples=True, seed=3)
    batches = list(ds)
    assert len(batches) == 30
    b = batches[0]
    assert isinstance(b["mu"], torch.Tensor) and b["mu"].shape == (200, DIM)
    assert int(b["generated"].sum()) == 100
    # Two ranks: disjoint, together every splat once.
    seen = []
    for rank in range(2):
        seen += [i for b in engine.export_to_dataloader(batch_size=128, rank=rank, world_size=2) for i in b["ids"].tolist()]
    assert sorted(seen) == list(range(3000))


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_cover_the_epoch_deterministically(stored, context):
    writer, _ = stored
    ds = writer.export_to_dataloader(batch_size=50, seed=11)
    single = epoch_ids(ds, 0)
    two = epoch_ids(ds, 2, context)
    assert sorted(sum(single, [])) == sorted(range(1200))
    assert two == single, "the same batches in the same order whatever the number of workers"
    assert epoch_ids(ds, 3, context) == single


def test_workers_with_importance_sampling_open_the_engine(stored):
    writer, _ = stored
    ds = writer.export_to_dataloader(batch_size=100, seed=5, importance_sampling=True, generate_samples=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert sum(int((~b["generated"]).sum()) for b in batches) == 1200
    assert all(int(b["generated"].sum()) * 2 == len(b["ids"]) for b in batches)
    assert [b["ids"].tolist() for b in batches] == [b["ids"].tolist() for b in loader]


def test_the_lake_reader_streams_without_the_engine(stored):
    writer, path = stored
    reader = m2m._m2m.Reader.open(str(path))
    assert len(reader) == len(writer)
    got = [b["ids"].tolist() for b in reader.loader(batch_size=100, seed=8)]
    want = [b["ids"].tolist() for b in writer._engine.loader(batch_size=100, seed=8, source="tiers")]
    assert got == want
    with pytest.raises(ValueError, match="SOC"):
        reader.loader(importance_sampling=True)
    with pytest.raises(ValueError, match="unknown loader option"):
        reader.loader(batchsize=3)


def test_workers_need_a_directory(engine):
    ds = engine.export_to_dataloader(batch_size=100)
    with pytest.raises(RuntimeError, match="data_dir"):
        epoch_ids(ds, 2, "fork")


def test_resumes_from_its_state(stored):
    writer, _ = stored
    full = epoch_ids(writer.export_to_dataloader(batch_size=100, seed=4, epochs=2), 0)
    ds = writer.export_to_dataloader(batch_size=100, seed=4, epochs=2)
    it = iter(ds)
    head = [next(it)["ids"].tolist() for _ in range(5)]
    state = ds.state_dict()
    assert state == {"epoch": 0, "batches": 5} and head == full[:5]
    resumed = writer.export_to_dataloader(batch_size=100, seed=4, epochs=2)
    resumed.load_state_dict(state)
    assert epoch_ids(resumed, 0) == full[5:]
    # With two workers: the loop counts what it received and resumes from that.
    full2 = epoch_ids(writer.export_to_dataloader(batch_size=100, seed=4, epochs=2), 2, "fork")
    resumed = writer.export_to_dataloader(batch_size=100, seed=4, epochs=2)
    resumed.load_state_dict({"batches": 6})
    assert full2 == full
    assert epoch_ids(resumed, 2, "fork") == full2[6:]
    resumed.load_state_dict({"batches": 7})
    assert epoch_ids(resumed, 3, "fork") == full[7:]


if __name__ == "__main__":  # pragma: no cover
    multiprocessing.freeze_support()


def test_compact_frees_deleted_ids_and_keeps_the_index(tmp_path):
    # Mutations caught: compact not bound (AttributeError), deleted ids still refused after it, the index
    # lost by it (retrieve after a reopen fails), a re-added id served with its old vector.
    path = tmp_path / "db"
    e = m2m.create_m2m(m2m.M2MConfig(dim=DIM, data_dir=path, durable=False))
    data = vectors(600, seed=11)
    ids = e.add_splats(data)
    e.build_index()
    assert e.delete(ids[:10]) == 10
    with pytest.raises(m2m.InvalidInputError):
        e.add_splats(data[20:21], ids=np.array([ids[0]], np.uint64))
    e.compact()
    e.add_splats(data[20:21], ids=np.array([ids[0]], np.uint64))
    assert len(e) == 591
    del e
    reopened = m2m.open(path)
    got = reopened.retrieve(data[20], k=2, lod=3).ids
    assert set(got) == {ids[0], ids[20]}


def test_dataset_feedback_steers_the_next_epoch_and_end_epoch_moves_on():
    # Losses on a fixed set of rows raise their share of the next epoch's importance draws; a worker's
    # copy of the dataset (pickled: no engine) refuses feedback. Catches feedback not forwarded to the
    # engine (the share stays put), end_epoch not advancing the epoch, and a worker silently dropping
    # losses.
    import pickle

    # The rows of two of 20 clusters are the hard ones (the controller's sites are clusters).
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((20, DIM)).astype(np.float32)
    which = rng.integers(0, 20, 3000)
    rows = centres[which] + 0.3 * rng.standard_normal((3000, DIM)).astype(np.float32)
    e = m2m.create_m2m(dim=DIM, seed=7)
    e.add_splats(rows.astype(np.float32))
    e.build_index()
    ds = e.export_to_dataloader(batch_size=100, seed=5, importance_sampling=True)
    hard = {i for i in range(3000) if which[i] < 2}

    def share(batches):
        ids = [i for b in batches for i in np.asarray(b["ids"]).astype(np.uint64).tolist()]
        return sum(i in hard for i in ids) / len(ids)

    first = list(ds)
    before = share(first)
    for b in first:
        ids = np.asarray(b["ids"]).astype(np.uint64)
        losses = np.array([5.0 if int(i) in hard else 0.0 for i in ids], dtype=np.float32)
        assert ds.feedback(b["ids"], losses) >= 0  # the topplings it caused
    ds.end_epoch()
    assert ds.state_dict() == {"epoch": 1, "batches": 0}
    after = share(list(ds))
    assert after > 1.5 * before, (before, after)

    worker_copy = pickle.loads(pickle.dumps(ds))
    with pytest.raises(m2m.errors.StateError):
        worker_copy.feedback(np.array([1], dtype=np.uint64), np.array([1.0], dtype=np.float32))
    with pytest.raises(m2m.errors.StateError):
        worker_copy.end_epoch()
