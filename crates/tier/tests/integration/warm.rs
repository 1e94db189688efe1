//! The warm tier and prefetch: a small byte budget serves the same rows as an unlimited one, counters
//! show what came from where, and an abandoned prefetch stops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use m2m_tier::testing::crash_batch;
use m2m_tier::{BlockStore, Db, DbOptions, MEMTABLE, Prefetch};

const DIM: usize = 32;

/// A database of 60 batches in 6 segments plus a few rows in memory, with some deletes.
fn database(dir: &std::path::Path) -> Db {
    let mut db = Db::create(dir, DIM, DbOptions::default()).unwrap();
    for n in 0..63 {
        db.ingest(&crash_batch(n, DIM)).unwrap();
        if n % 10 == 9 {
            db.flush().unwrap();
        }
    }
    db.delete(&[0, 5_001, 22_000, 61_000]).unwrap();
    db
}

/// Every row delivered by a sequential prefetch over the store: id -> mu.
fn read_all(store: &Arc<BlockStore>) -> BTreeMap<u64, Vec<f32>> {
    let mut rows = BTreeMap::new();
    for item in Prefetch::start(Arc::clone(store), store.blocks(), 3).unwrap() {
        let (_, block) = item.unwrap();
        for (i, &id) in block.ids.iter().enumerate() {
            assert!(rows.insert(id, block.mu[i * DIM..(i + 1) * DIM].to_vec()).is_none(), "id {id} twice");
        }
    }
    rows
}

#[test]
fn a_small_budget_serves_the_same_rows_as_everything_in_ram() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let snap = db.snapshot();
    let block_rows = 8;
    let plenty = Arc::new(BlockStore::new(&snap, 1 << 30, block_rows));
    let block_bytes = (block_rows * (20 + 4 * DIM)) as u64;
    let tight = Arc::new(BlockStore::new(&snap, 3 * block_bytes, block_rows));

    let expected: BTreeMap<u64, Vec<f32>> = snap
        .parts()
        .flat_map(|p| (0..p.rows()).map(move |i| (p.ids[i], p.mu[i * DIM..(i + 1) * DIM].to_vec())))
        .filter(|(id, _)| snap.is_live(*id))
        .collect();
    assert_eq!(expected.len(), db.len());
    for store in [&plenty, &tight] {
        assert_eq!(read_all(store), expected);
        assert_eq!(read_all(store), expected, "second pass");
    }
    let segment_blocks = plenty.blocks().iter().filter(|k| k.segment != MEMTABLE).count() as u64;
    // Everything fits: the second pass is all hits.
    let p = plenty.stats();
    assert_eq!((p.misses, p.hits), (segment_blocks, segment_blocks));
    // Three blocks' worth of budget: the second pass misses again, and the cache never outgrows it.
    let t = tight.stats();
    assert!(t.misses > segment_blocks, "{t:?}");
    assert!(t.resident_bytes <= t.budget_bytes, "{t:?}");
    assert!(t.cold_bytes > p.cold_bytes, "{t:?} vs {p:?}");
    // The ids of each block, read without its vectors, are those its rows come back with.
    let before = plenty.stats();
    for key in plenty.blocks() {
        assert_eq!(plenty.ids_of(key), plenty.get(key).unwrap().ids, "{key:?}");
    }
    assert!(plenty.ids_of(m2m_tier::BlockKey { segment: 999, block: 0 }).is_empty());
    assert_eq!(plenty.stats().misses, before.misses, "ids_of reads no block");
}

#[test]
fn dropping_a_prefetch_early_stops_and_joins_its_thread() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let store = Arc::new(BlockStore::new(&db.snapshot(), 1 << 20, 4));
    // A long plan: the thread would run for a long while if nothing stopped it.
    let plan: Vec<_> = std::iter::repeat_n(store.blocks(), 10_000).flatten().collect();
    let mut prefetch = Prefetch::start(Arc::clone(&store), plan, 2).unwrap();
    for _ in 0..3 {
        prefetch.next().unwrap().unwrap();
    }
    // Drop on another thread, with a watchdog: a deadlock fails the test instead of hanging it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(prefetch);
        let _ = done_tx.send(());
    });
    done_rx.recv_timeout(Duration::from_secs(10)).expect("dropping the prefetch did not return");
    // The thread stopped early: it loaded a handful of blocks, not the whole plan.
    let s = store.stats();
    assert!(s.hits + s.misses < 100, "{s:?}");
}
