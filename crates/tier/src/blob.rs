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
    let mut out = Vec::with_capacity(HEADER + bytes.len());
    out.extend_from_slice(&BLOB_MAGIC);
    out.extend_from_slice(&BLOB_VERSION.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let written = fsio::create(&tmp, false)
        .and_then(|f| fsio::Writer(&f).write_all(&out).and_then(|()| fsio::sync_all(&f)))
        .and_then(|()| fsio::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    fsio::sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Reads and checks `dir/name`: [`Error::Io`] when missing, [`Error::Corrupt`] with the offset when
/// damaged, [`Error::IncompatibleVersion`].
pub fn load_blob(dir: &Path, name: &str) -> Result<Vec<u8>> {
    check_name(name)?;
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let bad = |offset: usize, reason: String| Error::corrupt(&path, offset as u64, reason);
    if bytes.len() < HEADER {
        return Err(bad(bytes.len(), format!("{} bytes, shorter than the {HEADER}-byte header", bytes.len())));
    }
    if bytes[..8] != BLOB_MAGIC {
        return Err(bad(0, "not an M2M blob (bad magic)".into()));
    }
    let u32_at = |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    if u32_at(8) != BLOB_VERSION {
        return Err(Error::IncompatibleVersion { path, found: u32_at(8), supported: BLOB_VERSION });
    }
    let len = u32_at(12) as usize;
    if HEADER + len != bytes.len() {
        return Err(bad(12, format!("length {len} does not match the file's {} bytes", bytes.len())));
    }
    if crc32c::crc32c(&bytes[HEADER..]) != u32_at(16) {
        return Err(bad(HEADER, "checksum mismatch".into()));
    }
    Ok(bytes[HEADER..].to_vec())
}
