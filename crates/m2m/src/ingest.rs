//! The in-memory engine's add: each raw row checked and normalised straight into the engine's rows in
//! one pass (no batch set built first and copied after), the attributes checked before and appended by
//! column after, nothing changed unless the whole batch is good.
//!
//! An engine with a data directory adds through the database instead (`engine.rs`): the database's log
//! and in-memory table take a validated set, which it keeps.

use std::collections::HashSet;
use std::sync::Arc;

use m2m_splat::Batch;

use crate::{Error, M2m, Result};

impl M2m {
    /// Adds raw rows to an engine without a database; returns the rows they occupy. The order of the
    /// work is what makes a bad batch change nothing: everything checkable without writing (shape,
    /// column lengths, kappa, alpha, ids, attributes) first; then the one pass that writes each vector,
    /// which undoes itself on a bad row; then the columns that cannot fail.
    pub(crate) fn add_in_memory(
        &mut self,
        vectors: &[f32],
        ids: &[u64],
        kappa: Option<&[f32]>,
        alpha: Option<&[f32]>,
        attrs: Option<&m2m_tier::AttrBatch>,
    ) -> Result<std::ops::Range<usize>> {
        crate::validate::check_ids_not_reserved(ids)?;
        let mut batch =
            Batch::new(vectors, self.config.dim).ids(ids).kappa(self.config.init_kappa).alpha(self.config.init_alpha);
        if let Some(k) = kappa {
            batch = batch.kappas(k);
        }
        if let Some(a) = alpha {
            batch = batch.alphas(a);
        }
        batch.check(self.config.dim)?;
        self.check_new_ids(ids)?;
        // Rows without attributes join the table with every field null.
        let prepared = self.attrs.prepare(ids.len(), attrs)?;
        let rows = Arc::make_mut(&mut self.set).append_batch(&batch, ids)?;
        Arc::make_mut(&mut self.attrs).commit(ids, prepared);
        batch.extend_kappa(Arc::make_mut(&mut self.kappa));
        batch.extend_alpha(Arc::make_mut(&mut self.alpha));
        Ok(rows)
    }

    /// Refuses an id the engine holds (live or deleted and not yet compacted) or one twice in `ids`,
    /// naming its row ([`m2m_splat::Error::DuplicateId`]). Every id an engine without a database holds
    /// or held is below `next_id`, so ids ascending from there (the automatic ones) are new and distinct
    /// without a look-up.
    fn check_new_ids(&self, ids: &[u64]) -> Result<()> {
        let fresh = ids.first().is_some_and(|&first| first >= self.next_id);
        if fresh && ids.windows(2).all(|w| w[0] < w[1]) {
            return Ok(());
        }
        let mut seen = HashSet::with_capacity(ids.len());
        match ids
            .iter()
            .enumerate()
            .find(|(_, id)| self.deleted.contains(id) || self.set.row_of(**id).is_some() || !seen.insert(**id))
        {
            Some((row, &id)) => Err(Error::Splat(m2m_splat::Error::DuplicateId { row, id })),
            None => Ok(()),
        }
    }
}
