//! `MANIFEST`: which segments and which log make up the database, with a generation number, replaced
//! atomically (write a temporary file, fsync, rename over the old one, fsync the directory). A reader sees
//! the old manifest or the new one, never a mixture. The byte layout is in `FORMAT.md`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Name of the manifest inside a database directory.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// First bytes of the manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"M2M-MAN\0";
/// Format version this build writes when the database has an attribute schema; with a stored index and no
/// schema it writes version 2, with neither version 1 (the older layouts, so that such a database stays
/// readable by builds that know only them). All three are read.
pub const MANIFEST_VERSION: u32 = 3;
const HEADER: usize = 20;
/// A manifest larger than this is damage (it lists files, not data).
const MAX_PAYLOAD: usize = 64 << 20;
/// The largest generation or segment id: file names carry ten digits (`NNNNNNNNNN.wal`). A manifest
/// with a larger one is damage (or forged); a writer that would pass it stops with a typed error.
pub const MAX_NUMBER: u64 = 9_999_999_999;

/// One live segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// Segment id.
    pub id: u64,
    /// File name inside the database directory.
    pub file: String,
    /// Number of splats.
    pub rows: u64,
}

/// The database's current state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Incremented by every replacement.
    pub generation: u64,
    /// Dimension of every splat.
    pub dim: usize,
    /// Live segments, oldest first.
    pub segments: Vec<SegmentEntry>,
    /// The write-ahead log holding batches not yet in a segment, if any.
    pub wal: Option<String>,
    /// Id the next segment gets.
    pub next_segment_id: u64,
    /// Ids deleted from the segments, dropped by the next compaction (sorted).
    pub deleted: Vec<u64>,
    /// The files of the stored index (section files, see `sections.rs`), empty when there is none. They
    /// are replaced together by one manifest store: a reader sees the old index or the new one.
    pub index: Vec<String>,
    /// The attribute fields of the database (see [`crate::Schema`]), `None` while it has none (version 3
    /// only).
    pub schema: Option<crate::Schema>,
}

/// The version 2 payload: [`Manifest`] without `schema`.
#[derive(Deserialize)]
struct ManifestV2 {
    generation: u64,
    dim: usize,
    segments: Vec<SegmentEntry>,
    wal: Option<String>,
    next_segment_id: u64,
    deleted: Vec<u64>,
    index: Vec<String>,
}

/// The version 1 payload: [`Manifest`] without `index`.
#[derive(Deserialize)]
struct ManifestV1 {
    generation: u64,
    dim: usize,
    segments: Vec<SegmentEntry>,
    wal: Option<String>,
    next_segment_id: u64,
    deleted: Vec<u64>,
}

/// A plain file name: no separators, not `.` or `..`, not empty.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

impl Manifest {
    /// Writes this manifest into `dir`, replacing the current one atomically.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let serialise =
            |e: postcard::Error| Error::InvalidBatch { reason: format!("manifest does not serialise: {e}") };
        let (version, payload) = if self.schema.is_none() && self.index.is_empty() {
            let v1 = (self.generation, self.dim, &self.segments, &self.wal, self.next_segment_id, &self.deleted);
            (1, postcard::to_allocvec(&v1).map_err(serialise)?)
        } else if self.schema.is_none() {
            let v2 = (
                self.generation,
                self.dim,
                &self.segments,
                &self.wal,
                self.next_segment_id,
                &self.deleted,
                &self.index,
            );
            (2, postcard::to_allocvec(&v2).map_err(serialise)?)
        } else {
            (MANIFEST_VERSION, postcard::to_allocvec(self).map_err(serialise)?)
        };
        crate::blob::replace_file(dir, MANIFEST_FILE, &crate::blob::seal(MANIFEST_MAGIC, version, &payload))
    }

    /// Reads and validates the manifest of `dir`.
    ///
    /// Errors: [`Error::Io`] (including a missing manifest), [`Error::Corrupt`] with the offset of the
    /// damage, [`Error::IncompatibleVersion`].
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        // A file whose first bytes are far from our magic (more than 2 bits differ) is someone else's
        // `MANIFEST`, not a damaged one of ours.
        let differing: u32 = bytes.iter().zip(MANIFEST_MAGIC).map(|(a, b)| (a ^ b).count_ones()).sum();
        if bytes.len() >= MANIFEST_MAGIC.len() && differing > 2 {
            return Err(Error::NotOurs { path: dir.to_path_buf(), found: path });
        }
        Manifest::decode(&path, &bytes)
    }

    /// Validates and decodes the bytes of a manifest file; `path` only labels errors.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Manifest> {
        let bad = |offset: usize, reason: String| Error::corrupt(path, offset as u64, reason);
        // Versions 1 (no index) and 2 (no schema) are read as well as the current one; anything else is
        // refused by `unseal`.
        let version = match bytes.get(8..12) {
            Some(&[a, b, c, d]) if matches!(u32::from_le_bytes([a, b, c, d]), 1 | 2) => {
                u32::from_le_bytes([a, b, c, d])
            }
            _ => MANIFEST_VERSION,
        };
        let payload = crate::blob::unseal(path, bytes, MANIFEST_MAGIC, version, MAX_PAYLOAD, "manifest")?;
        let undecodable = |e: postcard::Error| bad(HEADER, format!("undecodable payload: {e}"));
        // An older version's payload, decoded to its last byte: bytes left over are refused.
        fn whole<'a, T: serde::Deserialize<'a>>(payload: &'a [u8]) -> std::result::Result<T, String> {
            let (v, rest) = postcard::take_from_bytes(payload).map_err(|e| format!("undecodable payload: {e}"))?;
            if rest.is_empty() {
                Ok(v)
            } else {
                Err(format!("{} bytes after the payload of an older version", rest.len()))
            }
        }
        let m: Manifest = if version == 1 {
            // The version field is outside the payload's checksum: a version 2 payload read as version 1
            // would leave bytes over, which is refused rather than dropping the index.
            let v1: ManifestV1 = whole(payload).map_err(|reason| bad(HEADER, reason))?;
            Manifest {
                generation: v1.generation,
                dim: v1.dim,
                segments: v1.segments,
                wal: v1.wal,
                next_segment_id: v1.next_segment_id,
                deleted: v1.deleted,
                index: Vec::new(),
                schema: None,
            }
        } else if version == 2 {
            let v2: ManifestV2 = whole(payload).map_err(|reason| bad(HEADER, reason))?;
            Manifest {
                generation: v2.generation,
                dim: v2.dim,
                segments: v2.segments,
                wal: v2.wal,
                next_segment_id: v2.next_segment_id,
                deleted: v2.deleted,
                index: v2.index,
                schema: None,
            }
        } else {
            postcard::from_bytes(payload).map_err(undecodable)?
        };
        if let Some(schema) = &m.schema
            && let Err(e) = schema.check()
        {
            return Err(bad(HEADER, format!("schema: {e}")));
        }
        if m.dim == 0 {
            return Err(bad(HEADER, "dimension 0".into()));
        }
        if m.generation == 0 || m.generation > MAX_NUMBER || m.next_segment_id > MAX_NUMBER {
            return Err(bad(
                HEADER,
                format!(
                    "generation {} or next segment id {} is outside 1..={MAX_NUMBER} (file names have ten digits)",
                    m.generation, m.next_segment_id
                ),
            ));
        }
        let names = m
            .segments
            .iter()
            .map(|s| s.file.as_str())
            .chain(m.wal.as_deref())
            .chain(m.index.iter().map(String::as_str));
        if let Some(name) = names.into_iter().find(|n| !plain_name(n)) {
            return Err(bad(HEADER, format!("file name {name:?} is not a plain name inside the directory")));
        }
        // The names this crate gives: segment `id` in `NNNNNNNNNN.seg` (its id, ten digits), the log in a
        // ten-digit `.wal`. Another name is damage (or forged), not a file to go looking for.
        if let Some(s) = m.segments.iter().find(|s| s.file != format!("{:010}.seg", s.id) || s.id > MAX_NUMBER) {
            return Err(bad(HEADER, format!("segment {} is named {:?}, not by its id", s.id, s.file)));
        }
        if let Some(w) = m.wal.as_deref().filter(|w| !(crate::owned::is_data_name(w) && w.ends_with(".wal"))) {
            return Err(bad(HEADER, format!("log name {w:?} is not a ten-digit .wal")));
        }
        // The stored index's files: ten-digit `.idx` / `.vec` names (a forged name could otherwise send a
        // later build, which removes the old index's files, to a user's file).
        let index_name = |n: &str| crate::owned::is_data_name(n) && (n.ends_with(".idx") || n.ends_with(".vec"));
        if let Some(n) = m.index.iter().find(|n| !index_name(n)) {
            return Err(bad(HEADER, format!("index file name {n:?} is not a ten-digit .idx or .vec")));
        }
        Ok(m)
    }
}
