//! The hot tier: blocks resident where the kernels read them, behind the [`HotTier`] interface.
//!
//! [`HotCache`] holds the policy (pinned blocks, evictable blocks under a byte budget, counters) over a
//! [`HotStorage`] that makes bytes resident: m2m-gpu's stores them in device-local Vulkan buffers, and
//! [`RamStorage`] keeps them in RAM, 64-byte aligned, when there is no device ([`RamHot`]: the index's
//! centroids and compact codes, which every query reads).
//!
//! Blocks are either [`Residency::Pinned`] (never evicted: the centroids, and the codes while an index is
//! served) or [`Residency::Evictable`] (staged ahead of use by prefetch, evicted by `quick_cache`'s policy
//! when the budget is full). Pinned bytes count against the same budget, and pinning more than it holds is
//! refused with [`Error::OverBudget`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aligned_vec::{AVec, ConstAlign};
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::{BlockKey, Error, Result};

/// Which block of the hot tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HotKey {
    /// The index's centroids (coarse and fine).
    Centroids,
    /// The compact codes of one fine cluster.
    Codes {
        /// The cluster.
        cluster: u32,
    },
    /// Full vectors of one warm block, staged for re-ranking or a training batch.
    Vectors(BlockKey),
}

/// Whether a block may be evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residency {
    /// Stays until removed; counts against the budget.
    Pinned,
    /// May be evicted when the budget is full.
    Evictable,
}

/// Counters of a hot tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotStats {
    /// `get` calls that found the block.
    pub hits: u64,
    /// `get` calls that did not.
    pub misses: u64,
    /// Blocks uploaded.
    pub uploads: u64,
    /// Bytes uploaded.
    pub upload_bytes: u64,
    /// Bytes resident now (pinned and evictable).
    pub resident_bytes: u64,
    /// Of which pinned.
    pub pinned_bytes: u64,
    /// The byte budget.
    pub budget_bytes: u64,
}

/// Storage of resident blocks: device memory in m2m-gpu, RAM in [`RamHot`].
pub trait HotTier: Send + Sync + std::fmt::Debug {
    /// A handle to a resident block, as the kernels of this tier consume it.
    type Block: Clone + Send + Sync + 'static;

    /// A name for logs ("ram", or the device's name).
    fn name(&self) -> &str;

    /// Makes `bytes` resident under `key` (replacing an older block of that key) and returns the handle.
    /// Errors: [`Error::OverBudget`] when a pinned block does not fit beside the other pinned ones; a
    /// device error in device implementations.
    fn upload(&self, key: HotKey, bytes: &[u8], residency: Residency) -> Result<Self::Block>;

    /// The resident block of `key`, if any.
    fn get(&self, key: HotKey) -> Option<Self::Block>;

    /// Drops the block of `key`; returns whether there was one.
    fn remove(&self, key: HotKey) -> bool;

    /// The counters.
    fn stats(&self) -> HotStats;
}

/// Where a [`HotCache`] puts its blocks: RAM, or a device.
pub trait HotStorage: Send + Sync + std::fmt::Debug {
    /// A handle to stored bytes.
    type Block: Clone + Send + Sync + 'static;

    /// A name for logs.
    fn name(&self) -> &str;

    /// Makes `bytes` resident. Errors: [`Error::Device`] when the device refuses.
    fn store(&self, bytes: &[u8]) -> Result<Self::Block>;

    /// Bytes a block occupies.
    fn bytes(block: &Self::Block) -> u64;
}

/// Bytes of a block resident in RAM, 64-byte aligned so that they can be read as f32 or wider lanes.
#[derive(Debug)]
pub struct HotBytes(AVec<u8, ConstAlign<64>>);

impl HotBytes {
    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes as values of `T`, or `None` when the length is not a multiple of `T`'s size.
    pub fn cast<T: bytemuck::Pod>(&self) -> Option<&[T]> {
        bytemuck::try_cast_slice(&self.0).ok()
    }
}

/// Storage in RAM.
#[derive(Clone, Copy, Debug, Default)]
pub struct RamStorage;

impl HotStorage for RamStorage {
    type Block = Arc<HotBytes>;

    fn name(&self) -> &str {
        "ram"
    }

    fn store(&self, bytes: &[u8]) -> Result<Arc<HotBytes>> {
        Ok(Arc::new(HotBytes(AVec::from_slice(64, bytes))))
    }

    fn bytes(block: &Arc<HotBytes>) -> u64 {
        block.0.len() as u64
    }
}

/// The hot tier without a device: blocks resident in RAM.
pub type RamHot = HotCache<RamStorage>;

struct Bytes<S>(std::marker::PhantomData<fn() -> S>);

impl<S> Clone for Bytes<S> {
    fn clone(&self) -> Self {
        Bytes(std::marker::PhantomData)
    }
}

impl<S: HotStorage> Weighter<HotKey, S::Block> for Bytes<S> {
    fn weight(&self, _key: &HotKey, block: &S::Block) -> u64 {
        S::bytes(block).max(1)
    }
}

/// A hot tier: pinned and evictable blocks of a [`HotStorage`] under one byte budget.
pub struct HotCache<S: HotStorage> {
    storage: S,
    budget: u64,
    pinned: RwLock<HashMap<HotKey, S::Block>>,
    pinned_bytes: AtomicU64,
    cache: Cache<HotKey, S::Block, Bytes<S>>,
    hits: AtomicU64,
    misses: AtomicU64,
    uploads: AtomicU64,
    upload_bytes: AtomicU64,
}

impl<S: HotStorage> std::fmt::Debug for HotCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotCache").field("storage", &self.storage).field("stats", &self.stats()).finish()
    }
}

impl RamHot {
    /// A RAM hot tier holding at most `budget_bytes`.
    pub fn new(budget_bytes: u64) -> RamHot {
        HotCache::with_storage(RamStorage, budget_bytes)
    }
}

impl<S: HotStorage> HotCache<S> {
    /// A hot tier over `storage` holding at most `budget_bytes`.
    pub fn with_storage(storage: S, budget_bytes: u64) -> HotCache<S> {
        HotCache {
            storage,
            budget: budget_bytes,
            pinned: RwLock::new(HashMap::new()),
            pinned_bytes: AtomicU64::new(0),
            cache: Cache::with_options(
                options(budget_bytes),
                Bytes(std::marker::PhantomData),
                Default::default(),
                Default::default(),
            ),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            upload_bytes: AtomicU64::new(0),
        }
    }

    /// The storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    fn pinned_map(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<HotKey, S::Block>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts and removes).
        self.pinned.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Gives the evictable part what the pinned part leaves of the budget.
    fn resize(&self, pinned: u64) {
        self.pinned_bytes.store(pinned, Ordering::Relaxed);
        self.cache.set_capacity(self.budget.saturating_sub(pinned).max(1));
    }
}

/// The evictable part's cache: few large blocks, so one shard (a block must fit a shard's share of the
/// budget), and half of it for blocks seen again, because staged blocks are read soon after their upload.
fn options(budget: u64) -> quick_cache::Options {
    quick_cache::OptionsBuilder::new()
        .shards(1)
        .estimated_items_capacity(256)
        .hot_allocation(0.5)
        .weight_capacity(budget.max(1))
        .build()
        .unwrap_or_else(|e| unreachable!("every option is set: {e:?}"))
}

impl<S: HotStorage> HotTier for HotCache<S> {
    type Block = S::Block;

    fn name(&self) -> &str {
        self.storage.name()
    }

    fn upload(&self, key: HotKey, bytes: &[u8], residency: Residency) -> Result<S::Block> {
        let len = bytes.len() as u64;
        let block = match residency {
            Residency::Pinned => {
                let mut pinned = self.pinned_map();
                let replaced = pinned.get(&key).map_or(0, |b| S::bytes(b));
                let others = self.pinned_bytes.load(Ordering::Relaxed) - replaced;
                if others + len > self.budget {
                    return Err(Error::OverBudget {
                        what: format!("pinned hot block {key:?}"),
                        bytes: others + len,
                        budget: self.budget,
                    });
                }
                let block = self.storage.store(bytes)?;
                self.cache.remove(&key);
                pinned.insert(key, block.clone());
                self.resize(others + len);
                block
            }
            Residency::Evictable => {
                let block = self.storage.store(bytes)?;
                let mut pinned = self.pinned_map();
                if let Some(old) = pinned.remove(&key) {
                    let now = self.pinned_bytes.load(Ordering::Relaxed) - S::bytes(&old);
                    self.resize(now);
                }
                drop(pinned);
                self.cache.insert(key, block.clone());
                block
            }
        };
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.upload_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(block)
    }

    fn get(&self, key: HotKey) -> Option<S::Block> {
        let found = self
            .pinned
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned()
            .or_else(|| self.cache.get(&key));
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn remove(&self, key: HotKey) -> bool {
        let mut pinned = self.pinned_map();
        if let Some(old) = pinned.remove(&key) {
            let now = self.pinned_bytes.load(Ordering::Relaxed) - S::bytes(&old);
            self.resize(now);
            return true;
        }
        self.cache.remove(&key).is_some()
    }

    fn stats(&self) -> HotStats {
        let pinned = self.pinned_bytes.load(Ordering::Relaxed);
        HotStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            uploads: self.uploads.load(Ordering::Relaxed),
            upload_bytes: self.upload_bytes.load(Ordering::Relaxed),
            resident_bytes: pinned + self.cache.weight(),
            pinned_bytes: pinned,
            budget_bytes: self.budget,
        }
    }
}
