//! A database directory: the lock, the manifest, immutable segments and the write-ahead log, tied together.
//!
//! Layout: `LOCK`, `MANIFEST`, segments `NNNNNNNNNN.seg`, and one log `NNNNNNNNNN.wal` (numbers are the
//! manifest generation or segment id that created them). Ingest appends to the log, then to the in-memory
//! table; `flush` turns the table into a segment:
//!
//! 1. write the segment (temporary name, fsync, rename);
//! 2. create an empty log for the next generation;
//! 3. store the manifest naming both (the commit point);
//! 4. delete the old log.
//!
//! A crash before step 3 leaves the old manifest, whose log still holds every batch; a crash after it
//! leaves the new one. Either way `open` removes the files of our naming that the manifest does not name
//! (the rule of what a directory owns is in `owned.rs`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use m2m_splat::SplatSet;

use crate::attrs::{decode_block, decode_update, encode_block, encode_update};
use crate::idruns::LiveIds;
use crate::{
    AttrBatch, AttrTable, Columns, ColumnsRef, DirLock, Durability, Error, LogCheck, MANIFEST_FILE, Manifest, Memtable,
    Result, Schema, SectionFile, SectionWriter, Segment, SegmentEntry, Wal, WalRecord, owned,
};

/// Settings of a database directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DbOptions {
    /// When an ingested batch is acknowledged. Default [`Durability::Fsync`].
    pub durability: Durability,
}

/// A consistent view for readers: the segments and in-memory rows at the moment it was taken. Later
/// ingests, deletes, flushes and compactions do not change it (a mapped segment stays readable after its
/// file is removed). Segment rows whose id is in `deleted` are not part of the view: readers skip them.
/// The tombstones apply to segment rows only: a row in memory of such an id is an upsert's new row.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Manifest generation of the view.
    pub generation: u64,
    /// The segments.
    pub segments: Vec<Arc<Segment>>,
    /// Rows not yet in a segment.
    pub memtable: Memtable,
    /// Ids deleted from the segments (not yet compacted away).
    pub deleted: Arc<HashSet<u64>>,
    /// The stored index's section files, mapped (header and table checked), in the manifest's order;
    /// empty when there is none or when they are damaged (then `index_error` says how).
    pub index: Vec<Arc<SectionFile>>,
    /// Why the stored index's files could not be mapped, if they could not: the layer above reports it
    /// (readers) or leaves the index out (the writer, whose next build replaces it).
    pub index_error: Option<Arc<Error>>,
    /// The attributes of the live rows (and the schema).
    pub attrs: Arc<AttrTable>,
}

impl Snapshot {
    /// Every part of the view: segments first, then the in-memory rows.
    pub fn parts(&self) -> impl Iterator<Item = ColumnsRef<'_>> {
        self.segments.iter().map(|s| s.columns()).chain(self.memtable.parts())
    }

    /// Number of live splats.
    pub fn len(&self) -> usize {
        self.parts().map(|p| p.rows()).sum::<usize>() - self.deleted.len()
    }

    /// Whether the view holds no live splat.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a segment row with this id is part of the view (false for a deleted row, or one an
    /// upsert replaced). Rows in memory are always part of it.
    pub fn is_live(&self, id: u64) -> bool {
        !self.deleted.contains(&id)
    }
}

/// What [`Db::check`] found: the state a reader would see, and the log's tail.
#[derive(Clone, Debug)]
pub struct DbCheck {
    /// The manifest.
    pub manifest: Manifest,
    /// The acknowledged state.
    pub snapshot: Snapshot,
    /// The log: its good records and any tail after them.
    pub log: LogCheck,
    /// What is wrong with the stored index's files (header, table, or any section's checksum), if
    /// anything: the index can be dropped and built again, unlike damage to a segment.
    pub index_problem: Option<String>,
}

/// An open database directory, held by this process as its only writer.
#[derive(Debug)]
pub struct Db {
    dir: PathBuf,
    _lock: DirLock,
    manifest: Manifest,
    segments: Vec<Arc<Segment>>,
    wal: Wal,
    memtable: Memtable,
    /// Live ids.
    ids: LiveIds,
    /// Ids deleted from segments, until compaction.
    deleted: Arc<HashSet<u64>>,
    /// The stored index's mapped files (see [`Snapshot::index`]).
    index: Vec<Arc<SectionFile>>,
    index_error: Option<Arc<Error>>,
    /// The attributes of every live row; shared with snapshots (a change while one is held copies).
    attrs: Arc<AttrTable>,
    /// Attributes of rows in segments changed since they were written (the log holds the change): the
    /// next flush merges the segments, so that the change is not lost when the log is retired.
    attrs_dirty: bool,
    /// Least format version of the next log (3 once the database has upserted: its records need it).
    log_floor: u32,
    options: DbOptions,
    /// Set when a write failed: the files are at their last good version, but this handle's view of them
    /// may not be, so it refuses further changes until the database is reopened.
    poisoned: bool,
}

/// What the manifest's segments and the replayed log add up to.
struct Replayed {
    segments: Vec<Arc<Segment>>,
    memtable: Memtable,
    ids: LiveIds,
    deleted: HashSet<u64>,
    index: Vec<Arc<SectionFile>>,
    index_error: Option<Arc<Error>>,
    attrs: AttrTable,
    attrs_dirty: bool,
}

/// The stored index's mapped files, or why they could not be mapped.
type MappedIndex = (Vec<Arc<SectionFile>>, Option<Arc<Error>>);

/// Maps the stored index's files named by `manifest`. A missing file is the error (a reader racing a
/// writer that replaced the index starts again; for the writer the manifest names a file that is gone);
/// damage is returned beside an empty list, so that the layer above decides.
fn map_index(dir: &Path, manifest: &Manifest) -> Result<MappedIndex> {
    let mut files = Vec::with_capacity(manifest.index.len());
    for name in &manifest.index {
        match SectionFile::open(dir.join(name)) {
            Ok(f) => files.push(Arc::new(f)),
            Err(e @ Error::Io { .. }) => return Err(e),
            Err(e) => return Ok((Vec::new(), Some(Arc::new(e)))),
        }
    }
    Ok((files, None))
}

/// Maps and checks the manifest's segments and replays the log's records over them: batches add rows,
/// deletes remove them (or tombstone segment rows).
fn replay(dir: &Path, manifest: &Manifest, wal_path: &Path, records: &[WalRecord]) -> Result<Replayed> {
    let segments =
        manifest.segments.iter().map(|s| Segment::open(dir.join(&s.file)).map(Arc::new)).collect::<Result<Vec<_>>>()?;
    for (s, e) in segments.iter().zip(&manifest.segments) {
        if s.dim() != manifest.dim || s.rows() as u64 != e.rows {
            // Either file may be the damaged one: the error names both.
            let reason = format!(
                "{} holds {} rows of dimension {}, the manifest says {} of dimension {}",
                s.path().display(),
                s.rows(),
                s.dim(),
                e.rows,
                manifest.dim
            );
            return Err(Error::corrupt(dir.join(MANIFEST_FILE), 0, reason));
        }
    }
    // The ids the segments hold (tombstoned ones included), as runs: ids handed out in sequence are a
    // few runs, not a hash set of every id (which the open spent most of its time building). A repeated
    // id names both files (either may be the damaged one).
    let mut stored = LiveIds::default();
    for (i, s) in segments.iter().enumerate() {
        let before = stored.len();
        if let Some(&id) = s.ids().iter().find(|&&id| stored.contains(id)) {
            let j = segments[..i].iter().position(|t| t.ids().contains(&id)).unwrap_or(i);
            let reason = format!("id {id} stored twice (also in {})", segments[j].path().display());
            return Err(Error::corrupt(s.path(), 0, reason));
        }
        stored.insert(s.ids());
        if stored.len() != before + s.ids().len() {
            let id = repeated(s.ids()).unwrap_or_default();
            let reason = format!("id {id} stored twice (also in {})", s.path().display());
            return Err(Error::corrupt(s.path(), 0, reason));
        }
    }
    // The attributes: each segment's block (checked against the manifest's schema), nulls for a segment
    // written without one.
    let mut attrs = AttrTable::new(manifest.schema.clone().unwrap_or_default());
    for s in &segments {
        match (s.attrs_block(), &manifest.schema) {
            (Some(block), Some(schema)) => {
                let cols =
                    decode_block(block, schema, s.rows()).map_err(|r| Error::corrupt(s.path(), s.attrs_offset(), r))?;
                attrs.append(s.ids(), Some(&cols));
            }
            (Some(_), None) => {
                let reason = "an attribute block in a database whose manifest has no schema";
                return Err(Error::corrupt(s.path(), 0, reason));
            }
            (None, _) => attrs.append(s.ids(), None),
        }
    }
    attrs.remove(&manifest.deleted);
    let mut attrs_dirty = false;
    let mut ids = stored.clone();
    ids.remove(&manifest.deleted);
    let mut deleted: HashSet<u64> = manifest.deleted.iter().copied().collect();
    let mut memtable = Memtable::new(manifest.dim);
    let no_schema = || Error::corrupt(wal_path, 0, "attributes in a database whose manifest has no schema");
    let append_attrs = |attrs: &mut AttrTable, b: &crate::WalBatch| -> Result<()> {
        match &b.attrs {
            Some(block) => {
                let schema = manifest.schema.as_ref().ok_or_else(no_schema)?;
                let cols = decode_block(block, schema, b.columns.rows())
                    .map_err(|r| Error::corrupt(wal_path, 0, format!("record {}: {r}", b.seq)))?;
                attrs.append(&b.columns.ids, Some(&cols));
            }
            None => attrs.append(&b.columns.ids, None),
        }
        Ok(())
    };
    for record in records {
        match record {
            WalRecord::Batch(b) => {
                if b.columns.dim != manifest.dim {
                    return Err(dim_mismatch(wal_path, b.columns.dim, manifest.dim));
                }
                let before = ids.len();
                let twice = b.columns.ids.iter().copied().find(|&id| ids.contains(id)).or_else(|| {
                    ids.insert(&b.columns.ids);
                    (ids.len() != before + b.columns.ids.len()).then(|| repeated(&b.columns.ids).unwrap_or_default())
                });
                if let Some(id) = twice {
                    return Err(Error::corrupt(wal_path, 0, format!("id {id} added twice")));
                }
                memtable.push(b.columns.view());
                append_attrs(&mut attrs, b)?;
            }
            WalRecord::Upsert(b) => {
                if b.columns.dim != manifest.dim {
                    return Err(dim_mismatch(wal_path, b.columns.dim, manifest.dim));
                }
                let mut seen = HashSet::with_capacity(b.columns.rows());
                if let Some(id) = b.columns.ids.iter().find(|&&id| !seen.insert(id)) {
                    return Err(Error::corrupt(wal_path, 0, format!("record {}: id {id} twice in an upsert", b.seq)));
                }
                // The rows replaced: in memory they go, in a segment they are tombstoned (the tombstones
                // hide segment rows only, so the new row in memory stays visible).
                let replaced: HashSet<u64> = b.columns.ids.iter().copied().filter(|&id| ids.contains(id)).collect();
                let in_memory = memtable.remove(&replaced);
                attrs.remove(&replaced.iter().copied().collect::<Vec<_>>());
                deleted.extend(replaced.into_iter().filter(|id| !in_memory.contains(id)));
                ids.insert(&b.columns.ids);
                memtable.push(b.columns.view());
                append_attrs(&mut attrs, b)?;
            }
            WalRecord::Delete { ids: gone, .. } => {
                let gone: HashSet<u64> = gone.iter().copied().filter(|&id| ids.contains(id)).collect();
                ids.remove(&gone.iter().copied().collect::<Vec<_>>());
                // Rows still in memory simply go; rows already in a segment get a tombstone.
                let in_memory = memtable.remove(&gone);
                attrs.remove(&gone.iter().copied().collect::<Vec<_>>());
                deleted.extend(gone.into_iter().filter(|id| !in_memory.contains(id)));
            }
            WalRecord::SetAttributes { seq, ids: which, block } => {
                let schema = manifest.schema.as_ref().ok_or_else(no_schema)?;
                let bad = |r: String| Error::corrupt(wal_path, 0, format!("record {seq}: {r}"));
                let batch = decode_update(block, schema, which.len()).map_err(bad)?;
                attrs.update(which, &batch).map_err(|e| bad(e.to_string()))?;
                attrs_dirty |= which.iter().any(|&id| stored.contains(id));
            }
        }
    }
    let (index, index_error) = map_index(dir, manifest)?;
    Ok(Replayed { segments, memtable, ids, deleted, index, index_error, attrs, attrs_dirty })
}

/// An id `ids` holds twice, if any.
fn repeated(ids: &[u64]) -> Option<u64> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// The log and the manifest disagree on the dimension: either may be the damaged one, so the error
/// names both (the log's path, in the reason, and the manifest's).
fn dim_mismatch(wal: &Path, found: usize, manifest: usize) -> Error {
    let reason = format!("{} holds rows of dimension {found}, the manifest says {manifest}", wal.display());
    Error::corrupt(fsio_parent(wal).join(MANIFEST_FILE), 0, reason)
}

fn fsio_parent(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// A file the manifest names is missing: a deleted file, or a damaged (forged) manifest. The error names
/// the manifest and the missing file; any other error is returned as it is.
fn named_but_missing(dir: &Path, e: Error) -> Error {
    match e {
        Error::Io { path, source }
            if source.kind() == std::io::ErrorKind::NotFound
                && path.starts_with(dir)
                && path != dir.join(MANIFEST_FILE) =>
        {
            let reason = format!("names {}, which is missing ({source})", path.display());
            Error::corrupt(dir.join(MANIFEST_FILE), 0, reason)
        }
        other => other,
    }
}

fn wal_name(generation: u64) -> String {
    format!("{generation:010}.wal")
}

fn segment_name(id: u64) -> String {
    format!("{id:010}.seg")
}

impl Db {
    /// Creates a database for splats of dimension `dim` in `dir` (created if missing; it must not hold a
    /// database already).
    pub fn create(dir: impl AsRef<Path>, dim: usize, options: DbOptions) -> Result<Db> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST_FILE);
        // The directory is checked before anything is written into it (the lock file included): it must
        // be empty, or hold only what a create killed before its manifest left (see `owned`).
        match std::fs::symlink_metadata(&dir) {
            Ok(_) if manifest_path.exists() => return Err(Error::AlreadyExists { path: dir }),
            Ok(_) => drop(owned::check_creatable(&dir)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            Err(e) => return Err(Error::io(&dir, e)),
        }
        let lock = DirLock::acquire(&dir)?;
        // Checked again under the lock: another creator may have won the race.
        if manifest_path.exists() {
            return Err(Error::AlreadyExists { path: dir });
        }
        // Leftovers are removed only under our create marker (see `owned`): written first, removed last.
        let manifest = Manifest {
            generation: 1,
            dim,
            segments: Vec::new(),
            wal: Some(wal_name(1)),
            next_segment_id: 0,
            deleted: Vec::new(),
            index: Vec::new(),
            schema: None,
        };
        let made = owned::check_creatable(&dir)
            .and_then(|marked| if marked { Ok(()) } else { owned::mark_creating(&dir) })
            .and_then(|()| owned::remove_unnamed(&dir, &HashSet::new()))
            .and_then(|()| Wal::create(dir.join(wal_name(1)), dim, options.durability))
            .and_then(|wal| manifest.store(&dir).map(|()| wal));
        let wal = match made {
            Ok(wal) => wal,
            Err(e) => {
                // Nothing half-made stays behind (a manifest renamed into place whose directory sync
                // failed included): the directory holds no database, and create can be tried again.
                if !matches!(e, Error::NotOurs { .. }) {
                    let _ = std::fs::remove_file(&manifest_path);
                    if owned::remove_unnamed(&dir, &HashSet::new()).is_ok() {
                        let _ = owned::unmark_creating(&dir);
                    }
                }
                return Err(e);
            }
        };
        owned::unmark_creating(&dir)?;
        Ok(Db {
            dir,
            _lock: lock,
            manifest,
            segments: Vec::new(),
            wal,
            memtable: Memtable::new(dim),
            ids: LiveIds::default(),
            deleted: Arc::new(HashSet::new()),
            index: Vec::new(),
            index_error: None,
            attrs: Arc::new(AttrTable::default()),
            attrs_dirty: false,
            log_floor: 1,
            options,
            poisoned: false,
        })
    }

    /// Opens the database in `dir`: takes the writer lock, maps and validates every segment, recovers the
    /// log (cutting a torn tail) and removes files left over by an interrupted flush or compaction.
    ///
    /// # Examples
    ///
    /// ```
    /// use m2m_splat::SplatSet;
    /// use m2m_tier::{Db, DbOptions, Error};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let mut db = Db::create(dir.path(), 2, DbOptions::default())?;
    /// db.ingest(&SplatSet::from_vectors(&[1.0, 0.0, 0.0, 1.0, 0.6, 0.8], 2)?)?; // acknowledged: in the log
    /// db.delete(&[1])?;
    /// drop(db); // no flush: as after a crash, only the log holds the rows
    ///
    /// let db = Db::open(dir.path(), DbOptions::default())?;
    /// assert_eq!(db.len(), 2); // rows 0 and 2 recovered, the delete too
    /// let snap = db.snapshot();
    /// let live: Vec<u64> = snap.parts().flat_map(|p| p.ids.to_vec()).filter(|&id| snap.is_live(id)).collect();
    /// assert_eq!(live, [0, 2]);
    /// // One writer at a time: a second open is refused while `db` holds the lock.
    /// assert!(matches!(Db::open(dir.path(), DbOptions::default()), Err(Error::Locked { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(dir: impl AsRef<Path>, options: DbOptions) -> Result<Db> {
        let dir = dir.as_ref().to_path_buf();
        // The manifest is read before the lock file is created: a directory without one is not ours,
        // and nothing is written into it.
        Manifest::load(&dir)?;
        let lock = DirLock::acquire(&dir)?;
        let manifest = Manifest::load(&dir)?;
        let wal_file = manifest.wal.clone().unwrap_or_else(|| wal_name(manifest.generation));
        let (wal, records) =
            Wal::open(dir.join(&wal_file), options.durability).map_err(|e| named_but_missing(&dir, e))?;
        if wal.dim() != manifest.dim {
            return Err(dim_mismatch(wal.path(), wal.dim(), manifest.dim));
        }
        let state = replay(&dir, &manifest, wal.path(), &records).map_err(|e| named_but_missing(&dir, e))?;
        let log_floor = wal.version();
        let db = Db {
            dir,
            _lock: lock,
            manifest,
            segments: state.segments,
            wal,
            memtable: state.memtable,
            ids: state.ids,
            deleted: Arc::new(state.deleted),
            index: state.index,
            index_error: state.index_error,
            attrs: Arc::new(state.attrs),
            attrs_dirty: state.attrs_dirty,
            log_floor,
            options,
            poisoned: false,
        };
        db.remove_orphans()?;
        Ok(db)
    }

    /// Reads a consistent view of the database in `dir` without opening it: no lock is taken and no file
    /// is changed (a torn log tail is skipped, not cut), so it works while another process holds the
    /// database open and writes to it. What it shows is the last acknowledged state it found. A flush or
    /// compaction that replaces files while it reads makes it start again (up to 8 times; then the
    /// missing file's error is returned).
    pub fn read_snapshot(dir: impl AsRef<Path>) -> Result<Snapshot> {
        let dir = dir.as_ref();
        let mut attempt = 0;
        loop {
            let result = (|| {
                let manifest = Manifest::load(dir)?;
                let wal_path = dir.join(manifest.wal.clone().unwrap_or_else(|| wal_name(manifest.generation)));
                let records = Wal::read(&wal_path)?;
                let state = replay(dir, &manifest, &wal_path, &records)?;
                Ok(Snapshot {
                    generation: manifest.generation,
                    segments: state.segments,
                    memtable: state.memtable,
                    deleted: Arc::new(state.deleted),
                    index: state.index,
                    index_error: state.index_error,
                    attrs: Arc::new(state.attrs),
                })
            })();
            match result {
                Err(Error::Io { ref source, .. }) if source.kind() == std::io::ErrorKind::NotFound && attempt < 7 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
                }
                other => return other.map_err(|e| named_but_missing(dir, e)),
            }
        }
    }

    /// Checks the database in `dir` without changing anything (no lock, no file written or removed): the
    /// manifest, every segment's header and column checksums (the vectors' too, which
    /// [`Db::open`] leaves to this check: [`Segment::verify`]), every log record. A torn or damaged log
    /// tail is reported in [`DbCheck::log`] instead of being cut: [`Db::open`] cuts it (the explicit
    /// repair: check first to report what it drops).
    pub fn check(dir: impl AsRef<Path>) -> Result<DbCheck> {
        let dir = dir.as_ref();
        let manifest = Manifest::load(dir)?;
        let wal_path = dir.join(manifest.wal.clone().unwrap_or_else(|| wal_name(manifest.generation)));
        let log = LogCheck::of(&wal_path).map_err(|e| named_but_missing(dir, e))?;
        let state = replay(dir, &manifest, &wal_path, &log.records).map_err(|e| named_but_missing(dir, e))?;
        // Every byte of the segments' vectors, which opening does not read.
        state.segments.iter().try_for_each(|s| s.verify())?;
        // Every byte of the index's files (their sections' checksums), which opening does not read.
        let index_problem = match &state.index_error {
            Some(e) => Some(e.to_string()),
            None => state.index.iter().find_map(|f| f.verify().err()).map(|e| e.to_string()),
        };
        let snapshot = Snapshot {
            generation: manifest.generation,
            segments: state.segments,
            memtable: state.memtable,
            deleted: Arc::new(state.deleted),
            index: state.index,
            index_error: state.index_error,
            attrs: Arc::new(state.attrs),
        };
        Ok(DbCheck { manifest, snapshot, log, index_problem })
    }

    /// The generation or segment id after `n`, or a typed error when ten digits cannot carry it (only a
    /// forged manifest gets there: [`Manifest::load`] refuses numbers above [`crate::MAX_NUMBER`]).
    fn next_number(&self, n: u64) -> Result<u64> {
        n.checked_add(1).filter(|&m| m <= crate::MAX_NUMBER).ok_or_else(|| {
            Error::corrupt(self.dir.join(MANIFEST_FILE), 0, format!("no number is left after {n} (ten-digit names)"))
        })
    }

    /// Removes segment, log and temporary files that the manifest does not name.
    fn remove_orphans(&self) -> Result<()> {
        let live: HashSet<&str> = self
            .manifest
            .segments
            .iter()
            .map(|s| s.file.as_str())
            .chain(self.manifest.wal.as_deref())
            .chain(self.manifest.index.iter().map(String::as_str))
            .collect();
        owned::remove_unnamed(&self.dir, &live)?;
        owned::unmark_creating(&self.dir)
    }

    /// Runs a change; a failure other than a refused input poisons the handle (see [`Error::Poisoned`]).
    fn change<T>(&mut self, f: impl FnOnce(&mut Db) -> Result<T>) -> Result<T> {
        if self.poisoned {
            return Err(Error::Poisoned { path: self.dir.clone() });
        }
        let result = f(self);
        if matches!(&result, Err(e) if !matches!(e, Error::InvalidBatch { .. } | Error::InvalidAttributes { .. } | Error::InvalidFilter { .. }))
        {
            self.poisoned = true;
        }
        result
    }

    /// Appends a validated batch: to the log first (acknowledged per [`DbOptions::durability`]), then to
    /// the in-memory table. Ids already in the database are refused before anything is written.
    pub fn ingest(&mut self, batch: &SplatSet) -> Result<()> {
        self.change(|db| db.ingest_now(batch, None))
    }

    /// [`ingest`](Self::ingest) with the batch's attributes, one row per splat, logged in the same record
    /// (atomic with the splats). The first batch with attributes sets the schema when the database has
    /// none ([`Schema::infer`], stored in the manifest); later ones are checked against it. A wrong type,
    /// an unknown field or a wrong row count is [`Error::InvalidAttributes`] and nothing is stored.
    pub fn ingest_with(&mut self, batch: &SplatSet, attrs: Option<&AttrBatch>) -> Result<()> {
        self.change(|db| db.ingest_now(batch, attrs))
    }

    fn ingest_now(&mut self, batch: &SplatSet, attrs: Option<&AttrBatch>) -> Result<()> {
        if let Some(id) = batch.ids().iter().find(|&&id| self.ids.contains(id)) {
            return Err(Error::InvalidBatch { reason: format!("id {id} is already in the database") });
        }
        // A deleted id still inside a segment cannot come back until compaction has dropped it: the
        // tombstone would hide the new row too.
        if let Some(id) = batch.ids().iter().find(|id| self.deleted.contains(id)) {
            return Err(Error::InvalidBatch { reason: format!("id {id} was deleted and awaits compaction") });
        }
        let cols = self.checked_attrs(batch, attrs)?;
        let block = match (&cols, &self.manifest.schema) {
            (Some(c), Some(s)) => Some(encode_block(s, c)?),
            _ => None,
        };
        self.wal.append_with(batch, block.as_deref())?;
        self.memtable.push(batch.into());
        self.ids.insert(batch.ids());
        Arc::make_mut(&mut self.attrs).append_owned(batch.ids(), cols);
        Ok(())
    }

    /// The attributes of `batch` checked and in schema order (`None`: a batch without attributes); the
    /// first batch with attributes sets the schema of a database without one (nothing else is written).
    /// Checks attributes for a batch of `rows` rows as an add or upsert would (row count, and the
    /// columns against the schema, or the schema they would set), storing nothing: for a caller that
    /// must write something of its own before the change (the facade's index bookkeeping of upserts).
    pub fn check_attributes(&self, rows: usize, attrs: Option<&AttrBatch>) -> Result<()> {
        let Some(a) = attrs.filter(|a| !a.columns.is_empty() || a.rows != rows) else { return Ok(()) };
        if a.rows != rows {
            let reason = format!("{} rows of attributes for {rows} splats", a.rows);
            return Err(Error::InvalidAttributes { field: String::new(), reason });
        }
        let schema = match &self.manifest.schema {
            Some(s) => s.clone(),
            None => Schema::infer(a)?,
        };
        a.normalise(&schema).map(|_| ())
    }

    fn checked_attrs(&mut self, batch: &SplatSet, attrs: Option<&AttrBatch>) -> Result<Option<Vec<crate::Column>>> {
        let attrs = attrs.filter(|a| !a.columns.is_empty() || a.rows != batch.len());
        let cols = match attrs {
            None => None,
            Some(a) => {
                if a.rows != batch.len() {
                    let reason = format!("{} rows of attributes for {} splats", a.rows, batch.len());
                    return Err(Error::InvalidAttributes { field: String::new(), reason });
                }
                let schema = match &self.manifest.schema {
                    Some(s) => s.clone(),
                    None => Schema::infer(a)?,
                };
                // Checked before anything (the inferred schema included) is stored.
                let cols = a.normalise(&schema)?;
                if self.manifest.schema.is_none() {
                    self.set_schema_now(schema)?;
                }
                Some(cols)
            }
        };
        Ok(cols)
    }

    /// Adds `batch`, each row replacing any live row of its id: vector, kappa, alpha and attributes
    /// (`attrs`, checked as [`ingest_with`](Self::ingest_with) checks them; a replaced row without
    /// attributes in the batch gets nulls). New ids are added; an id deleted and awaiting compaction
    /// comes back. It is one log record, so a crash shows either the old rows or the new ones, never both
    /// or neither. A replaced row still in memory goes at once; one in a segment is tombstoned (hidden
    /// from readers) and the next flush merges the segments, as after [`set_attributes`](Self::set_attributes).
    /// The first upsert starts a log of format version 3 (older builds refuse it with
    /// [`Error::IncompatibleVersion`]).
    pub fn upsert_with(&mut self, batch: &SplatSet, attrs: Option<&AttrBatch>) -> Result<()> {
        self.change(|db| db.upsert_now(batch, attrs))
    }

    fn upsert_now(&mut self, batch: &SplatSet, attrs: Option<&AttrBatch>) -> Result<()> {
        let cols = self.checked_attrs(batch, attrs)?;
        let block = match (&cols, &self.manifest.schema) {
            (Some(c), Some(s)) => Some(encode_block(s, c)?),
            _ => None,
        };
        if self.wal.version() < 3 {
            // The log's version is fixed at its creation: start one that carries upserts.
            self.log_floor = 3;
            self.flush_now()?;
            if self.wal.version() < 3 {
                let mut next = self.manifest.clone();
                next.generation = self.next_number(next.generation)?;
                next.deleted = self.deleted.iter().copied().collect();
                next.deleted.sort_unstable();
                self.commit(next, true, |_| {})?;
            }
        }
        self.wal.append_upsert(batch, block.as_deref())?;
        let replaced: HashSet<u64> = batch.ids().iter().copied().filter(|&id| self.ids.contains(id)).collect();
        let in_memory = self.memtable.remove(&replaced);
        Arc::make_mut(&mut self.attrs).remove(&replaced.iter().copied().collect::<Vec<_>>());
        let tombstones = Arc::make_mut(&mut self.deleted);
        tombstones.extend(replaced.into_iter().filter(|id| !in_memory.contains(id)));
        self.memtable.push(batch.into());
        self.ids.insert(batch.ids());
        Arc::make_mut(&mut self.attrs).append_owned(batch.ids(), cols);
        Ok(())
    }

    /// Declares the attribute schema of a database that has none (stored in the manifest; the log is
    /// replaced by one of version 2 after the rows in memory are flushed). The same schema again is a
    /// no-op; another one is [`Error::InvalidAttributes`] (a schema is fixed once set).
    pub fn set_schema(&mut self, schema: Schema) -> Result<()> {
        self.change(|db| db.set_schema_now(schema))
    }

    fn set_schema_now(&mut self, schema: Schema) -> Result<()> {
        schema.check()?;
        match &self.manifest.schema {
            Some(s) if *s == schema => return Ok(()),
            Some(s) => {
                let reason = format!("the database's schema is fixed ({s:?})");
                return Err(Error::InvalidAttributes { field: String::new(), reason });
            }
            None => {}
        }
        self.flush_now()?;
        let mut next = self.manifest.clone();
        next.generation = self.next_number(next.generation)?;
        next.schema = Some(schema.clone());
        next.deleted = self.deleted.iter().copied().collect();
        next.deleted.sort_unstable();
        self.commit(next, true, |_| {})?;
        Arc::make_mut(&mut self.attrs).set_schema(schema);
        Ok(())
    }

    /// The attribute schema, if the database has one.
    pub fn schema(&self) -> Option<&Schema> {
        self.manifest.schema.as_ref()
    }

    /// The attributes of every live row.
    pub fn attributes(&self) -> &AttrTable {
        &self.attrs
    }

    /// Sets attributes of existing rows by id: the fields `attrs` names take its values (a null clears
    /// one), the others keep theirs. Logged and acknowledged like a batch. Errors:
    /// [`Error::InvalidAttributes`] (no schema, a field or type that does not fit, a wrong row count),
    /// [`Error::InvalidBatch`] (an id that is not in the database); nothing changes then.
    pub fn set_attributes(&mut self, ids: &[u64], attrs: &AttrBatch) -> Result<()> {
        self.change(|db| db.set_attributes_now(ids, attrs))
    }

    fn set_attributes_now(&mut self, ids: &[u64], attrs: &AttrBatch) -> Result<()> {
        if self.manifest.schema.is_none() {
            let reason = "the database has no attribute schema".to_string();
            return Err(Error::InvalidAttributes { field: String::new(), reason });
        }
        self.attrs.check_update(ids, attrs)?;
        if ids.is_empty() {
            return Ok(());
        }
        let block = encode_update(attrs)?;
        self.wal.append_set_attrs(ids, &block)?;
        let in_memory: HashSet<u64> = self.memtable.parts().flat_map(|p| p.ids.iter().copied()).collect();
        self.attrs_dirty |= ids.iter().any(|id| !in_memory.contains(id));
        Arc::make_mut(&mut self.attrs).update(ids, attrs)
    }

    /// Deletes ids (those not present are ignored) and returns how many were present. The delete is logged
    /// and acknowledged like a batch; rows still in memory go at once, rows in segments are tombstoned
    /// until [`compact`](Self::compact).
    pub fn delete(&mut self, ids: &[u64]) -> Result<usize> {
        self.change(|db| db.delete_now(ids))
    }

    fn delete_now(&mut self, ids: &[u64]) -> Result<usize> {
        let present: Vec<u64> = {
            let mut seen = HashSet::new();
            ids.iter().copied().filter(|&id| self.ids.contains(id) && seen.insert(id)).collect()
        };
        if present.is_empty() {
            return Ok(0);
        }
        self.wal.append_delete(&present)?;
        let gone: HashSet<u64> = present.iter().copied().collect();
        // Rows still in memory simply go; rows already in a segment get a tombstone.
        let in_memory = self.memtable.remove(&gone);
        Arc::make_mut(&mut self.attrs).remove(&present);
        let tombstones = Arc::make_mut(&mut self.deleted);
        tombstones.extend(gone.iter().copied().filter(|id| !in_memory.contains(id)));
        self.ids.remove(&present);
        Ok(present.len())
    }

    /// Writes the in-memory rows as a new segment and starts a new log (see the module doc for the order
    /// that keeps it crash-safe). Does nothing when there are no such rows.
    pub fn flush(&mut self) -> Result<()> {
        self.change(Db::flush_now)
    }

    fn flush_now(&mut self) -> Result<()> {
        // A row in memory that replaced a segment row (an upsert) has its id among the tombstones: a
        // plain flush would move it into a segment under a tombstone that hides it.
        let shadows =
            !self.deleted.is_empty() && self.memtable.parts().any(|p| p.ids.iter().any(|id| self.deleted.contains(id)));
        if self.attrs_dirty || shadows {
            // Attribute changes of segment rows live only in the log this flush retires: the segments
            // are written again, with the rows in memory, carrying them.
            return self.merge_now();
        }
        if self.memtable.rows() == 0 {
            return Ok(());
        }
        let id = self.manifest.next_segment_id;
        // Both numbers are checked before anything is written.
        let (generation, next_id) = (self.next_number(self.manifest.generation)?, self.next_number(id)?);
        let file = segment_name(id);
        let parts: Vec<ColumnsRef<'_>> = self.memtable.parts().collect();
        let ids: Vec<u64> = parts.iter().flat_map(|p| p.ids.iter().copied()).collect();
        let block = self.block_for(&ids)?;
        crate::segment::write_segment_parts(&self.dir.join(&file), id, &parts, block.as_deref())?;
        let segment = Arc::new(Segment::open(self.dir.join(&file))?);
        let mut next = self.manifest.clone();
        next.generation = generation;
        next.segments.push(SegmentEntry { id, file, rows: self.memtable.rows() as u64 });
        next.next_segment_id = next_id;
        // The log is retired with this flush: its deletes of segment rows move into the manifest.
        next.deleted = self.deleted.iter().copied().collect();
        next.deleted.sort_unstable();
        self.commit(next, true, |segments| segments.push(segment))
    }

    /// The encoded attribute block of rows `ids` for a segment, when the database has a schema.
    fn block_for(&self, ids: &[u64]) -> Result<Option<Vec<u8>>> {
        match &self.manifest.schema {
            Some(schema) => Ok(Some(encode_block(schema, &self.attrs.extract(ids))?)),
            None => Ok(None),
        }
    }

    /// Flushes, then merges every segment into one, in order, without the deleted rows, and drops the old
    /// files once the new manifest is stored. Readers holding a [`Snapshot`] keep reading the old segments.
    pub fn compact(&mut self) -> Result<()> {
        self.change(Db::compact_now)
    }

    fn compact_now(&mut self) -> Result<()> {
        self.flush_now()?;
        if self.segments.len() < 2 && self.deleted.is_empty() {
            return Ok(());
        }
        self.merge_now()
    }

    /// Writes every live row (the segments' without the deleted ones, then the rows in memory) as one
    /// segment with its current attributes, and starts a new log: what compaction does, and what a flush
    /// does after attributes of segment rows changed.
    fn merge_now(&mut self) -> Result<()> {
        // Segments are opened without their vectors' checksum (`Segment::verify` reads them): checked
        // here first, so that a damaged vector is never copied into a new segment under a fresh checksum,
        // where `m2m verify` would no longer see it. Refused, naming the segment, with nothing written.
        for s in &self.segments {
            s.verify()?;
        }
        let mut merged = Columns::empty(self.manifest.dim);
        self.segments.iter().for_each(|s| merged.extend(s.columns()));
        merged.remove(&self.deleted);
        self.memtable.parts().for_each(|p| merged.extend(p));
        let block = self.block_for(&merged.ids)?;
        let id = self.manifest.next_segment_id;
        // Both numbers are checked before anything is written.
        let (generation, next_id) = (self.next_number(self.manifest.generation)?, self.next_number(id)?);
        let file = segment_name(id);
        crate::segment::write_segment_parts(&self.dir.join(&file), id, &[merged.view()], block.as_deref())?;
        let segment = Arc::new(Segment::open(self.dir.join(&file))?);
        let mut next = self.manifest.clone();
        next.generation = generation;
        next.segments = vec![SegmentEntry { id, file, rows: merged.rows() as u64 }];
        next.next_segment_id = next_id;
        next.deleted.clear();
        self.commit(next, true, |segments| *segments = vec![segment])?;
        self.deleted = Arc::new(HashSet::new());
        self.attrs_dirty = false;
        Ok(())
    }

    /// Stores `next` with a fresh log, then updates the in-memory state and removes what it replaced.
    /// With `new_log`, the rows in memory are in `next`'s segments (or there are none) and the log is
    /// replaced by an empty one (version 2 when the database has a schema).
    fn commit(&mut self, mut next: Manifest, new_log: bool, update: impl FnOnce(&mut Vec<Arc<Segment>>)) -> Result<()> {
        let wal = if new_log {
            let name = wal_name(next.generation);
            let version = (if next.schema.is_some() { 2 } else { 1 }).max(self.log_floor);
            let wal = Wal::create_version(self.dir.join(&name), self.manifest.dim, self.options.durability, version)?;
            next.wal = Some(name);
            Some(wal)
        } else {
            None
        };
        next.store(&self.dir)?;
        self.manifest = next;
        update(&mut self.segments);
        if let Some(wal) = wal {
            self.wal = wal;
            self.memtable = Memtable::new(self.manifest.dim);
        }
        self.remove_orphans()
    }

    /// A writer for a file of a new stored index: `NNNNNNNNNN.<ext>` with `ext` `idx` (the index's hot
    /// part) or `vec` (its full vectors), numbered after every segment and index file so far. Files
    /// of one index share the number. The file belongs to the database only once
    /// [`commit_index`](Self::commit_index) names it; until then, a crash leaves it to be removed by the
    /// next open.
    pub fn index_writer(&self, ext: &str) -> Result<SectionWriter> {
        if self.poisoned {
            return Err(Error::Poisoned { path: self.dir.clone() });
        }
        if !matches!(ext, "idx" | "vec") {
            return Err(Error::InvalidBatch { reason: format!("index file extension {ext:?} is not idx or vec") });
        }
        SectionWriter::create(self.dir.join(format!("{:010}.{ext}", self.manifest.next_segment_id)))
    }

    /// Makes the finished files at `paths` (from [`index_writer`](Self::index_writer)) the stored index,
    /// replacing the old one, in one manifest store (the commit point): a crash before it leaves the old
    /// index, after it the new one. The old files are removed afterwards.
    pub fn commit_index(&mut self, paths: &[PathBuf]) -> Result<()> {
        self.change(|db| db.commit_index_now(paths))
    }

    fn commit_index_now(&mut self, paths: &[PathBuf]) -> Result<()> {
        let number = format!("{:010}.", self.manifest.next_segment_id);
        let mut names = Vec::with_capacity(paths.len());
        for path in paths {
            let name = path.file_name().and_then(|n| n.to_str()).filter(|n| {
                crate::fsio::parent(path) == self.dir.as_path() && n.starts_with(&number) && owned::is_data_name(n)
            });
            let Some(name) = name else {
                return Err(Error::InvalidBatch { reason: format!("{} is not a new index file here", path.display()) });
            };
            names.push(name.to_string());
        }
        // Mapped (and so checked) before they are committed.
        let files = paths.iter().map(|p| SectionFile::open(p).map(Arc::new)).collect::<Result<Vec<_>>>()?;
        // The renames that put the files in place are made durable before the manifest names them.
        crate::fsio::sync_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut next = self.manifest.clone();
        next.generation = self.next_number(next.generation)?;
        next.next_segment_id = self.next_number(next.next_segment_id)?;
        next.index = names;
        self.commit(next, false, |_| {})?;
        self.index = files;
        self.index_error = None;
        Ok(())
    }

    /// Removes the stored index (a damaged one, before it is built again): the manifest stops naming
    /// its files, which are then removed. Nothing else changes.
    pub fn drop_index(&mut self) -> Result<()> {
        self.change(|db| {
            if db.manifest.index.is_empty() {
                return Ok(());
            }
            let mut next = db.manifest.clone();
            next.generation = db.next_number(next.generation)?;
            next.index.clear();
            db.commit(next, false, |_| {})?;
            db.index.clear();
            db.index_error = None;
            Ok(())
        })
    }

    /// Removes a database that never held a splat (no segment, no log record, none in memory), leaving
    /// the directory as it was before [`create`](Self::create): a create whose first ingest failed, or a
    /// create killed before the layer above stored its settings. Refused with [`Error::AlreadyExists`]
    /// when the database holds anything. Blobs of the layers above must be removed first (see
    /// [`remove_blob`](crate::remove_blob)). The manifest goes first, so that a crash midway leaves a
    /// directory that [`create`](Self::create) accepts.
    pub fn discard(self) -> Result<()> {
        let never_used = self.ids.is_empty()
            && self.deleted.is_empty()
            && self.manifest.segments.is_empty()
            && self.wal.batches() == 0
            && self.memtable.rows() == 0;
        if !never_used || self.poisoned {
            return Err(Error::AlreadyExists { path: self.dir });
        }
        // Under the create marker, so that a discard killed midway leaves a directory create accepts.
        owned::mark_creating(&self.dir)?;
        let manifest = self.dir.join(MANIFEST_FILE);
        std::fs::remove_file(&manifest).map_err(|e| Error::io(&manifest, e))?;
        crate::fsio::sync_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        owned::remove_unnamed(&self.dir, &HashSet::new())?;
        owned::unmark_creating(&self.dir)?;
        // The lock file goes only while it is empty (ours: the lock writes nothing into it).
        let lock = self.dir.join(crate::LOCK_FILE);
        if std::fs::metadata(&lock).is_ok_and(|m| m.is_file() && m.len() == 0) {
            std::fs::remove_file(&lock).map_err(|e| Error::io(&lock, e))?;
        }
        Ok(())
    }

    /// A consistent view of every splat for readers.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            generation: self.manifest.generation,
            segments: self.segments.clone(),
            memtable: self.memtable.clone(),
            deleted: Arc::clone(&self.deleted),
            index: self.index.clone(),
            index_error: self.index_error.clone(),
            attrs: Arc::clone(&self.attrs),
        }
    }

    /// Number of splats.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the database holds no splat.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The current manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What [`open`](Self::open) cut from the end of the log (a torn write, or a damaged acknowledged
    /// record), if anything: writers report it, as `verify` does before the cut.
    pub fn cut_tail(&self) -> Option<&crate::CutTail> {
        self.wal.cut()
    }
}
