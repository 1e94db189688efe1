//! The write-ahead log: batches of splats appended as checksummed records, acknowledged after `fdatasync`
//! (or, in the mode named [`Durability::NoSync`], after the write reaches the operating system).
//!
//! The byte layout is documented in `FORMAT.md` beside this crate's `Cargo.toml`. Recovery reads records
//! in order and stops at the first one that does not check out: if that record reaches the end of the
//! file, it is a torn write and is dropped (a writer truncates it away); if valid-looking bytes follow it,
//! the log is corrupt in the middle and opening fails with [`Error::Corrupt`].

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{Columns, Error, Result, fsio};

/// First bytes of every WAL file.
pub const WAL_MAGIC: [u8; 8] = *b"M2M-WAL\0";
/// Newest format version this build reads and writes. It writes version 1 for a database without an
/// attribute schema (builds that know only version 1 read it), version 2 with one (records of kinds 3
/// and 4 need it), and version 3 once a database has upserted (records of kind 5). All three are read.
pub const WAL_VERSION: u32 = 3;
/// Bytes of the file header.
pub const WAL_HEADER: u64 = 32;
/// Bytes of a record header (length, checksum).
const RECORD_HEADER: u64 = 8;
/// Largest record accepted (1 GiB): a longer length field is damage, not data.
const MAX_RECORD: u64 = 1 << 30;
/// Record kind of a batch of splats.
const KIND_BATCH: u8 = 1;
/// Record kind of a list of deleted ids.
const KIND_DELETE: u8 = 2;
/// Record kind of a batch of splats with their attributes (version 2).
const KIND_BATCH_ATTRS: u8 = 3;
/// Record kind of an attribute update by id (version 2).
const KIND_SET_ATTRS: u8 = 4;
/// Record kind of an upsert: a batch of splats (with their attribute block, when the payload goes on
/// past the columns) that replaces any row of the same ids, as one record (version 3).
const KIND_UPSERT: u8 = 5;

/// When an append counts as acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After `fdatasync`: the batch survives a process crash and a power loss. The default.
    #[default]
    Fsync,
    /// After the write reaches the operating system: the batch survives a crash of this process, not a
    /// power loss or kernel crash. Faster, and named for what it does not promise.
    NoSync,
}

/// One recovered batch of splats.
#[derive(Clone, Debug, PartialEq)]
pub struct WalBatch {
    /// Sequence number of the record in the log (0-based, consecutive).
    pub seq: u64,
    /// The splats.
    pub columns: Columns,
    /// Their attributes: the encoded block (checked against the schema by the database), `None` in a
    /// record without attributes.
    pub attrs: Option<Vec<u8>>,
}

/// One recovered record of the log.
#[derive(Clone, Debug, PartialEq)]
pub enum WalRecord {
    /// Splats added.
    Batch(WalBatch),
    /// Ids deleted.
    Delete {
        /// Sequence number of the record.
        seq: u64,
        /// The ids.
        ids: Vec<u64>,
    },
    /// Splats added, each replacing any row of its id (vector and attributes, as one change).
    Upsert(WalBatch),
    /// Attributes of existing rows set (the fields the block names; the others unchanged).
    SetAttributes {
        /// Sequence number of the record.
        seq: u64,
        /// The ids, one per row of the block.
        ids: Vec<u64>,
        /// The encoded block (field names and columns).
        block: Vec<u8>,
    },
}

impl WalRecord {
    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            WalRecord::Batch(b) | WalRecord::Upsert(b) => b.seq,
            WalRecord::Delete { seq, .. } | WalRecord::SetAttributes { seq, .. } => *seq,
        }
    }
}

/// An open write-ahead log, for appending.
#[derive(Debug)]
pub struct Wal {
    path: PathBuf,
    file: File,
    dim: usize,
    durability: Durability,
    next_seq: u64,
    /// End of the last good record: where the next append goes, and where a failed one is cut back to.
    end: u64,
    poisoned: bool,
    buf: Vec<u8>,
    /// What [`Wal::open`] cut from the end of the file, if anything.
    cut: Option<CutTail>,
    /// The file's format version (attribute records need 2).
    version: u32,
}

/// Bytes [`Wal::open`] cut after the last good record: a torn write, or a damaged acknowledged record.
/// Writers report it (the same facts `verify` reports before the cut).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutTail {
    /// The log file.
    pub path: PathBuf,
    /// End of the last good record, where the file now ends.
    pub at: u64,
    /// Bytes cut.
    pub bytes: u64,
    /// Rows of the batch record whose header starts the cut bytes, when readable.
    pub rows: Option<u64>,
}

impl std::fmt::Display for CutTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = self.rows.map_or_else(|| "no whole record header".to_string(), |r| format!("a record of {r} rows"));
        write!(f, "{}: cut {} bytes after byte {} ({rows})", self.path.display(), self.bytes, self.at)
    }
}

/// Rows of the batch record whose header starts `tail`, when the header is whole.
fn tail_rows(tail: &[u8]) -> Option<u64> {
    (tail.len() >= RECORD_HEADER as usize + 8 && matches!(tail[8], KIND_BATCH | KIND_BATCH_ATTRS))
        .then(|| u64::from(u32::from_le_bytes([tail[12], tail[13], tail[14], tail[15]])))
}

fn header_bytes(dim: u32, version: u32) -> [u8; WAL_HEADER as usize] {
    let mut h = [0u8; WAL_HEADER as usize];
    h[..8].copy_from_slice(&WAL_MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[12..16].copy_from_slice(&dim.to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

impl Wal {
    /// Creates a new, empty log at `path` for splats of dimension `dim` (failing if the file exists), and
    /// makes its creation durable. The header is written under a temporary name and renamed into place,
    /// so a file of a log's name always starts with the log's magic (the mark of what is ours, see
    /// `owned.rs`); a file there that is not ours is [`Error::NotOurs`].
    pub fn create(path: impl AsRef<Path>, dim: usize, durability: Durability) -> Result<Wal> {
        Wal::create_version(path, dim, durability, 1)
    }

    /// [`create`](Self::create) of a log of format `version` (1, or 2 for attribute records).
    pub(crate) fn create_version(
        path: impl AsRef<Path>,
        dim: usize,
        durability: Durability,
        version: u32,
    ) -> Result<Wal> {
        let path = path.as_ref().to_path_buf();
        let dim32 = u32::try_from(dim)
            .ok()
            .filter(|&d| d > 0)
            .ok_or_else(|| Error::InvalidBatch { reason: format!("dimension {dim} is not in 1..2^32") })?;
        crate::owned::claim(&path)?;
        if path.exists() {
            return Err(Error::io(&path, std::io::Error::from(std::io::ErrorKind::AlreadyExists)));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("log");
        let tmp = path.with_file_name(crate::owned::temp_name(name));
        let file = fsio::create(&tmp, true).map_err(|e| Error::io(&tmp, e))?;
        let written = fsio::Writer(&file)
            .write_all(&header_bytes(dim32, version))
            .and_then(|()| fsio::sync_all(&file))
            .and_then(|()| fsio::rename(&tmp, &path))
            .and_then(|()| fsio::sync_dir(fsio::parent(&path)));
        if let Err(e) = written {
            // Nothing half-made stays behind: the caller can create the log again.
            drop(file);
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&path);
            return Err(Error::io(&path, e));
        }
        Ok(Wal {
            path,
            file,
            dim,
            durability,
            next_seq: 0,
            end: WAL_HEADER,
            poisoned: false,
            buf: Vec::new(),
            cut: None,
            version,
        })
    }

    /// Opens an existing log for appending: recovers every complete batch, cuts a torn tail away, and
    /// returns the log positioned after the last good record.
    ///
    /// Errors: [`Error::Corrupt`] (bad header, or damage followed by more records),
    /// [`Error::IncompatibleVersion`], [`Error::Io`].
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<(Wal, Vec<WalRecord>)> {
        let path = path.as_ref().to_path_buf();
        let mut file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| Error::io(&path, e))?;
        let (dim, batches, end) = decode_log(&path, &bytes)?;
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let len = bytes.len() as u64;
        let cut = (len != end).then(|| CutTail {
            path: path.clone(),
            at: end,
            bytes: len - end,
            rows: tail_rows(&bytes[end as usize..]),
        });
        if len != end {
            file.set_len(end).map_err(|e| Error::io(&path, e))?;
            fsio::sync_all(&file).map_err(|e| Error::io(&path, e))?;
        }
        file.seek(SeekFrom::Start(end)).map_err(|e| Error::io(&path, e))?;
        let next_seq = batches.len() as u64;
        Ok((
            Wal { path, file, dim, durability, next_seq, end, poisoned: false, buf: Vec::new(), cut, version },
            batches,
        ))
    }

    /// Reads every complete batch of a log without changing the file (a torn tail is skipped, not cut).
    pub fn read(path: impl AsRef<Path>) -> Result<Vec<WalRecord>> {
        let path = path.as_ref().to_path_buf();
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(recover(&path, &mut file)?.1)
    }

    /// Appends one batch and returns its sequence number once it is acknowledged (see [`Durability`]).
    /// Columns are those of a validated [`m2m_splat::SplatSet`] (unit `mu`, positive kappa and alpha).
    ///
    /// On a failed write the log cuts the partial record away and refuses further appends
    /// ([`Error::Poisoned`]) until reopened; nothing acknowledged is lost.
    pub fn append(&mut self, set: &m2m_splat::SplatSet) -> Result<u64> {
        self.append_with(set, None)
    }

    /// [`append`](Self::append) with the batch's encoded attribute block (a record of kind 3, in a
    /// version 2 log only).
    pub(crate) fn append_with(&mut self, set: &m2m_splat::SplatSet, attrs: Option<&[u8]>) -> Result<u64> {
        self.append_batch(set, attrs, false)
    }

    /// An upsert of `set` (with its encoded attribute block, if any): a record of kind 5, in a version 3
    /// log only.
    pub(crate) fn append_upsert(&mut self, set: &m2m_splat::SplatSet, attrs: Option<&[u8]>) -> Result<u64> {
        if self.version < 3 {
            return Err(Error::InvalidBatch { reason: format!("an upsert in a version {} log", self.version) });
        }
        self.append_batch(set, attrs, true)
    }

    fn append_batch(&mut self, set: &m2m_splat::SplatSet, attrs: Option<&[u8]>, upsert: bool) -> Result<u64> {
        if attrs.is_some() && self.version < 2 {
            return Err(Error::InvalidBatch { reason: "attributes in a version 1 log".into() });
        }
        if self.poisoned {
            return Err(Error::Poisoned { path: self.path.clone() });
        }
        if set.dim() != self.dim {
            return Err(Error::InvalidBatch {
                reason: format!("dimension {} in a log of dimension {}", set.dim(), self.dim),
            });
        }
        if set.is_empty() {
            return Err(Error::InvalidBatch { reason: "empty batch".into() });
        }
        let rows = u32::try_from(set.len()).map_err(|_| Error::InvalidBatch { reason: "too many rows".into() })?;
        // The columns go to the kernel straight from the set (one `writev`, no copy into a buffer); only
        // the 24 bytes of headers are assembled here.
        let columns: [&[u8]; 6] = [
            bytemuck::cast_slice(set.ids()),
            bytemuck::cast_slice(set.norms()),
            bytemuck::cast_slice(set.kappa()),
            bytemuck::cast_slice(set.alpha()),
            bytemuck::cast_slice(set.mu()),
            attrs.unwrap_or(&[]),
        ];
        let mut head = [0u8; RECORD_HEADER as usize + 16];
        head[8] = match (upsert, attrs.is_some()) {
            (true, _) => KIND_UPSERT,
            (false, true) => KIND_BATCH_ATTRS,
            (false, false) => KIND_BATCH,
        };
        head[12..16].copy_from_slice(&rows.to_le_bytes());
        head[16..24].copy_from_slice(&self.next_seq.to_le_bytes());
        let payload_len = 16 + columns.iter().map(|c| c.len()).sum::<usize>();
        let crc = columns.iter().fold(crc32c::crc32c(&head[8..]), |crc, c| crc32c::crc32c_append(crc, c));
        head[..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        head[4..8].copy_from_slice(&crc.to_le_bytes());
        let mut slices = [
            IoSlice::new(&head),
            IoSlice::new(columns[0]),
            IoSlice::new(columns[1]),
            IoSlice::new(columns[2]),
            IoSlice::new(columns[3]),
            IoSlice::new(columns[4]),
            IoSlice::new(columns[5]),
        ];
        self.write_record(payload_len as u64, &mut slices)
    }

    /// Appends a list of deleted ids, acknowledged like a batch. An empty list is refused.
    pub fn append_delete(&mut self, ids: &[u64]) -> Result<u64> {
        self.append_ids(KIND_DELETE, ids, &[])
    }

    /// Appends an attribute update of `ids` (an encoded block of as many rows), acknowledged like a batch
    /// (a record of kind 4, in a version 2 log only).
    pub(crate) fn append_set_attrs(&mut self, ids: &[u64], block: &[u8]) -> Result<u64> {
        if self.version < 2 {
            return Err(Error::InvalidBatch { reason: "attributes in a version 1 log".into() });
        }
        self.append_ids(KIND_SET_ATTRS, ids, block)
    }

    fn append_ids(&mut self, kind: u8, ids: &[u64], tail: &[u8]) -> Result<u64> {
        if self.poisoned {
            return Err(Error::Poisoned { path: self.path.clone() });
        }
        let count = u32::try_from(ids.len())
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| Error::InvalidBatch { reason: "a record needs 1 to 2^32 - 1 ids".into() })?;
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; RECORD_HEADER as usize]);
        self.buf.push(kind);
        self.buf.extend_from_slice(&[0u8; 3]);
        self.buf.extend_from_slice(&count.to_le_bytes());
        self.buf.extend_from_slice(&self.next_seq.to_le_bytes());
        self.buf.extend_from_slice(bytemuck::cast_slice(ids));
        self.buf.extend_from_slice(tail);
        seal(&mut self.buf);
        let buf = std::mem::take(&mut self.buf);
        let result = self.write_record(buf.len() as u64 - RECORD_HEADER, &mut [IoSlice::new(&buf)]);
        self.buf = buf;
        result
    }

    /// Writes one sealed record (header and payload, in `slices`), syncs per the durability, and returns
    /// its sequence number.
    fn write_record(&mut self, payload_len: u64, slices: &mut [IoSlice<'_>]) -> Result<u64> {
        let seq = self.next_seq;
        if payload_len > MAX_RECORD {
            return Err(Error::InvalidBatch { reason: format!("record of {payload_len} bytes exceeds 1 GiB") });
        }
        let written = fsio::write_all_vectored(&self.file, slices).and_then(|()| match self.durability {
            Durability::Fsync => fsio::sync_data(&self.file),
            Durability::NoSync => Ok(()),
        });
        if let Err(e) = written {
            // Cut the partial record so that the file ends on a good record, and stop accepting appends.
            self.poisoned = true;
            let _ = self.file.set_len(self.end).and_then(|()| self.file.seek(SeekFrom::Start(self.end)).map(drop));
            return Err(Error::io(&self.path, e));
        }
        self.end += RECORD_HEADER + payload_len;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Forces every appended batch to stable storage (useful with [`Durability::NoSync`]).
    pub fn sync(&mut self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned { path: self.path.clone() });
        }
        let synced = fsio::sync_data(&self.file);
        if let Err(e) = synced {
            // After a failed fsync the kernel may have dropped the dirty pages: trust nothing unsynced.
            self.poisoned = true;
            return Err(Error::io(&self.path, e));
        }
        Ok(())
    }

    /// The file's format version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Dimension of the log's splats.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of batches in the log.
    pub fn batches(&self) -> u64 {
        self.next_seq
    }

    /// Bytes of the log (header and good records).
    pub fn len_bytes(&self) -> u64 {
        self.end
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What [`open`](Self::open) cut from the end of the file (a torn or damaged tail), if anything.
    pub fn cut(&self) -> Option<&CutTail> {
        self.cut.as_ref()
    }
}

/// Fills in the record header (payload length and checksum) of a record assembled in `buf`.
fn seal(buf: &mut [u8]) {
    let payload = &buf[RECORD_HEADER as usize..];
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Copies little-endian values out of `bytes` into a typed vector (no reinterpretation in place).
fn take<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / size_of::<T>();
    let mut out = vec![T::zeroed(); n];
    bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&bytes[..n * size_of::<T>()]);
    out
}

/// Decodes one checksummed payload; `offset` (of its record) only labels errors.
fn decode(path: &Path, offset: u64, payload: &[u8], dim: usize, want_seq: u64, version: u32) -> Result<WalRecord> {
    let bad = |reason: String| Error::corrupt(path, offset, reason);
    if payload.len() < 16 {
        return Err(bad(format!("record payload of {} bytes is shorter than its 16-byte header", payload.len())));
    }
    let known = match version {
        1 => matches!(payload[0], KIND_BATCH | KIND_DELETE),
        2 => matches!(payload[0], KIND_BATCH | KIND_DELETE | KIND_BATCH_ATTRS | KIND_SET_ATTRS),
        _ => matches!(payload[0], KIND_BATCH | KIND_DELETE | KIND_BATCH_ATTRS | KIND_SET_ATTRS | KIND_UPSERT),
    };
    if !known || payload[1..4] != [0, 0, 0] {
        return Err(bad(format!("unknown record kind {}", payload[0])));
    }
    let rows = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]) as usize;
    let seq = u64::from_le_bytes(payload[8..16].try_into().unwrap_or([0; 8]));
    if seq != want_seq {
        return Err(bad(format!("record sequence {seq} where {want_seq} was expected")));
    }
    if payload[0] == KIND_DELETE {
        if rows == 0 || rows.checked_mul(8).map(|b| b + 16) != Some(payload.len()) {
            return Err(bad(format!("{rows} deleted ids do not fill a payload of {} bytes", payload.len())));
        }
        return Ok(WalRecord::Delete { seq, ids: take(&payload[16..]) });
    }
    if payload[0] == KIND_SET_ATTRS {
        let ids_end = rows.checked_mul(8).map(|b| b + 16).filter(|&e| e < payload.len());
        let Some(ids_end) = ids_end.filter(|_| rows > 0) else {
            return Err(bad(format!("{rows} ids and a block do not fit a payload of {} bytes", payload.len())));
        };
        return Ok(WalRecord::SetAttributes {
            seq,
            ids: take(&payload[16..ids_end]),
            block: payload[ids_end..].to_vec(),
        });
    }
    let want = rows.checked_mul(8 + 12 + 4 * dim).map(|b| b + 16);
    let upsert = payload[0] == KIND_UPSERT;
    let fits = match want {
        // An upsert's attribute block is optional: present when the payload goes on past the columns.
        Some(w) if upsert => w <= payload.len(),
        Some(w) if payload[0] == KIND_BATCH_ATTRS => w < payload.len(),
        Some(w) => w == payload.len(),
        None => false,
    };
    if rows == 0 || !fits {
        return Err(bad(format!("{rows} rows of dimension {dim} do not fill a payload of {} bytes", payload.len())));
    }
    let mut at = 16;
    let mut next = |n: usize| {
        let s = &payload[at..at + n];
        at += n;
        s
    };
    let columns = Columns {
        dim,
        ids: take(next(rows * 8)),
        norms: take(next(rows * 4)),
        kappa: take(next(rows * 4)),
        alpha: take(next(rows * 4)),
        mu: take(next(rows * dim * 4)),
    };
    let attrs = (at < payload.len()).then(|| payload[at..].to_vec());
    if let Some((column, row)) = columns.view().invalid_value(true) {
        return Err(bad(format!("row {row} has an invalid {column}")));
    }
    let batch = WalBatch { seq, columns, attrs };
    Ok(if upsert { WalRecord::Upsert(batch) } else { WalRecord::Batch(batch) })
}

/// The offset (in `rest`) of the first position at or after `from` where a record with a matching checksum
/// and a batch payload header starts, if any. Only run on damage, to tell a torn tail from a damaged middle.
fn record_after(rest: &[u8], from: usize) -> Option<usize> {
    let header = RECORD_HEADER as usize;
    (from..rest.len().saturating_sub(header + 16)).find(|&p| {
        let len = u32::from_le_bytes(rest[p..p + 4].try_into().unwrap_or([0; 4])) as usize;
        let body = p + header;
        let kind_ok = matches!(
            rest.get(body),
            Some(&(KIND_BATCH | KIND_DELETE | KIND_BATCH_ATTRS | KIND_SET_ATTRS | KIND_UPSERT))
        );
        if len < 16 || body + len > rest.len() || !kind_ok || rest[body + 1..body + 4] != [0, 0, 0] {
            return false;
        }
        let crc = u32::from_le_bytes(rest[p + 4..p + 8].try_into().unwrap_or([0; 4]));
        crc32c::crc32c(&rest[body..body + len]) == crc
    })
}

/// Reads the header and every good record; returns the dimension, the batches and the end of the last
/// good record.
fn recover(path: &Path, file: &mut File) -> Result<(usize, Vec<WalRecord>, u64)> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_end(&mut bytes)).map_err(|e| Error::io(path, e))?;
    decode_log(path, &bytes)
}

/// The end (in `rest`) of the record at `at` when it is whole and its checksum matches: a length of
/// 16 bytes (the payload header) to [`MAX_RECORD`] that fits in `rest`.
fn good_record(rest: &[u8], at: usize) -> Option<usize> {
    let header = rest.get(at..at + RECORD_HEADER as usize)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len < 16 || len as u64 > MAX_RECORD {
        return None;
    }
    let end = (at + RECORD_HEADER as usize).checked_add(len).filter(|&e| e <= rest.len())?;
    (crc32c::crc32c(&rest[at + RECORD_HEADER as usize..end]) == crc).then_some(end)
}

/// What recovery of a log keeps and what it would cut, without changing the file.
#[derive(Clone, Debug, PartialEq)]
pub struct LogCheck {
    /// The log file.
    pub path: PathBuf,
    /// The good records.
    pub records: Vec<WalRecord>,
    /// End of the last good record.
    pub end: u64,
    /// Length of the file; bytes from `end` to here are a torn or damaged tail that `Wal::open` cuts.
    pub len: u64,
    /// Rows of a batch record in that tail, when its header is readable (a damaged acknowledged batch, or
    /// a torn write that was never acknowledged).
    pub tail_rows: Option<u64>,
}

impl LogCheck {
    /// Bytes after the last good record (zero when the log ends cleanly).
    pub fn tail_bytes(&self) -> u64 {
        self.len - self.end
    }

    /// Checks the log at `path`, reading it whole and changing nothing.
    pub fn of(path: impl AsRef<Path>) -> Result<LogCheck> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let (_, records, end) = decode_log(&path, &bytes)?;
        let tail_rows = tail_rows(&bytes[end as usize..]);
        Ok(LogCheck { path, records, end, len: bytes.len() as u64, tail_rows })
    }
}

/// Recovery over the bytes of a whole log file; `path` only labels errors. Returns the dimension, the
/// good records and the end of the last one.
pub(crate) fn decode_log(path: &Path, bytes: &[u8]) -> Result<(usize, Vec<WalRecord>, u64)> {
    let len = bytes.len() as u64;
    if len < WAL_HEADER {
        return Err(Error::corrupt(path, len, format!("{len} bytes, shorter than the {WAL_HEADER}-byte header")));
    }
    let h = &bytes[..WAL_HEADER as usize];
    if h[..8] != WAL_MAGIC {
        return Err(Error::corrupt(path, 0, "not an M2M write-ahead log (bad magic)"));
    }
    let stored_crc = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
    if crc32c::crc32c(&h[..28]) != stored_crc {
        return Err(Error::corrupt(path, 28, "header checksum mismatch"));
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if !(1..=WAL_VERSION).contains(&version) {
        return Err(Error::IncompatibleVersion { path: path.to_path_buf(), found: version, supported: WAL_VERSION });
    }
    let dim = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
    if dim == 0 {
        return Err(Error::corrupt(path, 12, "dimension 0"));
    }
    let rest = &bytes[WAL_HEADER as usize..];
    let mut batches = Vec::new();
    let mut at = 0usize;
    while at < rest.len() {
        let offset = WAL_HEADER + at as u64;
        match good_record(rest, at) {
            Some(end) => {
                let payload = &rest[at + RECORD_HEADER as usize..end];
                batches.push(decode(path, offset, payload, dim, batches.len() as u64, version)?);
                at = end;
            }
            None => {
                // Zeros after the last record (space a crash left allocated, or a zero-filled extension)
                // hold no record: a record is never shorter than its 16-byte payload header, so a zero
                // length field is damage, not an empty record whose checksum happens to be 0.
                if rest[at..].iter().all(|&b| b == 0) || rest.len() - at < RECORD_HEADER as usize {
                    break;
                }
                let rec_len = u64::from(u32::from_le_bytes(rest[at..at + 4].try_into().unwrap_or([0; 4])));
                let end = at as u64 + RECORD_HEADER + rec_len;
                if end > rest.len() as u64 {
                    // The record runs past the end of the file: a torn write, unless its length field is
                    // what is damaged and good records follow (a torn write only affects the last record).
                    if let Some(next) = record_after(rest, at + 1) {
                        return Err(Error::corrupt(
                            path,
                            offset,
                            format!(
                                "record length {rec_len} runs past the end, but a good record starts at byte {}",
                                WAL_HEADER + next as u64
                            ),
                        ));
                    }
                    break;
                }
                if end == rest.len() as u64 {
                    break; // The last record is damaged: a torn write.
                }
                return Err(Error::corrupt(path, offset, "record checksum mismatch with more records after it"));
            }
        }
    }
    Ok((dim, batches, WAL_HEADER + at as u64))
}
