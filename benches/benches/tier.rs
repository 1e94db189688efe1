//! The tier: ingest through the write-ahead log beside a plain sequential write + fdatasync of the same
//! bytes on the same disk, recovery speed of a log, and sequential streaming through the block store from
//! a full warm cache and from the cold tier (mapped segments; the files live under the target directory,
//! and the page cache is not dropped, so "cold" means not in the warm cache).
//!
//! Run with `cargo xtask bench tier`.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use m2m_splat::{Batch, SplatSet};
use m2m_tier::{BlockStore, Db, DbOptions, Durability, Prefetch, Wal};

const ROWS: usize = 1_000;
const DIM: usize = 384;

fn batch() -> SplatSet {
    let vectors: Vec<f32> = (0..ROWS * DIM).map(|i| 1.0 + (i % 97) as f32).collect();
    let mut set = SplatSet::new(DIM).expect("dim");
    set.append(Batch::new(&vectors, DIM)).expect("batch");
    set
}

fn wal(c: &mut Criterion) {
    let set = batch();
    // A record holds ids (8 B), norm, kappa, alpha (4 B each) and mu per row, plus 24 bytes of headers.
    let record = 24 + ROWS * (20 + 4 * DIM);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let mut g = c.benchmark_group("tier_ingest_1000x384");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(30);
    for (name, durability) in [("wal_fsync", Durability::Fsync), ("wal_nosync", Durability::NoSync)] {
        let mut wal = Wal::create(dir.path().join(format!("{name}.wal")), DIM, durability).expect("wal");
        g.bench_function(name, |b| b.iter(|| wal.append(&set).expect("append")));
    }
    let bytes = vec![7u8; record];
    let mut file = File::create(dir.path().join("plain.bin")).expect("file");
    g.bench_function("plain_write_fdatasync_same_bytes", |b| {
        b.iter(|| {
            file.write_all(&bytes).expect("write");
            file.sync_data().expect("sync");
        })
    });
    g.finish();
}

const BATCHES: usize = 64;

fn recovery_and_streaming(c: &mut Criterion) {
    let set = batch();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    // A log of 64 batches of 1,000 x 384 (about 100 MB).
    let path = dir.path().join("recover.wal");
    let mut wal = Wal::create(&path, DIM, Durability::NoSync).expect("wal");
    for _ in 0..BATCHES {
        wal.append(&set).expect("append");
    }
    wal.sync().expect("sync");
    let bytes = wal.len_bytes();
    drop(wal);
    let mut g = c.benchmark_group("tier_read");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("wal_recovery_100mb", |b| b.iter(|| Wal::read(&path).expect("read").len()));

    // The same rows as segments of a database, streamed in blocks of 1,024 rows.
    let db_dir = dir.path().join("db");
    let mut db = Db::create(&db_dir, DIM, DbOptions { durability: Durability::NoSync }).expect("db");
    for n in 0..BATCHES {
        let ids: Vec<u64> = (0..ROWS as u64).map(|r| (n * ROWS) as u64 + r).collect();
        let mut s = SplatSet::new(DIM).expect("dim");
        let raw: Vec<f32> = set.mu().to_vec();
        s.append(Batch::new(&raw, DIM).ids(&ids)).expect("batch");
        db.ingest(&s).expect("ingest");
        if n % 16 == 15 {
            db.flush().expect("flush");
        }
    }
    let snap = db.snapshot();
    let data: u64 = snap.parts().map(|p| (p.rows() * (20 + 4 * DIM)) as u64).sum();
    g.throughput(Throughput::Bytes(data));
    // The consumer reads every value, as a training loop would.
    let stream = |store: &Arc<BlockStore>| {
        let mut sum = 0.0f32;
        for item in Prefetch::start(Arc::clone(store), store.blocks(), 4).expect("prefetch") {
            sum += item.expect("block").1.mu.iter().sum::<f32>();
        }
        std::hint::black_box(sum)
    };
    let warm = Arc::new(BlockStore::new(&snap, 1 << 30, 1024));
    stream(&warm);
    g.bench_function("stream_warm_cache", |b| b.iter(|| stream(&warm)));
    g.bench_function("stream_cold_tier_page_cache_warm", |b| {
        b.iter(|| stream(&Arc::new(BlockStore::new(&snap, 1 << 30, 1024))))
    });
    g.finish();
}

criterion_group!(benches, wal, recovery_and_streaming);
criterion_main!(benches);
