//! The warm tier: blocks of rows copied out of memory-mapped segments (the cold tier) into RAM, kept in
//! a concurrent cache with a byte budget.
//!
//! A block is `block_rows` consecutive rows of one segment, without the rows the snapshot counts as
//! deleted. Blocks of the in-memory table are served straight from it. The cache is `quick_cache`'s
//! (scan-resistant, sharded), weighted by block bytes; a block larger than the whole budget is served
//! without being kept.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::{Columns, ColumnsRef, Memtable, Result, Segment, Snapshot};

/// Rows per block unless set otherwise.
pub const DEFAULT_BLOCK_ROWS: usize = 1024;
/// The pseudo-segment id of the in-memory table's blocks.
pub const MEMTABLE: u64 = u64::MAX;

/// Which block: a segment id (or [`MEMTABLE`]) and the block's number in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// Segment id, or [`MEMTABLE`].
    pub segment: u64,
    /// Block number within the segment.
    pub block: u32,
}

/// Counters of a [`BlockStore`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WarmStats {
    /// Block requests answered from the cache.
    pub hits: u64,
    /// Block requests that read the cold tier.
    pub misses: u64,
    /// Bytes copied out of the cold tier.
    pub cold_bytes: u64,
    /// Bytes the cache holds now.
    pub resident_bytes: u64,
    /// The cache's byte budget.
    pub budget_bytes: u64,
}

#[derive(Clone)]
struct BlockBytes;

impl Weighter<BlockKey, Arc<Columns>> for BlockBytes {
    fn weight(&self, _key: &BlockKey, block: &Arc<Columns>) -> u64 {
        block_bytes(block).max(1)
    }
}

fn block_bytes(b: &Columns) -> u64 {
    (b.ids.len() * 8 + (b.norms.len() + b.kappa.len() + b.alpha.len() + b.mu.len()) * 4) as u64
}

/// Serves blocks of a [`Snapshot`] through the warm cache.
pub struct BlockStore {
    segments: HashMap<u64, Arc<Segment>>,
    order: Vec<u64>,
    memtable: Memtable,
    /// The in-memory table's blocks: (chunk, first row) of each.
    memtable_blocks: Vec<(usize, usize)>,
    deleted: Arc<HashSet<u64>>,
    block_rows: usize,
    cache: Cache<BlockKey, Arc<Columns>, BlockBytes>,
    budget: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    cold_bytes: AtomicU64,
}

impl std::fmt::Debug for BlockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockStore").field("segments", &self.order).field("stats", &self.stats()).finish()
    }
}

impl BlockStore {
    /// A store over `snapshot` with a cache of `budget_bytes` and blocks of `block_rows` rows (at least 1).
    pub fn new(snapshot: &Snapshot, budget_bytes: u64, block_rows: usize) -> BlockStore {
        let block_rows = block_rows.max(1);
        let dim = snapshot.memtable.dim().max(1);
        let estimated_block = (block_rows * (20 + 4 * dim)) as u64;
        let items = usize::try_from(budget_bytes / estimated_block.max(1)).unwrap_or(usize::MAX).clamp(16, 1 << 20);
        BlockStore {
            segments: snapshot.segments.iter().map(|s| (s.id(), Arc::clone(s))).collect(),
            order: snapshot.segments.iter().map(|s| s.id()).collect(),
            memtable: snapshot.memtable.clone(),
            memtable_blocks: snapshot
                .memtable
                .chunks()
                .iter()
                .enumerate()
                .flat_map(|(c, chunk)| (0..chunk.rows()).step_by(block_rows).map(move |start| (c, start)))
                .collect(),
            deleted: Arc::clone(&snapshot.deleted),
            block_rows,
            cache: Cache::with_weighter(items, budget_bytes.max(1), BlockBytes),
            budget: budget_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            cold_bytes: AtomicU64::new(0),
        }
    }

    /// Rows per block.
    pub fn block_rows(&self) -> usize {
        self.block_rows
    }

    fn blocks_of(&self, rows: usize) -> u32 {
        u32::try_from(rows.div_ceil(self.block_rows)).unwrap_or(u32::MAX)
    }

    /// Every block in storage order: the segments oldest first, then the in-memory table. This is the
    /// access plan of a sequential epoch.
    pub fn blocks(&self) -> Vec<BlockKey> {
        let mut out = Vec::new();
        for &id in &self.order {
            let n = self.blocks_of(self.segments[&id].rows());
            out.extend((0..n).map(|block| BlockKey { segment: id, block }));
        }
        let n = u32::try_from(self.memtable_blocks.len()).unwrap_or(u32::MAX);
        out.extend((0..n).map(|block| BlockKey { segment: MEMTABLE, block }));
        out
    }

    /// The block `key` (live rows only): from the cache, or copied out of its segment. An unknown key is
    /// an empty block.
    pub fn get(&self, key: BlockKey) -> Result<Arc<Columns>> {
        let empty = || Arc::new(Columns { dim: self.memtable.dim(), ..Columns::default() });
        if key.segment == MEMTABLE {
            let Some(&(chunk, start)) = self.memtable_blocks.get(key.block as usize) else { return Ok(empty()) };
            let c = self.memtable.chunks()[chunk].view();
            let end = (start + self.block_rows).min(c.rows());
            let mut out = Columns { dim: c.dim, ..Columns::default() };
            (start..end).for_each(|i| out.push_row(c, i));
            return Ok(Arc::new(out));
        }
        let Some(segment) = self.segments.get(&key.segment) else { return Ok(empty()) };
        let mut loaded = false;
        let block = self.cache.get_or_insert_with(&key, || -> Result<Arc<Columns>> {
            loaded = true;
            let block = self.copy_rows(segment.columns(), key.block);
            self.cold_bytes.fetch_add(block_bytes(&block), Ordering::Relaxed);
            Ok(Arc::new(block))
        })?;
        let counter = if loaded { &self.misses } else { &self.hits };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(block)
    }

    /// The ids of the live rows of block `key`, in the order [`get`](Self::get) returns its rows, read
    /// from the ids column alone (no vector is touched). An unknown key has none.
    pub fn ids_of(&self, key: BlockKey) -> Vec<u64> {
        if key.segment == MEMTABLE {
            let Some(&(chunk, start)) = self.memtable_blocks.get(key.block as usize) else { return Vec::new() };
            let c = self.memtable.chunks()[chunk].view();
            return c.ids[start..(start + self.block_rows).min(c.rows())].to_vec();
        }
        let Some(segment) = self.segments.get(&key.segment) else { return Vec::new() };
        let c = segment.columns();
        let start = (key.block as usize).saturating_mul(self.block_rows).min(c.rows());
        let end = (start + self.block_rows).min(c.rows());
        c.ids[start..end].iter().copied().filter(|id| !self.deleted.contains(id)).collect()
    }

    /// Tells the kernel that the rows of `key` will be read soon (a hint; errors are ignored).
    pub fn advise(&self, key: BlockKey) {
        if let Some(segment) = self.segments.get(&key.segment) {
            let start = key.block as usize * self.block_rows;
            segment.advise_will_need(start..(start + self.block_rows).min(segment.rows()));
        }
    }

    fn copy_rows(&self, c: ColumnsRef<'_>, block: u32) -> Columns {
        let dim = c.dim;
        let start = (block as usize).saturating_mul(self.block_rows).min(c.rows());
        let end = (start + self.block_rows).min(c.rows());
        let mut out = Columns { dim, ..Columns::default() };
        (start..end).filter(|&i| !self.deleted.contains(&c.ids[i])).for_each(|i| out.push_row(c, i));
        out
    }

    /// The counters.
    pub fn stats(&self) -> WarmStats {
        WarmStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            cold_bytes: self.cold_bytes.load(Ordering::Relaxed),
            resident_bytes: self.cache.weight(),
            budget_bytes: self.budget,
        }
    }
}
