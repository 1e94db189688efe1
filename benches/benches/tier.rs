//! Ingest through the write-ahead log beside a plain sequential write + fdatasync of the same bytes on
//! the same disk (the files live under the target directory, not in memory).
//!
//! Run with `cargo xtask bench tier`.

use std::fs::File;
use std::io::Write;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use m2m_splat::{Batch, SplatSet};
use m2m_tier::{Durability, Wal};

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

criterion_group!(benches, wal);
criterion_main!(benches);
