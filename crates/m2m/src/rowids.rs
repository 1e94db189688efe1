//! The id of each of the engine's rows, and the row of each id, in as few bytes as the ids allow: the
//! engine hands out ids in sequence, so the rows of a database that was only added to hold one run of
//! consecutive ids, kept as its first id and length (nothing per row, where a list of the ids and a map
//! back took 20 bytes a row). Ids that ascend with gaps (after deletes and a compaction) are a list
//! searched by bisection (8 bytes a row); ids in any other order (upserts, caller-chosen ids) a list
//! and a compact map (about 20).
//!
//! What it does not do: decide which rows exist (`rows.rs` appends and keeps them).

use m2m_index::IdMap;

/// See the module's docs.
#[derive(Clone, Debug)]
pub(crate) enum RowIds {
    /// Row `r` has id `first + r`, for `len` rows.
    Run { first: u64, len: usize },
    /// Strictly ascending ids.
    Ascending(Vec<u64>),
    /// Ids in any order (each once) and the row of each.
    Mapped(Vec<u64>, IdMap<u32>),
}

impl Default for RowIds {
    fn default() -> RowIds {
        RowIds::Run { first: 0, len: 0 }
    }
}

fn ascending(ids: &[u64]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

impl RowIds {
    /// The ids of rows `0..ids.len()`; `Err` names an id that comes twice.
    pub(crate) fn of(ids: Vec<u64>) -> Result<RowIds, u64> {
        if !ascending(&ids) {
            let map = IdMap::from_pairs(ids.iter().enumerate().map(|(r, &id)| (id, r as u32)).collect())?;
            return Ok(RowIds::Mapped(ids, map));
        }
        Ok(match (ids.first(), ids.last()) {
            (Some(&first), Some(&last)) if last - first == (ids.len() - 1) as u64 => {
                RowIds::Run { first, len: ids.len() }
            }
            (None, _) | (_, None) => RowIds::default(),
            _ => RowIds::Ascending(ids),
        })
    }

    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        match self {
            RowIds::Run { len, .. } => *len,
            RowIds::Ascending(ids) | RowIds::Mapped(ids, _) => ids.len(),
        }
    }

    /// The id of row `r`.
    ///
    /// # Panics
    /// If `r >= self.len()`, like slice indexing.
    pub(crate) fn get(&self, r: usize) -> u64 {
        match self {
            RowIds::Run { first, len } => {
                assert!(r < *len, "row {r} of {len}");
                first + r as u64
            }
            RowIds::Ascending(ids) | RowIds::Mapped(ids, _) => ids[r],
        }
    }

    /// The ids of every row, in row order.
    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = u64> + Clone + '_ {
        (0..self.len()).map(|r| self.get(r))
    }

    /// The row of `id`.
    pub(crate) fn row_of(&self, id: u64) -> Option<usize> {
        match self {
            RowIds::Run { first, len } => id.checked_sub(*first).filter(|&r| r < *len as u64).map(|r| r as usize),
            RowIds::Ascending(ids) => ids.binary_search(&id).ok(),
            RowIds::Mapped(_, map) => map.get(&id).map(|&r| r as usize),
        }
    }

    /// The largest id, if any.
    pub(crate) fn max(&self) -> Option<u64> {
        match self {
            RowIds::Run { first, len } => (*len > 0).then(|| first + (*len as u64 - 1)),
            RowIds::Ascending(ids) => ids.last().copied(),
            RowIds::Mapped(ids, _) => ids.iter().copied().max(),
        }
    }

    /// Appends rows of `new` ids (none of them here, each once: the caller checks).
    pub(crate) fn extend(&mut self, new: &[u64]) {
        let Some(&head) = new.first() else { return };
        match self {
            RowIds::Run { first, len } if *len == 0 || first.checked_add(*len as u64) == Some(head) => {
                if *len == 0 {
                    *first = head;
                }
                if new.iter().enumerate().all(|(i, &id)| head.checked_add(i as u64) == Some(id)) {
                    *len += new.len();
                    return;
                }
            }
            RowIds::Ascending(ids) if ascending(new) && ids.last().is_none_or(|&l| l < head) => {
                ids.extend_from_slice(new);
                return;
            }
            RowIds::Mapped(ids, map) => {
                for (i, &id) in new.iter().enumerate() {
                    map.insert(id, (ids.len() + i) as u32);
                }
                ids.extend_from_slice(new);
                return;
            }
            _ => {}
        }
        let mut all: Vec<u64> = self.iter().collect();
        all.extend_from_slice(new);
        // The caller checked that the new ids are new and distinct.
        *self = RowIds::of(all).unwrap_or_default();
    }

    /// Keeps rows `keep` (in that order; each at most once).
    pub(crate) fn retain_rows(&mut self, keep: &[usize]) {
        // Kept ids are distinct (each was one row's), so this cannot fail.
        *self = RowIds::of(keep.iter().map(|&r| self.get(r)).collect()).unwrap_or_default();
    }

    /// Bytes on the heap.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            RowIds::Run { .. } => 0,
            RowIds::Ascending(ids) => ids.capacity() * 8,
            RowIds::Mapped(ids, map) => ids.capacity() * 8 + map.heap_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    use std::collections::HashMap;

    /// Against a list of ids and a `HashMap` back, through random appends (runs that continue, gaps,
    /// ids out of order) and random `retain_rows`: every row's id, every id's row (present ids and
    /// absent ones), the length and the largest id agree; consecutive ids are kept as a run, ascending
    /// ones without a map. Mutations caught: a run extended by ids with a gap or a wrong start, an
    /// ascending list extended by an id below its last (bisection then misses rows), a map whose new
    /// rows are off by the old length, `retain_rows` classifying kept ids wrongly.
    #[test]
    fn it_answers_as_a_list_and_a_map_through_appends_and_retains() {
        let mut rng = StdRng::seed_from_u64(15);
        for round in 0..200 {
            let mut ids = RowIds::default();
            let mut want: Vec<u64> = Vec::new();
            let mut next = rng.random_range(0..5u64);
            for step in 0..12 {
                if rng.random_bool(0.2) && !want.is_empty() {
                    let keep: Vec<usize> = (0..want.len()).filter(|_| rng.random_bool(0.7)).collect();
                    ids.retain_rows(&keep);
                    want = keep.iter().map(|&r| want[r]).collect();
                } else {
                    let n = rng.random_range(1..30u64);
                    let new: Vec<u64> = match rng.random_range(0..4) {
                        // Continuing the sequence.
                        0 | 1 => (next..next + n).collect(),
                        // After a gap.
                        2 => (next + 3..next + 3 + n).collect(),
                        // Fresh ids, shuffled.
                        _ => {
                            let mut v: Vec<u64> = (next + 100..next + 100 + n).collect();
                            v.reverse();
                            v
                        }
                    };
                    next = new.iter().max().unwrap() + 1;
                    ids.extend(&new);
                    want.extend_from_slice(&new);
                }
                let what = format!("round {round} step {step}");
                assert_eq!(ids.len(), want.len(), "{what}");
                assert!(ids.iter().eq(want.iter().copied()), "{what}: ids");
                assert_eq!(ids.max(), want.iter().copied().max(), "{what}: max");
                let rows: HashMap<u64, usize> = want.iter().enumerate().map(|(r, &id)| (id, r)).collect();
                for id in 0..next + 5 {
                    assert_eq!(ids.row_of(id), rows.get(&id).copied(), "{what}: id {id}");
                }
                let asc = want.windows(2).all(|w| w[0] < w[1]);
                let run = asc && want.last().zip(want.first()).is_none_or(|(l, f)| l - f + 1 == want.len() as u64);
                match &ids {
                    RowIds::Run { .. } => assert!(run, "{what}: a run of ids that are not one"),
                    RowIds::Ascending(_) => assert!(asc && !run, "{what}"),
                    RowIds::Mapped(..) => assert!(!asc, "{what}: a map for ascending ids"),
                }
            }
        }
        assert_eq!(RowIds::of(vec![4, 9, 4]).err(), Some(4));
        let run = RowIds::of((7..70_007).collect()).unwrap();
        assert_eq!(
            (run.heap_bytes(), run.row_of(7), run.row_of(70_006), run.row_of(70_007)),
            (0, Some(0), Some(69_999), None)
        );
    }
}
