//! m2m-tier: storage of M2M, the only crate that owns database files.
//!
//! Built so far:
//!
//! * [`Wal`]: the write-ahead log. Batches of validated splats are appended as length + CRC32C records
//!   and acknowledged after `fdatasync` ([`Durability::Fsync`], the default) or, in the mode named
//!   [`Durability::NoSync`], once the operating system has the bytes. Recovery keeps every complete record,
//!   drops a torn tail and refuses corruption in the middle. A failed write cuts its partial record away.
//! * [`DirLock`]: one writer per database directory; a second one gets [`Error::Locked`] within
//!   [`LOCK_PATIENCE`].
//! * [`write_segment`] / [`Segment`]: immutable column files, written atomically and memory-mapped for
//!   reading after every header field and column checksum is validated.
//! * [`Manifest`]: the live segments and log (and the stored index's files) with a generation number,
//!   replaced atomically.
//! * [`SectionWriter`] / [`SectionFile`]: files of named typed sections, written streaming (no size cap
//!   short of the disk) and memory-mapped after a cheap header and table check; every section's checksum
//!   is checked on request. The facade stores its index in them ([`Db::index_writer`],
//!   [`Db::commit_index`]).
//! * [`Db`]: a database directory tying them together: ingest through the log, `delete`, `flush` to
//!   segments, `compact` (dropping deleted rows), crash-safe ordering of every step, and [`Snapshot`]s
//!   that readers keep while it changes.
//! * [`BlockStore`]: the warm tier, blocks of rows copied from the mapped segments into a cache with a
//!   byte budget, with hit / miss / byte counters.
//! * [`VectorCache`]: the warm cache of the stored index's full vectors, blocks copied out of the mapped
//!   `.vec` section within a byte budget, the mapping's pages released behind them, with readahead hints
//!   for the blocks a search reads next.
//! * [`Prefetch`]: a background thread that walks an access plan ahead of the consumer over a bounded
//!   channel, and stops and is joined when the consumer drops it.
//!
//! * [`HotTier`]: blocks resident where the kernels read them; m2m-gpu implements it with device
//!   buffers, and [`RamHot`] keeps them in RAM (the index's centroids and codes, pinned) without a device.
//!   [`Prefetch::start_hot`] moves blocks cold -> warm -> hot ahead of use.
//!
//! Every write, sync, create and rename goes through one module, so that tests can make any of them fail
//! (feature `fault-injection`, module `fault`): a failed write leaves the files at their last good version
//! and poisons the handle until it is reopened. Every byte is documented in `FORMAT.md` beside this
//! crate's manifest.
//!
//! ```
//! use m2m_splat::{Batch, SplatSet};
//! use m2m_tier::{Durability, Wal};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("000001.wal");
//! let mut wal = Wal::create(&path, 2, Durability::Fsync)?;
//! let batch = SplatSet::from_vectors(&[1.0, 0.0, 0.0, 2.0], 2)?;
//! assert_eq!(wal.append(&batch)?, 0); // acknowledged: on stable storage
//! drop(wal);
//!
//! let (_wal, recovered) = Wal::open(&path, Durability::Fsync)?;
//! assert!(matches!(&recovered[0], m2m_tier::WalRecord::Batch(b) if b.columns.ids == vec![0, 1]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod attrs;
mod blob;
mod columns;
mod db;
mod error;
mod filter;
mod fsio;
mod hot;
mod idruns;
mod lock;
mod manifest;
mod owned;
mod prefetch;
mod rowio;
mod sections;
mod segment;
mod vecache;
mod wal;
mod warm;

/// Helpers shared by this crate's crash tests and the helper process they kill; not a stable interface.
#[doc(hidden)]
pub mod testing {
    use m2m_splat::{Batch, SplatSet};

    /// The deterministic batch number `n` of dimension `dim`: `1 + n % 5` rows, ids `1000 n + row`,
    /// kappa `1 + n`.
    ///
    /// # Panics
    /// If `dim` is 0 (a test helper's programming error).
    pub fn crash_batch(n: u64, dim: usize) -> SplatSet {
        let rows = 1 + (n % 5) as usize;
        let vectors: Vec<f32> = (0..rows * dim).map(|i| 1.0 + ((n as usize * 31 + i * 7) % 97) as f32).collect();
        let ids: Vec<u64> = (0..rows as u64).map(|r| 1000 * n + r).collect();
        let mut set = SplatSet::new(dim).expect("dimension at least 1");
        set.append(Batch::new(&vectors, dim).ids(&ids).kappa(1.0 + n as f32)).expect("a valid batch");
        set
    }

    /// The decoders, over bytes, for the fuzz targets (`crates/tier/fuzz`): a log, a segment, a manifest,
    /// a blob's framing, a section file.
    pub mod decode {
        use std::path::Path;

        use crate::{Manifest, Result, WalRecord};

        const LABEL: &str = "<fuzz input>";

        /// Recovery of a whole log file.
        pub fn log(bytes: &[u8]) -> Result<Vec<WalRecord>> {
            crate::wal::decode_log(Path::new(LABEL), bytes).map(|(_, records, _)| records)
        }

        /// Validation of a whole segment file (copied to an aligned buffer first, as a mapping is);
        /// returns (rows, dim).
        pub fn segment(bytes: &[u8]) -> Result<(usize, usize)> {
            let aligned = aligned_vec::AVec::<u8, aligned_vec::ConstAlign<4096>>::from_slice(4096, bytes);
            crate::segment::validate(Path::new(LABEL), &aligned, true).map(|l| (l.rows, l.dim))
        }

        /// Validation of a whole section file (copied to an aligned buffer first, as a mapping is), then
        /// of every section's checksum; returns the number of sections.
        pub fn sections(bytes: &[u8]) -> Result<usize> {
            let aligned = aligned_vec::AVec::<u8, aligned_vec::ConstAlign<4096>>::from_slice(4096, bytes);
            let table = crate::sections::validate(Path::new(LABEL), &aligned)?;
            for e in &table {
                let section = &aligned[e.offset as usize..(e.offset + e.len) as usize];
                if crc32c::crc32c(section) != e.crc {
                    return Err(crate::Error::corrupt(LABEL, e.offset, "section checksum mismatch"));
                }
            }
            Ok(table.len())
        }

        /// Recomputes the checksums of a section file (each section whose entry lies inside the file, the
        /// table, the header) where its header allows.
        pub fn reseal_sections(bytes: &mut [u8]) {
            if bytes.len() < crate::SECTIONS_HEADER {
                return;
            }
            let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
            let count = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
            let table = usize::try_from(u64_at(bytes, 16)).unwrap_or(usize::MAX);
            let end = count.checked_mul(48).and_then(|n| n.checked_add(table)).filter(|&e| e <= bytes.len());
            if let Some(end) = end {
                for i in 0..count {
                    let at = table + 48 * i;
                    let (offset, len) = (u64_at(bytes, at + 24), u64_at(bytes, at + 32));
                    let range = usize::try_from(offset).ok().zip(usize::try_from(len).ok());
                    if let Some(section) = range.and_then(|(o, l)| bytes.get(o..o.checked_add(l)?)) {
                        let crc = crc32c::crc32c(section);
                        bytes[at + 40..at + 44].copy_from_slice(&crc.to_le_bytes());
                    }
                }
                let crc = crc32c::crc32c(&bytes[table..end]);
                bytes[32..36].copy_from_slice(&crc.to_le_bytes());
            }
            let crc = crc32c::crc32c(&bytes[..60]);
            bytes[60..64].copy_from_slice(&crc.to_le_bytes());
        }

        /// Decoding of a manifest file.
        pub fn manifest(bytes: &[u8]) -> Result<Manifest> {
            Manifest::decode(Path::new(LABEL), bytes)
        }

        /// Checking of a blob file's framing (magic, version, length, checksum); returns the payload's
        /// length. The facade decodes the payloads (`m2m::testing`).
        pub fn blob(bytes: &[u8]) -> Result<usize> {
            crate::blob::unseal(Path::new(LABEL), bytes, crate::BLOB_MAGIC, crate::BLOB_VERSION, usize::MAX, "blob")
                .map(<[u8]>::len)
        }

        /// Recomputes the checksums of a log file's header and of every record whose length fits, so that
        /// a fuzzer's mutations reach the checks behind them.
        pub fn reseal_log(bytes: &mut [u8]) {
            if bytes.len() < 32 {
                return;
            }
            let crc = crc32c::crc32c(&bytes[..28]);
            bytes[28..32].copy_from_slice(&crc.to_le_bytes());
            let mut at = 32;
            while at + 8 <= bytes.len() {
                let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
                let Some(end) = (at + 8).checked_add(len).filter(|&e| e <= bytes.len()) else { return };
                let crc = crc32c::crc32c(&bytes[at + 8..end]);
                bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
                at = end;
            }
        }

        /// Recomputes the column, attribute block and header checksums of a segment file where its header
        /// allows.
        pub fn reseal_segment(bytes: &mut [u8]) {
            if bytes.len() < crate::SEGMENT_HEADER {
                return;
            }
            let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
            let dim = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
            let rows = usize::try_from(u64_at(bytes, 16)).unwrap_or(usize::MAX);
            if let Some(cols) = crate::segment::layout(rows, dim) {
                for (i, (offset, len)) in cols.into_iter().enumerate() {
                    if let Some(col) = offset.checked_add(len).and_then(|end| bytes.get(offset..end)) {
                        let crc = crc32c::crc32c(col);
                        bytes[72 + 4 * i..76 + 4 * i].copy_from_slice(&crc.to_le_bytes());
                    }
                }
            }
            // The attribute block of a version 2 segment (offset, length, checksum at bytes 92..112).
            if u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) >= 2 {
                let (at, len) = (usize::try_from(u64_at(bytes, 92)), usize::try_from(u64_at(bytes, 100)));
                let block = at.ok().zip(len.ok()).and_then(|(o, l)| bytes.get(o..o.checked_add(l)?));
                if let Some(block) = block {
                    let crc = crc32c::crc32c(block);
                    bytes[108..112].copy_from_slice(&crc.to_le_bytes());
                }
            }
            let crc = crc32c::crc32c(&bytes[..124]);
            bytes[124..128].copy_from_slice(&crc.to_le_bytes());
        }

        /// Recomputes the payload checksum of a manifest or blob file (they share the framing).
        pub fn reseal_manifest(bytes: &mut [u8]) {
            if bytes.len() >= 20 {
                let crc = crc32c::crc32c(&bytes[20..]);
                bytes[16..20].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
}

pub use attrs::{
    AttrBatch, AttrTable, Column, Field, FieldType, MAX_FIELDS, MAX_KEYWORD, MAX_PAYLOAD, MAX_TAGS, PreparedAttrs,
    Schema, Storage, Value,
};
pub use blob::{BLOB_MAGIC, BLOB_VERSION, load_blob, remove_blob, store_blob};
pub use columns::{Columns, ColumnsRef, Memtable};
pub use db::{Db, DbCheck, DbOptions, Snapshot};
pub use error::{Error, Result};
pub use filter::{Filter, MAX_DEPTH, Postings, Scalar};
#[cfg(feature = "fault-injection")]
pub use fsio::fault_injection as fault;
pub use hot::{HotBytes, HotCache, HotKey, HotStats, HotStorage, HotTier, RamHot, RamStorage, Residency};
pub use lock::{DirLock, LOCK_FILE, LOCK_PATIENCE};
pub use manifest::{MANIFEST_FILE, MANIFEST_MAGIC, MANIFEST_VERSION, MAX_NUMBER, Manifest, SegmentEntry};
pub use prefetch::{Fetched, Prefetch, PrefetchStats};
pub use sections::{
    MappedBytes, MappedF32, SECTIONS_HEADER, SECTIONS_MAGIC, SECTIONS_VERSION, SectionEntry, SectionFile, SectionKind,
    SectionWriter,
};
pub use segment::{SEGMENT_HEADER, SEGMENT_MAGIC, SEGMENT_VERSION, Segment, write_segment};
pub use vecache::{CachedRows, RowReads, VectorCache, VectorCacheStats};
pub use wal::{CutTail, Durability, LogCheck, WAL_HEADER, WAL_MAGIC, WAL_VERSION, Wal, WalBatch, WalRecord};
pub use warm::{BlockKey, BlockStore, DEFAULT_BLOCK_ROWS, MEMTABLE, WarmStats};
