//! Throughput of the exhaustive-search kernel (`dots_many_with`) on every instruction set this CPU has,
//! in GFLOP/s (2 flops per multiply-add), for dimensions 32 to 1536: the figures to set against a batched
//! BLAS scan (`numpy` `Q @ X.T` on one thread) of the same shapes. Run with
//! `taskset -c 0 cargo run --release -p m2m-index --example kernel_throughput [N_QUERIES N_ROWS REPEATS]`.

#![allow(clippy::print_stdout, reason = "an example reports to its terminal")]

use std::time::Instant;

use m2m_index::kernels::{Isa, dots_many_with};

fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0).collect()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (nq, nr, repeats) =
        (args.first().copied().unwrap_or(64), args.get(1).copied().unwrap_or(8192), args.get(2).copied().unwrap_or(5));
    println!("| d | isa | GFLOP/s (best of {repeats}) |");
    println!("|---|---|---|");
    for dim in [32usize, 50, 64, 96, 128, 200, 256, 384, 512, 768, 1024, 1536] {
        let (qs, rows) = (data(nq * dim, 1), data(nr * dim, 7));
        let mut out = vec![0.0f32; nq * nr];
        for isa in Isa::available() {
            let mut best = f64::INFINITY;
            for _ in 0..repeats {
                let t = Instant::now();
                dots_many_with(isa, &qs, &rows, dim, &mut out);
                best = best.min(t.elapsed().as_secs_f64());
            }
            std::hint::black_box(&out);
            let gflops = 2.0 * (nq * nr * dim) as f64 / best / 1e9;
            println!("| {dim} | {isa} | {gflops:.1} |");
        }
    }
}
