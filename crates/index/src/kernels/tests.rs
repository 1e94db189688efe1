//! Property tests: every available instruction set against the scalar kernels and an f64 reference.

use super::*;
use proptest::prelude::*;

fn dot_ref(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
}

fn l2_ref(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum()
}

/// f32 accumulation error bound: a few ulps of the sum of magnitudes.
fn tol(a: &[f32], b: &[f32]) -> f64 {
    let mag: f64 = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs()).sum();
    1e-5 * mag + 1e-6
}

fn vecs(max: usize) -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
    (0..max)
        .prop_flat_map(|n| (proptest::collection::vec(-10.0f32..10.0, n), proptest::collection::vec(-10.0f32..10.0, n)))
}

proptest! {
    #[test]
    fn dot_and_l2_match_f64_on_every_isa((a, b) in vecs(300)) {
        for isa in Isa::available() {
            let d = f64::from(dot_with(isa, &a, &b));
            prop_assert!((d - dot_ref(&a, &b)).abs() <= tol(&a, &b), "{:?} dot {} vs {}", isa, d, dot_ref(&a, &b));
            let l = f64::from(l2_sq_with(isa, &a, &b));
            let lr = l2_ref(&a, &b);
            prop_assert!((l - lr).abs() <= 1e-5 * lr + 1e-6, "{:?} l2 {} vs {}", isa, l, lr);
        }
    }

    #[test]
    fn dots_many_matches_single_dots(dim in 1usize..70, nq in 0usize..11, nr in 0usize..11, seed in any::<u64>()) {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let qs: Vec<f32> = (0..nq * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let rs: Vec<f32> = (0..nr * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; nq * nr];
            dots_many_with(isa, &qs, &rs, dim, &mut out);
            for q in 0..nq {
                for r in 0..nr {
                    let (a, b) = (&qs[q * dim..][..dim], &rs[r * dim..][..dim]);
                    prop_assert!((f64::from(out[q * nr + r]) - dot_ref(a, b)).abs() <= tol(a, b), "{:?}", isa);
                }
            }
        }
    }

    #[test]
    fn weighted_sums_match_f64_on_every_isa(dim in 1usize..150, n in 1usize..9, b in 0usize..11, seed in any::<u64>()) {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let coef: Vec<f32> = (0..b * n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let rows: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; b * dim];
            weighted_sums_with(isa, &coef, &rows, dim, &mut out);
            for o in 0..b {
                for d in 0..dim {
                    let (want, mag) = (0..n).fold((0.0f64, 0.0f64), |(w, m), j| {
                        let t = f64::from(coef[o * n + j]) * f64::from(rows[j * dim + d]);
                        (w + t, m + t.abs())
                    });
                    let got = f64::from(out[o * dim + d]);
                    prop_assert!((got - want).abs() <= 1e-5 * mag + 1e-6, "{:?} out ({}, {}): {} vs {}", isa, o, d, got, want);
                }
            }
        }
    }

    #[test]
    fn dots_match_f64_on_every_isa(dim in 1usize..100, rows in 0usize..14, seed in any::<u64>()) {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let m: Vec<f32> = (0..rows * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; rows];
            dots_with(isa, &q, &m, &mut out);
            for (r, &o) in out.iter().enumerate() {
                let row = &m[r * dim..][..dim];
                prop_assert!((f64::from(o) - dot_ref(&q, row)).abs() <= tol(&q, row), "{:?} row {}", isa, r);
            }
        }
    }

    #[test]
    fn sq8_dot_is_exact_on_every_isa(
        pairs in proptest::collection::vec((any::<u8>(), any::<i8>()), 0..400),
    ) {
        let (codes, query): (Vec<u8>, Vec<i8>) = pairs.into_iter().unzip();
        let exact: i64 = codes.iter().zip(&query).map(|(&c, &q)| i64::from(c) * i64::from(q)).sum();
        for isa in Isa::available() {
            prop_assert_eq!(i64::from(sq8_dot_with(isa, &codes, &query)), exact, "{:?}", isa);
        }
    }
}

proptest! {
    #[test]
    fn transposed_blocks_match_row_dots(dim in 1usize..50, rows in 1usize..40, seed in any::<u64>()) {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let m: Vec<f32> = (0..rows * dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let t = transpose_t16(&m, dim);
        prop_assert_eq!(t.len(), rows.div_ceil(T16) * T16 * dim);
        for isa in Isa::available() {
            for (b, block) in t.chunks_exact(T16 * dim).enumerate() {
                let mut out = [f32::NAN; T16];
                dots_t16_with(isa, &q, block, &mut out);
                for (l, &o) in out.iter().enumerate() {
                    let i = b * T16 + l;
                    let want = if i < rows { dot_ref(&q, &m[i * dim..][..dim]) } else { 0.0 };
                    let tl = if i < rows { tol(&q, &m[i * dim..][..dim]) } else { 0.0 };
                    prop_assert!((f64::from(o) - want).abs() <= tl, "{:?} row {}", isa, i);
                }
            }
        }
    }

    #[test]
    fn sq8_dots_match_single_rows(n in 1usize..200, pad in 0usize..70, rows in 0usize..11, seed in any::<u64>()) {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let stride = n + pad;
        let q: Vec<i8> = (0..n).map(|_| rng.random()).collect();
        let codes: Vec<u8> = (0..rows * stride).map(|_| rng.random()).collect();
        for isa in Isa::available() {
            let mut out = vec![i32::MIN; rows];
            sq8_dots_with(isa, &q, &codes, stride, &mut out);
            for (r, &o) in out.iter().enumerate() {
                prop_assert_eq!(o, sq8_dot_with(Isa::Scalar, &codes[r * stride..][..n], &q), "{:?} row {}", isa, r);
            }
        }
    }
}

proptest! {
    #[test]
    fn sq4_pack_round_trips_and_dots_match_unpacked(dim in 1usize..300, rows in 0usize..9, seed in any::<u64>()) {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let stride = sq4_stride(dim);
        let raw: Vec<Vec<u8>> = (0..rows).map(|_| (0..dim).map(|_| rng.random_range(0u8..16)).collect()).collect();
        let mut packed = vec![0u8; rows * stride];
        for (r, c) in raw.iter().enumerate() {
            sq4_pack(c, &mut packed[r * stride..][..stride]);
            for (j, &v) in c.iter().enumerate() {
                prop_assert_eq!(sq4_code(&packed[r * stride..][..stride], j), v);
            }
        }
        let mut q = vec![0i8; 2 * stride];
        for v in q.iter_mut().take(dim) {
            *v = rng.random();
        }
        for isa in Isa::available() {
            let mut out = vec![i32::MIN; rows];
            sq4_dots_with(isa, &q, &packed, stride, &mut out);
            for (r, c) in raw.iter().enumerate() {
                let want: i32 = c.iter().zip(&q).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
                prop_assert_eq!(out[r], want, "{:?} row {}", isa, r);
            }
        }
    }
}

proptest! {
    #[test]
    fn bf16_scores_stay_within_the_stated_bound(dim in 1usize..200, nq in 1usize..7, nr in 1usize..9, seed in any::<u64>()) {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let stride = bf16_stride(dim);
        let qs: Vec<f32> = (0..nq * dim).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let rs: Vec<f32> = (0..nr * dim).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let pack = |m: &[f32], n: usize| {
            let mut out = vec![0u16; n * stride];
            for (src, dst) in m.chunks_exact(dim).zip(out.chunks_exact_mut(stride)) {
                to_bf16(src, dst);
            }
            out
        };
        let (qb, rb) = (pack(&qs, nq), pack(&rs, nr));
        let bound = f64::from(bf16_error_bound(dim));
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; nq * nr];
            bf16_dots_many_with(isa, &qb, &rb, stride, &mut out);
            for q in 0..nq {
                for r in 0..nr {
                    let (a, b) = (&qs[q * dim..][..dim], &rs[r * dim..][..dim]);
                    let norms = dot_ref(a, a).sqrt() * dot_ref(b, b).sqrt();
                    let err = (f64::from(out[q * nr + r]) - dot_ref(a, b)).abs();
                    prop_assert!(err <= bound * norms, "{:?}: error {} > bound {}", isa, err, bound * norms);
                }
            }
        }
    }
}

#[test]
fn bf16_rounding_is_to_nearest_even() {
    let mut out = [0u16; 4];
    // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even mantissa (1.0).
    to_bf16(&[1.0, 1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -2.5], &mut out);
    let back: Vec<f32> = out.iter().map(|&b| bf16_to_f32(b)).collect();
    assert_eq!(back, vec![1.0, 1.0, 1.0 + 2f32.powi(-6), -2.5]);
}

#[test]
fn extreme_codes_do_not_saturate() {
    // The AVX2 path must not use a saturating u8 x i8 instruction: 255 * -128 in every lane.
    let codes = vec![255u8; 384];
    let query = vec![-128i8; 384];
    for isa in Isa::available() {
        assert_eq!(sq8_dot_with(isa, &codes, &query), -255 * 128 * 384, "{isa:?}");
    }
}

#[test]
fn sq4_extreme_codes_do_not_overflow_the_i16_sums() {
    // Code 15 against -128 (and 127) in every dimension of three groups: a kernel that kept its i16 pair
    // sums across groups, or used a saturating add, would overflow or clip here.
    for (qv, dim) in [(-128i8, 384usize), (127, 384), (-128, 200)] {
        let stride = sq4_stride(dim);
        let mut row = vec![0u8; stride];
        sq4_pack(&vec![15u8; dim], &mut row);
        let rows: Vec<u8> = row.iter().copied().cycle().take(5 * stride).collect();
        let mut q = vec![0i8; 2 * stride];
        q[..dim].fill(qv);
        for isa in Isa::available() {
            let mut out = [0i32; 5];
            sq4_dots_with(isa, &q, &rows, stride, &mut out);
            assert_eq!(out, [15 * i32::from(qv) * dim as i32; 5], "{isa:?} dim {dim}");
        }
    }
}

#[test]
fn isa_names_round_trip_and_missing_isas_are_refused() {
    for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon] {
        match Isa::parse(&isa.name().to_uppercase()) {
            Ok(parsed) => assert!(parsed == isa && isa.is_available()),
            Err(crate::Error::IsaUnavailable { isa: name, available }) => {
                assert!(!isa.is_available());
                assert_eq!(name, isa.name());
                assert!(available.contains("scalar"));
            }
            Err(e) => panic!("{isa:?}: unexpected {e}"),
        }
    }
    assert!(matches!(Isa::parse("avx3"), Err(crate::Error::UnknownIsa { .. })));
    assert!(Isa::best().is_available());
    assert!(Isa::detected().is_available());
    // Each architecture's sets are available only on it: NEON is baseline on aarch64 and absent
    // elsewhere, and the x86 sets never exist on aarch64.
    assert_eq!(Isa::Neon.is_available(), cfg!(target_arch = "aarch64"));
    if cfg!(target_arch = "aarch64") {
        assert_eq!(Isa::detected(), Isa::Neon);
        assert!(!Isa::Avx2.is_available() && !Isa::Avx512.is_available());
    } else {
        match Isa::parse("neon") {
            Err(crate::Error::IsaUnavailable { isa: "neon", available }) => assert!(!available.contains("neon")),
            other => panic!("neon on a CPU without it: {other:?}"),
        }
    }
}

/// The NEON code kernels with and without the dot-product extension, forced, against the scalar
/// reference: the dispatch only ever runs one of the two on a given CPU.
#[cfg(target_arch = "aarch64")]
mod neon_forced {
    use super::super::neon;
    use super::*;

    /// The `sdot` forms where this CPU has the extension, the NEON-only forms always.
    fn forms() -> Vec<bool> {
        if neon::has_dotprod() { vec![false, true] } else { vec![false] }
    }

    proptest! {
        #[test]
        fn sq8_forms_are_exact(n in 0usize..300, pad in 0usize..40, rows in 0usize..6, seed in any::<u64>()) {
            use rand::{RngExt, SeedableRng, rngs::StdRng};
            let mut rng = StdRng::seed_from_u64(seed);
            let stride = (n + pad).max(1);
            let q: Vec<i8> = (0..n).map(|_| rng.random()).collect();
            let codes: Vec<u8> = (0..rows * stride).map(|_| rng.random()).collect();
            for dotprod in forms() {
                let mut out = vec![i32::MIN; rows];
                // SAFETY: NEON is baseline on aarch64; `sdot` only where detected; stride >= q.len().
                unsafe { neon::sq8_dots(&q, &codes, stride, &mut out, dotprod) };
                for (r, &o) in out.iter().enumerate() {
                    let row = &codes[r * stride..][..n];
                    prop_assert_eq!(o, scalar::sq8_dot(row, &q), "dotprod {} row {}", dotprod, r);
                    // SAFETY: as above.
                    prop_assert_eq!(unsafe { neon::sq8_dot(row, &q, dotprod) }, o, "dotprod {}", dotprod);
                }
            }
        }

        #[test]
        fn sq4_forms_are_exact(dim in 1usize..400, rows in 0usize..10, seed in any::<u64>()) {
            use rand::{RngExt, SeedableRng, rngs::StdRng};
            let mut rng = StdRng::seed_from_u64(seed);
            let stride = sq4_stride(dim);
            let mut packed = vec![0u8; rows * stride];
            for r in 0..rows {
                let c: Vec<u8> = (0..dim).map(|_| rng.random_range(0u8..16)).collect();
                sq4_pack(&c, &mut packed[r * stride..][..stride]);
            }
            let mut q = vec![0i8; 2 * stride];
            for v in q.iter_mut().take(dim) {
                *v = rng.random();
            }
            for dotprod in forms() {
                let mut out = vec![i32::MIN; rows];
                // SAFETY: NEON is baseline on aarch64; `sdot` only where detected; shapes from sq4_stride.
                unsafe { neon::sq4_dots(&q, &packed, stride, &mut out, dotprod) };
                for (r, &o) in out.iter().enumerate() {
                    prop_assert_eq!(o, scalar::sq4_dot(&packed[r * stride..][..stride], &q), "dotprod {} row {}", dotprod, r);
                }
            }
        }
    }

    #[test]
    fn extreme_codes_are_exact_in_both_forms() {
        // 255 x -128 (SQ8) and 15 x -128 over three SQ4 groups: the largest magnitudes each form sums.
        let dim = 384;
        let (codes, q8) = (vec![255u8; dim], vec![-128i8; dim]);
        let stride = sq4_stride(dim);
        let mut row = vec![0u8; stride];
        sq4_pack(&vec![15u8; dim], &mut row);
        let rows: Vec<u8> = row.iter().copied().cycle().take(5 * stride).collect();
        for qv in [-128i8, 127] {
            let q4 = vec![qv; 2 * stride];
            for dotprod in forms() {
                // SAFETY: NEON is baseline on aarch64; `sdot` only where detected.
                unsafe {
                    assert_eq!(neon::sq8_dot(&codes, &q8, dotprod), -255 * 128 * dim as i32, "dotprod {dotprod}");
                    let mut out = [0i32; 5];
                    neon::sq4_dots(&q4, &rows, stride, &mut out, dotprod);
                    assert_eq!(out, [15 * i32::from(qv) * dim as i32; 5], "dotprod {dotprod} q {qv}");
                }
            }
        }
    }
}

#[test]
fn batch_helpers_agree_with_single_kernels() {
    let q: Vec<f32> = (0..37).map(|i| (i as f32).sin()).collect();
    let rows: Vec<f32> = (0..37 * 5).map(|i| (i as f32 * 0.3).cos()).collect();
    let mut out = [0.0; 5];
    dots(&q, &rows, &mut out);
    for (i, o) in out.iter().enumerate() {
        assert!((o - dot(&q, &rows[i * 37..(i + 1) * 37])).abs() < 1e-5);
    }
    let codes: Vec<u8> = (0..3 * 70).map(|i| (i * 7 % 256) as u8).collect();
    let qi: Vec<i8> = (0..64).map(|i| (i * 5 % 255) as i8).collect();
    let mut o = [0i32; 3];
    sq8_dots(&qi, &codes, 70, &mut o);
    for (i, v) in o.iter().enumerate() {
        assert_eq!(*v, sq8_dot_with(Isa::Scalar, &codes[i * 70..i * 70 + 64], &qi));
    }
}

#[test]
fn best_isa_is_available() {
    assert!(Isa::best().is_available());
    assert!(Isa::available().contains(&Isa::best()));
}

/// Fast-scan codes of `rows` rows of `m` random sub-codes, and the codes themselves.
fn fastscan_rows(rows: usize, m: usize, rng: &mut impl rand::Rng) -> (Vec<u8>, Vec<Vec<u8>>) {
    use rand::RngExt;
    let plain: Vec<Vec<u8>> = (0..rows).map(|_| (0..m).map(|_| rng.random_range(0..16u8)).collect()).collect();
    let mut codes = Vec::new();
    for (r, row) in plain.iter().enumerate() {
        pq4_push(&mut codes, m, r, row);
    }
    (codes, plain)
}

proptest! {
    /// Every ISA's fast-scan sums equal the plain sum of looked-up bytes over the unpacked codes, to the
    /// integer. Rows 0..100 cover partial and several blocks; m 1..40 odd and even sub-space counts (the
    /// padding sub-space, AVX-512's odd last pair). Catches a swapped nibble half (rows j and 16 + j), a
    /// lane holding the wrong sub-space, a wrong even/odd recovery in the folds (`fold_avx2`,
    /// `fold_flush_avx512`), and a block stride
    /// off by a pair.
    #[test]
    fn pq4_fastscan_matches_the_unpacked_sums(rows in 0usize..100, m in 1usize..40, seed in any::<u64>()) {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let (codes, plain) = fastscan_rows(rows, m, &mut rng);
        prop_assert_eq!(codes.len(), pq4_codes_len(rows, m));
        let mut lut = vec![0u8; pq4_lut_len(m)];
        lut[..16 * m].iter_mut().for_each(|v| *v = rng.random_range(0..=255u8));
        for (r, row) in plain.iter().enumerate() {
            for (s, &c) in row.iter().enumerate() {
                prop_assert_eq!(pq4_get(&codes, m, r, s), c);
            }
        }
        let want: Vec<i32> = plain
            .iter()
            .map(|row| row.iter().enumerate().map(|(s, &c)| i32::from(lut[s * 16 + usize::from(c)])).sum())
            .collect();
        for isa in Isa::available() {
            let mut out = vec![-1i32; rows];
            pq4_scan_with(isa, &lut, &codes, m, &mut out);
            prop_assert_eq!(&out, &want, "{:?}", isa);
        }
    }

    /// Deleting by copying the last row over another and truncating keeps every other row's codes and
    /// leaves the layout equal to one built from the remaining rows. Catches a copy of the wrong nibble,
    /// a truncate that leaves stale codes in the last block (scored as padding rows) or drops a block
    /// too early.
    #[test]
    fn pq4_copy_and_truncate_keep_the_layout(rows in 1usize..80, m in 1usize..9, del in any::<usize>(), seed in any::<u64>()) {
        use rand::{SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut codes, mut plain) = fastscan_rows(rows, m, &mut rng);
        let pos = del % rows;
        let last = rows - 1;
        pq4_copy_row(&mut codes, m, last, pos);
        pq4_truncate(&mut codes, m, last);
        plain.swap_remove(pos);
        let mut rebuilt = Vec::new();
        for (r, row) in plain.iter().enumerate() {
            pq4_push(&mut rebuilt, m, r, row);
        }
        prop_assert_eq!(codes, rebuilt);
    }
}

/// The largest sums: every byte 255 over 600 sub-spaces (300 pairs, more than one u16 flush of
/// `FS_FLUSH` = 256 steps, 153,000 per row). Catches a flush placed after more than 257 steps (a u16
/// lane wraps) or never (the sum wraps at 65,536).
#[test]
fn pq4_extreme_sums_are_exact() {
    for m in [512usize, 513, 600, 1100] {
        let rows = 40;
        let mut codes = Vec::new();
        for r in 0..rows {
            pq4_push(&mut codes, m, r, &vec![(r % 16) as u8; m]);
        }
        let lut = {
            let mut l = vec![255u8; pq4_lut_len(m)];
            l[16 * m..].fill(0);
            l
        };
        for isa in Isa::available() {
            let mut out = vec![0i32; rows];
            pq4_scan_with(isa, &lut, &codes, m, &mut out);
            assert!(out.iter().all(|&v| v == 255 * m as i32), "{isa:?} m {m}: {:?}", &out[..4]);
        }
    }
}

// Catches: a wrong shift or mask in the bit-move widening, a wrong exponent rebias (2^112), and
// subnormal halves widened as if normal.
#[test]
fn f16_widening_is_exact_for_every_finite_half() {
    for h in 0..=u16::MAX {
        if (h >> 10) & 0x1F == 0x1F {
            continue; // infinities and NaNs: never stored (see f16_scale)
        }
        let want = half::f16::from_bits(h).to_f32();
        assert_eq!(f16_to_f32(h).to_bits(), want.to_bits(), "half {h:#06x}");
    }
    // Ties round to even: 1 + 2^-11 lies halfway between 1 and the next half, 1 + 2^-10.
    assert_eq!(f16_to_f32(to_f16(1.0 + 2f32.powi(-11))), 1.0);
    assert_eq!(f16_to_f32(to_f16(1.0 + 3.0 * 2f32.powi(-11))), 1.0 + 2f32.powi(-9));
}

// Catches: a scale that is not a power of two (the unscaling would round), one that lets the largest
// value reach f16's maximum, and tiny or huge ranges accepted that f32 cannot rescale.
#[test]
fn f16_scales_put_the_largest_value_below_the_f16_maximum() {
    for &m in &[1e-20f32, 3e-5, 0.1, 0.75, 1.0, 1.5, 255.0, 65_504.0, 1e9, 1e30] {
        let s = f16_scale(m).unwrap();
        assert_eq!(s.to_bits() & 0x007F_FFFF, 0, "{m}: {s} is not a power of two");
        let scaled = m * s;
        assert!((16_384.0..32_768.0).contains(&scaled), "{m} scaled to {scaled}");
        assert!(f16_to_f32(to_f16(scaled)).is_finite());
    }
    assert_eq!(f16_scale(0.0), Some(1.0));
    for bad in [f32::INFINITY, f32::NAN, 1e35, 1e-30, f32::MIN_POSITIVE / 4.0, -1.0] {
        assert_eq!(f16_scale(bad), None, "{bad}");
    }
}

proptest! {
    // Catches: a wrong column offset or swapped halves in a SIMD path, the `dim % 4` / `dim % 8` tail
    // dropped, and an error bound smaller than the rounding it covers (scores are compared with the f32
    // scores of the unrounded rows, the way the index uses the bound).
    #[test]
    fn f16_blocks_match_the_scalar_twin_and_stay_within_the_bound(
        dim in 1usize..70,
        rows in 1usize..40,
        magnitude in -12i32..12,
        seed in any::<u64>(),
    ) {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let unit = 2f32.powi(magnitude);
        let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        // Some values near zero, so that subnormal halves occur.
        let m: Vec<f32> = (0..rows * dim)
            .map(|i| unit * rng.random_range(-1.0f32..1.0) * if i % 5 == 0 { 1e-9 } else { 1.0 })
            .collect();
        let max_abs = m.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let scale = f16_scale(max_abs).unwrap();
        let t = transpose_t16h(&m, dim, scale);
        prop_assert_eq!(t.len(), rows.div_ceil(T16) * T16 * dim);
        let q_norm = dot_ref(&q, &q).sqrt();
        let c_max = m.chunks_exact(dim).map(|c| dot_ref(c, c).sqrt()).fold(0.0, f64::max);
        let bound = f64::from(f16_error_bound(dim)) * q_norm * c_max;
        for (b, block) in t.chunks_exact(T16 * dim).enumerate() {
            let mut reference = [f32::NAN; T16];
            dots_t16h_with(Isa::Scalar, &q, block, &mut reference);
            for isa in Isa::available() {
                let mut out = [f32::NAN; T16];
                dots_t16h_with(isa, &q, block, &mut out);
                for (l, (&o, &r)) in out.iter().zip(&reference).enumerate() {
                    let i = b * T16 + l;
                    // Against the scalar twin: the same halves, only the order of the f32 sums differs.
                    let halves: Vec<f32> = block.chunks_exact(T16).map(|col| f16_to_f32(col[l])).collect();
                    prop_assert!((f64::from(o) - f64::from(r)).abs() <= 2.0 * tol(&q, &halves), "{:?} row {}", isa, i);
                    let got = f64::from(o) / f64::from(scale);
                    if i < rows {
                        let row = &m[i * dim..][..dim];
                        let f32_score = f64::from(dot_with(isa, &q, row));
                        prop_assert!((got - f32_score).abs() <= bound,
                            "{:?} row {}: {} vs {} (bound {})", isa, i, got, f32_score, bound);
                    } else {
                        prop_assert_eq!(o, 0.0);
                    }
                }
            }
        }
    }
}
