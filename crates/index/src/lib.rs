//! m2m-index: the retrieval core of M2M (built by the index issue).
//!
//! It will own the hierarchical KMeans++ tree (coarse centroids, then fine clusters, vectors stored
//! cluster-major), the compressed codes kept in the hot tier, the distance kernels with runtime SIMD
//! dispatch, and `retrieve(query, k, lod)` at LOD 0 (centroids), LOD 1 (codes), LOD 2 (exact re-rank) and
//! exhaustive exact search. It does no file IO: every index part serialises so that m2m-tier can persist
//! it. Nothing is implemented yet; this crate exists so the workspace has its final shape.
