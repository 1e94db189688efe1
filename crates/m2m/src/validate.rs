//! The facade's checks of what it decodes from its blobs (the stored index with its ids, kappa and alpha;
//! the learned kappa and alpha), and the one place that bounds a retrieval's `k`.
//!
//! A blob's checksum proves that its bytes are the ones written, not that they are sane: every decoded
//! structure is checked here for internal consistency (lengths, ranges, ids) before any of it is used,
//! so that a forged file is an [`Error::Tier`] `Corrupt` naming it, never a panic. The index's own parts
//! are checked by `m2m_index::Index::from_parts`.

use std::path::Path;

use m2m_index::Index;

use crate::engine::{Learned, StoredIndex};
use crate::{Error, M2mConfig, Result};

/// Offset of a blob's payload (after its 20-byte header): where decoded-content errors point.
const PAYLOAD: u64 = 20;

/// Largest learned kappa or alpha accepted from a file. Kappa is clipped at build to max_kappa x (p - 1)
/// (max_kappa <= 1e9 by its setting's check, p <= 2^20), far below; a value near f32::MAX (3e38) is
/// damage that would overflow to inf in the sampler's arithmetic.
const MAX_LEARNED: f32 = 1e16;

pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Tier(m2m_tier::Error::Corrupt { path: path.to_path_buf(), offset: PAYLOAD, reason: reason.into() })
}

/// Columns of learned values by id: as many kappa and alpha as ids, ids distinct, every value finite and
/// positive (the splat invariant).
pub(crate) fn learned(path: &Path, ids: &[u64], kappa: &[f32], alpha: &[f32]) -> Result<()> {
    if kappa.len() != ids.len() || alpha.len() != ids.len() {
        return Err(corrupt(
            path,
            format!("{} ids with {} kappa and {} alpha values", ids.len(), kappa.len(), alpha.len()),
        ));
    }
    if let Some(id) = repeated_id(ids) {
        return Err(corrupt(path, format!("id {id} stored twice")));
    }
    for (what, values) in [("kappa", kappa), ("alpha", alpha)] {
        if let Some(i) = values.iter().position(|v| !(v.is_finite() && *v > 0.0 && *v <= MAX_LEARNED)) {
            return Err(corrupt(
                path,
                format!("{what} of id {} is {}, not in (0, {MAX_LEARNED:e}]", ids[i], values[i]),
            ));
        }
    }
    Ok(())
}

/// An id `ids` holds twice, if any. No hash set (it was a fifth of an open's CPU at 1M rows): one
/// pass when the ids ascend (a build stores them so) or span no more consecutive ids than there are
/// (a bitmap), a sorted copy otherwise.
pub(crate) fn repeated_id(ids: &[u64]) -> Option<u64> {
    if ids.windows(2).all(|w| w[0] < w[1]) {
        return None;
    }
    let (lo, hi) = ids.iter().fold((u64::MAX, 0), |(lo, hi), &id| (lo.min(id), hi.max(id)));
    if hi - lo < ids.len() as u64 {
        let mut seen = vec![0u64; ids.len().div_ceil(64)];
        return ids.iter().copied().find(|&id| {
            let i = (id - lo) as usize;
            let (word, bit) = (i / 64, 1u64 << (i % 64));
            let again = seen[word] & bit != 0;
            seen[word] |= bit;
            again
        });
    }
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// The index of a decoded stored index, checked (its parts by `Index::from_parts`, its learned columns,
/// and against the settings); returns it with the learned values stored beside it.
pub(crate) fn stored_index(path: &Path, stored: StoredIndex, config: &M2mConfig) -> Result<(Index, Learned)> {
    let StoredIndex { parts, ids, kappa, alpha } = stored;
    learned(path, &ids, &kappa, &alpha)?;
    let index = Index::from_parts(parts).map_err(|e| corrupt(path, e.to_string()))?;
    index_matches(path, &index, config, &ids)?;
    Ok((index, Learned { ids, kappa, alpha }))
}

/// A stored index against the settings and the ids it was stored with: same dimension and metric, and
/// exactly those ids inside.
pub(crate) fn index_matches(path: &Path, index: &Index, config: &M2mConfig, ids: &[u64]) -> Result<()> {
    if index.dim() != config.dim || index.metric() != config.metric {
        // Either file may be the damaged one (both have valid checksums): the reason names the settings.
        let settings = config.data_dir.as_deref().map(|d| d.join(crate::CONFIG_BLOB));
        return Err(corrupt(
            path,
            format!(
                "index of dimension {} ({:?}) in a database of dimension {} ({:?}, by {})",
                index.dim(),
                index.metric(),
                config.dim,
                config.metric,
                settings.map_or_else(|| "its settings".to_string(), |p| p.display().to_string())
            ),
        ));
    }
    if index.len() != ids.len() || ids.iter().any(|id| !index.contains(*id)) {
        return Err(corrupt(
            path,
            format!("the index holds {} rows, not the {} ids stored with it", index.len(), ids.len()),
        ));
    }
    Ok(())
}

/// The one bound of a retrieval's `k`: at most the live splats (asking for more returns all of them, as
/// asking for exactly that many would), so that no `k` can make a search allocate beyond the data or
/// overflow. `k = 0` stays 0 for the index to refuse.
pub(crate) fn bound_k(k: usize, live: usize) -> usize {
    k.min(live.max(1))
}

/// The id no splat may have: `u64::MAX` marks the padding of short hit lists (Python's `NO_ID`), and ids
/// assigned by the engine stop below it.
pub(crate) const RESERVED_ID: u64 = u64::MAX;

/// Refuses a batch that names [`RESERVED_ID`], with the row where it is.
pub(crate) fn check_ids_not_reserved(ids: &[u64]) -> Result<()> {
    match ids.iter().position(|&id| id == RESERVED_ID) {
        Some(row) => Err(Error::Config {
            field: "ids",
            reason: format!("row {row}: id {RESERVED_ID} is reserved (it marks the padding of short hit lists)"),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_is_bounded_by_the_live_rows_and_zero_stays_refused() {
        assert_eq!(bound_k(usize::MAX, 100), 100);
        assert_eq!(bound_k(1_000_000_000, 100), 100);
        assert_eq!(bound_k(7, 100), 7);
        assert_eq!(bound_k(0, 100), 0);
        assert_eq!(bound_k(5, 0), 1);
    }

    #[test]
    fn learned_columns_must_agree_and_be_valid() {
        let p = Path::new("m2m-learned.blob");
        assert!(learned(p, &[1, 2], &[1.0, 2.0], &[1.0, 1.0]).is_ok());
        for (ids, kappa, alpha) in [
            (&[1u64, 2][..], &[1.0f32][..], &[1.0f32, 1.0][..]),
            (&[1, 2], &[1.0, 2.0], &[1.0]),
            (&[1, 1], &[1.0, 2.0], &[1.0, 1.0]),
            (&[1, 2], &[1.0, f32::NAN], &[1.0, 1.0]),
            (&[1, 2], &[1.0, 2.0], &[0.0, 1.0]),
            // Finite but huge (finding 4 of the second review): overflows to inf in the sampler.
            (&[1, 2], &[1.0, 3e38], &[1.0, 1.0]),
            (&[1, 2], &[1.0, 2.0], &[f32::INFINITY, 1.0]),
        ] {
            let e = learned(p, ids, kappa, alpha).unwrap_err().to_string();
            assert!(e.starts_with("m2m-learned.blob: corrupt"), "{e}");
        }
    }

    /// `repeated_id` on its three paths (ascending ids, ids spanning no more than their count in any
    /// order, scattered ids) against a hash set, with and without a repeat. Mutations caught: the
    /// ascending test taking `<=` (a repeat in ascending ids missed), the bitmap indexed by `id` rather
    /// than `id - lo` (a panic), the span test off by one (a repeat missed or a panic).
    #[test]
    fn repeated_id_finds_what_a_hash_set_finds() {
        let reference = |ids: &[u64]| {
            let mut seen = std::collections::HashSet::new();
            ids.iter().copied().find(|id| !seen.insert(*id))
        };
        let ascending: Vec<u64> = (0..3000u64).map(|i| 1_000 + 2 * i).collect();
        let dense: Vec<u64> = (0..3000u64).map(|i| 500 + (i * 7919) % 3000).collect();
        let scattered: Vec<u64> = (0..3000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 3).collect();
        for (what, ids) in [("ascending", ascending), ("dense", dense), ("scattered", scattered)] {
            assert_eq!(repeated_id(&ids), None, "{what}");
            for (at, from) in [(1, 0), (2999, 2998), (1500, 7), (0, 2999)] {
                let mut twice = ids.clone();
                twice[at] = twice[from];
                assert_eq!(repeated_id(&twice).is_some(), reference(&twice).is_some(), "{what} {at}");
                assert!(repeated_id(&twice).is_some_and(|id| twice.iter().filter(|&&x| x == id).count() == 2));
            }
        }
        assert_eq!(repeated_id(&[]), None);
        assert_eq!(repeated_id(&[u64::MAX, 0, u64::MAX]), Some(u64::MAX));
    }
}
