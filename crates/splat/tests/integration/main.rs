//! Integration tests of m2m-splat: vector files on disk (round trips, streaming, corrupt and truncated
//! files) and the serialised metadata types.

mod files;
mod metadata;
