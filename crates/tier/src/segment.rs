//! Immutable segment files: the cold tier's columns of splats, laid out so that a memory map can be used
//! in place after validation. The byte layout is in `FORMAT.md`.
//!
//! Opening validates everything but the bulk before any column is handed out: magic, header checksum,
//! version, that every column lies inside the file at a 64-byte aligned offset with the length the header
//! implies, the CRC32C and the values of the small columns (ids, norms, kappa, alpha) and of the attribute
//! block. The `mu` column (`4 d` bytes a row, nearly all of the file) is checked by [`Segment::verify`]
//! (what [`crate::Db::check`] and `m2m verify` run), not at open: an open then costs time and memory in
//! proportion to the rows, not to rows x dimension, and touches no page of the vectors. Columns are cast
//! with `bytemuck`, which rechecks size and alignment.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::columns::ColumnsRef;
use crate::{Error, Result, fsio};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"M2M-SEG\0";
/// Format version this build writes for a segment with an attribute block; without one it writes
/// version 1 (the layout older builds read). Both are read.
pub const SEGMENT_VERSION: u32 = 2;
/// Bytes of the segment header.
pub const SEGMENT_HEADER: usize = 128;
/// Column alignment in bytes.
const ALIGN: usize = 64;
/// Columns in their order in the file: (name, bytes per row as a multiple of 4, whether per dimension).
const COLUMNS: [(&str, usize, bool); 5] =
    [("mu", 4, true), ("ids", 8, false), ("norms", 4, false), ("kappa", 4, false), ("alpha", 4, false)];

fn align_up(x: usize) -> usize {
    x.div_ceil(ALIGN) * ALIGN
}

/// Byte offsets and lengths of the columns of a segment of `rows` x `dim`.
pub(crate) fn layout(rows: usize, dim: usize) -> Option<[(usize, usize); 5]> {
    let mut at = SEGMENT_HEADER;
    let mut out = [(0, 0); 5];
    for (slot, &(_, width, per_dim)) in out.iter_mut().zip(&COLUMNS) {
        let len = rows.checked_mul(width)?.checked_mul(if per_dim { dim } else { 1 })?;
        *slot = (at, len);
        // Checked: a forged header's row count can bring `at` within 64 bytes of the top of usize.
        at = at.checked_add(len)?.checked_next_multiple_of(ALIGN)?;
    }
    Some(out)
}

/// Writes `columns` as segment `id` at `path`: a temporary file beside it, fsync, rename, fsync of the
/// directory. Nothing appears at `path` unless all of it was written.
pub fn write_segment(path: &Path, id: u64, columns: ColumnsRef<'_>) -> Result<()> {
    write_segment_parts(path, id, &[columns], None)
}

/// [`write_segment`] of the rows of `parts`, in order, as one segment (no copy into one buffer first).
/// With `attrs`, the rows' encoded attribute block follows the columns (version 2).
pub(crate) fn write_segment_parts(path: &Path, id: u64, parts: &[ColumnsRef<'_>], attrs: Option<&[u8]>) -> Result<()> {
    let dim = parts.first().map_or(0, |p| p.dim);
    for p in parts {
        p.check()?;
        if p.dim != dim {
            return Err(Error::InvalidBatch { reason: format!("parts of dimensions {dim} and {}", p.dim) });
        }
    }
    if dim == 0 {
        return Err(Error::InvalidBatch { reason: "a segment needs at least one part".into() });
    }
    let rows: usize = parts.iter().map(|p| p.rows()).sum();
    let cols = layout(rows, dim).ok_or_else(|| Error::InvalidBatch { reason: "segment too large".into() })?;
    // Each column as the parts' slices, in the file's column order.
    let data: [Vec<&[u8]>; 5] = [
        parts.iter().map(|p| bytemuck::cast_slice(p.mu)).collect(),
        parts.iter().map(|p| bytemuck::cast_slice(p.ids)).collect(),
        parts.iter().map(|p| bytemuck::cast_slice(p.norms)).collect(),
        parts.iter().map(|p| bytemuck::cast_slice(p.kappa)).collect(),
        parts.iter().map(|p| bytemuck::cast_slice(p.alpha)).collect(),
    ];
    let mut header = [0u8; SEGMENT_HEADER];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    let version: u32 = if attrs.is_some() { 2 } else { 1 };
    header[8..12].copy_from_slice(&version.to_le_bytes());
    header[12..16].copy_from_slice(&(dim as u32).to_le_bytes());
    header[16..24].copy_from_slice(&(rows as u64).to_le_bytes());
    header[24..32].copy_from_slice(&id.to_le_bytes());
    for (i, ((offset, _), slices)) in cols.iter().zip(&data).enumerate() {
        let crc = slices.iter().fold(0, |crc, b| crc32c::crc32c_append(crc, b));
        header[32 + 8 * i..40 + 8 * i].copy_from_slice(&(*offset as u64).to_le_bytes());
        header[72 + 4 * i..76 + 4 * i].copy_from_slice(&crc.to_le_bytes());
    }
    let attrs_at = align_up(cols[4].0 + cols[4].1);
    if let Some(block) = attrs {
        header[92..100].copy_from_slice(&(attrs_at as u64).to_le_bytes());
        header[100..108].copy_from_slice(&(block.len() as u64).to_le_bytes());
        header[108..112].copy_from_slice(&crc32c::crc32c(block).to_le_bytes());
    }
    let crc = crc32c::crc32c(&header[..124]);
    header[124..128].copy_from_slice(&crc.to_le_bytes());

    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("segment");
    let tmp: PathBuf = path.with_file_name(crate::owned::temp_name(name));
    let result = (|| -> std::io::Result<()> {
        let file = fsio::create(&tmp, false)?;
        let mut f = std::io::BufWriter::with_capacity(1 << 20, fsio::Writer(&file));
        f.write_all(&header)?;
        let mut at = SEGMENT_HEADER;
        for ((offset, len), slices) in cols.iter().zip(&data) {
            f.write_all(&vec![0u8; offset - at])?;
            slices.iter().try_for_each(|b| f.write_all(b))?;
            at = offset + len;
        }
        if let Some(block) = attrs {
            f.write_all(&vec![0u8; attrs_at - at])?;
            f.write_all(block)?;
        }
        f.flush()?;
        drop(f);
        fsio::sync_all(&file)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    // A file of this name that is not ours (no segment magic) is never replaced.
    if let Err(e) = crate::owned::claim(path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fsio::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    let dir = fsio::parent(path);
    fsio::sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// A validated, memory-mapped segment.
///
/// # Safety contract of the mapping
/// The file is mapped read-only. Segments are immutable once renamed into place, and this crate never
/// writes to one; if another process truncates or rewrites a mapped segment behind our back, reads of the
/// mapping may see changed bytes or fault (SIGBUS). Keeping database files private to the process that
/// holds the directory's lock is part of the database's contract.
#[derive(Debug)]
pub struct Segment {
    path: PathBuf,
    map: Mmap,
    id: u64,
    rows: usize,
    dim: usize,
    cols: [(usize, usize); 5],
    /// Where the attribute block is (version 2), as (offset, length).
    attrs: Option<(usize, usize)>,
}

impl Segment {
    /// Maps and validates the segment at `path`.
    ///
    /// Errors: [`Error::Io`], [`Error::Corrupt`] (with the offset of the damaged header field or column),
    /// [`Error::IncompatibleVersion`].
    /// The `mu` column is not read (see the module's docs): [`Segment::verify`] checks it. The pages
    /// the checks read (header, small columns, attribute block) leave the process again before it
    /// returns ([`Segment::unmap_pages`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Segment> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: see the type's safety contract: segment files are immutable once in place and are only
        // mapped read-only here; the header and small columns are validated below before use, and the
        // `mu` column is read only as f32 values (any bit pattern is a valid f32; `verify` checks them).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let Layout { id, rows, dim, cols, attrs } = validate(&path, &map, false)?;
        let segment = Segment { path, map, id, rows, dim, cols, attrs };
        let _ = segment.unmap_pages();
        Ok(segment)
    }

    /// Checks what [`Segment::open`] leaves out: the `mu` column's checksum and that every component is
    /// finite. Reads every byte of the column, then releases its pages again.
    ///
    /// Errors: [`Error::Corrupt`] with the column's offset (checksum) or the damaged row's.
    pub fn verify(&self) -> Result<()> {
        let result = check_mu(&self.path, &self.map, self.dim, &self.cols);
        let _ = self.unmap_pages();
        result
    }

    fn column<T: bytemuck::Pod>(&self, i: usize) -> &[T] {
        let (offset, len) = self.cols[i];
        // Offsets are multiples of 64 in a page-aligned mapping and lengths were checked at open, so the
        // cast cannot fail; an empty slice stands in if it ever did.
        bytemuck::try_cast_slice(&self.map[offset..offset + len]).unwrap_or(&[])
    }

    /// Unit directions, row-major.
    pub fn mu(&self) -> &[f32] {
        self.column(0)
    }

    /// Hints the kernel that rows `rows` will be read soon (`madvise(WILLNEED)` on their `mu` bytes, the
    /// bulk of a row). A hint: failures are ignored, and it does nothing where there is no `madvise`
    /// (Windows).
    pub fn advise_will_need(&self, rows: std::ops::Range<usize>) {
        let (offset, len) = self.cols[0];
        let row = 4 * self.dim;
        let start = rows.start.min(self.rows) * row;
        let end = rows.end.min(self.rows) * row;
        #[cfg(unix)]
        if end > start && start < len {
            let _ = self.map.advise_range(memmap2::Advice::WillNeed, offset + start, end - start);
        }
        #[cfg(not(unix))]
        let _ = (offset, len, start, end);
    }

    /// Drops the segment's pages from memory: this mapping's (`madvise(DONTNEED)`, on Unix) and then the
    /// kernel's page cache of the file (`posix_fadvise(DONTNEED)`, on Linux, Android and FreeBSD; it skips
    /// pages another process maps). Later reads fault the same bytes in from disk. For memory pressure,
    /// and for measuring cold reads. Elsewhere (macOS keeps its page cache, Windows has neither call) it
    /// drops what the platform allows and returns `Ok`.
    pub fn release_pages(&self) -> Result<()> {
        fsio::release_pages(&self.map, &self.path)
    }

    /// Drops this mapping's pages from the process (`madvise(DONTNEED)`, on Unix; nothing elsewhere)
    /// while the page cache keeps them: what a reader that copied the small columns calls so that they
    /// do not stay resident twice. Later reads are served from the page cache (or the disk).
    pub fn unmap_pages(&self) -> Result<()> {
        fsio::unmap_pages(&self.map, &self.path)
    }

    /// All columns.
    pub fn columns(&self) -> ColumnsRef<'_> {
        ColumnsRef {
            dim: self.dim,
            ids: self.ids(),
            norms: self.norms(),
            kappa: self.kappa(),
            alpha: self.alpha(),
            mu: self.mu(),
        }
    }

    /// Ids.
    pub fn ids(&self) -> &[u64] {
        self.column(1)
    }

    /// Raw-vector lengths.
    pub fn norms(&self) -> &[f32] {
        self.column(2)
    }

    /// Concentrations.
    pub fn kappa(&self) -> &[f32] {
        self.column(3)
    }

    /// Weights.
    pub fn alpha(&self) -> &[f32] {
        self.column(4)
    }

    /// The encoded attribute block of the rows (checksum checked at open), `None` in a segment written
    /// without attributes (version 1).
    pub fn attrs_block(&self) -> Option<&[u8]> {
        self.attrs.map(|(o, l)| &self.map[o..o + l])
    }

    /// Byte offset of the attribute block in the file (0 without one), for errors about its content.
    pub(crate) fn attrs_offset(&self) -> u64 {
        self.attrs.map_or(0, |(o, _)| o as u64)
    }

    /// Number of splats.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The segment's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where the columns of a validated segment are.
pub(crate) struct Layout {
    pub(crate) id: u64,
    pub(crate) rows: usize,
    pub(crate) dim: usize,
    pub(crate) cols: [(usize, usize); 5],
    pub(crate) attrs: Option<(usize, usize)>,
}

/// Checks every header field, the small columns' checksums and values, the attribute block's checksum
/// and the length of a segment file's bytes (`map`), and with `mu` the `mu` column as
/// [`Segment::verify`] does; `path` only labels errors.
pub(crate) fn validate(path: &Path, map: &[u8], mu: bool) -> Result<Layout> {
    let bad = |offset: usize, reason: String| Error::corrupt(path, offset as u64, reason);
    let len = map.len();
    if len < SEGMENT_HEADER {
        return Err(bad(len, format!("{len} bytes, shorter than the {SEGMENT_HEADER}-byte header")));
    }
    let h = &map[..SEGMENT_HEADER];
    if h[..8] != SEGMENT_MAGIC {
        return Err(bad(0, "not an M2M segment (bad magic)".into()));
    }
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or([0; 8]));
    if crc32c::crc32c(&h[..124]) != u32_at(124) {
        return Err(bad(124, "header checksum mismatch".into()));
    }
    let version = u32_at(8);
    if !(1..=SEGMENT_VERSION).contains(&version) {
        return Err(Error::IncompatibleVersion { path: path.into(), found: version, supported: SEGMENT_VERSION });
    }
    let dim = u32_at(12) as usize;
    let rows = usize::try_from(u64_at(16)).map_err(|_| bad(16, "row count does not fit in memory".into()))?;
    if dim == 0 {
        return Err(bad(12, "dimension 0".into()));
    }
    let cols = layout(rows, dim).ok_or_else(|| bad(16, format!("{rows} rows of dimension {dim} overflow")))?;
    for (i, &(offset, col_len)) in cols.iter().enumerate() {
        let stored = u64_at(32 + 8 * i);
        if stored != offset as u64 {
            return Err(bad(32 + 8 * i, format!("column {} at byte {stored}, expected {offset}", COLUMNS[i].0)));
        }
        if offset + col_len > len {
            return Err(bad(
                len,
                format!("column {} runs to byte {}, the file ends at {len}", COLUMNS[i].0, offset + col_len),
            ));
        }
        if i > 0 && crc32c::crc32c(&map[offset..offset + col_len]) != u32_at(72 + 4 * i) {
            return Err(bad(offset, format!("column {} checksum mismatch", COLUMNS[i].0)));
        }
    }
    let mut end = cols[4].0 + cols[4].1;
    let mut attrs = None;
    if version >= 2 {
        let at = align_up(end);
        let (stored, block_len) = (u64_at(92), u64_at(100));
        if stored != at as u64 {
            return Err(bad(92, format!("attribute block at byte {stored}, expected {at}")));
        }
        let block_end = usize::try_from(block_len).ok().and_then(|l| at.checked_add(l)).filter(|&e| e <= len);
        let Some(block_end) = block_end else {
            return Err(bad(100, format!("attribute block of {block_len} bytes runs past the end at {len}")));
        };
        if crc32c::crc32c(&map[at..block_end]) != u32_at(108) {
            return Err(bad(at, "attribute block checksum mismatch".into()));
        }
        attrs = Some((at, block_end - at));
        end = block_end;
    }
    if len != end {
        return Err(bad(end, format!("{} bytes after the last column", len.saturating_sub(end))));
    }
    // Behind the checksums, the values: a file forged with recomputed checksums must not bring a
    // non-positive norm, kappa or alpha to the layers above (the checksum pass above has read these
    // pages already).
    let view = ColumnsRef {
        dim,
        ids: &[],
        norms: floats(map, &cols, 2),
        kappa: floats(map, &cols, 3),
        alpha: floats(map, &cols, 4),
        mu: &[],
    };
    if let Some((column, row)) = view.invalid_value(false) {
        let at = match column {
            "norm" => cols[2].0 + 4 * row,
            "kappa" => cols[3].0 + 4 * row,
            _ => cols[4].0 + 4 * row,
        };
        return Err(bad(at, format!("row {row} has an invalid {column}")));
    }
    if mu {
        check_mu(path, map, dim, &cols)?;
    }
    let id = u64_at(24);
    Ok(Layout { id, rows, dim, cols, attrs })
}

/// Column `i` of a validated layout as f32 values.
fn floats<'a>(map: &'a [u8], cols: &[(usize, usize); 5], i: usize) -> &'a [f32] {
    bytemuck::try_cast_slice(&map[cols[i].0..cols[i].0 + cols[i].1]).unwrap_or(&[])
}

/// The `mu` column of a validated layout: its checksum (stored in the header, checked at open), then
/// that every component is finite (a file forged with a recomputed checksum must not bring a NaN
/// direction to the layers above).
fn check_mu(path: &Path, map: &[u8], dim: usize, cols: &[(usize, usize); 5]) -> Result<()> {
    let (offset, len) = cols[0];
    let stored = u32::from_le_bytes([map[72], map[73], map[74], map[75]]);
    if crc32c::crc32c(&map[offset..offset + len]) != stored {
        return Err(Error::corrupt(path, offset as u64, format!("column {} checksum mismatch", COLUMNS[0].0)));
    }
    let view = ColumnsRef { dim, ids: &[], norms: &[], kappa: &[], alpha: &[], mu: floats(map, cols, 0) };
    match view.invalid_value(true) {
        Some((column, row)) => {
            Err(Error::corrupt(path, (offset + 4 * row * dim) as u64, format!("row {row} has an invalid {column}")))
        }
        None => Ok(()),
    }
}
