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
//! * The lock file `LOCK` is ours only while it is empty (the lock never writes a byte into it): a
//!   non-empty `LOCK` is someone else's, and create refuses the directory.
//! * A file of our name that is not ours and stands where we must write (a user's `0000000002.wal`
//!   where the next log goes) is never replaced: the write fails with [`Error::NotOurs`] naming it.
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
/// is not ours is there: [`Error::NotOurs`] naming it. A missing file, or one of ours, is fine.
pub(crate) fn claim(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(m) if m.is_file() && carries_our_magic(path) => Ok(()),
        _ => Err(Error::NotOurs { path: crate::fsio::parent(path).to_path_buf(), found: path.to_path_buf() }),
    }
}

/// Checks that `dir` (which holds no manifest) may become a database: every entry is an empty lock
/// file or a leftover of a killed create (a temporary name, or a data name carrying our magic). Returns
/// the leftovers.
pub(crate) fn check_creatable(dir: &Path) -> Result<Vec<String>> {
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let empty_lock = |n: &str| n == LOCK_FILE && entry.metadata().is_ok_and(|m| m.is_file() && m.len() == 0);
        let Some(name) = name.to_str().filter(|n| empty_lock(n) || is_ours(dir, n, &entry)) else {
            return Err(Error::NotOurs { path: dir.to_path_buf(), found: entry.path() });
        };
        if name != LOCK_FILE {
            leftovers.push(name.to_string());
        }
    }
    Ok(leftovers)
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
