//! Test helper for the crash tests of m2m-tier.
//!
//! * `m2m-tier-crash-writer WAL_PATH DIM`: opens (or creates) a log and appends batch after batch.
//! * `m2m-tier-crash-writer db DIR DIM`: opens (or creates) a database directory and ingests batch after
//!   batch, flushing after every 4th and compacting after every 10th, so that a kill can land in any step.
//!
//! Either way it prints `ack N` on standard output once batch N is acknowledged, and runs until killed.
//! Batch N's content is a function of N alone (`testing::crash_batch`), so the test that kills this
//! process with SIGKILL can check every recovered batch byte for byte.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line helper reports to its terminal")]

use std::io::Write;
use std::path::PathBuf;

use m2m_tier::testing::crash_batch;
use m2m_tier::{Db, DbOptions, Durability, Wal};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout().lock();
    let mut ack = |n: u64| writeln!(out, "ack {n}").and_then(|()| out.flush()).expect("stdout");
    match args.as_slice() {
        [mode, dir, dim] if mode == "db" => {
            let dir = PathBuf::from(dir);
            let dim: usize = dim.parse().expect("DIM is a number");
            let mut db = if dir.join(m2m_tier::MANIFEST_FILE).exists() {
                Db::open(&dir, DbOptions::default()).expect("open")
            } else {
                Db::create(&dir, dim, DbOptions::default()).expect("create")
            };
            // Batch n holds ids 1000 n + row: the next batch follows the largest id present.
            let snap = db.snapshot();
            let mut n = snap.parts().flat_map(|p| p.ids.iter().copied()).max().map_or(0, |id| id / 1000 + 1);
            drop(snap);
            loop {
                db.ingest(&crash_batch(n, dim)).expect("ingest");
                ack(n);
                if n % 4 == 3 {
                    db.flush().expect("flush");
                }
                if n % 10 == 9 {
                    db.compact().expect("compact");
                }
                n += 1;
            }
        }
        [path, dim] => {
            let path = PathBuf::from(path);
            let dim: usize = dim.parse().expect("DIM is a number");
            let mut wal = if path.exists() {
                Wal::open(&path, Durability::Fsync).expect("open").0
            } else {
                Wal::create(&path, dim, Durability::Fsync).expect("create")
            };
            loop {
                let n = wal.batches();
                wal.append(&crash_batch(n, dim)).expect("append");
                ack(n);
            }
        }
        _ => {
            eprintln!("usage: m2m-tier-crash-writer WAL_PATH DIM | m2m-tier-crash-writer db DIR DIM");
            std::process::exit(2);
        }
    }
}
