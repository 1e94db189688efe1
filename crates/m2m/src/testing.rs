//! The facade's blob decoders over bytes, and a structure-aware mutator of a stored index, for the fuzz
//! targets in `crates/tier/fuzz`; not a stable interface.

use std::path::Path;

use crate::engine::{Learned, StoredIndex};
use crate::{M2mConfig, Result};

const LABEL: &str = "<fuzz input>";

/// Decodes and checks a stored index (`m2m-index.blob`'s payload) the way `M2m::open` does, against
/// settings of its own dimension and metric, then searches it once at every level of detail.
pub fn index_blob(bytes: &[u8]) -> Result<usize> {
    let path = Path::new(LABEL);
    let stored: StoredIndex = postcard::from_bytes(bytes).map_err(|e| crate::validate::corrupt(path, e.to_string()))?;
    let config = M2mConfig { metric: stored.parts.config.metric, ..M2mConfig::default().dim(stored.parts.dim.max(1)) };
    let (index, learned) = crate::validate::stored_index(path, stored, &config)?;
    let query = vec![1.0f32; index.dim()];
    let k = crate::validate::bound_k(usize::MAX, learned.ids.len());
    for lod in [crate::Lod::Centroids, crate::Lod::Codes, crate::Lod::Rerank, crate::Lod::Exact] {
        index.search(&query, k, lod, &m2m_index::SearchParams::default())?;
    }
    Ok(index.len())
}

/// Decodes and checks learned values (`m2m-learned.blob`'s payload).
pub fn learned_blob(bytes: &[u8]) -> Result<usize> {
    let path = Path::new(LABEL);
    let l: Learned = postcard::from_bytes(bytes).map_err(|e| crate::validate::corrupt(path, e.to_string()))?;
    crate::validate::learned(path, &l.ids, &l.kappa, &l.alpha)?;
    Ok(l.ids.len())
}

/// Decodes and checks settings (`m2m-config.blob`'s payload).
pub fn config_blob(bytes: &[u8]) -> Result<usize> {
    let config: M2mConfig =
        serde_json::from_slice(bytes).map_err(|e| crate::Error::Config { field: "config", reason: e.to_string() })?;
    config.check()?;
    Ok(config.dim)
}

/// A stored index of `rows` seeded rows of dimension `dim`, encoded: a seed for the fuzzer.
pub fn index_seed(rows: usize, dim: usize) -> Result<Vec<u8>> {
    let vectors: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
    let ids: Vec<u64> = (0..rows as u64).collect();
    let index = m2m_index::Index::build(&m2m_index::IndexConfig::default(), dim, &vectors, &ids)?;
    let stored = StoredIndex { parts: index.parts().clone(), ids, kappa: vec![10.0; rows], alpha: vec![1.0; rows] };
    postcard::to_allocvec(&stored).map_err(|e| crate::Error::Config { field: "index", reason: e.to_string() })
}

/// Applies one structural change, chosen by `choice`, to an encoded stored index and encodes it again:
/// a column one element shorter or longer, a count or dimension changed, a value made NaN, an id
/// repeated, a representative that is no member. `None` when the bytes do not decode.
pub fn mutate_index(bytes: &[u8], choice: u64) -> Option<Vec<u8>> {
    let mut s: StoredIndex = postcard::from_bytes(bytes).ok()?;
    let pick = |len: usize| (choice >> 8) as usize % len.max(1);
    let p = &mut s.parts;
    let members: Vec<usize> = (0..p.clusters.len()).filter(|&f| !p.clusters[f].ids.is_empty()).collect();
    let f = *members.get(pick(members.len()))?;
    match choice % 14 {
        0 => {
            s.kappa.pop();
        }
        1 => {
            s.alpha.pop();
        }
        2 => s.ids.push(s.ids.first().copied().unwrap_or(0)),
        3 => p.dim = p.dim.wrapping_add(1 + (choice >> 8) as usize % 3),
        4 => {
            p.fine.pop();
        }
        5 => {
            p.coarse.pop();
        }
        6 => {
            let c = pick(p.children.len());
            {
                p.children.get_mut(c)?.pop();
            };
        }
        7 => {
            p.clusters.get_mut(f)?.ids.pop();
        }
        8 => {
            p.clusters.get_mut(f)?.codes.to_mut().pop();
        }
        9 => p.clusters.get_mut(f)?.representative = Some(u64::MAX),
        10 => {
            let i = pick(p.fine.len());
            *p.fine.get_mut(i)? = f32::NAN;
        }
        11 => p.default_rerank = usize::MAX - (choice >> 8) as usize,
        12 => p.default_nprobe = if (choice >> 8).is_multiple_of(2) { 0 } else { usize::MAX },
        _ => {
            p.sq_step.pop();
        }
    }
    postcard::to_allocvec(&s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_structural_mutation_is_a_typed_error_and_the_seed_decodes() {
        let seed = index_seed(300, 8).unwrap();
        assert_eq!(index_blob(&seed).unwrap(), 300);
        for choice in 0..14u64 {
            // Shifted choices also move the element picked and the values set.
            for high in [0u64, 1, 7, 1 << 40] {
                let c = choice | high << 8;
                let forged = mutate_index(&seed, c).unwrap();
                assert!(index_blob(&forged).is_err(), "mutation {c} accepted");
            }
        }
    }
}
