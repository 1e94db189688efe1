//! Data larger than the warm budget: streaming every block through a store whose budget is an eighth of
//! the data (segments' pages dropped from memory first) gives the same results as reading everything in
//! place. The size is `M2M_TIER_SCALE_MB` megabytes of splats (default 48; the tier issue's example of a
//! 2 GB cold set under a 256 MB budget is `M2M_TIER_SCALE_MB=2048`).

use std::collections::BTreeSet;
use std::sync::Arc;

use m2m_splat::{Batch, SplatSet};
use m2m_tier::{BlockStore, ColumnsRef, Db, DbOptions, Durability, Prefetch};

const DIM: usize = 384;
const BATCH: usize = 4096;
const K: usize = 10;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn vector(seed: u64, out: &mut [f32]) {
    for (j, v) in out.iter_mut().enumerate() {
        *v = (splitmix(seed.wrapping_mul(1000).wrapping_add(j as u64)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
    }
}

/// What a query pass computes: for each query the top K (score bits, id), plus the number of rows and
/// the sum of their ids.
#[derive(Debug, PartialEq)]
struct Results {
    top: Vec<BTreeSet<(u32, u64)>>,
    rows: u64,
    id_sum: u64,
}

impl Results {
    fn new(queries: usize) -> Results {
        Results { top: vec![BTreeSet::new(); queries], rows: 0, id_sum: 0 }
    }

    fn scan(&mut self, queries: &[f32], c: ColumnsRef<'_>, live: impl Fn(u64) -> bool) {
        for (i, &id) in c.ids.iter().enumerate().filter(|(_, id)| live(**id)) {
            self.rows += 1;
            self.id_sum = self.id_sum.wrapping_add(id);
            let row = &c.mu[i * DIM..(i + 1) * DIM];
            for (q, top) in queries.chunks_exact(DIM).zip(&mut self.top) {
                let s: f32 = q.iter().zip(row).map(|(a, b)| a * b).sum();
                // Positive scores order like their bits; shift so that every score is positive.
                top.insert(((s + 2.0).to_bits(), id));
                if top.len() > K {
                    top.pop_first();
                }
            }
        }
    }
}

#[test]
fn a_warm_budget_far_below_the_data_gives_the_same_results_as_all_in_ram() {
    let mb: u64 = std::env::var("M2M_TIER_SCALE_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(48);
    let row_bytes = (20 + 4 * DIM) as u64;
    let rows = (mb << 20) / row_bytes;
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions { durability: Durability::NoSync }).unwrap();
    let mut raw = vec![0f32; BATCH * DIM];
    let mut next = 0u64;
    while next < rows {
        let n = BATCH.min((rows - next) as usize);
        raw[..n * DIM].chunks_exact_mut(DIM).enumerate().for_each(|(r, v)| vector(next + r as u64, v));
        let ids: Vec<u64> = (next..next + n as u64).collect();
        let mut set = SplatSet::new(DIM).unwrap();
        set.append(Batch::new(&raw[..n * DIM], DIM).ids(&ids)).unwrap();
        db.ingest(&set).unwrap();
        next += n as u64;
        // Segments of about an eighth of the data, or 256 MB.
        if db.snapshot().memtable.rows() as u64 * row_bytes >= ((mb << 20) / 8).min(256 << 20) {
            db.flush().unwrap();
        }
    }
    db.flush().unwrap();
    db.delete(&[3, 5, rows / 2]).unwrap();
    let snap = db.snapshot();
    assert!(snap.segments.len() >= 8, "{} segments", snap.segments.len());
    let mut queries = vec![0f32; 4 * DIM];
    queries.chunks_exact_mut(DIM).enumerate().for_each(|(q, v)| vector(u64::MAX / 2 + q as u64, v));

    // Everything in place: the mapped segments.
    let mut in_place = Results::new(4);
    snap.parts().for_each(|p| in_place.scan(&queries, p, |id| snap.is_live(id)));
    assert_eq!(in_place.rows, rows - 3);

    // Through the warm tier with an eighth of the data as budget, cold pages dropped first, twice.
    let budget = (mb << 20) / 8;
    let store = Arc::new(BlockStore::new(&snap, budget, 1024));
    for pass in 0..2 {
        snap.segments.iter().for_each(|s| s.release_pages().unwrap());
        let mut streamed = Results::new(4);
        let mut prefetch = Prefetch::start(Arc::clone(&store), store.blocks(), 4).unwrap();
        for item in prefetch.by_ref() {
            let (_, block) = item.unwrap();
            streamed.scan(&queries, block.view(), |_| true);
            let s = store.stats();
            assert!(s.resident_bytes <= s.budget_bytes, "pass {pass}: {s:?}");
        }
        assert_eq!(streamed, in_place, "pass {pass}");
    }
    let s = store.stats();
    let blocks = store.blocks().len() as u64;
    // The budget holds an eighth of the blocks: the second pass misses most of them again.
    assert!(s.misses > blocks + blocks / 2, "{s:?} over {blocks} blocks");
}
