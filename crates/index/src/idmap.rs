//! A compact map from ids to small values: the ids known when it was built as one sorted array beside
//! their values (12 to 16 bytes an id, where a `HashMap<u64, _>` of a few million ids takes about 32),
//! and the changes since (inserts, removals) in a small hash map that is merged into the arrays once it
//! grows past an eighth of them. When those ids are one run of consecutive ids (the engine hands out
//! ids in sequence) the array of ids is not kept: an id's value is at `id - first`, and the map costs
//! its values alone. The index's id -> location map, the router's and the engine's id maps.
//!
//! What it does not do: iterate in any order (nothing above needs it), or hold more than one value an id.

use std::collections::HashMap;

/// Ids to values of type `V` (see the module's docs).
#[derive(Clone, Debug, Default)]
pub struct IdMap<V> {
    /// The ids of `vals`, each once.
    keys: Keys,
    vals: Vec<V>,
    /// Changes since the arrays were built: `Some` inserted or replaced, `None` removed (an id of
    /// `keys` only).
    delta: HashMap<u64, Option<V>>,
    len: usize,
}

/// The ids of a map's arrays: consecutive ids from `first` (as many as there are values), or any
/// sorted ids.
#[derive(Clone, Debug)]
enum Keys {
    Run { first: u64 },
    Sorted(Vec<u64>),
}

impl Default for Keys {
    fn default() -> Keys {
        Keys::Sorted(Vec::new())
    }
}

impl Keys {
    /// The keys of `sorted` (ascending, each once): a run when they are consecutive.
    fn of(sorted: Vec<u64>) -> Keys {
        match sorted.first() {
            Some(&first) if sorted.last().is_some_and(|&last| last - first == (sorted.len() - 1) as u64) => {
                Keys::Run { first }
            }
            _ => Keys::Sorted(sorted),
        }
    }
}

impl<V: Copy> IdMap<V> {
    /// An empty map.
    pub fn new() -> IdMap<V> {
        IdMap { keys: Keys::default(), vals: Vec::new(), delta: HashMap::new(), len: 0 }
    }

    /// The map of `pairs`; `Err(id)` names an id that comes twice.
    pub fn from_pairs(mut pairs: Vec<(u64, V)>) -> Result<IdMap<V>, u64> {
        if let Some(map) = Self::from_run(&pairs)? {
            return Ok(map);
        }
        pairs.sort_unstable_by_key(|p| p.0);
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(w[0].0);
        }
        let len = pairs.len();
        let (keys, vals): (Vec<u64>, Vec<V>) = pairs.into_iter().unzip();
        Ok(IdMap { keys: Keys::of(keys), vals, delta: HashMap::new(), len })
    }

    /// The map of `pairs` whose ids span exactly as many consecutive ids as there are pairs (ids handed
    /// out in sequence, in any order: an index's clusters list them by cluster), each value put at its
    /// id's place in one pass instead of a sort; `None` when the ids span more, `Err(id)` for an id
    /// that comes twice.
    fn from_run(pairs: &[(u64, V)]) -> Result<Option<IdMap<V>>, u64> {
        let Some(&(_, v0)) = pairs.first() else { return Ok(None) };
        let (lo, hi) = pairs.iter().fold((u64::MAX, 0), |(lo, hi), &(id, _)| (lo.min(id), hi.max(id)));
        if hi - lo != (pairs.len() - 1) as u64 {
            return Ok(None);
        }
        let mut vals = vec![v0; pairs.len()];
        let mut seen = vec![0u64; pairs.len().div_ceil(64)];
        for &(id, v) in pairs {
            let i = (id - lo) as usize;
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            if seen[word] & bit != 0 {
                return Err(id);
            }
            seen[word] |= bit;
            vals[i] = v;
        }
        let len = vals.len();
        Ok(Some(IdMap { keys: Keys::Run { first: lo }, vals, delta: HashMap::new(), len }))
    }

    /// Where `id` is in the arrays.
    fn base(&self, id: u64) -> Option<usize> {
        match &self.keys {
            Keys::Run { first } => id.checked_sub(*first).filter(|&i| i < self.vals.len() as u64).map(|i| i as usize),
            Keys::Sorted(keys) => keys.binary_search(&id).ok(),
        }
    }

    /// The id at position `i` of the arrays.
    fn key(&self, i: usize) -> u64 {
        match &self.keys {
            Keys::Run { first } => first + i as u64,
            Keys::Sorted(keys) => keys[i],
        }
    }

    /// The value of `id`.
    pub fn get(&self, id: &u64) -> Option<&V> {
        match self.delta.get(id) {
            Some(v) => v.as_ref(),
            None => self.base(*id).map(|i| &self.vals[i]),
        }
    }

    /// Whether `id` is here.
    pub fn contains_key(&self, id: &u64) -> bool {
        self.get(id).is_some()
    }

    /// Sets the value of `id`; returns the old one.
    pub fn insert(&mut self, id: u64, v: V) -> Option<V> {
        let old = self.get(&id).copied();
        match self.base(id) {
            // An id of the arrays is changed in place: no delta entry.
            Some(i) if !self.delta.contains_key(&id) => self.vals[i] = v,
            Some(i) => {
                self.delta.remove(&id);
                self.vals[i] = v;
            }
            None => {
                self.delta.insert(id, Some(v));
            }
        }
        if old.is_none() {
            self.len += 1;
        }
        self.merge_if_large();
        old
    }

    /// Inserts `ids` (none of them here: the caller checked), id `ids[i]` with value `value(i)`. Ids
    /// ascending and above every id here (an engine's automatically numbered rows) go straight onto the
    /// sorted arrays, with no hashing; any others are inserted one by one.
    pub fn extend_new(&mut self, ids: &[u64], value: impl Fn(usize) -> V) {
        let ascending = ids.windows(2).all(|w| w[0] < w[1]);
        // Folding a delta into the arrays copies them: worth it only for a batch of their order of size.
        if ascending && !self.delta.is_empty() && ids.len() >= self.vals.len() / 8 {
            self.merge();
        }
        let n = self.vals.len();
        let last = n.checked_sub(1).map(|i| self.key(i));
        let above = ids.first().is_some_and(|&first| last.is_none_or(|last| first > last));
        if ascending && above && self.delta.is_empty() {
            // Consecutive ids that continue a run (or start one in an empty map) keep no keys.
            let consecutive = ids.first().zip(ids.last()).is_some_and(|(f, l)| l - f == (ids.len() - 1) as u64);
            self.keys = match std::mem::take(&mut self.keys) {
                Keys::Run { first } if consecutive && first + n as u64 == ids[0] => Keys::Run { first },
                Keys::Sorted(keys) if keys.is_empty() && n == 0 && consecutive => Keys::Run { first: ids[0] },
                Keys::Run { first } => {
                    let mut keys: Vec<u64> = (first..first + n as u64).collect();
                    keys.extend_from_slice(ids);
                    Keys::Sorted(keys)
                }
                Keys::Sorted(mut keys) => {
                    keys.extend_from_slice(ids);
                    Keys::Sorted(keys)
                }
            };
            self.vals.extend((0..ids.len()).map(value));
            self.len += ids.len();
            return;
        }
        for (i, &id) in ids.iter().enumerate() {
            self.insert(id, value(i));
        }
    }

    /// Removes `id`; returns its value.
    pub fn remove(&mut self, id: &u64) -> Option<V> {
        let old = self.get(id).copied();
        if old.is_some() {
            self.len -= 1;
            if self.base(*id).is_some() {
                self.delta.insert(*id, None);
            } else {
                self.delta.remove(id);
            }
            self.merge_if_large();
        }
        old
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no id.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes this map holds on the heap (its arrays' capacity and an estimate of the delta's table).
    pub fn heap_bytes(&self) -> usize {
        let keys = match &self.keys {
            Keys::Run { .. } => 0,
            Keys::Sorted(keys) => keys.capacity(),
        };
        keys * 8
            + self.vals.capacity() * std::mem::size_of::<V>()
            + self.delta.capacity() * (9 + std::mem::size_of::<(u64, Option<V>)>())
    }

    fn merge_if_large(&mut self) {
        if self.delta.len() > 1024 + self.vals.len() / 8 {
            self.merge();
        }
    }

    /// Folds the delta into the sorted arrays.
    fn merge(&mut self) {
        let mut added: Vec<(u64, V)> = Vec::new();
        let mut gone = false;
        for (&id, v) in &self.delta {
            match v {
                Some(v) => added.push((id, *v)),
                None => gone = true,
            }
        }
        added.sort_unstable_by_key(|p| p.0);
        let mut keys = Vec::with_capacity(self.len);
        let mut vals = Vec::with_capacity(self.len);
        let mut a = added.into_iter().peekable();
        for (i, &v) in self.vals.iter().enumerate() {
            let k = self.key(i);
            while let Some(&(ak, av)) = a.peek().filter(|p| p.0 < k) {
                keys.push(ak);
                vals.push(av);
                a.next();
            }
            if !(gone && matches!(self.delta.get(&k), Some(None))) {
                keys.push(k);
                vals.push(v);
            }
        }
        for (ak, av) in a {
            keys.push(ak);
            vals.push(av);
        }
        self.keys = Keys::of(keys);
        self.vals = vals;
        self.delta = HashMap::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    /// Against a `HashMap` through 20,000 random inserts, replacements and removals (enough to merge the
    /// delta many times), from arrays of 3,000 scattered ids and from a run of 3,000 consecutive ids
    /// (kept without its keys): every answer and the length agree, and a repeated id is refused with
    /// its name. Mutations caught: a merge that keeps a removed id or drops an inserted one, a replaced
    /// base value not seen through a stale delta entry, `len` off by the re-insert of a removed base id,
    /// a duplicate accepted, a run found for ids past its end or before its start (ids 3,000.. and
    /// below the run's first are probed), scattered ids taken for a run.
    #[test]
    fn it_answers_as_a_hash_map_through_inserts_removals_and_merges() {
        let scattered: Vec<(u64, u32)> = (0..3000u64).map(|i| (i * 7 % 10_007, i as u32)).collect();
        let run: Vec<(u64, u32)> = (0..3000u64).map(|i| (i + 500, (i * 13 % 3000) as u32)).collect();
        for (seed, start) in [(7, scattered), (8, run)] {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut map = IdMap::from_pairs(start.clone()).unwrap();
            let mut want: HashMap<u64, u32> = start.into_iter().collect();
            for id in 0..12_000u64 {
                assert_eq!(map.get(&id), want.get(&id), "get {id} before any change");
            }
            for step in 0..20_000u32 {
                let id = rng.random_range(0..12_000u64);
                if rng.random_bool(0.55) {
                    assert_eq!(map.insert(id, step), want.insert(id, step), "insert {id}");
                } else {
                    assert_eq!(map.remove(&id), want.remove(&id), "remove {id}");
                }
                assert_eq!(map.len(), want.len());
                let probe = rng.random_range(0..12_000u64);
                assert_eq!(map.get(&probe), want.get(&probe), "get {probe} at step {step}");
            }
            for id in 0..12_000u64 {
                assert_eq!(map.get(&id), want.get(&id), "get {id}");
            }
        }
        assert_eq!(IdMap::from_pairs(vec![(5, 1u32), (3, 2), (5, 3)]).err(), Some(5));
    }

    /// A run of consecutive ids costs its values alone, scattered ids their keys too, and a merge that
    /// makes the ids consecutive again drops the keys. Mutations caught: `Keys::of` never finding a run
    /// (keys kept), or taking a run with a gap for one (the first test's answers then differ).
    #[test]
    fn consecutive_ids_keep_no_keys() {
        let run = IdMap::from_pairs((0..5000u64).map(|i| (i + 9, i as u32)).collect()).unwrap();
        assert_eq!(run.heap_bytes(), 5000 * 4, "values only");
        let gap = IdMap::from_pairs((0..5000u64).map(|i| (i + u64::from(i >= 100), i as u32)).collect()).unwrap();
        assert_eq!(gap.heap_bytes(), 5000 * 12, "keys and values");
        assert_eq!(gap.get(&100), None);
        assert_eq!(gap.get(&101), Some(&100));
        // The gap filled and enough changes to merge: a run again.
        let mut m = gap;
        m.insert(100, 7);
        for i in 5001..7000u64 {
            m.insert(i, 1);
        }
        assert_eq!(m.len(), 7000);
        // Merged once, the rest in the delta: a run's values (~26 kB) and the delta (~13 kB), where keys
        // would add ~53 kB.
        assert!(m.heap_bytes() < 7000 * 8, "merged into a run: {} bytes", m.heap_bytes());
        assert_eq!((m.get(&0), m.get(&100), m.get(&6999), m.get(&7000)), (Some(&0), Some(&7), Some(&1), None));
    }

    /// Consecutive ids in any order (an index lists them cluster by cluster) are placed without a sort:
    /// every id answers its own value, the map keeps no keys, and an id twice is named whether the
    /// ids span exactly as many as there are pairs (the one-pass path) or more (the sorted path).
    /// Mutations caught: a value put at `id` rather than `id - first` (out of range: a panic, or wrong
    /// answers), the repeat check dropped from the one-pass path (a map of 5,000 pairs returned).
    #[test]
    fn shuffled_consecutive_ids_are_placed_and_repeats_named() {
        let ids: Vec<u64> = (0..5000u64).map(|i| 77 + (i * 2_654_435_761) % 5000).collect();
        let map = IdMap::from_pairs(ids.iter().map(|&id| (id, id as u32 * 3)).collect()).unwrap();
        assert_eq!(map.heap_bytes(), 5000 * 4, "values only");
        assert!((77..5077u64).all(|id| map.get(&id) == Some(&(id as u32 * 3))));
        assert_eq!((map.get(&76), map.get(&5077), map.len()), (None, None, 5000));
        // One id replaced by a repeat: the ids span one fewer... or as many (the repeat inside the span).
        let mut twice = ids.clone();
        let (a, b) = (twice[10], twice[4000]);
        twice[4000] = a;
        let span_kept = b != 77 && b != 5076;
        let err = IdMap::from_pairs(twice.iter().map(|&id| (id, 0u32)).collect()).unwrap_err();
        assert_eq!(err, a, "the repeat named (span kept: {span_kept})");
        twice[4000] = 1_000_000;
        twice[11] = twice[12];
        let err = IdMap::from_pairs(twice.iter().map(|&id| (id, 0u32)).collect()).unwrap_err();
        assert_eq!(err, twice[12], "a repeat among ids that span more");
    }

    /// `extend_new` against `insert` one by one, on both of its paths (ascending ids above the arrays,
    /// with and without a delta to fold first; ids among the existing ones; descending ones). Mutations
    /// caught: appending ids that are not above the arrays (unsorted keys: later look-ups miss), a
    /// delta not folded before appending (its ids hidden or `len` wrong), values shifted by one.
    #[test]
    fn extend_new_answers_as_inserts() {
        let mut rng = StdRng::seed_from_u64(11);
        for case in 0..60u64 {
            // Cases 40..: a run of consecutive ids (kept without keys), extended by consecutive ids that
            // continue it, by ids past a gap, and by scattered ones.
            let step = if case >= 40 { 1 } else { 3 };
            let start: Vec<(u64, u32)> = (0..rng.random_range(0..3000u64)).map(|i| (i * step, i as u32)).collect();
            let m = start.len() as u64;
            let mut map = IdMap::from_pairs(start.clone()).unwrap();
            let mut want: HashMap<u64, u32> = start.into_iter().collect();
            // A delta of a few inserts and removals first, on some cases.
            for _ in 0..if case >= 40 && case % 2 == 0 { 0 } else { rng.random_range(0..50u32) } {
                let id = rng.random_range(0..9000u64);
                if rng.random_bool(0.5) {
                    assert_eq!(map.insert(id, 1), want.insert(id, 1));
                } else {
                    assert_eq!(map.remove(&id), want.remove(&id));
                }
            }
            let n = rng.random_range(1..5000usize);
            let ids: Vec<u64> = match case % 3 {
                _ if case >= 40 && case % 4 < 2 => {
                    (0..n as u64).map(|i| m + i).filter(|id| !want.contains_key(id)).collect()
                }
                _ if case >= 40 => (0..n as u64).map(|i| 30_000 + i).collect(),
                0 => (0..n as u64).map(|i| 20_000 + 2 * i).collect(),
                1 => (0..n as u64).map(|i| 20_000 - i).filter(|id| !want.contains_key(id)).collect(),
                _ => (0..n as u64).map(|i| 1 + 3 * i).filter(|id| !want.contains_key(id)).collect(),
            };
            map.extend_new(&ids, |i| 100 + i as u32);
            for (i, &id) in ids.iter().enumerate() {
                want.insert(id, 100 + i as u32);
            }
            assert_eq!(map.len(), want.len(), "case {case}");
            if case >= 40 && case % 4 == 0 {
                // A run continued by consecutive ids, no delta: still no keys.
                assert_eq!(map.heap_bytes(), map.vals.capacity() * 4, "case {case}: keys kept");
            }
            for id in 0..35_000u64 {
                assert_eq!(map.get(&id), want.get(&id), "case {case}: get {id}");
            }
        }
    }
}
