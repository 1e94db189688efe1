//! A set of ids as sorted runs of consecutive ids: what an attribute table without a field keeps of its
//! rows (which ids have one). Ids handed out in sequence are one run of 16 bytes, where a list of the
//! ids and a map to their rows took about 32 bytes an id.
//!
//! What it does not do: stay small for scattered ids (one run each); [`IdRuns::scattered`] says when a
//! caller should keep another structure instead.

/// Sorted, disjoint, non-adjacent runs `first..=last` of ids (see the module's docs; inclusive, so that
/// `u64::MAX` is an id like any other), keyed by `first` in a B-tree: adding or removing one id is
/// logarithmic in the runs (a sorted `Vec` of runs rebuilt per change made each single-id delete of a
/// database with 100k runs cost a millisecond).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdRuns {
    runs: std::collections::BTreeMap<u64, u64>,
    len: usize,
}

impl IdRuns {
    /// Number of ids.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Number of runs.
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The run holding `id`, or the last run before it.
    fn at_or_before(&self, id: u64) -> Option<(u64, u64)> {
        self.runs.range(..=id).next_back().map(|(&first, &last)| (first, last))
    }

    /// Whether `id` is here.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.at_or_before(id).is_some_and(|(_, last)| id <= last)
    }

    /// The ids, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|(&first, &last)| first..=last)
    }

    /// Whether the runs are too many for their ids (more than half as many as the ids, past a few
    /// thousand): the ids are scattered and a list of them would be smaller and quicker to change.
    pub(crate) fn scattered(&self) -> bool {
        self.runs.len() > 4096 && self.runs.len() * 2 > self.len
    }

    /// Adds `ids` (any order; ids already here and repeats are added once). Ids past the last run, in
    /// ascending order, extend it in place; any other id is placed in its run (logarithmic).
    pub(crate) fn insert(&mut self, ids: &[u64]) {
        for &id in ids {
            if let Some(mut last) = self.runs.last_entry()
                && last.get().checked_add(1) == Some(id)
            {
                *last.get_mut() = id;
                self.len += 1;
                continue;
            }
            self.insert_one(id);
        }
    }

    fn insert_one(&mut self, id: u64) {
        let before = self.at_or_before(id);
        if before.is_some_and(|(_, last)| id <= last) {
            return;
        }
        // `last < id` here, so `last + 1` cannot overflow.
        let joins_before = before.filter(|&(_, last)| last + 1 == id).map(|(first, _)| first);
        let after = id.checked_add(1).and_then(|next| self.runs.get(&next).map(|&last| (next, last)));
        let end = match after {
            Some((next, last)) => {
                self.runs.remove(&next);
                last
            }
            None => id,
        };
        match joins_before {
            Some(first) => _ = self.runs.insert(first, end),
            None => _ = self.runs.insert(id, end),
        }
        self.len += 1;
    }

    /// Removes `ids` (absent ones are ignored); logarithmic in the runs per id.
    pub(crate) fn remove(&mut self, ids: &[u64]) {
        for &id in ids {
            let Some((first, last)) = self.at_or_before(id).filter(|&(_, last)| id <= last) else { continue };
            if first < id {
                self.runs.insert(first, id - 1);
            } else {
                self.runs.remove(&first);
            }
            if id < last {
                self.runs.insert(id + 1, last);
            }
            self.len -= 1;
        }
    }

    /// Bytes on the heap (an estimate: a B-tree node holds up to 11 runs of 16 bytes and its links, and
    /// runs made in ascending order leave nodes about half full: ~42 bytes a run measured).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.runs.len() * 42
    }
}

/// The live ids of a database ([`Db`](crate::Db)): sorted runs while the ids are mostly consecutive
/// (ids handed out in sequence: one run of ~42 bytes, where a hash set takes about 16 bytes an id), a hash
/// set once they are scattered (more runs than 4096 and than a sixteenth of the ids), so that the set
/// stays small (a run per id would take ~42 bytes).
#[derive(Clone, Debug)]
pub(crate) enum LiveIds {
    Runs(IdRuns),
    Set(std::collections::HashSet<u64>),
}

impl Default for LiveIds {
    fn default() -> Self {
        LiveIds::Runs(IdRuns::default())
    }
}

impl LiveIds {
    /// Number of ids.
    pub(crate) fn len(&self) -> usize {
        match self {
            LiveIds::Runs(r) => r.len(),
            LiveIds::Set(s) => s.len(),
        }
    }

    /// Whether there is no id.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is here.
    pub(crate) fn contains(&self, id: u64) -> bool {
        match self {
            LiveIds::Runs(r) => r.contains(id),
            LiveIds::Set(s) => s.contains(&id),
        }
    }

    /// Adds `ids` (repeats and ids already here are added once).
    pub(crate) fn insert(&mut self, ids: &[u64]) {
        match self {
            LiveIds::Runs(r) => {
                r.insert(ids);
                if r.runs() > 4096 && r.runs() * 16 > r.len() {
                    *self = LiveIds::Set(r.iter().collect());
                }
            }
            LiveIds::Set(s) => s.extend(ids.iter().copied()),
        }
    }

    /// Removes `ids` (absent ones are ignored).
    pub(crate) fn remove(&mut self, ids: &[u64]) {
        match self {
            LiveIds::Runs(r) => {
                r.remove(ids);
                if r.runs() > 4096 && r.runs() * 16 > r.len() {
                    *self = LiveIds::Set(r.iter().collect());
                }
            }
            LiveIds::Set(s) => ids.iter().for_each(|id| _ = s.remove(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Against a `BTreeSet` through random inserts (ascending extensions, repeats, ids before the last
    /// run) and removals: every id's membership, the length, the ids in order, and the runs as few as
    /// the ids allow (no two adjacent or overlapping). Mutations caught: an extension that skips the
    /// adjacency check (a run per id), `contains` off by one at a run's end, a removal that drops the
    /// rest of a run or keeps the removed id, `len` counting a repeat twice.
    #[test]
    fn it_answers_as_a_set_with_the_fewest_runs() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut runs = IdRuns::default();
        let mut want = BTreeSet::new();
        let mut top = 0u64;
        for step in 0..3000 {
            let ids: Vec<u64> = match next(4) {
                0 => {
                    let n = next(20);
                    let v: Vec<u64> = (top..top + n).collect();
                    top += n + next(2);
                    v
                }
                1 => (0..next(6)).map(|_| next(top + 10)).collect(),
                _ => {
                    let gone: Vec<u64> = (0..next(8)).map(|_| next(top + 10)).collect();
                    runs.remove(&gone);
                    gone.iter().for_each(|id| _ = want.remove(id));
                    Vec::new()
                }
            };
            runs.insert(&ids);
            want.extend(ids);
            assert_eq!(runs.len(), want.len(), "step {step}");
            assert!(runs.iter().eq(want.iter().copied()), "step {step}: the ids");
            let list: Vec<(u64, u64)> = runs.runs.iter().map(|(&f, &l)| (f, l)).collect();
            assert!(list.windows(2).all(|w| w[0].1 + 1 < w[1].0), "step {step}: runs adjacent or overlapping");
            assert!(list.iter().all(|r| r.0 <= r.1), "step {step}: an empty run");
            let probes: Vec<u64> =
                if step % 25 == 0 { (0..top + 12).collect() } else { (0..50).map(|_| next(top + 12)).collect() };
            for id in probes {
                assert_eq!(runs.contains(id), want.contains(&id), "step {step}: id {id}");
            }
        }
        let dense = {
            let mut r = IdRuns::default();
            r.insert(&(0..10_000).collect::<Vec<u64>>());
            r.insert(&(10_000..20_000).collect::<Vec<u64>>());
            r
        };
        assert!(dense.runs.iter().eq([(&0, &19_999)]), "ids in sequence are one run");
        assert!(!dense.scattered());
        // The largest ids: no overflow at the end of the range.
        let mut top = IdRuns::default();
        top.insert(&[u64::MAX - 1, u64::MAX]);
        assert!(top.contains(u64::MAX) && top.len() == 2);
        top.remove(&[u64::MAX]);
        assert!(top.runs.iter().eq([(&(u64::MAX - 1), &(u64::MAX - 1))]) && top.len() == 1);
        top.insert(&[3, u64::MAX]);
        top.remove(&[u64::MAX - 1]);
        assert!(top.iter().eq([3, u64::MAX]));
    }

    /// The live ids against a `BTreeSet` through batches of consecutive ids, scattered ids (which turn
    /// the runs into a hash set past 4,096 runs) and removals. Mutations caught: the switch losing ids
    /// (`Set` built from the ids removed, or empty), `remove` on the set ignoring ids, `len` of the
    /// runs counting an id added twice (the merging insert: ids already here filtered out first).
    #[test]
    fn live_ids_answer_as_a_set_and_turn_into_a_hash_set_when_scattered() {
        let mut live = LiveIds::default();
        let mut want = BTreeSet::new();
        let check = |live: &LiveIds, want: &BTreeSet<u64>, what: &str| {
            assert_eq!(live.len(), want.len(), "{what}");
            for id in (0..200).chain((0..400).map(|i| i * 997)) {
                assert_eq!(live.contains(id), want.contains(&id), "{what}: {id}");
            }
        };
        let dense: Vec<u64> = (0..50_000).collect();
        live.insert(&dense);
        want.extend(dense.iter().copied());
        live.insert(&[7, 7, 49_999, 50_000]);
        want.insert(50_000);
        check(&live, &want, "dense");
        assert!(matches!(live, LiveIds::Runs(_)), "consecutive ids are runs");
        let gone: Vec<u64> = (0..50_000).step_by(3).collect();
        live.remove(&gone);
        gone.iter().for_each(|id| _ = want.remove(id));
        check(&live, &want, "every third removed");
        assert!(matches!(live, LiveIds::Set(_)), "16,667 runs for 33,334 ids: a set");
        let scattered: Vec<u64> = (0..2_000u64).map(|i| 1_000_000 + i * 1_000).collect();
        live.insert(&scattered);
        want.extend(scattered.iter().copied());
        live.remove(&[1, 2, 1_000_000]);
        [1, 2, 1_000_000].iter().for_each(|id| _ = want.remove(id));
        check(&live, &want, "scattered, as a set");
        assert!(live.contains(1_001_000) && !live.contains(1_000_000));
    }
}
