//! Criterion benchmarks of the M2M crates live in `benches/benches/`; this library is empty by design and
//! only gives the benchmarks a package to belong to.
