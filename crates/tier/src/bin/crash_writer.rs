//! Test helper for the crash tests of m2m-tier: `m2m-tier-crash-writer WAL_PATH DIM`.
//!
//! Opens (or creates) the log, then appends batch after batch forever, printing `ack N` on standard output
//! after batch N is acknowledged. Batch N's content is a function of N alone (`testing::crash_batch`), so the test that
//! kills this process with SIGKILL can check every recovered batch byte for byte.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line helper reports to its terminal")]

use std::io::Write;
use std::path::PathBuf;

use m2m_tier::testing::crash_batch;
use m2m_tier::{Durability, Wal};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(dim)) = (args.next(), args.next()) else {
        eprintln!("usage: m2m-tier-crash-writer WAL_PATH DIM");
        std::process::exit(2);
    };
    let path = PathBuf::from(path);
    let dim: usize = dim.parse().expect("DIM is a number");
    let mut wal = if path.exists() {
        Wal::open(&path, Durability::Fsync).expect("open").0
    } else {
        Wal::create(&path, dim, Durability::Fsync).expect("create")
    };
    let mut out = std::io::stdout().lock();
    loop {
        let n = wal.batches();
        wal.append(&crash_batch(n, dim)).expect("append");
        writeln!(out, "ack {n}").and_then(|()| out.flush()).expect("stdout");
    }
}
