//! Reading and writing files of vectors: `.fvecs`, `.ivecs` and NumPy `.npy`.
//!
//! Readers stream: [`VectorReader::read_rows`] and [`VectorReader::chunks`] hold one chunk in memory at a
//! time, so a file larger than RAM can be ingested. Every length is checked against the file size before
//! any data is read, and bytes are copied into typed buffers through `bytemuck`, never reinterpreted in
//! place. Writers write to a temporary file beside the target and rename it over the target only in
//! [`VectorWriter::finish`], so a failed or abandoned write leaves no half-written file.

mod fvecs;
mod npy;

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[cfg(target_endian = "big")]
compile_error!(
    "m2m-splat copies little-endian file bytes straight into f32/i32 buffers; big-endian hosts are not supported"
);

/// Size of the buffer `.fvecs`/`.ivecs` records pass through between the file and the caller's rows.
const SCRATCH_BYTES: usize = 4 << 20;

/// A file format for vectors, chosen by file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VectorFormat {
    /// `.fvecs`: little-endian f32 records, each preceded by its dimension.
    Fvecs,
    /// `.ivecs`: little-endian i32 records, each preceded by its dimension.
    Ivecs,
    /// `.npy`: a 2-D NumPy array of `<f4` or `<i4`.
    Npy,
}

impl VectorFormat {
    /// The format named by the extension of `path` (`.fvecs`, `.ivecs`, `.npy`, any case).
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("fvecs") => Ok(VectorFormat::Fvecs),
            Some("ivecs") => Ok(VectorFormat::Ivecs),
            Some("npy") => Ok(VectorFormat::Npy),
            _ => Err(Error::unsupported(path, "unknown extension; expected .fvecs, .ivecs or .npy")),
        }
    }
}

/// The element type stored in a vector file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 32-bit signed integer (neighbour ids in ground-truth files).
    I32,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for i32 {}
}

/// An element type that vector files hold: `f32` or `i32`.
pub trait Element: bytemuck::Pod + sealed::Sealed {
    /// The matching [`ElementType`].
    const TYPE: ElementType;
}

impl Element for f32 {
    const TYPE: ElementType = ElementType::F32;
}

impl Element for i32 {
    const TYPE: ElementType = ElementType::I32;
}

/// What a vector file holds, read from its header and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorFileInfo {
    /// The file format.
    pub format: VectorFormat,
    /// The element type.
    pub element: ElementType,
    /// Number of vectors.
    pub rows: u64,
    /// Dimension of every vector.
    pub dim: usize,
}

/// A streaming reader over the vectors of one file.
///
/// ```no_run
/// let mut reader = m2m_splat::VectorReader::open("base.fvecs")?;
/// let dim = reader.info().dim;
/// for chunk in reader.chunks::<f32>(10_000) {
///     let chunk = chunk?; // up to 10,000 rows, row-major
///     assert_eq!(chunk.len() % dim, 0);
/// }
/// # Ok::<(), m2m_splat::Error>(())
/// ```
#[derive(Debug)]
pub struct VectorReader {
    path: PathBuf,
    file: BufReader<File>,
    info: VectorFileInfo,
    data_offset: u64,
    next_row: u64,
    scratch: Vec<u8>,
}

impl VectorReader {
    /// Opens `path`, with the format chosen by its extension, and checks its header against its length.
    ///
    /// Errors: [`Error::Io`] (missing file, permissions), [`Error::Corrupt`] (bad magic, truncated header
    /// or data, trailing bytes), [`Error::Unsupported`] (unknown extension, other dtypes, Fortran order).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let format = VectorFormat::from_path(path)?;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut file = BufReader::with_capacity(1 << 20, file);
        let (info, data_offset) = match format {
            VectorFormat::Fvecs | VectorFormat::Ivecs => {
                let (dim, rows) = fvecs::open(path, &mut file, file_len)?;
                let element = if format == VectorFormat::Fvecs { ElementType::F32 } else { ElementType::I32 };
                (VectorFileInfo { format, element, rows, dim }, 0)
            }
            VectorFormat::Npy => {
                let h = npy::open(path, &mut file, file_len)?;
                (VectorFileInfo { format, element: h.element, rows: h.rows, dim: h.dim }, h.data_offset)
            }
        };
        file.seek(SeekFrom::Start(data_offset)).map_err(|e| Error::io(path, e))?;
        Ok(VectorReader { path: path.to_owned(), file, info, data_offset, next_row: 0, scratch: Vec::new() })
    }

    /// What the file holds.
    pub fn info(&self) -> VectorFileInfo {
        self.info
    }

    /// The path this reader was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The row the next read starts at.
    pub fn position(&self) -> u64 {
        self.next_row
    }

    /// Rows not read yet.
    pub fn rows_left(&self) -> u64 {
        self.info.rows - self.next_row
    }

    fn record_bytes(&self) -> u64 {
        let payload = 4 * self.info.dim as u64;
        match self.info.format {
            VectorFormat::Fvecs | VectorFormat::Ivecs => fvecs::HEADER + payload,
            VectorFormat::Npy => payload,
        }
    }

    /// Moves to `row` (at most the row count), so that reading resumes there.
    pub fn seek_row(&mut self, row: u64) -> Result<()> {
        let row = row.min(self.info.rows);
        let offset = self.data_offset + row * self.record_bytes();
        self.file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&self.path, e))?;
        self.next_row = row;
        Ok(())
    }

    /// Appends up to `max_rows` rows to `out` (row-major) and returns how many; 0 at the end of the file.
    ///
    /// Errors: [`Error::Unsupported`] when `T` is not the file's element type, [`Error::Corrupt`] for a
    /// record with another dimension or a file that shrank while being read, [`Error::Io`]. On error,
    /// `out` is left as it was.
    pub fn read_rows<T: Element>(&mut self, max_rows: usize, out: &mut Vec<T>) -> Result<usize> {
        if T::TYPE != self.info.element {
            return Err(Error::unsupported(
                &self.path,
                format!("the file holds {:?} values, {:?} were asked for", self.info.element, T::TYPE),
            ));
        }
        let rows = (max_rows as u64).min(self.rows_left()) as usize;
        if rows == 0 {
            return Ok(0);
        }
        let dim = self.info.dim;
        let start = out.len();
        out.resize(start + rows * dim, T::zeroed());
        let result = self.fill(bytemuck::cast_slice_mut(&mut out[start..]));
        match result {
            Ok(()) => {
                self.next_row += rows as u64;
                Ok(rows)
            }
            Err(e) => {
                out.truncate(start);
                // Put the file back where the failed read began, so the reader stays consistent.
                let _ = self.seek_row(self.next_row);
                Err(e)
            }
        }
    }

    /// Reads the next `dst.len() / (4 * dim)` records' values into `dst`.
    fn fill(&mut self, dst: &mut [u8]) -> Result<()> {
        let start_offset = self.data_offset + self.next_row * self.record_bytes();
        let eof = |e: std::io::Error, path: &Path| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corrupt(path, start_offset, "the file ended early; was it truncated while being read?")
            } else {
                Error::io(path, e)
            }
        };
        match self.info.format {
            VectorFormat::Npy => self.file.read_exact(dst).map_err(|e| eof(e, &self.path)),
            VectorFormat::Fvecs | VectorFormat::Ivecs => {
                // Records go through a scratch buffer of about SCRATCH_BYTES, so reading a whole file does
                // not hold a second copy of it.
                let record = self.record_bytes() as usize;
                let payload_len = record - fvecs::HEADER as usize;
                let block_rows = (SCRATCH_BYTES / record).max(1);
                let mut row = self.next_row;
                for dst in dst.chunks_mut(block_rows * payload_len) {
                    self.scratch.resize(dst.len() / payload_len * record, 0);
                    self.file.read_exact(&mut self.scratch).map_err(|e| eof(e, &self.path))?;
                    for (src, dst) in self.scratch.chunks_exact(record).zip(dst.chunks_exact_mut(payload_len)) {
                        dst.copy_from_slice(fvecs::payload(&self.path, src, row, self.info.dim)?);
                        row += 1;
                    }
                }
                Ok(())
            }
        }
    }

    /// An iterator over chunks of up to `rows_per_chunk` rows (at least 1), each a fresh row-major `Vec`.
    /// It stops after the first error.
    pub fn chunks<T: Element>(self, rows_per_chunk: usize) -> Chunks<T> {
        Chunks { reader: self, rows: rows_per_chunk.max(1), done: false, _element: PhantomData }
    }
}

/// Iterator over the chunks of a [`VectorReader`]; see [`VectorReader::chunks`].
#[derive(Debug)]
pub struct Chunks<T> {
    reader: VectorReader,
    rows: usize,
    done: bool,
    _element: PhantomData<T>,
}

impl<T: Element> Iterator for Chunks<T> {
    type Item = Result<Vec<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut chunk = Vec::with_capacity(self.rows.min(self.reader.rows_left() as usize) * self.reader.info.dim);
        match self.reader.read_rows(self.rows, &mut chunk) {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(_) => Some(Ok(chunk)),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A whole file of vectors in memory: `data` is row-major with `dim` values per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Vectors<T> {
    /// Dimension of every row.
    pub dim: usize,
    /// The values, row-major.
    pub data: Vec<T>,
}

impl<T> Vectors<T> {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    /// Row `i`.
    ///
    /// # Panics
    /// If `i >= self.rows()`.
    pub fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Reads a whole vector file into memory (for files that fit; use [`VectorReader`] to stream).
pub fn read_vectors<T: Element>(path: impl AsRef<Path>) -> Result<Vectors<T>> {
    let mut reader = VectorReader::open(path)?;
    let info = reader.info();
    let len = usize::try_from(info.rows)
        .ok()
        .and_then(|r| r.checked_mul(info.dim))
        .ok_or_else(|| Error::unsupported(reader.path(), "too many values to hold in memory"))?;
    let mut data = Vec::with_capacity(len);
    reader.read_rows(usize::MAX, &mut data)?;
    Ok(Vectors { dim: info.dim, data })
}

/// Writes `data` (row-major, `dim` values per row) to `path` in the format its extension names.
pub fn write_vectors<T: Element>(path: impl AsRef<Path>, data: &[T], dim: usize) -> Result<()> {
    let mut writer = VectorWriter::create(path, dim)?;
    writer.write_rows(data)?;
    writer.finish().map(|_| ())
}

/// A streaming writer of one vector file; the file appears at its path only when [`finish`](Self::finish)
/// succeeds.
///
/// ```no_run
/// let mut w = m2m_splat::VectorWriter::<f32>::create("out.npy", 3)?;
/// w.write_rows(&[1.0, 0.0, 0.0])?;
/// w.write_rows(&[0.0, 1.0, 0.0, 0.0, 0.0, 1.0])?;
/// assert_eq!(w.finish()?, 3);
/// # Ok::<(), m2m_splat::Error>(())
/// ```
#[derive(Debug)]
pub struct VectorWriter<T: Element> {
    path: PathBuf,
    tmp_path: PathBuf,
    file: Option<BufWriter<File>>,
    format: VectorFormat,
    dim: usize,
    rows: u64,
    scratch: Vec<u8>,
    _element: PhantomData<T>,
}

impl<T: Element> VectorWriter<T> {
    /// Starts writing `path` (format from its extension) with rows of `dim` elements of type `T`.
    ///
    /// Errors: [`Error::ZeroDimension`], [`Error::Unsupported`] for an unknown extension or an element
    /// type the format cannot hold (`.fvecs` holds f32, `.ivecs` i32, `.npy` either), [`Error::Io`].
    pub fn create(path: impl AsRef<Path>, dim: usize) -> Result<Self> {
        let path = path.as_ref();
        let format = VectorFormat::from_path(path)?;
        if dim == 0 {
            return Err(Error::ZeroDimension);
        }
        if i32::try_from(dim).is_err() {
            return Err(Error::unsupported(path, format!("dimension {dim} does not fit the format's i32 header")));
        }
        match (format, T::TYPE) {
            (VectorFormat::Fvecs, ElementType::I32) => {
                return Err(Error::unsupported(path, ".fvecs holds f32; write i32 to .ivecs or .npy"));
            }
            (VectorFormat::Ivecs, ElementType::F32) => {
                return Err(Error::unsupported(path, ".ivecs holds i32; write f32 to .fvecs or .npy"));
            }
            _ => {}
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("vectors");
        let tmp_path = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let file = File::create(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
        let mut writer = VectorWriter {
            path: path.to_owned(),
            tmp_path,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            format,
            dim,
            rows: 0,
            scratch: Vec::new(),
            _element: PhantomData,
        };
        if format == VectorFormat::Npy {
            // A placeholder preamble, rewritten with the final row count by `finish`.
            let preamble = npy::preamble(T::TYPE, 0, dim);
            writer.write_bytes(&preamble)?;
        }
        Ok(writer)
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        match self.file.as_mut() {
            Some(f) => f.write_all(bytes).map_err(|e| Error::io(&self.tmp_path, e)),
            None => Ok(()),
        }
    }

    /// Appends rows (row-major, a multiple of the dimension; [`Error::RaggedBatch`] otherwise).
    pub fn write_rows(&mut self, data: &[T]) -> Result<()> {
        if !data.len().is_multiple_of(self.dim) {
            return Err(Error::RaggedBatch { len: data.len(), dim: self.dim });
        }
        let rows = data.len() / self.dim;
        match self.format {
            VectorFormat::Npy => self.write_bytes(bytemuck::cast_slice(data))?,
            VectorFormat::Fvecs | VectorFormat::Ivecs => {
                let head = (self.dim as i32).to_le_bytes();
                let block_rows = (SCRATCH_BYTES / (4 + 4 * self.dim)).max(1);
                let mut scratch = std::mem::take(&mut self.scratch);
                let mut written = Ok(());
                for block in data.chunks(block_rows * self.dim) {
                    scratch.clear();
                    for row in block.chunks_exact(self.dim) {
                        scratch.extend_from_slice(&head);
                        scratch.extend_from_slice(bytemuck::cast_slice(row));
                    }
                    written = self.write_bytes(&scratch);
                    if written.is_err() {
                        break;
                    }
                }
                self.scratch = scratch;
                written?;
            }
        }
        self.rows += rows as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Flushes, syncs and renames the file into place; returns the number of rows.
    ///
    /// `.fvecs` and `.ivecs` cannot represent zero rows: finishing one with no row is
    /// [`Error::EmptyBatch`] and leaves no file.
    pub fn finish(mut self) -> Result<u64> {
        if self.rows == 0 && self.format != VectorFormat::Npy {
            return Err(Error::EmptyBatch);
        }
        let Some(writer) = self.file.take() else {
            return Err(Error::io(&self.tmp_path, std::io::Error::other("writer already finished")));
        };
        let tmp = self.tmp_path.clone();
        let mut file = writer.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
        if self.format == VectorFormat::Npy {
            let preamble = npy::preamble(T::TYPE, self.rows, self.dim);
            file.seek(SeekFrom::Start(0)).and_then(|_| file.write_all(&preamble)).map_err(|e| Error::io(&tmp, e))?;
        }
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        // Make the rename itself durable.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))?;
        }
        Ok(self.rows)
    }
}

impl<T: Element> Drop for VectorWriter<T> {
    fn drop(&mut self) {
        // Not finished (an error, or abandoned): remove the temporary file, leave the target untouched.
        if self.file.take().is_some() || self.tmp_path.exists() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}
