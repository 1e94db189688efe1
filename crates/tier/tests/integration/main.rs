//! Integration tests of m2m-tier: the write-ahead log (round trips, torn tails at every byte, damage in
//! the middle, headers, SIGKILL during ingest) and the directory lock.

mod crash;
mod lock;
mod wal;
