//! Integration tests of m2m-index: recall against brute force at every level of detail, every metric,
//! typed errors, updates, and serialisation.

mod bitq;
mod bounds;
mod centroids;
mod filter;
mod lod;
mod pq;
mod probe;
mod recall;
mod resolved;
mod spill;
mod updates;
