//! The NumPy `.npy` format, for 2-D little-endian f32 (`<f4`) or i32 (`<i4`) arrays in C order.
//!
//! Byte layout (NumPy format versions 1.0, 2.0 and 3.0):
//!
//! | offset | size  | content                                                                  |
//! |--------|-------|--------------------------------------------------------------------------|
//! | 0      | 6     | magic `\x93NUMPY`                                                        |
//! | 6      | 1     | major version: 1, 2 or 3                                                 |
//! | 7      | 1     | minor version: 0                                                         |
//! | 8      | 2 / 4 | header length `H`: little-endian u16 (version 1) or u32 (versions 2, 3)  |
//! | 10/12  | `H`   | a Python dict literal, e.g. `{'descr': '<f4', 'fortran_order': False, 'shape': (70000, 384), }`, padded with spaces and ended by `\n` |
//! | 10+H   | ...   | `rows * dim` elements, row-major, nothing after them                     |
//!
//! The dict literal is parsed by the `npyz` crate, after this module has checked the magic, the version
//! and that the header fits in the file (so a corrupt length cannot make us allocate gigabytes).
//!
//! Files written here use version 1.0 with a fixed 128-byte preamble (10 bytes + a 118-byte header),
//! which keeps the data 64-byte aligned and leaves room to rewrite the shape in place when a streaming
//! writer finishes and knows its row count.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::io::ElementType;
use crate::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Headers longer than this are refused as corrupt (NumPy itself refuses 10,000 by default).
const MAX_HEADER: u64 = 1 << 20;
/// Total size of the preamble this module writes: magic, version, length and padded dict.
pub(super) const WRITTEN_PREAMBLE: usize = 128;

/// What the header of an `.npy` file says.
pub(super) struct Header {
    pub(super) element: ElementType,
    pub(super) rows: u64,
    pub(super) dim: usize,
    pub(super) data_offset: u64,
}

/// Parses and checks the header; `reader` must be at offset 0 and is left at the first data byte.
pub(super) fn open<R: Read + Seek>(path: &Path, reader: &mut R, file_len: u64) -> Result<Header> {
    let mut pre = [0u8; 12];
    let have = (file_len as usize).min(pre.len());
    reader.read_exact(&mut pre[..have]).map_err(|e| Error::io(path, e))?;
    if have < 10 || &pre[..6] != MAGIC {
        return Err(Error::corrupt(path, 0, "not an .npy file: missing the \\x93NUMPY magic"));
    }
    let (len_size, header_len) = match pre[6] {
        1 => (2u64, u64::from(u16::from_le_bytes([pre[8], pre[9]]))),
        2 | 3 if have == 12 => (4u64, u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]))),
        2 | 3 => return Err(Error::corrupt(path, file_len, "truncated in the header length")),
        v => return Err(Error::unsupported(path, format!("npy format version {v}.{} (1, 2 and 3 are read)", pre[7]))),
    };
    let text_start = 8 + len_size;
    if header_len > MAX_HEADER {
        return Err(Error::corrupt(path, 8, format!("header length {header_len} is implausibly large")));
    }
    let data_offset = text_start + header_len;
    if data_offset > file_len {
        return Err(Error::corrupt(
            path,
            file_len,
            format!("truncated: the header runs to byte {data_offset}, the file ends at {file_len}"),
        ));
    }
    // npyz multiplies the shape's numbers without checking (a panic in debug builds, a wrapped bogus size in
    // release ones), so the shape is read and checked here first, with checked arithmetic.
    let mut text = vec![0u8; header_len as usize];
    reader.seek(SeekFrom::Start(text_start)).map_err(|e| Error::io(path, e))?;
    reader.read_exact(&mut text).map_err(|e| Error::io(path, e))?;
    check_shape(&String::from_utf8_lossy(&text)).map_err(|reason| Error::corrupt(path, text_start, reason))?;
    reader.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let header = npyz::NpyHeader::from_reader(&mut *reader)
        .map_err(|e| Error::corrupt(path, text_start, format!("malformed header: {e}")))?;

    let descr = header.dtype().descr();
    let element = match descr.as_str() {
        "'<f4'" | "<f4" => ElementType::F32,
        "'<i4'" | "<i4" => ElementType::I32,
        other => {
            return Err(Error::unsupported(
                path,
                format!(
                    "dtype {other}; only little-endian float32 ('<f4') and int32 ('<i4') are read \
                         (in NumPy: arr.astype(np.float32))"
                ),
            ));
        }
    };
    if header.order() != npyz::Order::C {
        return Err(Error::unsupported(path, "Fortran-order array (in NumPy: np.ascontiguousarray(arr))"));
    }
    let (rows, dim) = match *header.shape() {
        [rows, dim] => (rows, dim),
        ref shape => {
            return Err(Error::unsupported(path, format!("shape {shape:?}; a 2-D array (rows, dim) is expected")));
        }
    };
    if dim == 0 {
        return Err(Error::corrupt(path, text_start, "shape has dimension 0"));
    }
    let data_len = rows
        .checked_mul(dim)
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| Error::corrupt(path, text_start, format!("shape ({rows}, {dim}) overflows")))?;
    let expected_end = data_offset
        .checked_add(data_len)
        .ok_or_else(|| Error::corrupt(path, text_start, format!("shape ({rows}, {dim}) overflows")))?;
    if file_len < expected_end {
        return Err(Error::corrupt(
            path,
            file_len,
            format!(
                "truncated: shape ({rows}, {dim}) needs data up to byte {expected_end}, the file ends at {file_len}"
            ),
        ));
    }
    if file_len > expected_end {
        return Err(Error::corrupt(
            path,
            expected_end,
            format!("{} unexpected bytes after the data of shape ({rows}, {dim})", file_len - expected_end),
        ));
    }
    let dim = usize::try_from(dim).map_err(|_| Error::corrupt(path, text_start, "dimension does not fit in memory"))?;
    Ok(Header { element, rows, dim, data_offset })
}

/// Checks that the `shape` tuple in the header dict holds numbers whose product, in 4-byte elements, fits in
/// a u64; a header without a readable shape is left to npyz, which reports it.
fn check_shape(dict: &str) -> std::result::Result<(), String> {
    let Some(at) = dict.find("'shape'").or_else(|| dict.find("\"shape\"")) else { return Ok(()) };
    let rest = &dict[at + 7..];
    let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else { return Ok(()) };
    if close < open {
        return Ok(());
    }
    let mut bytes: u64 = 4;
    for part in rest[open + 1..close].split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n: u64 = part.parse().map_err(|_| format!("shape number {part} is not a count that fits in 64 bits"))?;
        bytes = bytes.checked_mul(n).ok_or_else(|| {
            format!(
                "shape ({}) overflows: its element count times 4 bytes exceeds 64 bits",
                rest[open + 1..close].trim()
            )
        })?;
    }
    Ok(())
}

/// The 128-byte preamble of a version 1.0 file holding `rows` rows of `dim` elements.
pub(super) fn preamble(element: ElementType, rows: u64, dim: usize) -> [u8; WRITTEN_PREAMBLE] {
    let descr = match element {
        ElementType::F32 => "<f4",
        ElementType::I32 => "<i4",
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let mut out = [b' '; WRITTEN_PREAMBLE];
    out[..6].copy_from_slice(MAGIC);
    out[6] = 1;
    out[7] = 0;
    out[8..10].copy_from_slice(&((WRITTEN_PREAMBLE - 10) as u16).to_le_bytes());
    // The longest dict (two 20-digit numbers) is 97 bytes, well inside the 117 available.
    out[10..10 + dict.len()].copy_from_slice(dict.as_bytes());
    out[WRITTEN_PREAMBLE - 1] = b'\n';
    out
}
