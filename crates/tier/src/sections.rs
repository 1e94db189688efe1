//! Section files: a header, named typed arrays ("sections") each starting at a multiple of 64 bytes, and a
//! table of them at the end, written streaming and memory-mapped for reading. The stored index of the layers
//! above (its centroids, ids and codes in one file, its full vectors in cluster-major order in another) is
//! made of them; this crate knows only the framing, the layers above give the sections their meaning. The
//! byte layout is in `FORMAT.md`.
//!
//! Writing never holds a whole section in memory: [`SectionWriter::write`] appends bytes to the open
//! section and extends its CRC32C as it goes; the table and the header are written last, then the file is
//! synced and renamed into place. There is no size cap short of the disk (offsets are u64).
//!
//! Opening ([`SectionFile::open`]) maps the file and checks what is cheap: the header and its checksum, the
//! version, the table and its checksum, the file's length, and that every section lies inside the file,
//! aligned, in order, with a length that is a whole number of its elements. The checksum of a section's
//! bytes is checked only when asked ([`SectionFile::verify`], [`SectionFile::verified_bytes`]), so that
//! opening a file of many gigabytes reads a few kilobytes of it.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::{Error, Result, fsio};

/// First bytes of every section file.
pub const SECTIONS_MAGIC: [u8; 8] = *b"M2M-SEC\0";
/// Format version this build reads and writes.
pub const SECTIONS_VERSION: u32 = 1;
/// Bytes of the header (and the alignment of every section and of the table).
pub const SECTIONS_HEADER: usize = 64;
/// Bytes of one table entry.
const ENTRY: usize = 48;
/// Longest section name (ASCII, zero-padded in the table).
const NAME: usize = 16;
/// Most sections a file may hold (a damaged count must not make us allocate without bound).
const MAX_SECTIONS: usize = 1024;
/// Bytes buffered before a write to the file.
const BUFFER: usize = 1 << 20;

/// The element type of a section, which fixes the multiple its length must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionKind {
    /// Bytes.
    U8,
    /// Little-endian u32.
    U32,
    /// Little-endian u64.
    U64,
    /// Little-endian IEEE f32.
    F32,
}

impl SectionKind {
    fn code(self) -> u32 {
        match self {
            SectionKind::U8 => 1,
            SectionKind::U32 => 2,
            SectionKind::U64 => 3,
            SectionKind::F32 => 4,
        }
    }

    fn from_code(code: u32) -> Option<SectionKind> {
        Some(match code {
            1 => SectionKind::U8,
            2 => SectionKind::U32,
            3 => SectionKind::U64,
            4 => SectionKind::F32,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SectionKind::U8 => 1,
            SectionKind::U32 | SectionKind::F32 => 4,
            SectionKind::U64 => 8,
        }
    }
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(SECTIONS_HEADER as u64) * SECTIONS_HEADER as u64
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > NAME || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidBatch {
            reason: format!("section name {name:?} must be 1 to {NAME} ASCII characters"),
        });
    }
    Ok(())
}

/// One section as the table describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionEntry {
    /// Its name.
    pub name: String,
    /// Its element type.
    pub kind: SectionKind,
    /// Byte offset in the file (a multiple of 64).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// CRC32C of its bytes.
    pub crc: u32,
}

/// Writes a section file streaming: [`begin`](Self::begin) a section, [`write`](Self::write) its bytes in
/// any number of pieces, then the next section, then [`finish`](Self::finish). Everything goes to a
/// temporary file beside the target; nothing appears at the target unless `finish` succeeds, and a writer
/// dropped before (or after a failure) removes its temporary file.
#[derive(Debug)]
pub struct SectionWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
    /// Bytes of the file so far (written or buffered).
    at: u64,
    table: Vec<SectionEntry>,
    /// Set by a failed write: the file is abandoned.
    failed: bool,
}

impl SectionWriter {
    /// Starts a section file that will become `path`.
    ///
    /// Errors: [`Error::Io`]; [`Error::NotOurs`] when a file that is not ours stands at `path` (it is
    /// never replaced).
    pub fn create(path: impl AsRef<Path>) -> Result<SectionWriter> {
        let path = path.as_ref().to_path_buf();
        crate::owned::claim(&path)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("sections");
        let tmp = path.with_file_name(crate::owned::temp_name(name));
        let file = fsio::create(&tmp, true).map_err(|e| Error::io(&tmp, e))?;
        let mut w = SectionWriter {
            path,
            tmp,
            file: Some(file),
            buf: Vec::with_capacity(BUFFER),
            at: 0,
            table: Vec::new(),
            failed: false,
        };
        // The header's place; it is written last, when the table's offset and checksum are known.
        w.put(&[0u8; SECTIONS_HEADER])?;
        Ok(w)
    }

    /// The file this writer makes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        if self.failed {
            return Err(Error::InvalidBatch { reason: format!("{}: an earlier write failed", self.path.display()) });
        }
        self.at += bytes.len() as u64;
        if self.buf.len() + bytes.len() > BUFFER {
            self.drain()?;
        }
        if bytes.len() >= BUFFER {
            return self.write_file(bytes);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn drain(&mut self) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let r = self.write_file(&buf);
        self.buf = buf;
        self.buf.clear();
        r
    }

    fn write_file(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        if let Err(e) = fsio::Writer(file).write_all(bytes) {
            self.failed = true;
            return Err(Error::io(&self.tmp, e));
        }
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let to = align_up(self.at);
        let zeros = [0u8; SECTIONS_HEADER];
        self.put(&zeros[..(to - self.at) as usize])
    }

    fn check_open(&self) -> Result<()> {
        if let Some(last) = self.table.last()
            && !(last.len as usize).is_multiple_of(last.kind.size())
        {
            return Err(Error::InvalidBatch {
                reason: format!(
                    "section {:?} holds {} bytes, not a whole number of {}-byte elements",
                    last.name,
                    last.len,
                    last.kind.size()
                ),
            });
        }
        Ok(())
    }

    /// Ends the current section (if any) and starts the next, named `name` (1 to 16 ASCII characters,
    /// distinct within the file).
    pub fn begin(&mut self, name: &str, kind: SectionKind) -> Result<()> {
        check_name(name)?;
        if self.table.iter().any(|e| e.name == name) {
            return Err(Error::InvalidBatch { reason: format!("section {name:?} written twice") });
        }
        if self.table.len() == MAX_SECTIONS {
            return Err(Error::InvalidBatch { reason: format!("more than {MAX_SECTIONS} sections") });
        }
        self.check_open()?;
        self.pad()?;
        self.table.push(SectionEntry { name: name.to_string(), kind, offset: self.at, len: 0, crc: 0 });
        Ok(())
    }

    /// Appends bytes to the current section.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(last) = self.table.last_mut() else {
            return Err(Error::InvalidBatch { reason: "bytes written before any section was begun".into() });
        };
        last.len += bytes.len() as u64;
        last.crc = crc32c::crc32c_append(last.crc, bytes);
        self.put(bytes)
    }

    /// [`write`](Self::write) of plain values (f32, u32, u64: their little-endian bytes).
    pub fn write_values<T: bytemuck::NoUninit>(&mut self, values: &[T]) -> Result<()> {
        self.write(bytemuck::cast_slice(values))
    }

    /// Writes the table and the header, syncs the file and renames it into place (the directory is not
    /// synced here: the commit that names the file syncs it). Returns the final path.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.check_open()?;
        self.pad()?;
        let table_offset = self.at;
        let mut table = Vec::with_capacity(self.table.len() * ENTRY);
        for e in &self.table {
            let mut entry = [0u8; ENTRY];
            entry[..e.name.len()].copy_from_slice(e.name.as_bytes());
            entry[16..20].copy_from_slice(&e.kind.code().to_le_bytes());
            entry[24..32].copy_from_slice(&e.offset.to_le_bytes());
            entry[32..40].copy_from_slice(&e.len.to_le_bytes());
            entry[40..44].copy_from_slice(&e.crc.to_le_bytes());
            table.extend_from_slice(&entry);
        }
        self.put(&table)?;
        self.drain()?;
        let mut header = [0u8; SECTIONS_HEADER];
        header[..8].copy_from_slice(&SECTIONS_MAGIC);
        header[8..12].copy_from_slice(&SECTIONS_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(self.table.len() as u32).to_le_bytes());
        header[16..24].copy_from_slice(&table_offset.to_le_bytes());
        header[24..32].copy_from_slice(&self.at.to_le_bytes());
        header[32..36].copy_from_slice(&crc32c::crc32c(&table).to_le_bytes());
        let crc = crc32c::crc32c(&header[..60]);
        header[60..64].copy_from_slice(&crc.to_le_bytes());
        let Some(file) = self.file.take() else { return Err(Error::io(&self.tmp, std::io::ErrorKind::Other.into())) };
        let written = (|| -> std::io::Result<()> {
            (&file).seek(SeekFrom::Start(0))?;
            fsio::Writer(&file).write_all(&header)?;
            fsio::sync_all(&file)?;
            drop(file);
            fsio::rename(&self.tmp, &self.path)
        })();
        if let Err(e) = written {
            self.failed = true;
            return Err(Error::io(&self.tmp, e));
        }
        Ok(std::mem::take(&mut self.path))
    }
}

impl Drop for SectionWriter {
    fn drop(&mut self) {
        // Not finished (an error, or abandoned): the temporary file goes.
        if self.file.take().is_some() || self.failed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A validated, memory-mapped section file.
///
/// # Safety contract of the mapping
/// As for [`Segment`](crate::Segment): the file is mapped read-only, section files are immutable once
/// renamed into place and this crate never writes to one; a file truncated or rewritten behind our back
/// by another process may make reads see changed bytes or fault (SIGBUS).
#[derive(Debug)]
pub struct SectionFile {
    path: PathBuf,
    map: Mmap,
    sections: Vec<SectionEntry>,
}

impl SectionFile {
    /// Maps `path` and checks its header, table and section bounds (not the sections' checksums: see
    /// [`verify`](Self::verify)).
    ///
    /// Errors: [`Error::Io`], [`Error::Corrupt`] with the offset of the damaged field,
    /// [`Error::IncompatibleVersion`].
    pub fn open(path: impl AsRef<Path>) -> Result<SectionFile> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: see the type's safety contract: section files are immutable once in place and are only
        // mapped read-only here; the header and table are validated below before any section is used.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let sections = validate(&path, &map)?;
        Ok(SectionFile { path, map, sections })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table.
    pub fn sections(&self) -> &[SectionEntry] {
        &self.sections
    }

    /// Bytes of the file.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    fn entry(&self, name: &str, kind: SectionKind) -> Result<&SectionEntry> {
        let e = self
            .sections
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::corrupt(&self.path, 0, format!("no section named {name:?}")))?;
        if e.kind != kind {
            return Err(Error::corrupt(
                &self.path,
                e.offset,
                format!("section {name:?} is {:?}, not {kind:?}", e.kind),
            ));
        }
        Ok(e)
    }

    fn slice(&self, e: &SectionEntry) -> &[u8] {
        // Bounds were checked at open.
        &self.map[e.offset as usize..(e.offset + e.len) as usize]
    }

    fn checked<'a>(&self, e: &SectionEntry, bytes: &'a [u8]) -> Result<&'a [u8]> {
        if crc32c::crc32c(bytes) != e.crc {
            return Err(Error::corrupt(&self.path, e.offset, format!("section {:?}: checksum mismatch", e.name)));
        }
        Ok(bytes)
    }

    /// The bytes of section `name` of element type `kind`, unchecked against their checksum.
    pub fn bytes(&self, name: &str, kind: SectionKind) -> Result<&[u8]> {
        self.entry(name, kind).map(|e| self.slice(e))
    }

    /// The bytes of section `name`, after checking their checksum (reads every byte).
    pub fn verified_bytes(&self, name: &str, kind: SectionKind) -> Result<&[u8]> {
        let e = self.entry(name, kind)?;
        self.checked(e, self.slice(e))
    }

    /// Section `name` as values of `T` (whose size is `kind`'s), checksum checked when `verified`.
    pub fn values<T: bytemuck::Pod>(&self, name: &str, kind: SectionKind, verified: bool) -> Result<&[T]> {
        if std::mem::size_of::<T>() != kind.size() {
            return Err(Error::InvalidBatch { reason: format!("section {name:?}: {kind:?} read as a wrong type") });
        }
        let bytes = if verified { self.verified_bytes(name, kind)? } else { self.bytes(name, kind)? };
        // Offsets are multiples of 64 in a page-aligned mapping and lengths whole elements (checked at
        // open), so the cast cannot fail.
        bytemuck::try_cast_slice(bytes).map_err(|e| Error::corrupt(&self.path, 0, format!("section {name:?}: {e}")))
    }

    /// Checks the checksum of every section (reads the whole file).
    pub fn verify(&self) -> Result<()> {
        self.sections.iter().try_for_each(|e| self.checked(e, self.slice(e)).map(drop))
    }

    /// Section `name` (f32) as a handle that owns the mapping: what an index keeps to read its full vectors
    /// from the page cache.
    pub fn shared_f32(self: &Arc<Self>, name: &str) -> Result<MappedF32> {
        let e = self.entry(name, SectionKind::F32)?;
        let (start, end) = (e.offset as usize, (e.offset + e.len) as usize);
        Ok(MappedF32 { file: Arc::clone(self), start, end })
    }

    /// Section `name` (bytes) as a handle that owns the mapping: what an index keeps to read its codes
    /// from the page cache instead of a copy.
    pub fn shared_bytes(self: &Arc<Self>, name: &str) -> Result<MappedBytes> {
        let e = self.entry(name, SectionKind::U8)?;
        let (start, end) = (e.offset as usize, (e.offset + e.len) as usize);
        Ok(MappedBytes { file: Arc::clone(self), start, end })
    }

    /// Drops this file's pages from this process only (`madvise(DONTNEED)`): the page cache keeps them,
    /// and a later read of a section is a minor fault. For the sections copied at open.
    pub fn unmap_pages(&self) -> Result<()> {
        fsio::unmap_pages(&self.map, &self.path)
    }

    /// The mapping (for page advice on ranges of it).
    #[cfg_attr(not(unix), allow(dead_code, reason = "used by the Unix page advice only"))]
    pub(crate) fn map(&self) -> &memmap2::Mmap {
        &self.map
    }

    /// Drops this file's pages from memory, as [`Segment::release_pages`](crate::Segment::release_pages)
    /// does: for memory pressure and for measuring cold reads.
    pub fn release_pages(&self) -> Result<()> {
        fsio::release_pages(&self.map, &self.path)
    }
}

/// An f32 section of a mapped [`SectionFile`], holding the mapping alive.
#[derive(Clone, Debug)]
pub struct MappedF32 {
    file: Arc<SectionFile>,
    start: usize,
    end: usize,
}

impl MappedF32 {
    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        // Checked at open: aligned and a whole number of f32.
        bytemuck::try_cast_slice(&self.file.map[self.start..self.end]).unwrap_or(&[])
    }

    /// The file.
    pub fn file(&self) -> &Arc<SectionFile> {
        &self.file
    }

    /// Byte offset of the first value in the file.
    #[cfg_attr(not(unix), allow(dead_code, reason = "used by the Unix page advice only"))]
    pub(crate) fn start(&self) -> usize {
        self.start
    }
}

/// A byte section of a mapped [`SectionFile`], holding the mapping alive.
#[derive(Clone, Debug)]
pub struct MappedBytes {
    file: Arc<SectionFile>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MappedBytes {
    fn as_ref(&self) -> &[u8] {
        // In bounds: checked at open.
        &self.file.map[self.start..self.end]
    }
}

impl AsRef<[f32]> for MappedF32 {
    fn as_ref(&self) -> &[f32] {
        self.as_slice()
    }
}

/// Checks the header, the table and the section bounds of a section file's bytes; `path` labels errors.
pub(crate) fn validate(path: &Path, map: &[u8]) -> Result<Vec<SectionEntry>> {
    let bad = |offset: u64, reason: String| Error::corrupt(path, offset, reason);
    if map.len() < SECTIONS_HEADER {
        return Err(bad(0, format!("{} bytes, shorter than the {SECTIONS_HEADER}-byte header", map.len())));
    }
    if map[..8] != SECTIONS_MAGIC {
        return Err(bad(0, "not an M2M section file (bad magic)".into()));
    }
    let u32_at = |o: usize| u32::from_le_bytes([map[o], map[o + 1], map[o + 2], map[o + 3]]);
    let u64_at = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().unwrap_or([0; 8]));
    if crc32c::crc32c(&map[..60]) != u32_at(60) {
        return Err(bad(60, "header checksum mismatch".into()));
    }
    if u32_at(8) != SECTIONS_VERSION {
        return Err(Error::IncompatibleVersion { path: path.into(), found: u32_at(8), supported: SECTIONS_VERSION });
    }
    let count = u32_at(12) as usize;
    let table_offset = u64_at(16);
    let file_len = u64_at(24);
    if count > MAX_SECTIONS {
        return Err(bad(12, format!("{count} sections, more than {MAX_SECTIONS}")));
    }
    if file_len != map.len() as u64 {
        return Err(bad(24, format!("header says {file_len} bytes, the file has {}", map.len())));
    }
    let table_end = table_offset.checked_add((count * ENTRY) as u64);
    if !table_offset.is_multiple_of(SECTIONS_HEADER as u64)
        || table_offset < SECTIONS_HEADER as u64
        || table_end != Some(file_len)
    {
        return Err(bad(
            16,
            format!("table at {table_offset} of {count} entries does not end the {file_len}-byte file"),
        ));
    }
    let table = &map[table_offset as usize..];
    if crc32c::crc32c(table) != u32_at(32) {
        return Err(bad(table_offset, "table checksum mismatch".into()));
    }
    if map[36..60].iter().any(|&b| b != 0) {
        return Err(bad(36, "reserved header bytes are not zero".into()));
    }
    let mut sections: Vec<SectionEntry> = Vec::with_capacity(count);
    let mut end = SECTIONS_HEADER as u64;
    for (i, entry) in table.chunks_exact(ENTRY).enumerate() {
        let at = table_offset + (i * ENTRY) as u64;
        let raw = &entry[..NAME];
        let len = raw.iter().position(|&b| b == 0).unwrap_or(NAME);
        let name = std::str::from_utf8(&raw[..len])
            .ok()
            .filter(|n| check_name(n).is_ok() && raw[len..].iter().all(|&b| b == 0));
        let Some(name) = name else { return Err(bad(at, "section name is not 1 to 16 ASCII characters".into())) };
        let word = |o: usize| u32::from_le_bytes([entry[o], entry[o + 1], entry[o + 2], entry[o + 3]]);
        let Some(kind) = SectionKind::from_code(word(16)) else {
            return Err(bad(at + 16, format!("section {name:?}: unknown element type {}", word(16))));
        };
        if word(20) != 0 || word(44) != 0 {
            return Err(bad(at, format!("section {name:?}: reserved bytes are not zero")));
        }
        let offset = u64::from_le_bytes(entry[24..32].try_into().unwrap_or([0; 8]));
        let bytes = u64::from_le_bytes(entry[32..40].try_into().unwrap_or([0; 8]));
        let inside = offset.checked_add(bytes).is_some_and(|e| e <= table_offset);
        if !offset.is_multiple_of(SECTIONS_HEADER as u64) || offset < end || !inside {
            return Err(bad(at + 24, format!("section {name:?} at {offset}, {bytes} bytes, is out of place")));
        }
        if !bytes.is_multiple_of(kind.size() as u64) {
            return Err(bad(at + 32, format!("section {name:?}: {bytes} bytes is not whole {kind:?} values")));
        }
        if sections.iter().any(|s| s.name == name) {
            return Err(bad(at, format!("section {name:?} listed twice")));
        }
        end = offset + bytes;
        sections.push(SectionEntry { name: name.to_string(), kind, offset, len: bytes, crc: word(40) });
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> PathBuf {
        let mut w = SectionWriter::create(dir.join("0000000001.idx")).unwrap();
        w.begin("meta", SectionKind::U8).unwrap();
        w.write(b"hello").unwrap();
        w.begin("vectors", SectionKind::F32).unwrap();
        for chunk in (0..1000).collect::<Vec<i32>>().chunks(7) {
            w.write_values(&chunk.iter().map(|&i| i as f32 * 0.5).collect::<Vec<f32>>()).unwrap();
        }
        w.begin("ids", SectionKind::U64).unwrap();
        w.write_values(&[3u64, 1, 4]).unwrap();
        w.begin("empty", SectionKind::F32).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn a_file_written_in_pieces_reads_back_whole_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let f = SectionFile::open(&path).unwrap();
        assert_eq!(f.bytes("meta", SectionKind::U8).unwrap(), b"hello");
        let v: &[f32] = f.values("vectors", SectionKind::F32, true).unwrap();
        assert_eq!(v.len(), 1000);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32 * 0.5));
        assert_eq!(f.values::<u64>("ids", SectionKind::U64, true).unwrap(), &[3, 1, 4]);
        assert!(f.values::<f32>("empty", SectionKind::F32, true).unwrap().is_empty());
        assert!(f.sections().iter().all(|e| e.offset % 64 == 0));
        f.verify().unwrap();
        // A wrong type or a missing name is a typed error, not a panic.
        assert!(matches!(f.bytes("ids", SectionKind::F32), Err(Error::Corrupt { .. })));
        assert!(matches!(f.bytes("nothing", SectionKind::U8), Err(Error::Corrupt { .. })));
        let shared = Arc::new(f).shared_f32("vectors").unwrap();
        assert_eq!(shared.as_slice()[999], 499.5);
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    /// Catches: a section's bytes not covered by `verify` (a flip inside the data must be found), and a
    /// header or table flip accepted at open. Padding between sections means nothing and is skipped.
    #[test]
    fn every_flipped_byte_is_found_by_open_or_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let good = std::fs::read(&path).unwrap();
        let table_at = good.len() - SectionFile::open(&path).unwrap().sections().len() * ENTRY;
        let f = SectionFile::open(&path).unwrap();
        let covered = |at: usize| {
            at < SECTIONS_HEADER
                || at >= table_at
                || f.sections().iter().any(|e| (e.offset as usize..(e.offset + e.len) as usize).contains(&at))
        };
        let mut checked = 0;
        for at in (0..good.len()).filter(|&at| covered(at)) {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let found = match SectionFile::open(&path) {
                Err(Error::Corrupt { .. } | Error::IncompatibleVersion { .. }) => true,
                Err(e) => panic!("byte {at}: {e}"),
                Ok(f) => f.verify().is_err(),
            };
            assert!(found, "a flip at byte {at} was not found");
            checked += 1;
        }
        assert!(checked > 4000, "{checked}");
    }

    /// Catches: a fuzz decoder that disagrees with `open` + `verify`, and a reseal that leaves a checksum
    /// stale (then the fuzzer never gets past the checksums).
    #[test]
    fn the_fuzz_decoder_agrees_and_reseal_reaches_past_the_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let good = std::fs::read(sample(dir.path())).unwrap();
        assert_eq!(crate::testing::decode::sections(&good).unwrap(), 4);
        let mut bad = good.clone();
        bad[64 + 3] ^= 0x40;
        assert!(crate::testing::decode::sections(&bad).is_err());
        crate::testing::decode::reseal_sections(&mut bad);
        assert_eq!(crate::testing::decode::sections(&bad).unwrap(), 4);
        for n in [0, 10, 63, 64, 200] {
            let mut cut = good[..n].to_vec();
            crate::testing::decode::reseal_sections(&mut cut);
            assert!(crate::testing::decode::sections(&cut).is_err());
        }
    }

    /// Catches: a truncated file accepted (the length check), a writer that leaves its temporary file.
    #[test]
    fn truncation_is_found_and_an_abandoned_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let good = std::fs::read(&path).unwrap();
        for cut in [0, 10, 64, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(matches!(SectionFile::open(&path), Err(Error::Corrupt { .. })), "cut at {cut}");
        }
        std::fs::remove_file(&path).unwrap();
        let mut w = SectionWriter::create(dir.path().join("0000000002.vec")).unwrap();
        w.begin("v", SectionKind::F32).unwrap();
        w.write(&[1, 2, 3]).unwrap();
        assert!(w.begin("w", SectionKind::U8).is_err(), "3 bytes are not whole f32 values");
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
