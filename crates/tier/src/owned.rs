//! The one rule for what a database directory owns, and so what this crate may ever delete.
//!
//! * A directory is a database only if it holds our `MANIFEST`. [`Db::create`](crate::Db::create) takes
//!   a directory that is empty, or that holds nothing but the leftovers of a create that was killed
//!   before its manifest was stored (the lock file, our data file names, our temporary files); anything
//!   else there is someone else's, and create refuses with [`Error::NotOurs`].
//! * Inside a database, a file is ours if the manifest names it, or if it is a file this crate wrote: a
//!   segment, log or stored-index name (`NNNNNNNNNN.seg`, `.wal`, `.idx`, `.vec`: ten digits) **and**
//!   the matching magic bytes at its start ([`carries_our_magic`]: a segment's, a log's, or the section
//!   files' `M2M-SEC`; each is renamed into place whole, so a file of ours never lacks them), or a
//!   temporary name from [`temp_name`] (`.m2m-tmp.<target>.<16 hex digits>`, unique per write). Only
//!   such files that the manifest does not name are ever removed, and only by the writer (`Db::open`,
//!   `Db::create`, a commit): never by [`Db::read_snapshot`](crate::Db::read_snapshot) or any read path.
//! * Leftovers of a killed create are removed only from a directory that holds our create marker
//!   (`.m2m-creating`, an empty file that create makes first, under the lock, and removes after the
//!   manifest is stored). Without the marker, a directory holding anything but an empty `LOCK` is
//!   refused, even a copy of our own segment or log that a person put there (a backup is theirs).
//! * A blob (`*.blob`, written whole by rename) is ours only if its first bytes are within 2 bits of the
//!   blob magic (a flipped bit or a truncation keeps it ours and removable by repair): a file of a blob's
//!   name without it is never read as ours, replaced nor removed ([`Error::Occupied`] naming it).
//! * The lock file `LOCK` is ours only while it is empty (the lock never writes a byte into it): a
//!   non-empty `LOCK` is someone else's, and create refuses the directory.
//! * A file of our name that is not ours and stands where we must write (a user's `0000000002.wal`
//!   where the next log goes) is never replaced: the write fails with [`Error::Occupied`] naming it.
//!
//! A user's `report.tmp`, `notes.wal`, `x.seg` or `0000000001.wal` in the directory is therefore never
//! touched.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, LOCK_FILE, MANIFEST_FILE, Result, SEGMENT_MAGIC, WAL_MAGIC};

/// Prefix of every temporary file this crate writes.
pub(crate) const TEMP_PREFIX: &str = ".m2m-tmp.";

/// A fresh temporary name for a file that will be renamed to `target`: our prefix, the target and 16 hex
/// digits that differ between calls (process id, time, a counter, hashed with a random key).
pub(crate) fn temp_name(target: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    format!("{TEMP_PREFIX}{target}.{:016x}", h.finish())
}

/// Whether `name` is a temporary name given by [`temp_name`].
pub(crate) fn is_temp(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TEMP_PREFIX) else { return false };
    let Some((target, suffix)) = rest.rsplit_once('.') else { return false };
    !target.is_empty() && suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `name` is a segment, log or stored-index name this crate gives (ten digits, then `.seg`,
/// `.wal`, or `.idx` / `.vec` for the index's section files).
pub(crate) fn is_data_name(name: &str) -> bool {
    let Some(stem) = [".seg", ".wal", ".idx", ".vec"].iter().find_map(|s| name.strip_suffix(s)) else { return false };
    stem.len() == 10 && stem.bytes().all(|b| b.is_ascii_digit())
}

/// Whether the plain file at `path`, of a data name ([`is_data_name`]), starts with the magic bytes of
/// what its name says: a segment's for `.seg`, a log's for `.wal`, the section files' for `.idx` and
/// `.vec`. Unreadable or short: not ours.
pub(crate) fn carries_our_magic(path: &Path) -> bool {
    use std::io::Read;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let magic = if name.ends_with(".seg") {
        SEGMENT_MAGIC
    } else if name.ends_with(".idx") || name.ends_with(".vec") {
        crate::SECTIONS_MAGIC
    } else {
        WAL_MAGIC
    };
    let mut head = [0u8; 8];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == magic
}

/// Whether the entry `name` of `dir` is a file this crate wrote and may remove when the manifest does
/// not name it: a temporary name, or a data name carrying our magic. Only plain files.
fn is_ours(dir: &Path, name: &str, entry: &std::fs::DirEntry) -> bool {
    entry.file_type().is_ok_and(|t| t.is_file())
        && (is_temp(name) || is_data_name(name) && carries_our_magic(&dir.join(name)))
}

/// Refuses to write at `path` (a data name about to be created or renamed into place) when a file that
/// is not ours is there: [`Error::Occupied`] naming it. A missing file, or one of ours, is fine.
pub(crate) fn claim(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(m) if m.is_file() && carries_our_magic(path) => Ok(()),
        _ => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let what = if name.ends_with(".seg") {
                "the next segment"
            } else if name.ends_with(".wal") {
                "the next log"
            } else {
                "a stored index file"
            };
            Err(Error::Occupied { path: path.to_path_buf(), what: what.into() })
        }
    }
}

/// Name of the create marker: an empty file that [`Db::create`](crate::Db::create) makes before any
/// other file and removes once the manifest is stored. Only a directory holding it may have leftovers
/// of a killed create removed.
pub(crate) const CREATE_MARKER: &str = ".m2m-creating";

/// Whether the entry is a plain empty file (what the lock file and the create marker always are).
fn is_empty_file(entry: &std::fs::DirEntry) -> bool {
    entry.file_type().is_ok_and(|t| t.is_file()) && entry.metadata().is_ok_and(|m| m.len() == 0)
}

/// Checks that `dir` (which holds no manifest) may become a database. Without our create marker it must
/// be empty but for an empty lock file: a copy of our own segment or log placed there by a person is
/// theirs, however much it looks like ours. With the marker (a create was killed before its manifest
/// was stored), the leftovers of that create may be there too: temporary names and data names carrying
/// our magic. Anything else is [`Error::NotOurs`] naming it. Returns whether the marker is there.
pub(crate) fn check_creatable(dir: &Path) -> Result<bool> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        entries.push(entry.map_err(|e| Error::io(dir, e))?);
    }
    let marked = entries.iter().any(|e| e.file_name() == CREATE_MARKER && is_empty_file(e));
    for entry in &entries {
        let name = entry.file_name();
        let ours = name.to_str().is_some_and(|n| {
            ((n == LOCK_FILE || n == CREATE_MARKER) && is_empty_file(entry)) || (marked && is_ours(dir, n, entry))
        });
        if !ours {
            return Err(Error::NotOurs { path: dir.to_path_buf(), found: entry.path() });
        }
    }
    Ok(marked)
}

/// Removes the files of `dir` that are ours (a temporary name, or a data name carrying our magic) and not
/// in `live`. Nothing else is touched. Only the writer calls it, on a directory that holds our manifest (or that
/// [`check_creatable`] accepted).
pub(crate) fn remove_unnamed(dir: &Path, live: &HashSet<&str>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == MANIFEST_FILE || live.contains(name) || !is_ours(dir, name, &entry) {
            continue;
        }
        std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
    }
    Ok(())
}

/// Writes the create marker (empty) into `dir` and makes it durable, before any other file of a create
/// (or of a discard, which leaves leftovers behind if killed).
pub(crate) fn mark_creating(dir: &Path) -> Result<()> {
    let path = dir.join(CREATE_MARKER);
    crate::fsio::create(&path, false).map_err(|e| Error::io(&path, e))?;
    crate::fsio::sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Removes the create marker if it is there and ours (an empty plain file); the last step of a create or
/// a discard, and of an open that finds one left by a create killed just after its manifest was stored.
pub(crate) fn unmark_creating(dir: &Path) -> Result<()> {
    let path = dir.join(CREATE_MARKER);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() && m.len() == 0 => std::fs::remove_file(&path).map_err(|e| Error::io(&path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_and_others_are_not() {
        let a = temp_name("MANIFEST");
        let b = temp_name("MANIFEST");
        assert_ne!(a, b, "two writes get two names");
        assert!(is_temp(&a) && is_temp(&temp_name("0000000001.seg")));
        for foreign in
            ["report.tmp", "MANIFEST.tmp", ".0000000001.seg.tmp", ".m2m-tmp.x.123", ".m2m-tmp..0123456789abcdef"]
        {
            assert!(!is_temp(foreign), "{foreign}");
        }
        assert!(is_data_name("0000000001.seg") && is_data_name("0000000042.wal"));
        assert!(is_data_name("0000000007.idx") && is_data_name("0000000007.vec"));
        for foreign in
            ["x.seg", "notes.wal", "000000001.seg", "00000000001.wal", "000000000a.seg", "index.idx", "1.vec"]
        {
            assert!(!is_data_name(foreign), "{foreign}");
        }
    }
}
