//! The warm cache of the stored index's full vectors: blocks of rows (one per fine cluster, as the
//! layer above names them) copied out of the memory-mapped `.vec` section into RAM, within a byte budget.
//!
//! A block that is read is copied into the cache when it fits the budget, and the mapping's pages under
//! it are released (`MADV_DONTNEED`: the process stops holding them; the page cache may keep them), so
//! that what the process holds of the vectors is the cache, never more than the budget, plus the pages
//! of the reads in flight. A block larger than the whole budget, or any block with a budget of 0, is
//! read from the mapping in place and its pages released after use ([`VectorCache::done`]).
//!
//! [`VectorCache::prefetch`] asks the kernel to read a block's pages ahead (`MADV_WILLNEED`: readahead,
//! without waiting), for the clusters a search will read next.
//!
//! **Blocks or rows.** A budget that holds the whole section caches whole blocks: after the first reads
//! everything is a hit, as in RAM. A smaller budget caches single rows instead ([`VectorCache::by_row`]):
//! a re-rank reads a few members of each of many clusters, and copying (or reading from the disk) whole
//! clusters to use one or two of their rows multiplies the reads by the cluster's size. In that mode
//! [`VectorCache::row`] serves one row from the cache or the mapping, [`VectorCache::prefetch_row`]
//! asks for just its pages, and [`VectorCache::rows_done`] releases what a batch of row reads mapped, in
//! one call over the section (a release per row would cost a system call per row); whole-block reads
//! (`Exact` scans) are read in place. On Unix a row is read with `pread` on the section's file rather
//! than through the mapping: a fault would also map up to 16 neighbouring cached pages (the kernel's
//! fault-around), which then have to be released; a read copies the row's bytes alone and leaves
//! nothing mapped. The mapping is advised `MADV_RANDOM`: a fault on a page that is not in the page
//! cache reads that page, not the device's read-ahead window around it (8 MiB on some disks), and the
//! prefetch hints say what to read ahead.
//!
//! **A batch of rows at once.** [`VectorCache::read_rows`] serves a query's re-rank rows together: the
//! cached ones from the cache, and all the others in one submission to the kernel (io_uring on Linux:
//! one system call, and the disk receives the reads together), or, with [`RowReads::Pread`] or where
//! io_uring is missing or refused, each announced (`MADV_WILLNEED`) and then read by `pread`. The file
//! is advised `POSIX_FADV_RANDOM` (Linux, Android, FreeBSD): a read of a row that is not in the page
//! cache reads its page or two, not a read-ahead window grown from neighbouring reads.
//!
//! **Past the page cache when it has no room.** When the section is larger than the page cache the
//! process may still fill (a memory cgroup's cap, or a machine smaller than the vectors: the issue this
//! tier exists for), caching the rows read only churns: each page read is charged to the process's group,
//! evicts another and is copied out once. The batch can then be read with `O_DIRECT` ([`RowReads::Direct`],
//! opt-in): from the disk straight into the reader's buffer, each read widened to the page or two around
//! its row. It costs the least CPU, but was slower by the clock than `Batched` on a quiet machine, so
//! [`RowReads::Auto`], the default, is `Batched`. `M2M_ROW_READS` (`auto`, `batched`, `direct`, `pread`)
//! in the environment overrides the choice (for comparisons).
//!
//! What it does not do: decide which rows form a block (the caller passes ranges), or check the values
//! (the section's checksum is `Db::check`'s job).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::MappedF32;

/// Bytes around a released range that are released too (the kernel's default `fault_around_bytes`).
#[cfg_attr(not(unix), allow(dead_code, reason = "used by the Unix page advice only"))]
const FAULT_AROUND: usize = 64 << 10;

/// How a by-row [`VectorCache`] reads the rows of [`read_rows`](VectorCache::read_rows) it does not hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RowReads {
    /// The default: [`Batched`](RowReads::Batched) (measured against `Direct` under a memory cap: see
    /// the module docs).
    #[default]
    Auto,
    /// All of a batch's rows in one submission (io_uring, Linux); where that is not available, as
    /// [`Pread`](RowReads::Pread).
    Batched,
    /// Each row announced to the kernel, then read by one `pread` (Unix) or through the mapping.
    Pread,
    /// As [`Batched`](RowReads::Batched), past the page cache (`O_DIRECT`, Linux; elsewhere, or where
    /// the file system refuses it, as `Batched`): the rows go from the disk to the reader without
    /// being cached, charged to the process's memory group or evicted again. For a process whose
    /// memory cap leaves the page cache no room for the vectors; a row the page cache holds is read
    /// from the disk all the same.
    Direct,
}

impl RowReads {
    /// The reads `M2M_ROW_READS` asks for (`batched` or `pread`), if it is set to one of them.
    fn from_env() -> Option<RowReads> {
        match std::env::var("M2M_ROW_READS").ok()?.as_str() {
            "auto" => Some(RowReads::Auto),
            "batched" => Some(RowReads::Batched),
            "pread" => Some(RowReads::Pread),
            "direct" => Some(RowReads::Direct),
            _ => None,
        }
    }
}

/// Counters of a [`VectorCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VectorCacheStats {
    /// Block reads answered from the cache.
    pub hits: u64,
    /// Block reads that read the mapping.
    pub misses: u64,
    /// Rows (counted in `misses`) read by batched submissions ([`RowReads::Batched`]).
    pub batched_rows: u64,
    /// Bytes of vectors the cache holds now.
    pub resident_bytes: u64,
    /// The budget.
    pub budget_bytes: u64,
}

#[derive(Clone)]
struct Bytes;

impl Weighter<u64, Arc<[f32]>> for Bytes {
    fn weight(&self, _key: &u64, rows: &Arc<[f32]>) -> u64 {
        (rows.len() * std::mem::size_of::<f32>()).max(1) as u64
    }
}

/// Rows of a block: in the cache (shared) or in the mapping.
#[derive(Debug)]
pub enum CachedRows<'a> {
    /// A copy the cache holds (or held when it was read).
    Cached(Arc<[f32]>),
    /// The mapping itself (no budget for it).
    Mapped(&'a [f32]),
}

impl std::ops::Deref for CachedRows<'_> {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            CachedRows::Cached(rows) => rows,
            CachedRows::Mapped(rows) => rows,
        }
    }
}

/// The warm cache over a mapped f32 section (see the module's docs).
pub struct VectorCache {
    rows: MappedF32,
    /// Keyed by block number, or by a row's first value in by-row mode.
    cache: Option<Cache<u64, Arc<[f32]>, Bytes>>,
    budget: u64,
    by_row: bool,
    /// The section's file, for row reads by `pread` (by-row mode on Unix; `None`: through the mapping).
    #[cfg_attr(not(unix), allow(dead_code, reason = "rows are read by pread on Unix only"))]
    file: Option<std::fs::File>,
    /// The same file opened `O_DIRECT`, for [`RowReads::Direct`] (Linux; `None`: not asked for, or
    /// refused by the file system).
    direct: Option<std::fs::File>,
    /// Whether a row was read through the mapping since the last [`rows_done`](Self::rows_done).
    mapped_rows: std::sync::atomic::AtomicBool,
    row_reads: RowReads,
    hits: AtomicU64,
    misses: AtomicU64,
    batched_rows: AtomicU64,
}

impl std::fmt::Debug for VectorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorCache").field("stats", &self.stats()).finish()
    }
}

impl VectorCache {
    /// A cache of `budget_bytes` over `rows`, for blocks of about `block_bytes` and rows of `row_bytes`
    /// (they size its table). It caches blocks when the budget holds the whole section, rows otherwise
    /// (see the module's docs).
    pub fn new(rows: MappedF32, budget_bytes: u64, block_bytes: u64, row_bytes: u64) -> VectorCache {
        let by_row = budget_bytes < rows.as_slice().len() as u64 * 4;
        let item = if by_row { row_bytes } else { block_bytes };
        let items = usize::try_from(budget_bytes / item.max(1)).unwrap_or(usize::MAX).clamp(16, 1 << 24);
        // A hint (on Unix; elsewhere none): a failure changes nothing but speed.
        #[cfg(unix)]
        if let Some((offset, len)) = Self::section_bytes(&rows) {
            let _ = rows.file().map().advise_range(memmap2::Advice::Random, offset, len);
        }
        // The file of the mapping (section files are never rewritten: a new index is a new file). Where
        // it cannot be opened, rows are read through the mapping.
        let file = (by_row && cfg!(unix)).then(|| std::fs::File::open(rows.file().path()).ok()).flatten();
        // A hint: a failure changes nothing but speed.
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        if let Some(file) = &file {
            let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Random);
        }
        VectorCache {
            rows,
            cache: (budget_bytes > 0).then(|| Cache::with_weighter(items, budget_bytes, Bytes)),
            budget: budget_bytes,
            by_row,
            file,
            direct: None,
            mapped_rows: std::sync::atomic::AtomicBool::new(false),
            row_reads: RowReads::Auto,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            batched_rows: AtomicU64::new(0),
        }
        .with_row_reads(RowReads::from_env().unwrap_or_default())
    }

    /// The same cache, reading the rows of [`read_rows`](Self::read_rows) as `reads` says (default:
    /// [`RowReads::Auto`], or what `M2M_ROW_READS` asks for: `auto`, `batched`, `direct`, `pread`).
    pub fn with_row_reads(mut self, mut reads: RowReads) -> VectorCache {
        if reads == RowReads::Auto {
            // Not `Direct` under a cap, though it costs the least CPU there: on a quiet machine it was
            // the slowest by the clock (notes/issue-15.md, third session: ~1,950 QPS wall against
            // ~2,250 batched at minilm70k's 10% cap), the page cache's few rows being lost to it.
            reads = RowReads::Batched;
        }
        self.row_reads = reads;
        self.direct = None;
        #[cfg(target_os = "linux")]
        if reads == RowReads::Direct && self.file.is_some() {
            use std::os::unix::fs::OpenOptionsExt;
            let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
            self.direct = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(self.rows.file().path()).ok();
        }
        self
    }

    /// How [`read_rows`](Self::read_rows) reads rows on this thread ([`RowReads::Auto`] resolved):
    /// batched ([`RowReads::Batched`] or [`RowReads::Direct`]) only when asked for, in by-row mode, and
    /// available (on Linux, a ring the kernel grants; for `Direct`, a file system that allows it).
    pub fn row_reads(&self) -> RowReads {
        match self.row_reads {
            RowReads::Pread => RowReads::Pread,
            _ if self.file.is_none() || !crate::rowio::available() => RowReads::Pread,
            _ if self.direct.is_some() => RowReads::Direct,
            _ => RowReads::Batched,
        }
    }

    /// Every value of the section, in place.
    pub fn mapped(&self) -> &[f32] {
        self.rows.as_slice()
    }

    /// Block `block`, values `range` of the section: from the cache, or read from the mapping (and kept
    /// when it fits the budget; the pages read are released then). A range outside the section is empty.
    /// In by-row mode blocks are not cached: they are read in place.
    pub fn get(&self, block: u32, range: Range<usize>) -> CachedRows<'_> {
        let Some(values) = self.rows.as_slice().get(range.clone()) else { return CachedRows::Mapped(&[]) };
        let Some(cache) = self.cache.as_ref().filter(|_| !self.by_row) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return CachedRows::Mapped(values);
        };
        if let Some(rows) = cache.get(&u64::from(block)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return CachedRows::Cached(rows);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        if (values.len() * 4) as u64 > self.budget {
            return CachedRows::Mapped(values);
        }
        let rows: Arc<[f32]> = Arc::from(values);
        cache.insert(u64::from(block), Arc::clone(&rows));
        self.release(range);
        CachedRows::Cached(rows)
    }

    /// Whether this cache holds single rows (a budget smaller than the section): readers of a few rows
    /// of a block should then use [`row`](Self::row), not [`get`](Self::get).
    pub fn by_row(&self) -> bool {
        self.by_row
    }

    /// One row, values `range` of the section: from the cache, or from the mapping (copied and kept in
    /// by-row mode when the budget allows; read in place otherwise). The mapping's pages a batch of such
    /// reads touched are released by [`rows_done`](Self::rows_done). A range outside the section is empty.
    pub fn row(&self, range: Range<usize>) -> CachedRows<'_> {
        let Some(values) = self.rows.as_slice().get(range.clone()) else { return CachedRows::Mapped(&[]) };
        let cache = self.cache.as_ref().filter(|_| self.by_row);
        let key = range.start as u64;
        if let Some(rows) = cache.and_then(|c| c.get(&key)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return CachedRows::Cached(rows);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.read_miss(range, values)
    }

    /// A row not in the cache (values `range`, `values` in the mapping): read by `pread`, or through the
    /// mapping where that fails, and kept when the budget allows.
    fn read_miss<'a>(&'a self, range: Range<usize>, values: &'a [f32]) -> CachedRows<'a> {
        let cache = self.cache.as_ref().filter(|_| self.by_row);
        let key = range.start as u64;
        let rows: Arc<[f32]> = match self.read_row(range) {
            Some(rows) => rows,
            None => {
                self.mapped_rows.store(true, Ordering::Relaxed);
                match cache {
                    Some(_) if (values.len() * 4) as u64 <= self.budget => Arc::from(values),
                    _ => return CachedRows::Mapped(values),
                }
            }
        };
        if let Some(cache) = cache.filter(|_| (rows.len() * 4) as u64 <= self.budget) {
            cache.insert(key, Arc::clone(&rows));
        }
        CachedRows::Cached(rows)
    }

    /// Rows `ranges` (values of the section, as for [`row`](Self::row)), read together: `each(i,
    /// values)` is called once for every range `i`, in any order (a range outside the section: empty).
    /// Cached rows come from the cache; the others are read in one submission ([`RowReads::Batched`],
    /// where available) or announced and read one by one, and kept when the budget allows. Nothing is
    /// left mapped afterwards (no [`rows_done`](Self::rows_done) needed).
    pub fn read_rows(&self, ranges: &[Range<usize>], each: &mut dyn FnMut(usize, &[f32])) {
        let all = self.rows.as_slice();
        let cache = self.cache.as_ref().filter(|_| self.by_row);
        let mut misses = Vec::new();
        for (i, range) in ranges.iter().enumerate() {
            if all.get(range.clone()).is_none() {
                each(i, &[]);
            } else if let Some(rows) = cache.and_then(|c| c.get(&(range.start as u64))) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                each(i, &rows);
            } else {
                misses.push(i);
            }
        }
        if misses.is_empty() {
            return;
        }
        self.misses.fetch_add(misses.len() as u64, Ordering::Relaxed);
        let file = match (&self.file, &self.direct) {
            (_, Some(direct)) => Some((direct, true)),
            (Some(file), None) => Some((file, false)),
            (None, None) => None,
        };
        let batched = match file.filter(|_| self.row_reads != RowReads::Pread) {
            Some((file, direct)) => {
                let reads: Vec<(u64, usize)> = misses
                    .iter()
                    .map(|&i| ((self.rows.start() + ranges[i].start * 4) as u64, ranges[i].len()))
                    .collect();
                crate::rowio::read(file, direct, &reads, &mut |j, values| {
                    let i = misses[j];
                    if let Some(cache) = cache.filter(|_| (values.len() * 4) as u64 <= self.budget) {
                        cache.insert(ranges[i].start as u64, Arc::from(values));
                    }
                    each(i, values);
                })
            }
            None => None,
        };
        let rest = match batched {
            Some(failed) => {
                self.batched_rows.fetch_add((misses.len() - failed.len()) as u64, Ordering::Relaxed);
                failed.into_iter().map(|j| misses[j]).collect()
            }
            None => misses,
        };
        // Row by row: all announced first, so that the disk gets them together.
        #[cfg(unix)]
        for &i in &rest {
            if let Some((offset, len)) = self.bytes(ranges[i].clone()) {
                let _ = self.rows.file().map().advise_range(memmap2::Advice::WillNeed, offset, len);
            }
        }
        for &i in &rest {
            let range = ranges[i].clone();
            each(i, &self.read_miss(range.clone(), &all[range]));
        }
        self.rows_done();
    }

    /// Values `range` read from the section's file (`pread`), when this cache reads rows that way and
    /// the read succeeds (a failure falls back to the mapping, which reads the same bytes).
    fn read_row(&self, range: Range<usize>) -> Option<Arc<[f32]>> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            let file = self.file.as_ref()?;
            let (offset, _) = self.bytes(range.clone())?;
            let mut buf = vec![0f32; range.len()];
            file.read_exact_at(bytemuck::cast_slice_mut(&mut buf), offset as u64).ok()?;
            Some(Arc::from(buf))
        }
        #[cfg(not(unix))]
        {
            let _ = range;
            None
        }
    }

    /// Asks the kernel to read the pages of one row (values `range`) ahead, unless the row is cached.
    pub fn prefetch_row(&self, range: Range<usize>) {
        if self.by_row && self.cache.as_ref().is_some_and(|c| c.contains_key(&(range.start as u64))) {
            return;
        }
        #[cfg(unix)]
        if let Some((offset, len)) = self.bytes(range) {
            let _ = self.rows.file().map().advise_range(memmap2::Advice::WillNeed, offset, len);
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    /// The end of a batch of [`row`](Self::row) reads: the process stops holding the mapping's pages
    /// (the page cache may keep them), in one call over the whole section.
    pub fn rows_done(&self) {
        // Rows read from the file left nothing mapped.
        if !self.mapped_rows.swap(false, Ordering::Relaxed) {
            return;
        }
        #[cfg(unix)]
        if let Some((offset, len)) = Self::section_bytes(&self.rows) {
            // SAFETY: as in `release`: the mapped file never changes, so a released page faults the same
            // bytes back in, and slices borrowed from the mapping keep their contents.
            let _ = unsafe {
                self.rows.file().map().unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
        }
    }

    /// The page-aligned byte range of the mapping that holds the section (empty sections: none).
    #[cfg_attr(not(unix), allow(dead_code, reason = "used by the Unix page advice only"))]
    fn section_bytes(rows: &MappedF32) -> Option<(usize, usize)> {
        let page = 4096;
        let lo = rows.start() / page * page;
        let hi = (rows.start() + rows.as_slice().len() * 4).min(rows.file().map().len());
        (lo < hi).then(|| (lo, hi - lo))
    }

    /// Releases the pages of values `range` after a read in place ([`CachedRows::Mapped`]), so that the
    /// process does not keep them. A no-op for a range the cache copied (released already).
    pub fn done(&self, range: Range<usize>) {
        self.release(range);
    }

    /// Asks the kernel to read values `range` ahead (a hint: it does not wait), unless block `block` is
    /// in the cache.
    pub fn prefetch(&self, block: u32, range: Range<usize>) {
        if !self.by_row && self.cache.as_ref().is_some_and(|c| c.contains_key(&u64::from(block))) {
            return;
        }
        // A hint (on Unix; elsewhere none): a failure changes nothing but speed.
        #[cfg(unix)]
        if let Some((offset, len)) = self.bytes(range) {
            let _ = self.rows.file().map().advise_range(memmap2::Advice::WillNeed, offset, len);
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    /// The file offset and length of values `range`, when inside the section.
    #[cfg_attr(not(unix), allow(dead_code, reason = "used by the Unix page advice only"))]
    fn bytes(&self, range: Range<usize>) -> Option<(usize, usize)> {
        let n = self.rows.as_slice().len();
        (range.start < range.end && range.end <= n).then(|| (self.rows.start() + range.start * 4, range.len() * 4))
    }

    fn release(&self, range: Range<usize>) {
        #[cfg(unix)]
        if let Some((offset, len)) = self.bytes(range) {
            // The range widened by the kernel's fault-around window (64 KiB by default): a fault maps the
            // neighbouring pages already in the page cache too, and those would stay resident. Releasing
            // a page another thread reads in place only makes it fault again (same bytes).
            let page = 4096;
            let end = (offset + len + FAULT_AROUND).min(self.rows.file().map().len());
            let (lo, hi) = (offset.saturating_sub(FAULT_AROUND) / page * page, end);
            if lo < hi {
                // SAFETY: a read-only shared map of a file that does not change while mapped (section files
                // are never written after their commit), so after MADV_DONTNEED every access faults the
                // same bytes back in: slices borrowed from the mapping keep their contents.
                let _ = unsafe {
                    self.rows.file().map().unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = range;
    }

    /// The counters.
    pub fn stats(&self) -> VectorCacheStats {
        VectorCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            batched_rows: self.batched_rows.load(Ordering::Relaxed),
            resident_bytes: self.cache.as_ref().map_or(0, Cache::weight),
            budget_bytes: self.budget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SectionFile, SectionKind, SectionWriter};

    fn mapped(dir: &std::path::Path, values: &[f32]) -> MappedF32 {
        let path = dir.join("0000000001.vec");
        let mut w = SectionWriter::create(&path).unwrap();
        w.begin("vectors", SectionKind::F32).unwrap();
        w.write_values(values).unwrap();
        let path = w.finish().unwrap();
        Arc::new(SectionFile::open(&path).unwrap()).shared_f32("vectors").unwrap()
    }

    /// The budget holds and every read returns the section's values, in both modes. Blocks of varied
    /// sizes (1 to 3 KiB and one larger than the budget) and single rows of 64 values are read in a
    /// seeded, skewed order, many times over. Mutations caught: a cache without a byte weigher, or
    /// inserting a block or row larger than the budget (resident bytes above the budget); a block or
    /// row served from the wrong range or a stale copy under another key (values differ); blocks cached
    /// in by-row mode or rows keyed by block (a row read returns a block's values); the mode chosen
    /// the other way round (`by_row` checked); a cache that never keeps rows (no hits). A release of
    /// the wrong pages is harmless to values by design, and is not what this checks.
    #[test]
    fn the_budget_holds_and_reads_return_the_sections_values() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..200_000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let rows = mapped(dir.path(), &values);
        // Blocks: consecutive ranges of 256 to 767 values, and one of 40,000 (160 KB).
        let mut blocks = Vec::new();
        let mut at = 0usize;
        let mut state = 7u64;
        while at < values.len() {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let len = if blocks.len() == 5 { 40_000 } else { 256 + (state >> 33) as usize % 512 };
            let end = (at + len).min(values.len());
            blocks.push(at..end);
            at = end;
        }
        // The section is 800,000 bytes: the last budget holds it all (blocks), the others do not (rows).
        for budget in [0u64, 10_000, 64 << 10, 2 << 20] {
            let cache = VectorCache::new(rows.clone(), budget, 2048, 256);
            assert_eq!(cache.by_row(), budget < 800_000, "budget {budget}");
            for step in 0..3_000usize {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                // Skewed: small block numbers more often, so some are hit again.
                let b = ((state >> 33) as usize % blocks.len()).min((state >> 20) as usize % 64 + step % 3);
                let range = blocks[b].clone();
                if step % 7 == 0 {
                    cache.prefetch(b as u32, range.clone());
                }
                let got = cache.get(b as u32, range.clone());
                assert_eq!(&*got, &values[range.clone()], "budget {budget}, block {b}");
                if matches!(got, CachedRows::Mapped(_)) {
                    cache.done(range);
                }
                // A row of 64 values, skewed towards the first 100 rows.
                let r = ((state >> 40) as usize % 3_125).min((state >> 13) as usize % 100 + step % 5);
                let range = r * 64..(r + 1) * 64;
                if step % 3 == 0 {
                    cache.prefetch_row(range.clone());
                }
                assert_eq!(&*cache.row(range.clone()), &values[range], "budget {budget}, row {r}");
                if step % 10 == 9 {
                    cache.rows_done();
                }
                let s = cache.stats();
                assert!(s.resident_bytes <= budget, "budget {budget}: {} bytes resident", s.resident_bytes);
            }
            let s = cache.stats();
            assert_eq!(s.hits + s.misses, 6_000);
            if budget >= 64 << 10 {
                assert!(s.hits > 0 && s.resident_bytes > 0, "budget {budget}: {s:?}");
            } else if budget == 0 {
                assert_eq!((s.hits, s.resident_bytes), (0, 0));
            }
        }
        assert!(VectorCache::new(rows.clone(), 1 << 20, 2048, 256).get(0, 199_999..200_001).is_empty(), "out of range");
        assert!(VectorCache::new(rows, 1 << 10, 2048, 256).row(199_999..200_001).is_empty(), "out of range");
    }

    /// `read_rows` gives every asked row once, with the section's values, batched (through the page cache
    /// and past it: `Direct`, whose reads are widened to pages) and row by row, at
    /// budgets that cache nothing, some rows, or many. Batches of 1 to 300 rows (longer than a ring:
    /// submitted in parts), with rows repeated inside a batch and across batches, and one range
    /// outside the section (empty). Mutations caught: a read landing in another row's slot or at the
    /// wrong file offset (values differ), a part of a long batch dropped or given twice (each row once),
    /// batched reads never made where the kernel allows them or made when `Pread` is asked for
    /// (`batched_rows`), a cache that keeps no row read in a batch (no hits), the budget overrun.
    #[test]
    fn read_rows_gives_each_row_once_batched_and_row_by_row() {
        let dir = tempfile::tempdir().unwrap();
        let dim = 64usize;
        let n = 3_125usize;
        let values: Vec<f32> = (0..n * dim).map(|i| i as f32 * 0.25 - 3.0).collect();
        let rows = mapped(dir.path(), &values);
        // Where the kernel offers io_uring (not under emulation, not disabled, a ring can be made: a
        // container's seccomp filter may refuse it), batched reads must be made.
        #[cfg(target_os = "linux")]
        let ring_allowed = io_uring::IoUring::new(2).is_ok();
        #[cfg(not(target_os = "linux"))]
        let ring_allowed = false;
        let uring_expected = cfg!(all(target_os = "linux", target_arch = "x86_64"))
            && ring_allowed
            && std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|s| s.trim() == "0");
        let mut state = 21u64;
        for reads in [RowReads::Batched, RowReads::Pread, RowReads::Direct] {
            for budget in [0u64, 20_000, 256 << 10] {
                let cache = VectorCache::new(rows.clone(), budget, 2048, (dim * 4) as u64).with_row_reads(reads);
                let batched = cache.row_reads() != RowReads::Pread;
                assert!(!batched || reads != RowReads::Pread);
                assert!(cache.row_reads() != RowReads::Direct || reads == RowReads::Direct);
                if reads != RowReads::Pread && uring_expected {
                    assert!(batched, "io_uring is allowed here (io_uring_disabled = 0) but no ring was made");
                }
                let mut asked = 0u64;
                for step in 0..60usize {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let len = [1usize, 7, 30, 129, 300][step % 5];
                    let mut ranges: Vec<Range<usize>> = (0..len)
                        .map(|j| {
                            let x = state.wrapping_mul(j as u64 * 2 + 1).rotate_left(j as u32 % 64);
                            // Skewed towards the first 200 rows, so rows repeat.
                            let r = if j % 2 == 0 { (x >> 33) as usize % 200 } else { (x >> 17) as usize % n };
                            r * dim..(r + 1) * dim
                        })
                        .collect();
                    if step == 13 {
                        ranges[3] = n * dim - 10..n * dim + 54;
                    }
                    let mut got: Vec<Option<Vec<f32>>> = vec![None; ranges.len()];
                    cache.read_rows(&ranges, &mut |i, row| {
                        assert!(got[i].is_none(), "row {i} given twice");
                        got[i] = Some(row.to_vec());
                    });
                    for (i, (range, got)) in ranges.iter().zip(got).enumerate() {
                        let want = values.get(range.clone()).unwrap_or(&[]);
                        assert_eq!(got.as_deref(), Some(want), "{reads:?}, budget {budget}, step {step}, row {i}");
                        asked += u64::from(!want.is_empty());
                    }
                    let s = cache.stats();
                    assert!(s.resident_bytes <= budget, "budget {budget}: {} bytes resident", s.resident_bytes);
                }
                let s = cache.stats();
                assert_eq!(s.hits + s.misses, asked, "{reads:?}, budget {budget}: {s:?}");
                if batched {
                    assert_eq!(s.batched_rows, s.misses, "{reads:?}, budget {budget}: {s:?}");
                } else {
                    assert_eq!(s.batched_rows, 0, "{reads:?}, budget {budget}: {s:?}");
                }
                if budget >= 256 << 10 {
                    assert!(s.hits > 0, "{reads:?}, budget {budget}: {s:?}");
                } else if budget == 0 {
                    assert_eq!((s.hits, s.resident_bytes), (0, 0));
                }
            }
        }
    }
}
