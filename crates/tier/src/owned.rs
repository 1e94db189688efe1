//! The one rule for what a database directory owns, and so what this crate may ever delete.
//!
//! * A directory is a database only if it holds our `MANIFEST`. [`Db::create`](crate::Db::create) takes
//!   a directory that is empty, or that holds nothing but the leftovers of a create that was killed
//!   before its manifest was stored (the lock file, our data file names, our temporary files); anything
//!   else there is someone else's, and create refuses with [`Error::NotOurs`].
//! * Inside a database, a file is ours if the manifest names it, or if its name is one this crate gives:
//!   a segment, log or stored-index name (`NNNNNNNNNN.seg`, `.wal`, `.idx`, `.vec`: ten digits) or a temporary name from
//!   [`temp_name`] (`.m2m-tmp.<target>.<16 hex digits>`, unique per write). Only files of those names
//!   that the manifest does not name are ever removed, and only by the writer (`Db::open`, `Db::create`,
//!   a commit): never by [`Db::read_snapshot`](crate::Db::read_snapshot) or any read path.
//!
//! A user's `report.tmp`, `notes.wal` or `x.seg` in the directory is therefore never touched.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, LOCK_FILE, MANIFEST_FILE, Result};

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

/// Checks that `dir` (which holds no manifest) may become a database: every entry is the lock file or a
/// leftover of a killed create ([`is_data_name`], [`is_temp`]). Returns the leftovers.
pub(crate) fn check_creatable(dir: &Path) -> Result<Vec<String>> {
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| *n == LOCK_FILE || is_data_name(n) || is_temp(n)) else {
            return Err(Error::NotOurs { path: dir.to_path_buf(), found: entry.path() });
        };
        if name != LOCK_FILE {
            leftovers.push(name.to_string());
        }
    }
    Ok(leftovers)
}

/// Removes the files of `dir` that are ours by name ([`is_data_name`], [`is_temp`]) and not in `live`.
/// Nothing else is touched. Only the writer calls it, on a directory that holds our manifest (or that
/// [`check_creatable`] accepted).
pub(crate) fn remove_unnamed(dir: &Path, live: &HashSet<&str>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == MANIFEST_FILE || live.contains(name) || !(is_data_name(name) || is_temp(name)) {
            continue;
        }
        // Only plain files: a directory that happens to carry one of our names is not ours.
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
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
