//! Rows per microsecond of the code kernels on every instruction set this CPU has: SQ4 (`sq4_dots_with`,
//! one nibble per dimension) against PQ4 fast scan (`pq4_scan_with`, one nibble per `D` dimensions), for
//! clusters of 64 rows (about the mean fine cluster) at d = 50, 128, 384 and 768. Run with
//! `taskset -c 0 cargo run --release -p m2m-index --example code_scan_throughput [ROWS REPEATS]`.

#![allow(clippy::print_stdout, reason = "an example reports to its terminal")]

use std::time::Instant;

use m2m_index::kernels::{Isa, pq4_codes_len, pq4_lut_len, pq4_scan_with, sq4_dots_with, sq4_stride};

fn bytes(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| (((i + seed) * 2_654_435_761usize) >> 7) as u8).collect()
}

/// Best time over `repeats` of `f` run over every 64-row cluster of `rows`, in rows per microsecond.
fn rate(rows: usize, repeats: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    rows as f64 / best / 1e6
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (rows, repeats) = (args.first().copied().unwrap_or(65_536), args.get(1).copied().unwrap_or(7));
    const CLUSTER: usize = 64;
    println!("| d | isa | SQ4 rows/us | PQ4 D=1 | PQ4 D=2 | PQ4 D=4 |");
    println!("|---|---|---|---|---|---|");
    for dim in [50usize, 128, 384, 768] {
        let stride = sq4_stride(dim);
        let sq = bytes(rows * stride, 3);
        let q: Vec<i8> = bytes(2 * stride, 5).into_iter().map(|b| (b >> 1) as i8).collect();
        let mut out = vec![0i32; CLUSTER];
        for isa in Isa::available() {
            let r_sq = rate(rows, repeats, || {
                for c in sq.chunks_exact(CLUSTER * stride) {
                    sq4_dots_with(isa, &q, c, stride, &mut out);
                    std::hint::black_box(&out);
                }
            });
            let mut line = format!("| {dim} | {isa} | {r_sq:.0} |");
            for d in [1usize, 2, 4] {
                let m = dim.div_ceil(d);
                let per = pq4_codes_len(CLUSTER, m);
                let codes = bytes(rows / CLUSTER * per, 9);
                let lut = bytes(pq4_lut_len(m), 11);
                let r = rate(rows, repeats, || {
                    for c in codes.chunks_exact(per) {
                        pq4_scan_with(isa, &lut, c, m, &mut out);
                        std::hint::black_box(&out);
                    }
                });
                line += &format!(" {r:.0} |");
            }
            println!("{line}");
        }
    }
}
