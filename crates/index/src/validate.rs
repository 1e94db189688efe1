//! Consistency checks of decoded [`IndexParts`] beyond their shapes: every value in range, every id where
//! it belongs. A checksum proves that stored bytes are the bytes that were written, not that they are
//! sane: a forged or buggy file with a valid checksum must be a typed [`Error::Corrupt`] here, never a
//! panic or a silent wrong answer later in search. [`Index::from_parts`](crate::Index::from_parts) runs
//! [`parts`] before it checks the parts' shapes against each other.

use crate::{Error, IndexParts, Result};

/// Largest dimension accepted from stored parts (the splat layer's limit is far below).
const MAX_DIM: usize = 1 << 20;
/// Largest calibrated re-rank depth factor accepted. Calibration gives at most a few hundred; a value
/// beyond max(10 x rows, 4096) (and this cap) is damage. Bounding it keeps `default_rerank * k` from
/// overflowing.
const MAX_RERANK: usize = 1 << 32;

fn corrupt<T>(reason: String) -> Result<T> {
    Err(Error::Corrupt { reason })
}

/// Largest magnitude accepted for a stored coordinate, quantiser value or norm. A squared distance over
/// MAX_DIM coordinates of this size stays finite in f32 (1e15^2 x 2^20 ~ 1e36 < 3.4e38); a forged 3e38
/// would overflow to inf in search and fail far from the file.
const MAX_MAGNITUDE: f32 = 1e15;

/// The index of the first value of `values` that is not finite or beyond [`MAX_MAGNITUDE`], if any.
fn first_non_finite(values: &[f32]) -> Option<usize> {
    values.iter().position(|v| !(v.is_finite() && v.abs() <= MAX_MAGNITUDE))
}

/// Checks the values of decoded parts: the dimension, the settings, every centroid, quantiser range and
/// stored vector finite, representatives among their cluster's members, calibrated defaults in range.
pub(crate) fn parts(p: &IndexParts) -> Result<()> {
    if p.dim == 0 || p.dim > MAX_DIM {
        return corrupt(format!("dimension {} is not in 1..={MAX_DIM}", p.dim));
    }
    let c = &p.config;
    if c.n_fine == Some(0) || c.n_coarse == Some(0) || c.train_per_centroid == 0 {
        return corrupt("a cluster count or training size of 0 in the stored settings".into());
    }
    if !(c.max_cluster_factor.is_finite() && c.max_cluster_factor > 1.0) {
        return corrupt(format!("max_cluster_factor {} is not finite and > 1", c.max_cluster_factor));
    }
    if !(0.0..=1.0).contains(&c.target_recall) {
        return corrupt(format!("target_recall {} is not in [0, 1]", c.target_recall));
    }
    if let crate::CodeKind::Pq4 { dims_per_code, .. } = c.codes
        && !(1..=crate::MAX_DIMS_PER_CODE).contains(&dims_per_code)
    {
        return corrupt(format!("PQ4 dims_per_code {dims_per_code} is not in 1..={}", crate::MAX_DIMS_PER_CODE));
    }
    for (what, values) in [
        ("coarse centroid", &p.coarse),
        ("fine centroid", &p.fine),
        ("quantiser offset", &p.sq_min),
        ("PQ codebook", &p.pq_codebook),
    ] {
        if let Some(i) = first_non_finite(values) {
            return corrupt(format!("{what} value {i} is {}", values[i]));
        }
    }
    if let Some(i) = p.sq_step.iter().position(|s| !(s.is_finite() && *s >= 0.0 && *s <= MAX_MAGNITUDE)) {
        return corrupt(format!("quantiser step {i} is {}, not finite and >= 0", p.sq_step[i]));
    }
    if !(p.target_cluster_size.is_finite() && p.target_cluster_size >= 0.0) {
        return corrupt(format!("target cluster size {} is not finite and >= 0", p.target_cluster_size));
    }
    let rows: usize = p.clusters.iter().map(|c| c.ids.len()).sum();
    if p.default_nprobe == 0 || p.default_nprobe > p.clusters.len().max(1).max(8) {
        return corrupt(format!("default nprobe {} for {} fine clusters", p.default_nprobe, p.clusters.len()));
    }
    if p.default_rerank == 0 || p.default_rerank > rows.saturating_mul(10).clamp(4096, MAX_RERANK) {
        return corrupt(format!("default re-rank depth {} for {rows} rows", p.default_rerank));
    }
    if let Some(rule) = p.probe_rule
        && let Err(e) = rule.check(p.clusters.len())
    {
        return corrupt(format!("probe rule: {e}"));
    }
    for (f, cl) in p.clusters.iter().enumerate() {
        if let Some(i) = first_non_finite(&cl.vectors) {
            return corrupt(format!("cluster {f}: vector value {i} is {}", cl.vectors[i]));
        }
        // A norm is a sum of squares: it may be large where every coordinate is in range, so only finite.
        if let Some(i) = cl.half_sq_norms.iter().position(|v| !v.is_finite()) {
            return corrupt(format!("cluster {f}: squared norm {i} is {}", cl.half_sq_norms[i]));
        }
        if let Some(r) = cl.representative.filter(|r| !cl.ids.contains(r)) {
            return corrupt(format!("cluster {f}: representative {r} is not one of its members"));
        }
        if cl.representative.is_none() && !cl.ids.is_empty() {
            return corrupt(format!("cluster {f}: {} members but no representative", cl.ids.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{Error, Index, IndexConfig};

    fn built() -> Index {
        let dim = 8;
        let vectors: Vec<f32> = (0..600 * dim).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
        let ids: Vec<u64> = (0..600).collect();
        Index::build(&IndexConfig::default(), dim, &vectors, &ids).unwrap()
    }

    #[test]
    fn forged_values_with_sound_shapes_are_typed_errors() {
        let good = built().parts().clone();
        assert!(Index::from_parts(good.clone()).is_ok());
        type Forgery = (&'static str, Box<dyn Fn(&mut crate::IndexParts)>);
        let forgeries: Vec<Forgery> = vec![
            ("NaN centroid", Box::new(|p| p.fine[3] = f32::NAN)),
            // Finite but huge (finding 4 of the second review): inf once squared in search.
            ("3e38 centroid", Box::new(|p| p.coarse[0] = 3e38)),
            ("3e38 quantiser step", Box::new(|p| p.sq_step[0] = 3e38)),
            ("-3e38 member", Box::new(|p| p.clusters[0].vectors[1] = -3e38)),
            ("infinite member", Box::new(|p| p.clusters[0].vectors[0] = f32::INFINITY)),
            ("negative quantiser step", Box::new(|p| p.sq_step[1] = -1.0)),
            ("foreign representative", Box::new(|p| p.clusters[0].representative = Some(u64::MAX))),
            ("huge re-rank depth", Box::new(|p| p.default_rerank = usize::MAX)),
            ("nprobe 0", Box::new(|p| p.default_nprobe = 0)),
            (
                "probe rule beyond the clusters",
                Box::new(|p| p.probe_rule = Some(crate::ProbeRule { max_probe: p.clusters.len() + 1, margin: 0.1 })),
            ),
            (
                "probe rule NaN margin",
                Box::new(|p| p.probe_rule = Some(crate::ProbeRule { max_probe: 2, margin: f32::NAN })),
            ),
            ("huge dimension", Box::new(|p| p.dim = usize::MAX)),
            ("cluster factor NaN", Box::new(|p| p.config.max_cluster_factor = f32::NAN)),
        ];
        for (what, forge) in forgeries {
            let mut p = good.clone();
            forge(&mut p);
            assert!(matches!(Index::from_parts(p), Err(Error::Corrupt { .. })), "{what} accepted");
        }
    }
}
