//! Retrieval on your own vectors: a base file and an optional query file (.fvecs or .npy), streamed in,
//! indexed, and queried at every level of detail with recall against exact search.
//!
//! `cargo run --release --example retrieval_from_file -- BASE [QUERIES] [K]`
//! (without QUERIES, 100 base rows serve as queries).

#![allow(clippy::print_stdout, reason = "an example reports to its terminal")]

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use m2m::splat::VectorReader;
use m2m::{Lod, M2mConfig, create_m2m};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(base) = args.first() else {
        bail!("usage: retrieval_from_file BASE [QUERIES] [K]");
    };
    let k: usize = args.get(2).map(|s| s.parse()).transpose().context("K must be a number")?.unwrap_or(10);
    let reader = VectorReader::open(base)?;
    let dim = reader.info().dim;
    let mut engine = create_m2m(M2mConfig::default().dim(dim))?;
    let t = Instant::now();
    for chunk in reader.chunks::<f32>(10_000) {
        engine.add_splats(&chunk?)?;
    }
    println!("{base}: {} x {dim} ingested in {:.2} s", engine.len(), t.elapsed().as_secs_f64());
    let t = Instant::now();
    engine.build_index()?;
    println!(
        "index built in {:.2} s: {:?}",
        t.elapsed().as_secs_f64(),
        (engine.stats().fine_clusters, engine.stats().coarse_clusters)
    );

    let queries: Vec<f32> = match args.get(1) {
        Some(path) => m2m::splat::read_vectors::<f32>(path)?.data,
        None => m2m::splat::read_vectors::<f32>(base)?.data.into_iter().take(100 * dim).collect(),
    };
    let nq = queries.len() / dim;
    let exact: Vec<HashSet<u64>> = queries
        .chunks_exact(dim)
        .map(|q| engine.retrieve(q, k, Lod::Exact).map(|h| h.iter().map(|x| x.id).collect()))
        .collect::<Result<_, _>>()?;
    for (name, lod) in [("LOD 0", Lod::Centroids), ("LOD 1", Lod::Codes), ("LOD 2", Lod::Rerank)] {
        let t = Instant::now();
        let all = engine.retrieve_batch(&queries, k, lod)?;
        let secs = t.elapsed().as_secs_f64();
        let found: usize = all.iter().zip(&exact).map(|(h, e)| h.iter().filter(|x| e.contains(&x.id)).count()).sum();
        println!(
            "{name}: recall@{k} {:.4} against exact search, {:.0} QPS over {nq} queries",
            found as f64 / (k * nq) as f64,
            nq as f64 / secs
        );
    }
    Ok(())
}
