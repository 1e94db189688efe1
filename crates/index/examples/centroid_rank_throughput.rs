//! Throughput of fine-centroid ranking, the f32 transposed table (`dots_t16_with`) against the f16 one
//! the index reads (`dots_t16h_with`), on every instruction set this CPU has. Each query scores a run of
//! consecutive blocks (the children of the coarse clusters it probes are consecutive in the index's
//! table), starting at a pseudo-random block, so the table is read as a search reads it: whether it fits
//! the core's cache is part of the figure. Prints centroids scored per microsecond, best of `REPEATS`.
//! Run with `taskset -c 1 cargo run --release -p m2m-index --example centroid_rank_throughput
//! [N_CENTROIDS PER_QUERY N_QUERIES REPEATS]` (defaults: 1,058 centroids, as minilm70k's index holds;
//! 400 per query, as LOD 2 ranks at nprobe 50; 2,000 queries; 5).

#![allow(clippy::print_stdout, reason = "an example reports to its terminal")]

use std::time::Instant;

use m2m_index::kernels::{Isa, T16, dots_t16_with, dots_t16h_with, f16_scale, transpose_t16, transpose_t16h};

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0).collect()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (n, per_query, nq, repeats) = (arg(0, 1_058), arg(1, 400), arg(2, 2_000), arg(3, 5));
    println!("| d | isa | f32 table, centroids/us | f16 table, centroids/us | f16 / f32 |");
    println!("|---|---|---|---|---|");
    for dim in [50usize, 128, 384, 768] {
        let rows = data(n * dim, 7);
        let queries = data(nq * dim, 1);
        let t32 = transpose_t16(&rows, dim);
        let scale = f16_scale(rows.iter().fold(0.0f32, |m, v| m.max(v.abs()))).unwrap_or(1.0);
        let t16 = transpose_t16h(&rows, dim, scale);
        let blocks = n.div_ceil(T16);
        let run = per_query.div_ceil(T16).min(blocks);
        let start = |qi: usize| ((qi * 2_654_435_761usize) >> 7) % (blocks - run + 1);
        let mut out = [0.0f32; T16];
        let mut sink = 0.0f32;
        for isa in Isa::available() {
            let mut best = [f64::INFINITY; 2];
            for _ in 0..repeats {
                let t = Instant::now();
                for (qi, q) in queries.chunks_exact(dim).enumerate() {
                    for b in start(qi)..start(qi) + run {
                        dots_t16_with(isa, q, &t32[b * T16 * dim..][..T16 * dim], &mut out);
                        sink += out[0];
                    }
                }
                best[0] = best[0].min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                for (qi, q) in queries.chunks_exact(dim).enumerate() {
                    for b in start(qi)..start(qi) + run {
                        dots_t16h_with(isa, q, &t16[b * T16 * dim..][..T16 * dim], &mut out);
                        sink += out[0];
                    }
                }
                best[1] = best[1].min(t.elapsed().as_secs_f64());
            }
            let per_us = |s: f64| (nq * run * T16) as f64 / s / 1e6;
            let (a, b) = (per_us(best[0]), per_us(best[1]));
            println!("| {dim} | {isa} | {a:.0} | {b:.0} | {:.2} |", b / a);
        }
        std::hint::black_box(sink);
    }
}
