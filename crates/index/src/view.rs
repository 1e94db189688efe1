//! A read-only view of the index's inverted lists for engines that search them elsewhere (the GPU's
//! IVF-Flat search in the facade): each fine cluster's centroid, member ids and full vectors. It exposes
//! no code, kernel or layout detail, so that those can change behind it.

use crate::Index;

impl Index {
    /// Number of inverted lists (fine clusters).
    pub fn n_lists(&self) -> usize {
        self.parts().clusters.len()
    }

    /// The lists' centroids, row-major: row `l` is list `l`'s.
    pub fn list_centroids(&self) -> &[f32] {
        &self.parts().fine
    }

    /// The ids of list `l`'s members (empty for a list that does not exist).
    pub fn list_ids(&self, l: usize) -> &[u64] {
        self.parts().clusters.get(l).map_or(&[], |c| c.ids.as_slice())
    }

    /// The full vectors of list `l`'s members, row-major in the order of [`list_ids`](Self::list_ids)
    /// (unit rows for cosine; empty for a list that does not exist).
    pub fn list_vectors(&self, l: usize) -> &[f32] {
        self.cluster_vectors(l)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Index, IndexConfig};

    #[test]
    fn the_lists_hold_every_vector_once_under_its_own_id() {
        let dim = 8;
        let n = 300;
        let vectors: Vec<f32> = (0..n * dim).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
        let ids: Vec<u64> = (0..n as u64).map(|i| i * 3 + 1).collect();
        let cfg = IndexConfig::default().metric(crate::Metric::InnerProduct).n_fine(12).n_coarse(3);
        let index = Index::build(&cfg, dim, &vectors, &ids).unwrap();
        assert_eq!(index.list_centroids().len(), index.n_lists() * dim);
        let mut seen = vec![false; n];
        for l in 0..index.n_lists() {
            let (lids, lvec) = (index.list_ids(l), index.list_vectors(l));
            assert_eq!(lvec.len(), lids.len() * dim);
            for (id, row) in lids.iter().zip(lvec.chunks_exact(dim)) {
                let i = ((id - 1) / 3) as usize;
                assert!(!seen[i], "id {id} in two lists");
                seen[i] = true;
                assert_eq!(row, &vectors[i * dim..(i + 1) * dim], "id {id}");
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert!(index.list_ids(index.n_lists()).is_empty());
    }
}
