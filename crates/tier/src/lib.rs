//! m2m-tier: storage tiers of M2M (built by the tier issue).
//!
//! It will own the database directory (immutable memory-mapped segment files, an atomically replaced
//! manifest, a write-ahead log with CRC32C records), the warm RAM cache with a byte budget, the hot-tier
//! interface that m2m-gpu implements, and background prefetch driven by access plans. It is the only crate
//! of the engine that touches the database's files. Nothing is implemented yet.
