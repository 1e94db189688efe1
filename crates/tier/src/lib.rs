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
//! * [`Manifest`]: the live segments and log with a generation number, replaced atomically.
//! * [`Db`]: a database directory tying them together: ingest through the log, `delete`, `flush` to
//!   segments, `compact` (dropping deleted rows), crash-safe ordering of every step, and [`Snapshot`]s
//!   that readers keep while it changes.
//! * [`BlockStore`]: the warm tier, blocks of rows copied from the mapped segments into a cache with a
//!   byte budget, with hit / miss / byte counters.
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

mod columns;
mod db;
mod error;
mod fsio;
mod hot;
mod lock;
mod manifest;
mod prefetch;
mod segment;
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
}

pub use columns::{Columns, ColumnsRef};
pub use db::{Db, DbOptions, Snapshot};
pub use error::{Error, Result};
#[cfg(feature = "fault-injection")]
pub use fsio::fault_injection as fault;
pub use hot::{HotBytes, HotKey, HotStats, HotTier, RamHot, Residency};
pub use lock::{DirLock, LOCK_FILE, LOCK_PATIENCE};
pub use manifest::{MANIFEST_FILE, MANIFEST_MAGIC, MANIFEST_VERSION, Manifest, SegmentEntry};
pub use prefetch::{Fetched, Prefetch};
pub use segment::{SEGMENT_HEADER, SEGMENT_MAGIC, SEGMENT_VERSION, Segment, write_segment};
pub use wal::{Durability, WAL_HEADER, WAL_MAGIC, WAL_VERSION, Wal, WalBatch, WalRecord};
pub use warm::{BlockKey, BlockStore, DEFAULT_BLOCK_ROWS, MEMTABLE, WarmStats};
