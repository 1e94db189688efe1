//! A bounded best-k collector: a min-heap on score whose root is the entry to beat.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A candidate: its score (higher is better) and where it lives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) score: f32,
    pub(crate) cluster: u32,
    pub(crate) pos: u32,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed on score so that `BinaryHeap`'s maximum is the worst kept entry; ties broken by location
    /// so that results are deterministic.
    fn cmp(&self, other: &Self) -> Ordering {
        other.score.total_cmp(&self.score).then_with(|| (self.cluster, self.pos).cmp(&(other.cluster, other.pos)))
    }
}

/// Keeps the `k` highest-scoring entries pushed into it; optionally also watches the `watch`-th best
/// score (`watch <= k`), which the adaptive probe rule compares centroids with.
#[derive(Debug, Default)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
    watch: usize,
    /// The `watch` best scores pushed (as entries, worst at the top), empty when `watch` is 0.
    front: BinaryHeap<Entry>,
}

impl TopK {
    pub(crate) fn reset(&mut self, k: usize) {
        self.reset_watching(k, 0);
    }

    /// [`reset`](Self::reset), and keep the `watch`-th best score at hand ([`watched`](Self::watched)).
    /// The front holds the best `watch` of every entry pushed: each one of them beat the threshold of the
    /// `k` kept (`watch <= k`), so none is skipped by `offer`.
    pub(crate) fn reset_watching(&mut self, k: usize, watch: usize) {
        self.k = k;
        self.heap.clear();
        self.watch = watch.min(k);
        self.front.clear();
    }

    /// The `watch`-th best score pushed so far; -inf while fewer were pushed, or when nothing is watched.
    #[inline]
    pub(crate) fn watched(&self) -> f32 {
        if self.watch == 0 || self.front.len() < self.watch {
            f32::NEG_INFINITY
        } else {
            self.front.peek().map_or(f32::NEG_INFINITY, |e| e.score)
        }
    }

    /// The score a new entry must beat to be kept.
    #[inline]
    pub(crate) fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.peek().map_or(f32::NEG_INFINITY, |e| e.score)
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, e: Entry) {
        Self::keep(&mut self.heap, self.k, e);
        if self.watch > 0 {
            Self::keep(&mut self.front, self.watch, e);
        }
    }

    #[inline]
    fn keep(heap: &mut BinaryHeap<Entry>, k: usize, e: Entry) {
        if heap.len() < k {
            heap.push(e);
        } else if let Some(mut worst) = heap.peek_mut()
            && e.score > worst.score
        {
            *worst = e;
        }
    }

    /// Offers `scores[pos]` for every position of `cluster`. Chunks of 16 with no score above the
    /// threshold are skipped after one vectorisable comparison, which is nearly all of them once the
    /// collector is full.
    pub(crate) fn offer(&mut self, cluster: u32, scores: &[f32]) {
        let mut threshold = self.threshold();
        for (c, chunk) in scores.chunks(16).enumerate() {
            if !chunk.iter().fold(false, |hit, &v| hit | (v > threshold)) {
                continue;
            }
            for (i, &score) in chunk.iter().enumerate() {
                if score > threshold {
                    self.push(Entry { score, cluster, pos: (c * 16 + i) as u32 });
                    threshold = self.threshold();
                }
            }
        }
    }

    /// [`offer`](Self::offer) of the scores `base + est[pos] * inv` (`inv > 0`), without computing
    /// them for chunks of 16 whose largest estimate does not beat the threshold: the score rises with the
    /// estimate (each step of `e as f32 * inv + base` is monotone for `inv > 0`), so the chunk's best
    /// score is that of its largest estimate. Keeps exactly what `offer` of the computed scores keeps.
    pub(crate) fn offer_est(&mut self, cluster: u32, est: &[i32], base: f32, inv: f32) {
        let mut threshold = self.threshold();
        for (c, chunk) in est.chunks(16).enumerate() {
            let top = chunk.iter().copied().fold(i32::MIN, i32::max);
            if base + top as f32 * inv <= threshold {
                continue;
            }
            for (i, &e) in chunk.iter().enumerate() {
                let score = base + e as f32 * inv;
                if score > threshold {
                    self.push(Entry { score, cluster, pos: (c * 16 + i) as u32 });
                    threshold = self.threshold();
                }
            }
        }
    }

    /// The kept entries, best first; the collector is left empty.
    pub(crate) fn drain_sorted(&mut self) -> Vec<Entry> {
        let mut v: Vec<Entry> = self.heap.drain().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keeps_the_k_best_in_order(scores in proptest::collection::vec(-100.0f32..100.0, 0..200), k in 1usize..20) {
            let mut t = TopK::default();
            t.reset(k);
            for (i, &s) in scores.iter().enumerate() {
                t.push(Entry { score: s, cluster: 0, pos: i as u32 });
            }
            let got: Vec<f32> = t.drain_sorted().iter().map(|e| e.score).collect();
            let mut want = scores.clone();
            want.sort_by(|a, b| b.total_cmp(a));
            want.truncate(k);
            prop_assert_eq!(&got, &want);
            // `offer` keeps the same entries, at the same positions.
            t.reset(k);
            t.offer(3, &scores);
            let offered = t.drain_sorted();
            prop_assert_eq!(offered.iter().map(|e| e.score).collect::<Vec<_>>(), want);
            for e in offered {
                prop_assert_eq!(e.cluster, 3);
                prop_assert_eq!(scores[e.pos as usize], e.score);
            }
        }

        /// The watched score is the `watch`-th best of everything offered, whatever the order of the
        /// offers and the chunks skipped against the larger collector's threshold. Catches a front fed
        /// only from entries that stay kept (it would lose ones the larger heap later evicts... which
        /// cannot be among the best `watch`), a front of the wrong size, and a watched score read off
        /// the kept heap instead of the front.
        #[test]
        fn the_watched_score_is_the_watch_th_best_offered(
            scores in proptest::collection::vec(-100.0f32..100.0, 0..200),
            k in 1usize..30,
            watch in 1usize..30,
        ) {
            let mut t = TopK::default();
            t.reset_watching(k, watch);
            let half = scores.len() / 2;
            t.offer(1, &scores[..half]);
            t.offer(2, &scores[half..]);
            let mut want = scores.clone();
            want.sort_by(|a, b| b.total_cmp(a));
            let w = watch.min(k);
            let expected = if want.len() < w { f32::NEG_INFINITY } else { want[w - 1] };
            prop_assert_eq!(t.watched(), expected);
            t.reset(k);
            t.offer(1, &scores);
            prop_assert_eq!(t.watched(), f32::NEG_INFINITY);
        }

        /// `offer_est` keeps the entries `offer` keeps for the scores it would compute, in the same
        /// order, for estimates whose chunk maxima sit on either side of the threshold. Catches a chunk
        /// skipped on its first (not its largest) estimate, a `<` for `<=` that drops a tie with the
        /// threshold differently from `offer`, and a position off by the chunk offset.
        #[test]
        fn offer_est_keeps_what_offer_keeps(
            est in proptest::collection::vec(-300i32..300, 0..200),
            k in 1usize..20,
            base in -2.0f32..2.0,
            inv in 0.001f32..0.1,
        ) {
            let scores: Vec<f32> = est.iter().map(|&e| base + e as f32 * inv).collect();
            let mut a = TopK::default();
            a.reset(k);
            a.offer(5, &scores[..scores.len() / 2]);
            a.offer(6, &scores[scores.len() / 2..]);
            let mut b = TopK::default();
            b.reset(k);
            b.offer_est(5, &est[..est.len() / 2], base, inv);
            b.offer_est(6, &est[est.len() / 2..], base, inv);
            let (a, b) = (a.drain_sorted(), b.drain_sorted());
            prop_assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                prop_assert_eq!((x.score, x.cluster, x.pos), (y.score, y.cluster, y.pos));
            }
        }
    }
}
