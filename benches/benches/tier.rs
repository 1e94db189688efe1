//! The tier: durable ingest through the write-ahead log beside a plain sequential write + fdatasync of
//! the same bytes on the same disk; non-durable ingest of a 100,000-splat burst (what the page cache
//! absorbs) and sustained (bounded by the disk's write speed once the kernel throttles dirty pages);
//! recovery speed of a log; streaming every block through the block store from a full warm cache, from
//! the mapped segments with their pages in the page cache, and cold (every segment's pages dropped with
//! `Segment::release_pages` first), beside a plain memory copy of the same bytes (this machine's memory
//! bandwidth). After the criterion groups it prints prefetch hit rates for a sequential epoch and for a
//! query mix.
//!
//! `ingest_attributes`: the in-memory engine's `add_splats_with_attributes` (a label, a keyword, an
//! integer and tags per row; issue 19's target is 500k rows/s) beside `add_splats` of the same vectors.
//!
//! Run with `cargo xtask bench tier`.

#![allow(clippy::print_stdout, reason = "the hit rates are reported on the terminal after criterion's output")]

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use m2m_splat::{Batch, SplatSet};
use m2m_tier::{BlockKey, BlockStore, Db, DbOptions, Durability, Prefetch, Snapshot, Wal};

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
    for (name, durability) in [("wal_fsync", Durability::Fsync), ("wal_nosync_sustained", Durability::NoSync)] {
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

    // A burst of 100 batches into a fresh database, without fsync: log append, id checks and the
    // in-memory table. Setup (create) and teardown (drop, remove) are outside the timing.
    let batches: Vec<SplatSet> = (0..100).map(|n| with_ids(&set, n * ROWS)).collect();
    let mut g = c.benchmark_group("tier_ingest_nosync_burst_100x1000x384");
    g.throughput(Throughput::Elements((100 * ROWS) as u64));
    g.sample_size(10);
    g.bench_function("db_ingest", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
                let db = Db::create(dir.path(), DIM, DbOptions { durability: Durability::NoSync }).expect("db");
                (dir, db)
            },
            |(dir, mut db)| {
                batches.iter().for_each(|s| db.ingest(s).expect("ingest"));
                (dir, db)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// `set`'s rows with ids `first..`.
fn with_ids(set: &SplatSet, first: usize) -> SplatSet {
    let ids: Vec<u64> = (first as u64..(first + set.len()) as u64).collect();
    let mut s = SplatSet::new(DIM).expect("dim");
    s.append(Batch::new(set.mu(), DIM).ids(&ids)).expect("batch");
    s
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
        db.ingest(&with_ids(&set, n * ROWS)).expect("ingest");
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
    g.bench_function("stream_mapped_segments_page_cache_warm", |b| {
        b.iter(|| stream(&Arc::new(BlockStore::new(&snap, 1 << 30, 1024))))
    });
    g.bench_function("stream_cold_page_cache_dropped", |b| {
        b.iter_batched(
            || {
                snap.segments.iter().for_each(|s| s.release_pages().expect("release"));
                Arc::new(BlockStore::new(&snap, 1 << 30, 1024))
            },
            |store| stream(&store),
            BatchSize::PerIteration,
        )
    });
    // The reference: copying the same number of bytes in memory.
    let from = vec![1u8; data as usize];
    let mut to = vec![0u8; data as usize];
    g.bench_function("memcpy_same_bytes", |b| {
        b.iter(|| {
            to.copy_from_slice(std::hint::black_box(&from));
            std::hint::black_box(&to);
        })
    });
    g.finish();
    hit_rates(&snap);
}

/// Prints how often the consumer found its next block ready: for a sequential epoch from cold (pages
/// dropped) with a consumer that only reads every value and with one that scores 256 query vectors
/// against every row (a compute-bound consumer, like a training step); and for a query mix (each "query"
/// reads 8 blocks drawn with a skew towards popular ones, through a warm budget of a quarter of the data).
fn hit_rates(snap: &Snapshot) {
    let queries: Vec<f32> = (0..256 * DIM).map(|i| ((i * 7919) % 101) as f32 / 101.0 - 0.5).collect();
    let consume = |p: &mut Prefetch, work: usize| {
        let mut sum = 0.0f32;
        let mut scores = vec![0f32; work * 1024];
        for item in p {
            let block = item.expect("block").1;
            sum += block.mu.iter().sum::<f32>();
            if work > 0 {
                let out = &mut scores[..work * block.rows()];
                m2m_index::kernels::dots_many(&queries[..work * DIM], &block.mu, DIM, out);
                sum += out[0];
            }
        }
        std::hint::black_box(sum);
    };
    let data: u64 = snap.parts().map(|p| (p.rows() * (20 + 4 * DIM)) as u64).sum();
    println!();
    for work in [0, 256] {
        snap.segments.iter().for_each(|s| s.release_pages().expect("release"));
        let store = Arc::new(BlockStore::new(snap, 1 << 30, 1024));
        let start = std::time::Instant::now();
        let mut epoch = Prefetch::start(Arc::clone(&store), store.blocks(), 4).expect("prefetch");
        consume(&mut epoch, work);
        let e = epoch.stats();
        println!(
            "prefetch, sequential epoch from cold, consumer scoring {work} queries per row: hit rate {:.3} \
             ({} blocks, {:.2} GB/s)",
            e.hit_rate(),
            e.ready + e.waited,
            data as f64 / start.elapsed().as_secs_f64() / 1e9,
        );
    }

    let store = Arc::new(BlockStore::new(snap, data / 4, 1024));
    let blocks: Vec<BlockKey> = store.blocks();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut plan = Vec::new();
    for _ in 0..2_000 * 8 {
        // xorshift, then a squared uniform: low block numbers are drawn far more often.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let u = (state >> 11) as f64 / (1u64 << 53) as f64;
        plan.push(blocks[((u * u) * blocks.len() as f64) as usize]);
    }
    let mut mix = Prefetch::start(Arc::clone(&store), plan, 8).expect("prefetch");
    consume(&mut mix, 0);
    let q = mix.stats();
    let w = store.stats();
    println!(
        "prefetch, query mix ({} block reads, skewed, warm budget 1/4 of the data): hit rate {:.3}, warm cache \
         hit rate {:.3}",
        q.ready + q.waited,
        q.hit_rate(),
        w.hits as f64 / (w.hits + w.misses).max(1) as f64,
    );
}

/// Rows per measured add in `ingest_attributes`.
const ATTR_ROWS: usize = 50_000;

fn ingest_attributes(c: &mut Criterion) {
    use m2m::{AttrBatch, Column, M2mConfig};
    let vectors: Vec<f32> = (0..ATTR_ROWS * DIM).map(|i| 1.0 + (i % 97) as f32).collect();
    let attrs = AttrBatch::new(ATTR_ROWS)
        .with("label", Column::Int((0..ATTR_ROWS).map(|i| Some((i % 10) as i64)).collect()))
        .with("tenant", Column::Keyword((0..ATTR_ROWS).map(|i| Some(format!("tenant{}", i % 100))).collect()))
        .with("t", Column::Int((0..ATTR_ROWS).map(|i| Some(i as i64)).collect()))
        .with("tags", Column::Tags((0..ATTR_ROWS).map(|i| Some(vec![format!("tag{}", i % 7)])).collect()));
    let engine = || m2m::create_m2m(M2mConfig::default().dim(DIM)).expect("engine");
    let mut g = c.benchmark_group("ingest_attributes_50000x384");
    g.throughput(Throughput::Elements(ATTR_ROWS as u64));
    g.sample_size(10);
    // The engine is returned, so that criterion drops it (77 MB of rows unmapped) outside the timing.
    g.bench_function("in_memory_with_attributes", |b| {
        b.iter_batched(
            engine,
            |mut e| {
                let ids = e.add_splats_with_attributes(&vectors, &attrs).expect("add");
                (e, ids)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("in_memory_without", |b| {
        b.iter_batched(
            engine,
            |mut e| {
                let ids = e.add_splats(&vectors).expect("add");
                (e, ids)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, wal, recovery_and_streaming, ingest_attributes);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
