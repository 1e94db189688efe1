//! Integration tests of m2m-tier: the write-ahead log (round trips, torn tails at every byte, damage in
//! the middle, headers, SIGKILL during ingest), segments and the manifest (round trips, damage at every
//! byte, atomic replacement), and the directory lock.

mod attrs;
mod attrs_forged;
mod crash;
mod db;
mod faults;
mod hot;
mod index_files;
mod lock;
mod scale;
mod segment;
mod upsert;
mod wal;
mod warm;
