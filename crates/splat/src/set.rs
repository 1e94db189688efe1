//! A columnar set of splats: row-major unit directions in one 64-byte aligned buffer, plus norm, kappa,
//! alpha and id columns. Appends are validated batch by batch; a rejected batch leaves nothing behind.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use aligned_vec::{AVec, ConstAlign};
use serde::{Deserialize, Serialize};

use crate::splat::{check_alpha, check_kappa};
use crate::{DEFAULT_ALPHA, DEFAULT_KAPPA, Error, Result, Splat, SplatId, SplatRef, normalize_extend, normalize_into};

/// Alignment in bytes of the start of the `mu` buffer: one cache line, and the width of an AVX-512 load.
pub const MU_ALIGN: usize = 64;

/// Values of a per-splat parameter (kappa or alpha) for a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Values<'a> {
    /// The crate default ([`DEFAULT_KAPPA`] or [`DEFAULT_ALPHA`]) for every row.
    #[default]
    Default,
    /// One value for every row.
    Uniform(f32),
    /// One value per row.
    PerRow(&'a [f32]),
}

impl Values<'_> {
    fn check(&self, rows: usize, column: &'static str, check: fn(usize, f32) -> Result<()>) -> Result<()> {
        match *self {
            Values::Default => Ok(()),
            Values::Uniform(v) => check(0, v),
            Values::PerRow(vs) => {
                if vs.len() != rows {
                    return Err(Error::ColumnLength { column, expected: rows, got: vs.len() });
                }
                vs.iter().enumerate().try_for_each(|(row, &v)| check(row, v))
            }
        }
    }

    fn extend_into(&self, out: &mut Vec<f32>, rows: usize, default: f32) {
        match *self {
            Values::Default => out.extend(std::iter::repeat_n(default, rows)),
            Values::Uniform(v) => out.extend(std::iter::repeat_n(v, rows)),
            Values::PerRow(vs) => out.extend_from_slice(vs),
        }
    }
}

/// A batch of raw vectors to append to a [`SplatSet`], with optional ids and parameters.
///
/// The vectors are a flat row-major buffer of `rows * dim` values; they need not be normalised.
///
/// ```
/// use m2m_splat::{Batch, SplatSet};
/// let mut set = SplatSet::new(2)?;
/// let rows = set.append(Batch::new(&[3.0, 4.0, 0.0, 2.0], 2).ids(&[10, 11]).kappa(25.0))?;
/// assert_eq!(rows, 0..2);
/// assert_eq!(set.get(11).unwrap().mu, &[0.0, 1.0]);
/// assert_eq!(set.kappa(), &[25.0, 25.0]);
/// # Ok::<(), m2m_splat::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    vectors: &'a [f32],
    dim: usize,
    ids: Option<&'a [SplatId]>,
    kappa: Values<'a>,
    alpha: Values<'a>,
}

impl<'a> Batch<'a> {
    /// A batch of `vectors.len() / dim` rows with automatic ids and default kappa and alpha.
    pub fn new(vectors: &'a [f32], dim: usize) -> Self {
        Batch { vectors, dim, ids: None, kappa: Values::Default, alpha: Values::Default }
    }

    /// Explicit ids, one per row. Without them the set assigns ids above every id it has seen.
    pub fn ids(mut self, ids: &'a [SplatId]) -> Self {
        self.ids = Some(ids);
        self
    }

    /// The same concentration for every row.
    pub fn kappa(mut self, kappa: f32) -> Self {
        self.kappa = Values::Uniform(kappa);
        self
    }

    /// One concentration per row.
    pub fn kappas(mut self, kappas: &'a [f32]) -> Self {
        self.kappa = Values::PerRow(kappas);
        self
    }

    /// The same weight for every row.
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = Values::Uniform(alpha);
        self
    }

    /// One weight per row.
    pub fn alphas(mut self, alphas: &'a [f32]) -> Self {
        self.alpha = Values::PerRow(alphas);
        self
    }

    /// Number of whole rows in the batch (0 when the dimension is 0).
    pub fn rows(&self) -> usize {
        self.vectors.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Row dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Checks what needs no set, and returns the number of rows: the dimension is `dim`, the vectors
    /// are whole rows and at least one, the ids, kappa and alpha columns (where given) have one value a
    /// row, each kappa and alpha is finite and > 0. What is left to check is per row and done as the row
    /// is written: its values (by [`normalise_onto`](Self::normalise_onto)) and its id (by the caller).
    ///
    /// Errors: [`Error::DimensionMismatch`], [`Error::RaggedBatch`], [`Error::EmptyBatch`],
    /// [`Error::ColumnLength`], [`Error::InvalidKappa`], [`Error::InvalidAlpha`].
    pub fn check(&self, dim: usize) -> Result<usize> {
        if self.dim != dim {
            return Err(Error::DimensionMismatch { expected: dim, got: self.dim });
        }
        if !self.vectors.len().is_multiple_of(dim) {
            return Err(Error::RaggedBatch { len: self.vectors.len(), dim });
        }
        let rows = self.rows();
        if rows == 0 {
            return Err(Error::EmptyBatch);
        }
        if let Some(ids) = self.ids.filter(|ids| ids.len() != rows) {
            return Err(Error::ColumnLength { column: "ids", expected: rows, got: ids.len() });
        }
        self.kappa.check(rows, "kappa", check_kappa)?;
        self.alpha.check(rows, "alpha", check_alpha)?;
        Ok(rows)
    }

    /// Appends each row's unit vector to `mu` and its norm to `norms`, checking the row as it is written
    /// ([`Error::NonFinite`], [`Error::ZeroNorm`], rows counted from the batch's start): one read and
    /// one write of each vector, nothing zero-filled first. On error `mu` and `norms` are as before.
    /// Call [`check`](Self::check) first (a ragged tail is not written).
    pub fn normalise_onto(&self, mu: &mut Vec<f32>, norms: &mut Vec<f32>) -> Result<()> {
        let (mu_len, norms_len) = (mu.len(), norms.len());
        let rows = self.rows();
        mu.reserve(rows * self.dim);
        norms.reserve(rows);
        for (row, src) in self.vectors.chunks_exact(self.dim.max(1)).enumerate() {
            match normalize_extend(src, mu, row) {
                Ok(norm) => norms.push(norm),
                Err(e) => {
                    mu.truncate(mu_len);
                    norms.truncate(norms_len);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Appends each row's kappa to `out`: the batch's, or [`DEFAULT_KAPPA`].
    pub fn extend_kappa(&self, out: &mut Vec<f32>) {
        self.kappa.extend_into(out, self.rows(), DEFAULT_KAPPA);
    }

    /// Appends each row's alpha to `out`: the batch's, or [`DEFAULT_ALPHA`].
    pub fn extend_alpha(&self, out: &mut Vec<f32>) {
        self.alpha.extend_into(out, self.rows(), DEFAULT_ALPHA);
    }
}

/// The shape of a [`SplatSet`], small enough to persist with postcard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplatSetInfo {
    /// Dimension of every `mu`.
    pub dim: usize,
    /// Number of splats.
    pub len: usize,
    /// The id the next automatically numbered splat receives.
    pub next_id: SplatId,
}

/// A columnar set of splats of one dimension.
///
/// Row `i` is `mu()[i*dim..(i+1)*dim]` with `ids()[i]`, `kappa()[i]`, `alpha()[i]` and `norms()[i]`.
/// The `mu` buffer starts on a [`MU_ALIGN`]-byte boundary and rows follow each other without padding.
///
/// Invariants, kept by every method: each `mu` row has unit norm (to f32 rounding), kappa and alpha are
/// finite and > 0, ids are unique.
#[derive(Clone, Debug)]
pub struct SplatSet {
    dim: usize,
    mu: AVec<f32, ConstAlign<MU_ALIGN>>,
    norm: Vec<f32>,
    kappa: Vec<f32>,
    alpha: Vec<f32>,
    ids: Vec<SplatId>,
    row_by_id: HashMap<SplatId, usize>,
    next_id: SplatId,
}

impl SplatSet {
    /// An empty set of dimension `dim` (which must be at least 1).
    pub fn new(dim: usize) -> Result<Self> {
        Self::with_capacity(dim, 0)
    }

    /// An empty set with room for `rows` splats before it reallocates.
    pub fn with_capacity(dim: usize, rows: usize) -> Result<Self> {
        if dim == 0 {
            return Err(Error::ZeroDimension);
        }
        Ok(SplatSet {
            dim,
            mu: AVec::with_capacity(MU_ALIGN, rows.saturating_mul(dim)),
            norm: Vec::with_capacity(rows),
            kappa: Vec::with_capacity(rows),
            alpha: Vec::with_capacity(rows),
            ids: Vec::with_capacity(rows),
            row_by_id: HashMap::with_capacity(rows),
            next_id: 0,
        })
    }

    /// A set built from one batch of raw vectors with default parameters and ids `0..rows`.
    pub fn from_vectors(vectors: &[f32], dim: usize) -> Result<Self> {
        let mut set = Self::with_capacity(dim, vectors.len().checked_div(dim).unwrap_or(0))?;
        set.append(Batch::new(vectors, dim))?;
        Ok(set)
    }

    /// Validates a batch, normalises its vectors and appends it; returns the rows it now occupies.
    ///
    /// The whole batch is checked before the set changes: on any error the set is exactly as before.
    /// Errors: [`Error::DimensionMismatch`], [`Error::RaggedBatch`], [`Error::EmptyBatch`],
    /// [`Error::ColumnLength`], [`Error::DuplicateId`], [`Error::IdsExhausted`], [`Error::InvalidKappa`],
    /// [`Error::InvalidAlpha`], [`Error::NonFinite`], [`Error::ZeroNorm`]; rows in errors count from the
    /// start of the batch.
    pub fn append(&mut self, batch: Batch<'_>) -> Result<Range<usize>> {
        let rows = batch.check(self.dim)?;
        let new_next_id = self.check_ids(batch.ids, rows)?;

        let start_row = self.len();
        let start = self.mu.len();
        self.mu.resize(start + rows * self.dim, 0.0);
        self.norm.reserve(rows);
        let written = batch.vectors.chunks_exact(self.dim).zip(self.mu[start..].chunks_exact_mut(self.dim));
        for (row, (src, dst)) in written.enumerate() {
            match normalize_into(src, dst, row) {
                Ok(norm) => self.norm.push(norm),
                Err(e) => {
                    self.mu.truncate(start);
                    self.norm.truncate(start_row);
                    return Err(e);
                }
            }
        }

        // Nothing below can fail: commit the remaining columns.
        batch.kappa.extend_into(&mut self.kappa, rows, DEFAULT_KAPPA);
        batch.alpha.extend_into(&mut self.alpha, rows, DEFAULT_ALPHA);
        match batch.ids {
            Some(ids) => self.ids.extend_from_slice(ids),
            None => self.ids.extend(self.next_id..new_next_id),
        }
        for (row, &id) in self.ids.iter().enumerate().skip(start_row) {
            self.row_by_id.insert(id, row);
        }
        self.next_id = new_next_id;
        Ok(start_row..start_row + rows)
    }

    /// Checks explicit ids (or room for automatic ones) and returns the next automatic id after the batch.
    fn check_ids(&self, ids: Option<&[SplatId]>, rows: usize) -> Result<SplatId> {
        let Some(ids) = ids else {
            return self.next_id.checked_add(rows as u64).ok_or(Error::IdsExhausted { rows });
        };
        if ids.len() != rows {
            return Err(Error::ColumnLength { column: "ids", expected: rows, got: ids.len() });
        }
        let mut seen = HashSet::with_capacity(rows);
        let mut max = None;
        for (row, &id) in ids.iter().enumerate() {
            if self.row_by_id.contains_key(&id) || !seen.insert(id) {
                return Err(Error::DuplicateId { row, id });
            }
            max = max.max(Some(id));
        }
        // An explicit u64::MAX leaves no id for automatic numbering; the next automatic append reports it.
        let after_max = max.map_or(self.next_id, |m| m.saturating_add(1));
        Ok(self.next_id.max(after_max))
    }

    /// Appends one owned splat (already valid) and returns its row.
    ///
    /// Errors: [`Error::DimensionMismatch`], [`Error::DuplicateId`] (row 0).
    pub fn push(&mut self, splat: &Splat) -> Result<usize> {
        if splat.dim() != self.dim {
            return Err(Error::DimensionMismatch { expected: self.dim, got: splat.dim() });
        }
        if self.row_by_id.contains_key(&splat.id()) {
            return Err(Error::DuplicateId { row: 0, id: splat.id() });
        }
        let row = self.len();
        self.mu.extend_from_slice(splat.mu());
        self.norm.push(splat.norm());
        self.kappa.push(splat.kappa());
        self.alpha.push(splat.alpha());
        self.ids.push(splat.id());
        self.row_by_id.insert(splat.id(), row);
        self.next_id = self.next_id.max(splat.id().saturating_add(1));
        Ok(row)
    }

    /// Dimension of every `mu`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of splats.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the set holds no splat.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The splat at `row`, if there is one.
    pub fn row(&self, row: usize) -> Option<SplatRef<'_>> {
        let id = *self.ids.get(row)?;
        Some(SplatRef {
            id,
            mu: self.mu_row(row),
            kappa: self.kappa[row],
            alpha: self.alpha[row],
            norm: self.norm[row],
        })
    }

    /// The splat with id `id`, if there is one.
    pub fn get(&self, id: SplatId) -> Option<SplatRef<'_>> {
        self.row(self.row_of(id)?)
    }

    /// The row that holds id `id`.
    pub fn row_of(&self, id: SplatId) -> Option<usize> {
        self.row_by_id.get(&id).copied()
    }

    /// The unit direction of row `row`.
    ///
    /// # Panics
    /// If `row >= self.len()`, like slice indexing.
    pub fn mu_row(&self, row: usize) -> &[f32] {
        &self.mu[row * self.dim..(row + 1) * self.dim]
    }

    /// All unit directions, row-major, starting on a [`MU_ALIGN`]-byte boundary.
    pub fn mu(&self) -> &[f32] {
        &self.mu
    }

    /// The ids, by row.
    pub fn ids(&self) -> &[SplatId] {
        &self.ids
    }

    /// The concentrations, by row.
    pub fn kappa(&self) -> &[f32] {
        &self.kappa
    }

    /// The weights, by row.
    pub fn alpha(&self) -> &[f32] {
        &self.alpha
    }

    /// Lengths of the raw vectors the splats were built from, by row.
    pub fn norms(&self) -> &[f32] {
        &self.norm
    }

    /// Iterates over all splats in row order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = SplatRef<'_>> + '_ {
        (0..self.len()).map(|row| SplatRef {
            id: self.ids[row],
            mu: self.mu_row(row),
            kappa: self.kappa[row],
            alpha: self.alpha[row],
            norm: self.norm[row],
        })
    }

    /// The shape of the set.
    pub fn info(&self) -> SplatSetInfo {
        SplatSetInfo { dim: self.dim, len: self.len(), next_id: self.next_id }
    }

    /// Bytes held by the columns and the id map (capacity, not just length): what the set costs in RAM.
    pub fn memory_bytes(&self) -> usize {
        let f = size_of::<f32>();
        self.mu.capacity() * f
            + (self.norm.capacity() + self.kappa.capacity() + self.alpha.capacity()) * f
            + self.ids.capacity() * size_of::<SplatId>()
            + self.row_by_id.capacity() * (size_of::<SplatId>() + size_of::<usize>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_unchanged(set: &SplatSet, len: usize) {
        assert_eq!(set.len(), len);
        assert_eq!(set.mu().len(), len * set.dim());
        assert_eq!(set.norms().len(), len);
        assert_eq!(set.kappa().len(), len);
        assert_eq!(set.alpha().len(), len);
        assert_eq!(set.row_by_id.len(), len);
    }

    fn two_rows() -> SplatSet {
        let mut set = SplatSet::new(3).unwrap();
        set.append(Batch::new(&[1.0, 0.0, 0.0, 0.0, 5.0, 0.0], 3)).unwrap();
        set
    }

    #[test]
    fn append_normalises_and_assigns_ids() {
        let set = two_rows();
        assert_eq!(set.ids(), &[0, 1]);
        assert_eq!(set.mu_row(1), &[0.0, 1.0, 0.0]);
        assert_eq!(set.norms(), &[1.0, 5.0]);
        assert_eq!(set.kappa(), &[DEFAULT_KAPPA; 2]);
        assert_eq!(set.alpha(), &[DEFAULT_ALPHA; 2]);
        assert_eq!(set.mu().as_ptr() as usize % MU_ALIGN, 0);
        assert_eq!(set.info(), SplatSetInfo { dim: 3, len: 2, next_id: 2 });
    }

    #[test]
    fn automatic_ids_continue_above_explicit_ones() {
        let mut set = two_rows();
        set.append(Batch::new(&[1.0, 1.0, 1.0], 3).ids(&[100])).unwrap();
        let rows = set.append(Batch::new(&[1.0, 2.0, 3.0], 3)).unwrap();
        assert_eq!(set.ids()[rows], [101]);
        assert_eq!(set.get(100).unwrap().norm, 3f32.sqrt());
    }

    #[test]
    fn each_bad_input_is_typed_and_leaves_nothing_behind() {
        let mut set = two_rows();
        let good = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut nan = good;
        nan[4] = f32::NAN;
        let mut inf = good;
        inf[0] = f32::NEG_INFINITY;
        let zero_second = [1.0, 2.0, 3.0, 0.0, 0.0, 0.0];
        type Case<'a> = (Batch<'a>, fn(&Error) -> bool);
        let cases: Vec<Case<'_>> = vec![
            (Batch::new(&good, 2), |e| matches!(e, Error::DimensionMismatch { expected: 3, got: 2 })),
            (Batch::new(&good[..5], 3), |e| matches!(e, Error::RaggedBatch { len: 5, dim: 3 })),
            (Batch::new(&[], 3), |e| matches!(e, Error::EmptyBatch)),
            (Batch::new(&nan, 3), |e| matches!(e, Error::NonFinite { row: 1, column: 1, .. })),
            (Batch::new(&inf, 3), |e| matches!(e, Error::NonFinite { row: 0, column: 0, .. })),
            (Batch::new(&zero_second, 3), |e| matches!(e, Error::ZeroNorm { row: 1 })),
            (Batch::new(&good, 3).kappas(&[1.0, 0.0]), |e| matches!(e, Error::InvalidKappa { row: 1, .. })),
            (Batch::new(&good, 3).kappa(-1.0), |e| matches!(e, Error::InvalidKappa { row: 0, .. })),
            (Batch::new(&good, 3).kappa(f32::INFINITY), |e| matches!(e, Error::InvalidKappa { .. })),
            (Batch::new(&good, 3).alphas(&[f32::NAN, 1.0]), |e| matches!(e, Error::InvalidAlpha { row: 0, .. })),
            (Batch::new(&good, 3).alpha(0.0), |e| matches!(e, Error::InvalidAlpha { row: 0, .. })),
            (Batch::new(&good, 3).kappas(&[1.0]), |e| {
                matches!(e, Error::ColumnLength { column: "kappa", expected: 2, got: 1 })
            }),
            (Batch::new(&good, 3).ids(&[5]), |e| matches!(e, Error::ColumnLength { column: "ids", .. })),
            (Batch::new(&good, 3).ids(&[7, 1]), |e| matches!(e, Error::DuplicateId { row: 1, id: 1 })),
            (Batch::new(&good, 3).ids(&[9, 9]), |e| matches!(e, Error::DuplicateId { row: 1, id: 9 })),
        ];
        for (i, (batch, expected)) in cases.into_iter().enumerate() {
            let before: Vec<f32> = set.mu().to_vec();
            let err = set.append(batch).expect_err("bad batch accepted");
            assert!(expected(&err), "case {i}: unexpected error {err:?}");
            assert_unchanged(&set, 2);
            assert_eq!(set.mu(), &before[..], "case {i}");
            assert_eq!(set.next_id, 2, "case {i}");
        }
        // And the set still takes a good batch afterwards.
        assert_eq!(set.append(Batch::new(&good, 3)).unwrap(), 2..4);
    }

    /// `normalise_onto`, the ingest's one pass: a bad row anywhere leaves both columns exactly as they
    /// were (their old contents and lengths), and a good batch writes what `append` writes. Mutations
    /// caught (both tried by hand): `mu` or `norms` not cut back after a bad row.
    #[test]
    fn normalise_onto_writes_what_append_writes_and_nothing_on_a_bad_row() {
        let good: Vec<f32> = (0..40 * 3).map(|i| 1.0 + (i % 7) as f32).collect();
        let (mut mu, mut norms) = (vec![5.0f32; 6], vec![9.0f32; 2]);
        for bad_row in [0, 17, 39] {
            for x in [f32::NAN, f32::INFINITY] {
                let mut bad = good.clone();
                bad[bad_row * 3 + 1] = x;
                let e = Batch::new(&bad, 3).normalise_onto(&mut mu, &mut norms).unwrap_err();
                assert!(matches!(e, Error::NonFinite { row, column: 1, .. } if row == bad_row), "{e:?}");
                assert_eq!((&mu[..], &norms[..]), (&[5.0f32; 6][..], &[9.0f32; 2][..]), "row {bad_row}");
            }
        }
        Batch::new(&good, 3).normalise_onto(&mut mu, &mut norms).unwrap();
        let set = SplatSet::from_vectors(&good, 3).unwrap();
        assert_eq!((&mu[6..], &norms[2..]), (set.mu(), set.norms()));
    }

    #[test]
    fn ids_exhausted_is_an_error_not_a_wrap() {
        let mut set = SplatSet::new(1).unwrap();
        set.append(Batch::new(&[1.0], 1).ids(&[u64::MAX - 1])).unwrap();
        set.append(Batch::new(&[2.0], 1).ids(&[u64::MAX])).unwrap();
        let err = set.append(Batch::new(&[1.0], 1)).unwrap_err();
        assert!(matches!(err, Error::IdsExhausted { rows: 1 }));
        assert_unchanged(&set, 2);
    }

    #[test]
    fn zero_dimension_is_rejected() {
        assert!(matches!(SplatSet::new(0), Err(Error::ZeroDimension)));
        let mut set = SplatSet::new(4).unwrap();
        assert!(matches!(set.append(Batch::new(&[], 0)), Err(Error::DimensionMismatch { expected: 4, got: 0 })));
    }

    #[test]
    fn push_checks_dimension_and_id() {
        let mut set = two_rows();
        assert!(matches!(
            set.push(&Splat::new(5, &[1.0, 2.0], 1.0, 1.0).unwrap()),
            Err(Error::DimensionMismatch { expected: 3, got: 2 })
        ));
        assert!(matches!(
            set.push(&Splat::new(1, &[1.0, 2.0, 3.0], 1.0, 1.0).unwrap()),
            Err(Error::DuplicateId { id: 1, .. })
        ));
        assert_unchanged(&set, 2);
        let s = Splat::new(50, &[1.0, 2.0, 2.0], 2.0, 3.0).unwrap();
        assert_eq!(set.push(&s).unwrap(), 2);
        assert_eq!(set.get(50).unwrap().to_splat(), s);
        assert_eq!(set.info().next_id, 51);
    }

    proptest! {
        #[test]
        fn appended_rows_are_unit_and_views_agree(
            dim in 1usize..40,
            rows in 1usize..30,
            seed in proptest::collection::vec(-100.0f32..100.0, 40 * 30),
            kappa in 0.001f32..1e4,
        ) {
            let vectors: Vec<f32> = seed[..rows * dim].to_vec();
            let nonzero = vectors.chunks_exact(dim).all(|r| r.iter().any(|&x| x != 0.0));
            prop_assume!(nonzero);
            let mut set = SplatSet::new(dim).unwrap();
            let range = set.append(Batch::new(&vectors, dim).kappa(kappa)).unwrap();
            prop_assert_eq!(range, 0..rows);
            for (i, s) in set.iter().enumerate() {
                let n: f64 = s.mu.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
                prop_assert!((n - 1.0).abs() < 1e-5);
                prop_assert_eq!(s, set.row(i).unwrap());
                prop_assert_eq!(s, set.get(s.id).unwrap());
                prop_assert_eq!(s.kappa, kappa);
                // norm * mu reconstructs the raw vector.
                for (a, b) in s.mu.iter().zip(&vectors[i * dim..(i + 1) * dim]) {
                    prop_assert!((a * s.norm - b).abs() <= 1e-4 * s.norm.max(1.0));
                }
            }
        }

        #[test]
        fn a_bad_row_anywhere_rejects_the_whole_batch(
            rows in 1usize..20,
            bad_row in any::<prop::sample::Index>(),
            kind in 0u8..3,
        ) {
            let dim = 4;
            let mut vectors: Vec<f32> = (0..rows * dim).map(|i| (i % 7) as f32 + 1.0).collect();
            let r = bad_row.index(rows);
            match kind {
                0 => vectors[r * dim + 2] = f32::NAN,
                1 => vectors[r * dim..(r + 1) * dim].fill(0.0),
                _ => vectors[r * dim] = f32::INFINITY,
            }
            let mut set = two_rows_dim(dim);
            let err = set.append(Batch::new(&vectors, dim)).unwrap_err();
            let row = match err {
                Error::NonFinite { row, .. } | Error::ZeroNorm { row } => row,
                other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            };
            prop_assert_eq!(row, r);
            assert_unchanged(&set, 2);
        }
    }

    fn two_rows_dim(dim: usize) -> SplatSet {
        let mut set = SplatSet::new(dim).unwrap();
        set.append(Batch::new(&vec![1.0; 2 * dim], dim)).unwrap();
        set
    }
}
