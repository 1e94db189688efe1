//! Named files of a database directory written whole by upper layers (the facade's settings, its index):
//! a checksummed header and the bytes, replaced atomically like the manifest. The layout is in
//! `FORMAT.md`; m2m-tier stays the only crate that writes database files.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result, fsio};

/// First bytes of a blob file.
pub const BLOB_MAGIC: [u8; 8] = *b"M2M-BLB\0";
/// Format version this build reads and writes.
pub const BLOB_VERSION: u32 = 1;
const HEADER: usize = 20;
/// Largest blob accepted (2 GiB: an index's parts; the length field is a u32).
const MAX_BLOB: usize = 2 << 30;

fn check_name(name: &str) -> Result<()> {
    let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain && !name.starts_with('.') && name.ends_with(".blob") {
        Ok(())
    } else {
        Err(Error::InvalidBatch { reason: format!("blob name {name:?} must be [A-Za-z0-9_.-] ending in \".blob\"") })
    }
}

/// Writes `bytes` as `dir/name` (temporary file, fsync, rename, directory fsync). `name` is plain ASCII
/// ending in `.blob`.
pub fn store_blob(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    check_name(name)?;
    if bytes.len() > MAX_BLOB {
        return Err(Error::InvalidBatch { reason: format!("blob of {} bytes exceeds 2 GiB", bytes.len()) });
    }
    claim_blob(&dir.join(name))?;
    replace_file(dir, name, &seal(BLOB_MAGIC, BLOB_VERSION, bytes))
}

/// Refuses to replace or remove `path` when a file that is not ours stands there: a blob is written whole
/// by rename, so one of ours always starts with [`BLOB_MAGIC`]; anything else there (a person's notes of
/// the same name, a link, a directory) is [`Error::Occupied`] naming it. A missing file is fine.
fn claim_blob(path: &Path) -> Result<()> {
    use std::io::Read;
    let ours = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Ok(m) if m.is_file() => {
            let mut head = Vec::with_capacity(8);
            std::fs::File::open(path).and_then(|f| f.take(8).read_to_end(&mut head)).is_ok() && looks_ours(&head)
        }
        _ => false,
    };
    if ours { Ok(()) } else { Err(occupied(path)) }
}

fn occupied(path: &Path) -> Error {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    Error::Occupied { path: path.to_path_buf(), what: format!("M2M's blob {name}") }
}

/// Whether a blob file's first bytes (up to 8) are ours, damaged or not: at most 2 bits away from the
/// magic's first bytes, as for the manifest. A bit flip or a truncation keeps a file ours (`repair` may
/// remove it); a person's notes of the same name are far from it.
fn looks_ours(head: &[u8]) -> bool {
    head.iter().zip(BLOB_MAGIC).map(|(a, b)| (a ^ b).count_ones()).sum::<u32>() <= 2
}

/// Reads and checks `dir/name`: [`Error::Io`] when missing, [`Error::Corrupt`] with the offset when
/// damaged, [`Error::IncompatibleVersion`]; [`Error::Occupied`] when the file there is not ours (its
/// first bytes more than 2 bits from the blob magic).
pub fn load_blob(dir: &Path, name: &str) -> Result<Vec<u8>> {
    check_name(name)?;
    let path = dir.join(name);
    let mut bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if !looks_ours(&bytes[..bytes.len().min(8)]) {
        return Err(occupied(&path));
    }
    unseal(&path, &bytes, BLOB_MAGIC, BLOB_VERSION, MAX_BLOB, "blob")?;
    // The payload is the file after its header: moved down in place, not copied (a second buffer of
    // the blob's size was the peak of an engine's open).
    bytes.drain(..HEADER);
    Ok(bytes)
}

/// Removes `dir/name` if it exists (a blob of a database being discarded, or one that is stale); a file
/// there without the blob magic is not ours and stays: [`Error::Occupied`].
pub fn remove_blob(dir: &Path, name: &str) -> Result<()> {
    check_name(name)?;
    let path = dir.join(name);
    claim_blob(&path)?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
        _ => Ok(()),
    }
}

/// The 20-byte header shared by blobs and the manifest (magic, version, payload length, payload CRC32C)
/// followed by the payload.
pub(crate) fn seal(magic: [u8; 8], version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a [`seal`]ed file's header and checksum and returns its payload; `path` labels errors and
/// `what` names the file kind in them.
pub(crate) fn unseal<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: [u8; 8],
    version: u32,
    max: usize,
    what: &str,
) -> Result<&'a [u8]> {
    let bad = |offset: usize, reason: String| Error::corrupt(path, offset as u64, reason);
    if bytes.len() < HEADER {
        return Err(bad(bytes.len(), format!("{} bytes, shorter than the {HEADER}-byte header", bytes.len())));
    }
    if bytes[..8] != magic {
        return Err(bad(0, format!("not an M2M {what} (bad magic)")));
    }
    let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    if u32_at(8) != version {
        return Err(Error::IncompatibleVersion { path: path.into(), found: u32_at(8), supported: version });
    }
    let len = u32_at(12) as usize;
    if len > max || HEADER + len != bytes.len() {
        return Err(bad(12, format!("payload length {len} does not match the file's {} bytes", bytes.len())));
    }
    let payload = &bytes[HEADER..];
    if crc32c::crc32c(payload) != u32_at(16) {
        return Err(bad(HEADER, "payload checksum mismatch".into()));
    }
    Ok(payload)
}

/// Replaces `dir/name` with `bytes` atomically: a temporary file beside it, fsync, rename, directory
/// fsync. On failure the temporary file is removed and the old file, if any, stays.
pub(crate) fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(crate::owned::temp_name(name));
    let written = fsio::create(&tmp, false)
        .and_then(|f| fsio::Writer(&f).write_all(bytes).and_then(|()| fsio::sync_all(&f)))
        .and_then(|()| fsio::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    fsio::sync_dir(dir).map_err(|e| Error::io(dir, e))
}
