//! Columns of splats, owned ([`Columns`]) and borrowed ([`ColumnsRef`]): the shape in which the log, the
//! segments, the in-memory table and the warm tier all hold rows.

use std::collections::HashSet;
use std::sync::Arc;

use crate::{Error, Result};

/// Borrowed columns of `rows` splats of dimension `dim`: what a segment stores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColumnsRef<'a> {
    /// Dimension of every row.
    pub dim: usize,
    /// Ids.
    pub ids: &'a [u64],
    /// Raw-vector lengths.
    pub norms: &'a [f32],
    /// Concentrations.
    pub kappa: &'a [f32],
    /// Weights.
    pub alpha: &'a [f32],
    /// Unit directions, row-major.
    pub mu: &'a [f32],
}

impl<'a> From<&'a m2m_splat::SplatSet> for ColumnsRef<'a> {
    fn from(s: &'a m2m_splat::SplatSet) -> Self {
        ColumnsRef { dim: s.dim(), ids: s.ids(), norms: s.norms(), kappa: s.kappa(), alpha: s.alpha(), mu: s.mu() }
    }
}

impl ColumnsRef<'_> {
    /// The first value that no validated splat can have, as (column, row, why): a norm, kappa or alpha
    /// that is not finite and positive, or (with `mu`) a direction component that is not finite. Reading
    /// checks this behind the checksums, so that a well-sealed but forged file is refused too.
    pub(crate) fn invalid_value(&self, mu: bool) -> Option<(&'static str, usize)> {
        let positive = |x: &f32| x.is_finite() && *x > 0.0;
        let bad = |name, col: &[f32]| col.iter().position(|x| !positive(x)).map(|row| (name, row));
        bad("norm", self.norms).or_else(|| bad("kappa", self.kappa)).or_else(|| bad("alpha", self.alpha)).or_else(
            || {
                let dim = self.dim.max(1);
                mu.then(|| self.mu.iter().position(|x| !x.is_finite()).map(|i| ("mu", i / dim))).flatten()
            },
        )
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn check(&self) -> Result<()> {
        let n = self.ids.len();
        let ok = self.dim > 0
            && u32::try_from(self.dim).is_ok()
            && [self.norms.len(), self.kappa.len(), self.alpha.len()].iter().all(|&l| l == n)
            && self.mu.len() == n * self.dim;
        if ok { Ok(()) } else { Err(Error::InvalidBatch { reason: "columns of different lengths".into() }) }
    }
}

/// Owned columns of splats: a recovered log batch, the in-memory table, a warm block.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Columns {
    /// Dimension of every row.
    pub dim: usize,
    /// Ids.
    pub ids: Vec<u64>,
    /// Raw-vector lengths.
    pub norms: Vec<f32>,
    /// Concentrations.
    pub kappa: Vec<f32>,
    /// Weights.
    pub alpha: Vec<f32>,
    /// Unit directions, row-major.
    pub mu: Vec<f32>,
}

impl Columns {
    pub(crate) fn empty(dim: usize) -> Columns {
        Columns { dim, ..Columns::default() }
    }

    pub(crate) fn extend(&mut self, c: ColumnsRef<'_>) {
        self.ids.extend_from_slice(c.ids);
        self.norms.extend_from_slice(c.norms);
        self.kappa.extend_from_slice(c.kappa);
        self.alpha.extend_from_slice(c.alpha);
        self.mu.extend_from_slice(c.mu);
    }

    /// Appends row `i` of `c`.
    pub(crate) fn push_row(&mut self, c: ColumnsRef<'_>, i: usize) {
        self.ids.push(c.ids[i]);
        self.norms.push(c.norms[i]);
        self.kappa.push(c.kappa[i]);
        self.alpha.push(c.alpha[i]);
        self.mu.extend_from_slice(&c.mu[i * c.dim..(i + 1) * c.dim]);
    }

    /// Removes the rows whose id is in `gone`.
    pub(crate) fn remove(&mut self, gone: &HashSet<u64>) {
        if self.ids.iter().any(|id| gone.contains(id)) {
            let mut next = Columns::empty(self.dim);
            let view = self.view();
            (0..self.rows()).filter(|&i| !gone.contains(&view.ids[i])).for_each(|i| next.push_row(view, i));
            *self = next;
        }
    }

    /// Borrowed view.
    pub fn view(&self) -> ColumnsRef<'_> {
        ColumnsRef {
            dim: self.dim,
            ids: &self.ids,
            norms: &self.norms,
            kappa: &self.kappa,
            alpha: &self.alpha,
            mu: &self.mu,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.ids.len()
    }
}

/// Rows not yet in a segment: the ingested batches, each in its own allocation and shared with every
/// snapshot that saw it. Taking a snapshot copies the list of chunks, never the rows, and an ingest
/// while readers hold snapshots adds a chunk instead of copying the table.
#[derive(Clone, Debug, Default)]
pub struct Memtable {
    dim: usize,
    chunks: Vec<Arc<Columns>>,
    rows: usize,
}

/// A chunk with fewer rows than this takes the next batch's rows into itself when no snapshot shares
/// it, so that many small batches do not make many small chunks.
const SMALL_CHUNK: usize = 256;

impl Memtable {
    pub(crate) fn new(dim: usize) -> Memtable {
        Memtable { dim, chunks: Vec::new(), rows: 0 }
    }

    /// Dimension of every row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The chunks, in ingest order.
    pub fn chunks(&self) -> &[Arc<Columns>] {
        &self.chunks
    }

    /// Every chunk as borrowed columns.
    pub fn parts(&self) -> impl Iterator<Item = ColumnsRef<'_>> {
        self.chunks.iter().map(|c| c.view())
    }

    /// Appends rows (one copy).
    pub(crate) fn push(&mut self, c: ColumnsRef<'_>) {
        self.rows += c.rows();
        if let Some(last) = self.chunks.last_mut().filter(|l| l.rows() < SMALL_CHUNK)
            && let Some(last) = Arc::get_mut(last)
        {
            last.extend(c);
            return;
        }
        let mut chunk = Columns::empty(self.dim);
        chunk.extend(c);
        self.chunks.push(Arc::new(chunk));
    }

    /// Removes the rows whose id is in `gone` (rebuilding only the chunks that hold one); returns the
    /// ids that were here.
    pub(crate) fn remove(&mut self, gone: &HashSet<u64>) -> HashSet<u64> {
        let mut found = HashSet::new();
        for chunk in &mut self.chunks {
            let here: Vec<u64> = chunk.ids.iter().copied().filter(|id| gone.contains(id)).collect();
            if !here.is_empty() {
                Arc::make_mut(chunk).remove(gone);
                found.extend(here);
            }
        }
        self.chunks.retain(|c| c.rows() > 0);
        self.rows = self.chunks.iter().map(|c| c.rows()).sum();
        found
    }
}
