//! The `.fvecs` / `.ivecs` format (the TEXMEX corpus format used by ANN benchmarks).
//!
//! Byte layout, repeated once per vector, with no file header:
//!
//! | offset       | size      | content                                     |
//! |--------------|-----------|---------------------------------------------|
//! | 0            | 4         | `dim`, little-endian i32, > 0               |
//! | 4            | 4 * `dim` | `dim` little-endian f32 (fvecs) or i32 (ivecs) |
//!
//! Every record of a file has the same `dim`, so record `i` starts at `i * (4 + 4 * dim)` and the file length
//! is a whole number of records. The format cannot express a file of zero vectors (there is no record to
//! carry the dimension), so an empty file is rejected rather than guessed at.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// Size of the per-record dimension header.
pub(super) const HEADER: u64 = 4;

/// Reads the first dimension header and derives the row count from the file length.
///
/// Returns `(dim, rows)`. `reader` must be at offset 0; it is left after the first header.
pub(super) fn open(path: &Path, reader: &mut impl Read, file_len: u64) -> Result<(usize, u64)> {
    if file_len == 0 {
        return Err(Error::corrupt(path, 0, "empty file: no vector, so no dimension"));
    }
    if file_len < HEADER {
        return Err(Error::corrupt(path, file_len, format!("truncated: {file_len} bytes, a dimension header needs 4")));
    }
    let mut head = [0u8; 4];
    reader.read_exact(&mut head).map_err(|e| Error::io(path, e))?;
    let dim = i32::from_le_bytes(head);
    if dim <= 0 {
        return Err(Error::corrupt(path, 0, format!("dimension header is {dim}, must be positive")));
    }
    let dim = dim as u64;
    let record = HEADER + 4 * dim;
    let rows = file_len / record;
    let partial = file_len % record;
    if partial != 0 {
        return Err(Error::corrupt(
            path,
            rows * record,
            format!(
                "truncated record: {partial} bytes left where a record of dimension {dim} takes {record} \
                 (file length {file_len})"
            ),
        ));
    }
    Ok((dim as usize, rows))
}

/// Checks the dimension header of record `row` (its bytes at `record`) and returns its payload.
pub(super) fn payload<'a>(path: &Path, record: &'a [u8], row: u64, dim: usize) -> Result<&'a [u8]> {
    let (head, body) = record.split_at(HEADER as usize);
    let got = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if i64::from(got) != dim as i64 {
        let offset = row * record.len() as u64;
        return Err(Error::corrupt(path, offset, format!("record {row} has dimension {got}, the file's is {dim}")));
    }
    Ok(body)
}
