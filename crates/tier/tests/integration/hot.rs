//! The hot tier without a device (`RamHot`): pinned blocks stay and are refused beyond the budget,
//! evictable ones never push it over, and prefetch stages blocks cold -> warm -> hot.

use std::sync::Arc;

use m2m_tier::testing::crash_batch;
use m2m_tier::{BlockKey, BlockStore, Db, DbOptions, Error, HotKey, HotTier, Prefetch, RamHot, Residency};

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8)).collect()
}

#[test]
fn pinned_blocks_stay_and_evictable_ones_respect_the_budget() {
    let hot = RamHot::new(10_000);
    let centroids: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    let c = hot.upload(HotKey::Centroids, bytemuck::cast_slice(&centroids), Residency::Pinned).unwrap();
    assert_eq!(c.cast::<f32>().unwrap(), centroids.as_slice());
    assert_eq!(c.as_bytes().as_ptr() as usize % 64, 0, "hot blocks are 64-byte aligned");
    hot.upload(HotKey::Codes { cluster: 0 }, &bytes(1, 4000), Residency::Pinned).unwrap();
    let refused = hot.upload(HotKey::Codes { cluster: 1 }, &bytes(2, 4000), Residency::Pinned);
    assert!(matches!(refused, Err(Error::OverBudget { bytes: 12_000, budget: 10_000, .. })), "{refused:?}");
    assert!(hot.get(HotKey::Codes { cluster: 1 }).is_none());

    // 30 evictable blocks of 500 bytes: only what the 2,000 unpinned bytes hold can stay.
    for b in 0..30u32 {
        let key = HotKey::Vectors(BlockKey { segment: 0, block: b });
        let handle = hot.upload(key, &bytes(b as u8, 500), Residency::Evictable).unwrap();
        assert_eq!(handle.as_bytes(), bytes(b as u8, 500).as_slice());
        let s = hot.stats();
        assert!(s.resident_bytes <= s.budget_bytes, "{s:?}");
        assert_eq!(s.pinned_bytes, 8000);
    }
    let kept = (0..30u32).filter(|&b| hot.get(HotKey::Vectors(BlockKey { segment: 0, block: b })).is_some()).count();
    assert!((1..=4).contains(&kept), "{kept} evictable blocks kept in 2,000 bytes");
    assert_eq!(hot.get(HotKey::Codes { cluster: 0 }).unwrap().as_bytes(), bytes(1, 4000).as_slice());
    assert!(hot.get(HotKey::Centroids).is_some(), "pinned blocks are never evicted");

    // Unpinning frees the budget for another pinned block; replacing a key does not count it twice.
    assert!(hot.remove(HotKey::Codes { cluster: 0 }));
    assert!(!hot.remove(HotKey::Codes { cluster: 0 }));
    hot.upload(HotKey::Codes { cluster: 1 }, &bytes(2, 4000), Residency::Pinned).unwrap();
    hot.upload(HotKey::Codes { cluster: 1 }, &bytes(3, 5000), Residency::Pinned).unwrap();
    let s = hot.stats();
    assert_eq!(s.pinned_bytes, 9000);
    assert!(s.resident_bytes <= s.budget_bytes);
    assert_eq!(s.uploads, 34, "the refused upload is not counted");
    assert!(s.hits >= 4 && s.misses >= 1, "{s:?}");
}

#[test]
fn prefetch_stages_blocks_cold_to_warm_to_hot() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 16;
    let mut db = Db::create(dir.path(), dim, DbOptions::default()).unwrap();
    for n in 0..40 {
        db.ingest(&crash_batch(n, dim)).unwrap();
        if n % 10 == 9 {
            db.flush().unwrap();
        }
    }
    let store = Arc::new(BlockStore::new(&db.snapshot(), 1 << 20, 4));
    let hot = Arc::new(RamHot::new(1 << 20));
    let plan = store.blocks();
    let mut seen = 0;
    for item in Prefetch::start_hot(Arc::clone(&store), plan.clone(), 2, Arc::clone(&hot)).unwrap() {
        let (key, handle) = item.unwrap();
        assert_eq!(key, plan[seen]);
        let block = store.get(key).unwrap();
        assert_eq!(handle.cast::<f32>().unwrap(), block.mu.as_slice(), "block {key:?}");
        assert!(hot.get(HotKey::Vectors(key)).is_some(), "block {key:?} is resident when handed over");
        seen += 1;
    }
    assert_eq!(seen, plan.len());
    assert_eq!(hot.stats().uploads, plan.len() as u64);

    // Dropped after one block: the thread stops (the test would hang otherwise).
    let mut early = Prefetch::start_hot(Arc::clone(&store), plan, 1, hot).unwrap();
    assert!(early.next().unwrap().is_ok());
    drop(early);
}
