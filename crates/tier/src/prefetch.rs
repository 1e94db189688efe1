//! Prefetch: a background thread walks an access plan (the blocks the next queries or training batches
//! will read, in order), brings each block from the cold tier into the warm one, and hands it over a
//! bounded channel, so that the consumer finds it ready.
//!
//! Cancellation: dropping the [`Prefetch`] drops the receiving end first, which makes the thread's next
//! send fail, so the thread returns; `Drop` then joins it. No thread outlives its `Prefetch`, and none can
//! block forever (the only blocking call is the send, which fails once the receiver is gone).

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, bounded};

use crate::{BlockKey, BlockStore, Columns, Error, HotKey, HotTier, Residency, Result};

/// One delivered block, or the error that stopped the prefetch.
pub type Fetched<T = Arc<Columns>> = Result<(BlockKey, T)>;

/// A running prefetch: an iterator over the plan's blocks, in plan order.
#[derive(Debug)]
pub struct Prefetch<T = Arc<Columns>> {
    rx: Option<Receiver<Fetched<T>>>,
    handle: Option<JoinHandle<()>>,
    stats: PrefetchStats,
}

/// How often the consumer found its next block ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Blocks that were waiting in the channel when asked for: prefetch hits.
    pub ready: u64,
    /// Blocks the consumer had to wait for.
    pub waited: u64,
}

impl PrefetchStats {
    /// `ready / (ready + waited)`, or 1 when nothing was asked for.
    pub fn hit_rate(&self) -> f64 {
        let n = self.ready + self.waited;
        if n == 0 { 1.0 } else { self.ready as f64 / n as f64 }
    }
}

impl Prefetch {
    /// Starts a thread that loads `plan`'s blocks (cold -> warm) at most `depth` (at least 1) ahead of
    /// the consumer, and tells the kernel about the block after those (`madvise(WILLNEED)`).
    pub fn start(store: Arc<BlockStore>, plan: Vec<BlockKey>, depth: usize) -> Result<Prefetch> {
        Prefetch::start_with(store, plan, depth, |_, block| Ok(block))
    }
}

impl<B: Clone + Send + Sync + 'static> Prefetch<B> {
    /// Like [`Prefetch::start`], and each block's vectors are also made resident in `hot` (cold -> warm
    /// -> hot, evictable, under [`HotKey::Vectors`]) before it is handed over as the hot tier's handle.
    pub fn start_hot<H: HotTier<Block = B> + 'static>(
        store: Arc<BlockStore>,
        plan: Vec<BlockKey>,
        depth: usize,
        hot: Arc<H>,
    ) -> Result<Prefetch<B>> {
        Prefetch::start_with(store, plan, depth, move |key, block| {
            hot.upload(HotKey::Vectors(key), bytemuck::cast_slice(&block.mu), Residency::Evictable)
        })
    }
}

impl<T: Send + 'static> Prefetch<T> {
    /// Like [`Prefetch::start`], with `stage` applied to each block on the prefetch thread (a further
    /// move, such as an upload to the hot tier); an error from it is delivered and stops the prefetch.
    pub fn start_with<F>(store: Arc<BlockStore>, plan: Vec<BlockKey>, depth: usize, mut stage: F) -> Result<Prefetch<T>>
    where
        F: FnMut(BlockKey, Arc<Columns>) -> Result<T> + Send + 'static,
    {
        let depth = depth.max(1);
        let (tx, rx) = bounded(depth);
        let handle = std::thread::Builder::new()
            .name("m2m-prefetch".into())
            .spawn(move || {
                for (i, &key) in plan.iter().enumerate() {
                    if let Some(&next) = plan.get(i + depth) {
                        store.advise(next);
                    }
                    let item = store.get(key).and_then(|block| stage(key, block)).map(|v| (key, v));
                    let failed = item.is_err();
                    // A failed send means the consumer is gone: stop. An error is sent, then we stop.
                    if tx.send(item).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Io { path: "<prefetch thread>".into(), source: e })?;
        Ok(Prefetch { rx: Some(rx), handle: Some(handle), stats: PrefetchStats::default() })
    }

    /// How often the next block was ready when asked for.
    pub fn stats(&self) -> PrefetchStats {
        self.stats
    }
}

impl<T> Iterator for Prefetch<T> {
    type Item = Fetched<T>;

    fn next(&mut self) -> Option<Self::Item> {
        let rx = self.rx.as_ref()?;
        match rx.try_recv() {
            Ok(item) => {
                self.stats.ready += 1;
                Some(item)
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => None,
            Err(crossbeam_channel::TryRecvError::Empty) => {
                let item = rx.recv().ok()?;
                self.stats.waited += 1;
                Some(item)
            }
        }
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        // Receiver first, so that a send blocked on a full channel fails and the thread can finish.
        drop(self.rx.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
